-- 0013: live configuration. A row of rc_breaker_config overrides, for one key, the values the
-- code gave its breakers (cooldown, failure and success limits, trip policy) and sets its mode:
--
--   normal        as configured
--   forced_open   OPEN for everyone until the mode changes: the row itself is held OPEN (so the
--                 Python ancestor obeys too), no probe round starts, and rc_force refuses to
--                 override it behind the configuration's back
--   disabled      every call admitted whatever the state; outcomes not counted; never trips
--   metrics_only  every call admitted whatever the state; outcomes counted (window, metrics);
--                 never trips
--
-- Every change NOTIFYs channel rc_breaker_config with {"ns", "key"}; instances then read the row
-- (the notification is only a hint, so it needs no MAC). Values the instances could not use are
-- refused here by CHECK constraints, whoever writes; rc_configure is how the command line and
-- applications write.

CREATE SEQUENCE IF NOT EXISTS public.rc_breaker_config_version_seq;

CREATE TABLE IF NOT EXISTS public.rc_breaker_config (
    namespace     varchar(255) NOT NULL,
    resource_key  varchar(255) NOT NULL,
    mode          text         NOT NULL DEFAULT 'normal'
                  CHECK (mode IN ('normal', 'forced_open', 'disabled', 'metrics_only')),
    cooldown_ms   bigint       NULL CHECK (cooldown_ms BETWEEN 0 AND 315360000000),
    failure_num   integer      NULL,
    failure_den   integer      NULL,
    success_num   integer      NULL,
    success_den   integer      NULL,
    -- TripPolicy: any_instance, quorum (quorum_instances within quorum_within_ms) or fleet_rate
    -- (rate_num/rate_den over rate_period_ms, at least rate_min_calls calls); NULL: the code's.
    trip_policy      text      NULL
                     CHECK (trip_policy IN ('any_instance', 'quorum', 'fleet_rate')),
    quorum_instances integer   NULL,
    quorum_within_ms bigint    NULL,
    rate_num         integer   NULL,
    rate_den         integer   NULL,
    rate_min_calls   integer   NULL,
    rate_period_ms   bigint    NULL,
    version       bigint       NOT NULL DEFAULT nextval('public.rc_breaker_config_version_seq'),
    updated_at    timestamptz  NOT NULL DEFAULT now(),
    updated_by    text         NOT NULL DEFAULT session_user,
    note          text         NULL,
    PRIMARY KEY (namespace, resource_key),
    -- A ratio k/n is given whole, with 1 <= k <= n <= 8192 (Ratio::MAX_DENOMINATOR).
    CONSTRAINT rc_breaker_config_failure_limit CHECK (
        (failure_num IS NULL AND failure_den IS NULL)
        OR (failure_num >= 1 AND failure_num <= failure_den AND failure_den <= 8192)),
    CONSTRAINT rc_breaker_config_success_limit CHECK (
        (success_num IS NULL AND success_den IS NULL)
        OR (success_num >= 1 AND success_num <= success_den AND success_den <= 8192)),
    -- A trip policy comes whole, with exactly its own numbers, as TripPolicy::validate wants
    -- them: a quorum of 1 to 10000 instances over 1 ms to ten years; a fleet rate k/n over at
    -- least 1 call and a period of 1 s to ten years.
    -- (coalesce: a missing number makes the CASE NULL, which a CHECK would let through.)
    CONSTRAINT rc_breaker_config_trip_policy CHECK (coalesce(
        CASE trip_policy
            WHEN 'quorum' THEN
                quorum_instances BETWEEN 1 AND 10000
                AND quorum_within_ms BETWEEN 1 AND 315360000000
                AND rate_num IS NULL AND rate_den IS NULL AND rate_min_calls IS NULL
                AND rate_period_ms IS NULL
            WHEN 'fleet_rate' THEN
                rate_num >= 1 AND rate_num <= rate_den AND rate_den <= 8192
                AND rate_min_calls >= 1 AND rate_period_ms BETWEEN 1000 AND 315360000000
                AND quorum_instances IS NULL AND quorum_within_ms IS NULL
            ELSE
                quorum_instances IS NULL AND quorum_within_ms IS NULL AND rate_num IS NULL
                AND rate_den IS NULL AND rate_min_calls IS NULL AND rate_period_ms IS NULL
        END, false))
);
-- Readable by the roles that may read breakers (row security, as the change log); written by
-- rc_configure (run as the owner) or by the schema's owner.
REVOKE ALL ON public.rc_breaker_config FROM PUBLIC;
GRANT SELECT ON public.rc_breaker_config TO PUBLIC;
ALTER TABLE public.rc_breaker_config ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS rc_breaker_config_readers ON public.rc_breaker_config;
CREATE POLICY rc_breaker_config_readers ON public.rc_breaker_config FOR SELECT
    USING (pg_catalog.has_table_privilege('public.rc_circuit_breakers', 'SELECT'));

-- Each write gets a new version and time; then, at commit, the instances hear of it.
CREATE OR REPLACE FUNCTION public.rc_config_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('public.rc_breaker_config_version_seq');
    NEW.updated_at := now();
    NEW.updated_by := session_user;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS rc_config_stamp ON public.rc_breaker_config;
CREATE TRIGGER rc_config_stamp BEFORE INSERT OR UPDATE ON public.rc_breaker_config
    FOR EACH ROW EXECUTE FUNCTION public.rc_config_stamp();

CREATE OR REPLACE FUNCTION public.rc_config_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record := coalesce(NEW, OLD);
BEGIN
    PERFORM pg_catalog.pg_notify('rc_breaker_config',
        pg_catalog.json_build_object('ns', r.namespace, 'key', r.resource_key)::text);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS rc_config_notify ON public.rc_breaker_config;
CREATE CONSTRAINT TRIGGER rc_config_notify AFTER INSERT OR UPDATE OR DELETE
    ON public.rc_breaker_config DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_config_notify();

-- Sets `p_key`'s live configuration: each non-NULL argument replaces the stored value, NULLs keep
-- it; p_reset deletes the row first (back to the code's values, mode normal). A ratio is given
-- whole or not at all; a trip policy replaces the stored one with its own numbers (the others
-- NULL), checked by the table. Entering forced_open holds the breaker's row OPEN until the mode changes
-- (for rc_max_ms(), ten years: no probe round); leaving it closes the row. The change log records
-- either with why.config. Refused like rc_force: a role that may not write breakers, a bad key;
-- and the table's CHECKs refuse values no instance could use, with the constraint's name.
CREATE OR REPLACE FUNCTION public.rc_configure(
    p_ns text, p_key text, p_mode text DEFAULT NULL, p_cooldown_ms bigint DEFAULT NULL,
    p_failure_num integer DEFAULT NULL, p_failure_den integer DEFAULT NULL,
    p_success_num integer DEFAULT NULL, p_success_den integer DEFAULT NULL,
    p_reset boolean DEFAULT false, p_note text DEFAULT NULL,
    p_trip_policy text DEFAULT NULL, p_quorum_instances integer DEFAULT NULL,
    p_quorum_within_ms bigint DEFAULT NULL, p_rate_num integer DEFAULT NULL,
    p_rate_den integer DEFAULT NULL, p_rate_min_calls integer DEFAULT NULL,
    p_rate_period_ms bigint DEFAULT NULL)
RETURNS TABLE (o_mode text, o_cooldown_ms bigint, o_failure_num integer, o_failure_den integer,
               o_success_num integer, o_success_den integer, o_version bigint,
               o_trip_policy text, o_quorum_instances integer, o_quorum_within_ms bigint,
               o_rate_num integer, o_rate_den integer, o_rate_min_calls integer,
               o_rate_period_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    before text;
    after text;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    IF (p_failure_num IS NULL) <> (p_failure_den IS NULL)
       OR (p_success_num IS NULL) <> (p_success_den IS NULL) THEN
        RAISE EXCEPTION 'a limit is a whole ratio k/n: give both numbers'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT mode INTO before FROM public.rc_breaker_config
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    before := coalesce(before, 'normal');
    IF coalesce(p_reset, false) THEN
        DELETE FROM public.rc_breaker_config WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    IF NOT coalesce(p_reset, false) OR p_mode IS NOT NULL OR p_cooldown_ms IS NOT NULL
       OR p_failure_num IS NOT NULL OR p_success_num IS NOT NULL
       OR p_trip_policy IS NOT NULL THEN
        INSERT INTO public.rc_breaker_config AS c
            (namespace, resource_key, mode, cooldown_ms, failure_num, failure_den, success_num,
             success_den, note, trip_policy, quorum_instances, quorum_within_ms, rate_num,
             rate_den, rate_min_calls, rate_period_ms)
        VALUES (p_ns, p_key, coalesce(p_mode, 'normal'), p_cooldown_ms, p_failure_num,
                p_failure_den, p_success_num, p_success_den, p_note, p_trip_policy,
                p_quorum_instances, p_quorum_within_ms, p_rate_num, p_rate_den,
                p_rate_min_calls, p_rate_period_ms)
        ON CONFLICT (namespace, resource_key) DO UPDATE SET
            mode = coalesce(p_mode, c.mode),
            cooldown_ms = coalesce(p_cooldown_ms, c.cooldown_ms),
            failure_num = coalesce(p_failure_num, c.failure_num),
            failure_den = coalesce(p_failure_den, c.failure_den),
            success_num = coalesce(p_success_num, c.success_num),
            success_den = coalesce(p_success_den, c.success_den),
            note = p_note,
            trip_policy = coalesce(p_trip_policy, c.trip_policy),
            quorum_instances = CASE WHEN p_trip_policy IS NULL THEN c.quorum_instances
                                    ELSE p_quorum_instances END,
            quorum_within_ms = CASE WHEN p_trip_policy IS NULL THEN c.quorum_within_ms
                                    ELSE p_quorum_within_ms END,
            rate_num = CASE WHEN p_trip_policy IS NULL THEN c.rate_num ELSE p_rate_num END,
            rate_den = CASE WHEN p_trip_policy IS NULL THEN c.rate_den ELSE p_rate_den END,
            rate_min_calls = CASE WHEN p_trip_policy IS NULL THEN c.rate_min_calls
                                  ELSE p_rate_min_calls END,
            rate_period_ms = CASE WHEN p_trip_policy IS NULL THEN c.rate_period_ms
                                  ELSE p_rate_period_ms END;
    END IF;
    SELECT coalesce((SELECT mode FROM public.rc_breaker_config
                     WHERE namespace = p_ns AND resource_key = p_key), 'normal') INTO after;
    IF after = 'forced_open' AND before <> 'forced_open' THEN
        PERFORM public.rc_explain(p_key, jsonb_build_object('config', jsonb_strip_nulls(
            jsonb_build_object('mode', after, 'note', p_note))));
        INSERT INTO public.rc_circuit_breakers AS b
            (resource_key, namespace, state, failure_count, open_until, execution_log)
        VALUES (p_key, p_ns, 'OPEN', 0,
                clock_timestamp() + public.rc_max_ms() * interval '1 millisecond', '[]')
        ON CONFLICT (resource_key, namespace) DO UPDATE
            SET state = 'OPEN', failure_count = 0, open_until = EXCLUDED.open_until,
                execution_log = '[]';
        DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    ELSIF before = 'forced_open' AND after <> 'forced_open' THEN
        PERFORM public.rc_explain(p_key, jsonb_build_object('config', jsonb_strip_nulls(
            jsonb_build_object('mode', after, 'note', p_note))));
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]'
            WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT coalesce(c.mode, 'normal'), c.cooldown_ms, c.failure_num, c.failure_den,
                        c.success_num, c.success_den, coalesce(c.version, 0), c.trip_policy,
                        c.quorum_instances, c.quorum_within_ms, c.rate_num, c.rate_den,
                        c.rate_min_calls, c.rate_period_ms
        FROM (SELECT 1) AS one
        LEFT JOIN public.rc_breaker_config c ON c.namespace = p_ns AND c.resource_key = p_key;
END
$$;

-- 0006's rc_force, refusing any override of a key whose live configuration forces it open (a
-- close, or an OPEN that would end): the configuration would say one thing and the fleet do
-- another. Change the mode instead.
CREATE OR REPLACE FUNCTION public.rc_force(p_ns text, p_key text, p_state text, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    until timestamptz;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    IF p_state IS NULL OR p_state NOT IN ('OPEN', 'CLOSED') THEN
        RAISE EXCEPTION 'rc_force: state must be OPEN or CLOSED, not %', coalesce(p_state, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF EXISTS (
        SELECT 1 FROM public.rc_breaker_config
        WHERE namespace = p_ns AND resource_key = p_key AND mode = 'forced_open') THEN
        RAISE EXCEPTION 'breaker % is forced open by its live configuration', p_key
            USING ERRCODE = 'object_in_use',
                  HINT = 'return it to normal with: resilient-circuit config ' || p_key
                         || ' --mode normal';
    END IF;
    IF p_state = 'OPEN' THEN
        until := clock_timestamp()
            + public.rc_check_ms(p_cooldown_ms, 'cooldown') * interval '1 millisecond';
    END IF;
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, p_state, 0, until, '[]')
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = EXCLUDED.state, failure_count = 0, open_until = EXCLUDED.open_until,
            execution_log = '[]';
    -- Forcing the state a row already has changes no version: still end its round's leases.
    DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;
