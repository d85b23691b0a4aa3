-- 0012: the fleet's failure rate (TripPolicy::FleetRate).
--
-- With this policy no instance opens a key on its own window: while its window holds failures,
-- each instance reports the calls and failures it recorded since its previous report, at most
-- once per flush interval, and the database opens the key when the reports younger than the
-- period add up to at least `min_calls` calls with a failure rate at or above the limit. A
-- healthy fleet (windows without failures) sends nothing.
--
-- rc_rate_reports keeps the reports, one row each; reports older than the period, or made
-- before the row's last change (a close: the episode they describe is over), do not count, and
-- the reports that opened a key are spent.

CREATE TABLE IF NOT EXISTS public.rc_rate_reports (
    report_id    bigserial    PRIMARY KEY,
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    -- The reporting instance's id (host:pid:start, as in the change log's actor).
    instance     text         NOT NULL CHECK (instance <> ''),
    reported_at  timestamptz  NOT NULL,
    failures     integer      NOT NULL CHECK (failures >= 0),
    calls        integer      NOT NULL CHECK (calls >= failures),
    CHECK (calls >= 1)
);
CREATE INDEX IF NOT EXISTS idx_rc_rate_reports_key
    ON public.rc_rate_reports (namespace, resource_key, reported_at);
-- Written and read only through rc_report_rate (run as the owner).
REVOKE ALL ON public.rc_rate_reports FROM PUBLIC;

-- What is wrong with one key's report, or NULL (checked before anything is written, so that a
-- batch can answer a bad element with its error and go on: see rc_trip_many).
CREATE OR REPLACE FUNCTION public.rc_rate_error(
    p_ns text, p_key text, p_failures integer, p_calls integer, p_limit_num integer,
    p_limit_den integer, p_min_calls integer, p_period_ms bigint, p_cooldown_ms bigint)
RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT coalesce(public.rc_key_error(p_ns, p_key), CASE
        WHEN p_failures IS NULL OR p_calls IS NULL OR p_failures < 0 OR p_calls < p_failures
             OR p_calls < 1 THEN
            'a report must hold 0 <= failures <= calls and at least 1 call, got '
            || coalesce(p_failures::text, 'NULL') || ' of ' || coalesce(p_calls::text, 'NULL')
        WHEN p_limit_num IS NULL OR p_limit_den IS NULL OR p_limit_num < 1
             OR p_limit_den < p_limit_num THEN
            'the failure rate limit must be a ratio k/n with 1 <= k <= n, got '
            || coalesce(p_limit_num::text, 'NULL') || '/' || coalesce(p_limit_den::text, 'NULL')
        WHEN p_min_calls IS NULL OR p_min_calls < 1 THEN
            'min_calls must be at least 1, got ' || coalesce(p_min_calls::text, 'NULL')
        WHEN p_period_ms IS NULL OR p_period_ms < 1 THEN
            'the period must be at least 1 ms, got ' || coalesce(p_period_ms::text, 'NULL')
        WHEN p_cooldown_ms IS NULL THEN
            'cooldown must not be NULL'
    END)
$$;

-- One instance's report for `p_key`: the calls and failures since its previous one. When the
-- reports younger than p_period_ms add up to at least p_min_calls calls and failures / calls >=
-- p_limit_num / p_limit_den, the key opens for p_cooldown_ms, the change log says so (the
-- fleet's counts, the limit, the instances), and the reports are spent.
--
-- Not recorded: a report on a key already OPEN or HALF_OPEN (the fleet stopped calling; its probe
-- round decides now). Counted under the same per-key advisory lock as votes, so that racing
-- reports for a key without a row see each other and open it once.
--
-- Returns the row as afterwards, as the other transition functions do, plus the fleet's counts
-- (o_fleet_failures, o_fleet_calls) with this report (0 when it was not recorded).
CREATE OR REPLACE FUNCTION public.rc_report_rate(
    p_ns text, p_key text, p_instance text, p_failures integer, p_calls integer,
    p_limit_num integer, p_limit_den integer, p_min_calls integer, p_period_ms bigint,
    p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint, o_fleet_failures bigint, o_fleet_calls bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    err text;
    ms bigint;
    fleet_failures bigint := 0;
    fleet_calls bigint := 0;
    reporters integer;
BEGIN
    PERFORM public.rc_require_write();
    err := public.rc_rate_error(p_ns, p_key, p_failures, p_calls, p_limit_num, p_limit_den,
                                p_min_calls, p_period_ms, p_cooldown_ms);
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_instance IS NULL OR p_instance = '' THEN
        RAISE EXCEPTION 'a report needs the reporting instance''s id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    PERFORM pg_advisory_xact_lock(hashtextextended('rc_votes|' || p_ns || '|' || p_key, 0));
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF FOUND AND r.state IN ('OPEN', 'HALF_OPEN') THEN
        RETURN QUERY SELECT v.*, 0::bigint, 0::bigint FROM public.rc_view(p_ns, p_key) v;
        RETURN;
    END IF;
    DELETE FROM public.rc_rate_reports
        WHERE namespace = p_ns AND resource_key = p_key
          AND (reported_at <= clock_timestamp() - p_period_ms * interval '1 millisecond'
               OR reported_at < r.updated_at);
    INSERT INTO public.rc_rate_reports
        (namespace, resource_key, instance, reported_at, failures, calls)
        VALUES (p_ns, p_key, p_instance, clock_timestamp(), p_failures, p_calls);
    SELECT coalesce(sum(failures), 0), coalesce(sum(calls), 0), count(DISTINCT instance)
        INTO fleet_failures, fleet_calls, reporters
        FROM public.rc_rate_reports WHERE namespace = p_ns AND resource_key = p_key;
    IF fleet_calls >= p_min_calls AND fleet_failures > 0
       AND fleet_failures * p_limit_den >= p_limit_num::bigint * fleet_calls THEN
        PERFORM public.rc_open_for_fleet(p_ns, p_key, fleet_failures, ms,
            jsonb_build_object('fleet_rate', jsonb_build_object(
                'failures', fleet_failures, 'calls', fleet_calls, 'instances', reporters,
                'limit', p_limit_num || '/' || p_limit_den, 'min_calls', p_min_calls,
                'period_ms', p_period_ms)));
        DELETE FROM public.rc_rate_reports WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT v.*, fleet_failures, fleet_calls FROM public.rc_view(p_ns, p_key) v;
END
$$;

-- rc_report_rate for each key of one instance's flush, in the order given (callers sort them, so
-- two instances lock keys in the same order); a bad element gets its error in o_error and the
-- others go on.
CREATE OR REPLACE FUNCTION public.rc_report_rates(
    p_ns text, p_instance text, p_keys text[], p_failures integer[], p_calls integer[],
    p_limit_num integer[], p_limit_den integer[], p_min_calls integer[], p_period_ms bigint[],
    p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_fleet_failures bigint,
               o_fleet_calls bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    err text;
BEGIN
    PERFORM public.rc_require_write();
    IF p_instance IS NULL OR p_instance = '' THEN
        RAISE EXCEPTION 'a report needs the reporting instance''s id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := public.rc_rate_error(p_ns, p_keys[i], p_failures[i], p_calls[i], p_limit_num[i],
                                    p_limit_den[i], p_min_calls[i], p_period_ms[i],
                                    p_cooldown_ms[i]);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT p_keys[i], NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::bigint, err;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT p_keys[i], t.*, NULL::text
            FROM public.rc_report_rate(p_ns, p_keys[i], p_instance, p_failures[i], p_calls[i],
                                       p_limit_num[i], p_limit_den[i], p_min_calls[i],
                                       p_period_ms[i], p_cooldown_ms[i]) AS t;
    END LOOP;
END
$$;

-- A deleted row is CLOSED for everyone (as rc_notify_change announces it), and TRUNCATE resets
-- every key: the votes and rate reports gathered for them are spent, as a close spends them in
-- rc_vote and rc_report_rate. As the owner: the deleting role may not touch either table.
CREATE OR REPLACE FUNCTION public.rc_spend_judgements() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM public.rc_votes;
        DELETE FROM public.rc_rate_reports;
    ELSE
        DELETE FROM public.rc_votes
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
        DELETE FROM public.rc_rate_reports
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS rc_spend_judgements_delete ON public.rc_circuit_breakers;
CREATE TRIGGER rc_spend_judgements_delete AFTER DELETE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_spend_judgements();
DROP TRIGGER IF EXISTS rc_spend_judgements_truncate ON public.rc_circuit_breakers;
CREATE TRIGGER rc_spend_judgements_truncate AFTER TRUNCATE ON public.rc_circuit_breakers
    FOR EACH STATEMENT EXECUTE FUNCTION public.rc_spend_judgements();
