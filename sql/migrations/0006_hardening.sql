-- 0006: the table's contract holds whoever writes it (this crate, a Python service on a role that
-- owns nothing, an operator in psql), and notifications can be told from forgeries.
--
-- * Least privilege: the triggers and the transition functions run as the schema's owner
--   (SECURITY DEFINER, search_path pinned), so a role holding only SELECT/INSERT/UPDATE/DELETE on
--   rc_circuit_breakers (the ancestor's grant) can write rows and call the functions; the
--   functions refuse a session whose login role may not UPDATE the table.
-- * Versions follow commit order for one key: an INSERT waits for a concurrent DELETE of its key
--   before it takes its version (an INSERT's BEFORE trigger otherwise runs before that wait).
-- * Half-open rounds have an identity (round_id: the version at which HALF_OPEN began) and a size
--   fixed when they start (round_probes, round_close_at); every state change, whoever makes it,
--   resets the probe counts and ends the round's leases.
-- * Notifications are sent at commit (a deferred trigger), so remaining_ms is the time left when
--   the change becomes visible, and carry an HMAC-SHA256 under a key that only roles allowed to
--   write the table can read (rc_notify_key()); a NOTIFY from anyone else is ignored.
-- * Functions validate their input (NULLs, empty or over-long keys, cooldowns past the maximum);
--   the batched ones report bad arguments per key instead of rolling the batch back, and refuse
--   a caller without the right to write as a whole.

-- The ancestor created open_until as `timestamp` (without time zone) in some versions; a cooldown
-- then depends on each session's TimeZone. Convert, reading old values as UTC.
DO $$
DECLARE
    col text;
BEGIN
    FOREACH col IN ARRAY ARRAY['open_until', 'created_at', 'updated_at'] LOOP
        IF EXISTS (
            SELECT 1 FROM information_schema.columns
            WHERE table_schema = 'public' AND table_name = 'rc_circuit_breakers'
              AND column_name = col AND data_type = 'timestamp without time zone'
        ) THEN
            EXECUTE format(
                'ALTER TABLE public.rc_circuit_breakers ALTER COLUMN %I TYPE timestamptz USING %I AT TIME ZONE ''UTC''',
                col, col);
            RAISE NOTICE 'rc_circuit_breakers.% converted from timestamp to timestamptz (values read as UTC)', col;
        END IF;
    END LOOP;
END
$$;

-- A default calling nextval() runs with the writer's rights: a role without USAGE on the
-- sequence could not insert. The BEFORE trigger sets the version anyway.
ALTER TABLE public.rc_circuit_breakers
    ALTER COLUMN version SET DEFAULT 0,
    ADD COLUMN IF NOT EXISTS round_id bigint NULL,
    ADD COLUMN IF NOT EXISTS round_probes integer NULL,
    ADD COLUMN IF NOT EXISTS round_close_at integer NULL;

ALTER TABLE public.rc_probe_leases ADD COLUMN IF NOT EXISTS round_id bigint NULL;

-- Instances verify the schema at connect; what it records is no secret, and a role holding only
-- the ancestor's grants must be able to read it.
GRANT SELECT ON public.rc_schema_migrations TO PUBLIC;

-- The notification key. Readable by the owner only; rc_notify_key() hands it to sessions that
-- may write the table (they could change any row anyway, so they lose nothing by it).
-- ipad/opad are the key padded to SHA-256's 64-byte block and XORed with 0x36 / 0x5c (RFC 2104).
CREATE TABLE IF NOT EXISTS public.rc_notify_key (
    one  boolean PRIMARY KEY DEFAULT true CHECK (one),
    key  bytea NOT NULL CHECK (octet_length(key) = 32),
    ipad bytea NOT NULL,
    opad bytea NOT NULL
);
REVOKE ALL ON public.rc_notify_key FROM PUBLIC;

DO $$
DECLARE
    k bytea;
    i bytea := '\x'::bytea;
    o bytea := '\x'::bytea;
    b integer;
BEGIN
    IF EXISTS (SELECT 1 FROM public.rc_notify_key) THEN
        RETURN;
    END IF;
    -- gen_random_uuid() draws from the server's strong random source (PostgreSQL 13+); two give
    -- 32 bytes, 244 of their bits random.
    k := decode(replace(gen_random_uuid()::text || gen_random_uuid()::text, '-', ''), 'hex');
    FOR n IN 0 .. 63 LOOP
        b := CASE WHEN n < 32 THEN get_byte(k, n) ELSE 0 END;
        i := i || set_byte('\x00'::bytea, 0, b # 54);
        o := o || set_byte('\x00'::bytea, 0, b # 92);
    END LOOP;
    INSERT INTO public.rc_notify_key (key, ipad, opad) VALUES (k, i, o);
END
$$;

-- Refuses a session whose login role may not write the breaker table. The transition functions
-- below run as the owner, so they check this themselves.
CREATE OR REPLACE FUNCTION public.rc_require_write() RETURNS void
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF NOT has_table_privilege(session_user, 'public.rc_circuit_breakers', 'UPDATE') THEN
        RAISE EXCEPTION 'role % may not change circuit breakers: it needs UPDATE on public.rc_circuit_breakers', session_user
            USING ERRCODE = 'insufficient_privilege',
                  HINT = 'grant it with: resilient-circuit setup --grant-to ROLE';
    END IF;
END
$$;

-- The notification key, for a session allowed to write the table.
CREATE OR REPLACE FUNCTION public.rc_notify_key() RETURNS bytea
LANGUAGE plpgsql STABLE SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    PERFORM public.rc_require_write();
    RETURN (SELECT key FROM public.rc_notify_key);
END
$$;

-- Largest cooldown or lease the functions accept, in milliseconds (ten years of 365 days); the
-- crate refuses longer ones at build time with the same bound.
CREATE OR REPLACE FUNCTION public.rc_max_ms() RETURNS bigint
LANGUAGE sql IMMUTABLE AS $$ SELECT 315360000000::bigint $$;

-- What is wrong with a key argument, or NULL: varchar(255) would silently cut trailing spaces,
-- and a function would then answer for a different key than it wrote.
CREATE OR REPLACE FUNCTION public.rc_key_error(p_ns text, p_key text) RETURNS text
LANGUAGE sql IMMUTABLE AS $$
    SELECT CASE
        WHEN p_key IS NULL OR p_key = '' OR char_length(p_key) > 255 THEN
            'circuit breaker key must have 1 to 255 characters, got '
            || coalesce(char_length(p_key)::text, 'NULL')
        WHEN p_ns IS NULL OR p_ns = '' OR char_length(p_ns) > 255 THEN
            'namespace must have 1 to 255 characters, got '
            || coalesce(char_length(p_ns)::text, 'NULL')
    END
$$;

-- A key argument, or that error.
CREATE OR REPLACE FUNCTION public.rc_check_key(p_ns text, p_key text) RETURNS void
LANGUAGE plpgsql IMMUTABLE AS $$
DECLARE
    err text := public.rc_key_error(p_ns, p_key);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;

-- A duration argument in milliseconds, clamped to [0, rc_max_ms()]; NULL is an error.
CREATE OR REPLACE FUNCTION public.rc_check_ms(p_ms bigint, p_what text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE AS $$
BEGIN
    IF p_ms IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', p_what USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN LEAST(GREATEST(p_ms, 0), public.rc_max_ms());
END
$$;

-- Before every write of a row: the version, the round, and the leases of a round that ended.
CREATE OR REPLACE FUNCTION public.rc_bump_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        DELETE FROM public.rc_probe_leases
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
        RETURN OLD;
    END IF;
    IF TG_OP = 'INSERT' THEN
        -- Wait for a transaction deleting this key (if any) to end, so that our version is
        -- taken after its and the two commit in version order. Locks nothing if no row exists.
        PERFORM 1 FROM public.rc_circuit_breakers
            WHERE namespace = NEW.namespace AND resource_key = NEW.resource_key FOR KEY SHARE;
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
        NEW.probe_successes := 0;
        NEW.probe_failures := 0;
        IF NEW.state = 'HALF_OPEN' THEN
            NEW.round_id := NEW.version;
        ELSE
            NEW.round_id := NULL;
            NEW.round_probes := NULL;
            NEW.round_close_at := NULL;
        END IF;
        RETURN NEW;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state
       OR NEW.open_until IS DISTINCT FROM OLD.open_until
       OR NEW.resource_key IS DISTINCT FROM OLD.resource_key
       OR NEW.namespace IS DISTINCT FROM OLD.namespace THEN
        -- Under the row lock: versions of one key follow commit order.
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
    ELSE
        NEW.version := OLD.version;
    END IF;
    IF NEW.state IS DISTINCT FROM OLD.state
       OR NEW.resource_key IS DISTINCT FROM OLD.resource_key
       OR NEW.namespace IS DISTINCT FROM OLD.namespace THEN
        -- A new state, whoever wrote it, ends the half-open round and its leases.
        NEW.probe_successes := 0;
        NEW.probe_failures := 0;
        IF NEW.state = 'HALF_OPEN' THEN
            NEW.round_id := NEW.version;
            -- A size set in this same statement (rc_acquire_probe) is kept; else the first
            -- instance that asks for a probe sets it.
            IF NEW.round_probes IS NOT DISTINCT FROM OLD.round_probes THEN
                NEW.round_probes := NULL;
                NEW.round_close_at := NULL;
            END IF;
        ELSE
            NEW.round_id := NULL;
            NEW.round_probes := NULL;
            NEW.round_close_at := NULL;
        END IF;
        DELETE FROM public.rc_probe_leases
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
    END IF;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rc_bump_version ON public.rc_circuit_breakers;
CREATE TRIGGER rc_bump_version
    BEFORE INSERT OR UPDATE OR DELETE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_bump_version();

-- The payload, version 2:
--   {"v":2,"op":"row","ns","key","state","version","remaining_ms","mac"}   one row changed
--   {"v":2,"op":"reset","ns":"","key":"","state":"CLOSED","version",...}    TRUNCATE: reload all
-- mac = HMAC-SHA256(key, "2|op|len(ns):ns|len(key):key|state|version|remaining_ms") in hex,
-- lengths in bytes, so that no two payloads share a MAC input. Only the owner may call it (the
-- triggers below run as the owner); it is neither SECURITY DEFINER nor has a SET clause, because
-- either makes each call several times slower and it runs once per changed row (about 10 µs
-- with the MAC, measured on a 2-core VM; the MAC is computed once per change, whatever the
-- number of listening instances).
CREATE OR REPLACE FUNCTION public.rc_notify_payload(
    p_op text, p_ns text, p_key text, p_state text, p_version bigint, p_remaining bigint)
RETURNS text
LANGUAGE plpgsql STABLE AS $$
DECLARE
    k public.rc_notify_key%ROWTYPE;
BEGIN
    SELECT * INTO k FROM public.rc_notify_key;
    RETURN pg_catalog.json_build_object(
        'v', 2, 'op', p_op, 'ns', p_ns, 'key', p_key, 'state', p_state,
        'version', p_version, 'remaining_ms', p_remaining,
        'mac', pg_catalog.encode(pg_catalog.sha256(k.opad || pg_catalog.sha256(k.ipad
            || pg_catalog.convert_to(pg_catalog.concat_ws('|', '2', p_op,
                   pg_catalog.octet_length(p_ns) || ':' || p_ns,
                   pg_catalog.octet_length(p_key) || ':' || p_key,
                   p_state, p_version::text, p_remaining::text), 'UTF8'))), 'hex'))::text;
END
$$;
REVOKE ALL ON FUNCTION public.rc_notify_payload(text, text, text, text, bigint, bigint) FROM PUBLIC;

-- After a row changed, at commit (deferred): announce it. A deleted row is CLOSED with a fresh
-- version, taken while the deletion still holds the row.
CREATE OR REPLACE FUNCTION public.rc_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'DELETE' THEN
        PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
            OLD.namespace, OLD.resource_key, 'CLOSED',
            nextval('public.rc_circuit_breakers_version_seq'), 0));
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.resource_key IS DISTINCT FROM OLD.resource_key
                             OR NEW.namespace IS DISTINCT FROM OLD.namespace) THEN
        -- A renamed row: the old key has no row any more.
        PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
            OLD.namespace, OLD.resource_key, 'CLOSED', NEW.version, 0));
    END IF;
    PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
        NEW.namespace, NEW.resource_key, NEW.state, NEW.version,
        public.rc_remaining_ms(NEW.open_until)));
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.rc_notify_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    DELETE FROM public.rc_probe_leases;
    PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('reset', '', '', 'CLOSED',
        nextval('public.rc_circuit_breakers_version_seq'), 0));
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rc_notify_insert ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_update ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_delete ON public.rc_circuit_breakers;
CREATE CONSTRAINT TRIGGER rc_notify_insert
    AFTER INSERT ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_notify_change();
CREATE CONSTRAINT TRIGGER rc_notify_update
    AFTER UPDATE ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION public.rc_notify_change();
CREATE CONSTRAINT TRIGGER rc_notify_delete
    AFTER DELETE ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_notify_change();
DROP TRIGGER IF EXISTS rc_notify_truncate ON public.rc_circuit_breakers;
CREATE TRIGGER rc_notify_truncate
    AFTER TRUNCATE ON public.rc_circuit_breakers
    FOR EACH STATEMENT EXECUTE FUNCTION public.rc_notify_truncate();

-- The functions change their result (o_retry_ms, o_error): drop the old set, then define it anew.
DROP FUNCTION IF EXISTS public.rc_trip_many(text, text[], bigint[], integer[], jsonb[]);
DROP FUNCTION IF EXISTS public.rc_force_many(text, text[], text[], bigint[]);
DROP FUNCTION IF EXISTS public.rc_trip(text, text, bigint, integer, jsonb);
DROP FUNCTION IF EXISTS public.rc_acquire_probe(text, text, text, bigint, integer);
DROP FUNCTION IF EXISTS public.rc_report_probe(text, text, bigint, boolean, integer, integer, bigint);
DROP FUNCTION IF EXISTS public.rc_force(text, text, text, bigint);
DROP FUNCTION IF EXISTS public.rc_view(text, text, bigint);

-- The current row of one key as the functions return it; a missing row is CLOSED at version 0.
-- o_retry_ms: when no lease was granted in a half-open round, how long until the first live
-- lease expires (ask again then, or on a NOTIFY); NULL otherwise.
CREATE FUNCTION public.rc_view(p_ns text, p_key text, p_lease bigint DEFAULT NULL,
                               p_retry_ms bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE sql STABLE AS $$
    SELECT coalesce(b.state, 'CLOSED'), coalesce(b.version, 0),
           coalesce(public.rc_remaining_ms(b.open_until), 0), p_lease, p_retry_ms
    FROM (SELECT 1) AS one
    LEFT JOIN public.rc_circuit_breakers b ON b.namespace = p_ns AND b.resource_key = p_key
$$;

-- CLOSED -> OPEN, decided by an instance's own window. Left alone: a key already OPEN or
-- HALF_OPEN (someone tripped first, or a round is on), and a row changed after the decision:
-- p_basis is the newest version the instance had seen when it decided, and a row with a newer
-- version (an operator's close, say) is a later decision that wins. NULL p_basis: no such check.
CREATE FUNCTION public.rc_trip(
    p_ns text, p_key text, p_cooldown_ms bigint, p_failures integer, p_log jsonb,
    p_basis bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    ms bigint;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    INSERT INTO public.rc_circuit_breakers AS b
        (resource_key, namespace, state, failure_count, open_until, execution_log)
    VALUES (p_key, p_ns, 'OPEN', coalesce(p_failures, 0),
            clock_timestamp() + ms * interval '1 millisecond', p_log)
    ON CONFLICT (resource_key, namespace) DO UPDATE
        SET state = 'OPEN', failure_count = EXCLUDED.failure_count,
            open_until = EXCLUDED.open_until, execution_log = EXCLUDED.execution_log
        WHERE b.state NOT IN ('OPEN', 'HALF_OPEN')
          AND (p_basis IS NULL OR b.version <= p_basis);
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;

-- Asks for one probe permit. OPEN with its cooldown over (database clock) becomes HALF_OPEN and a
-- new round starts. The round's size is fixed by whoever starts it (or, for a round begun by a
-- plain write, by the first to ask): results in plus live leases of the round never exceed it,
-- whatever later callers ask for.
CREATE FUNCTION public.rc_acquire_probe(
    p_ns text, p_key text, p_holder text, p_lease_ms bigint, p_probes integer,
    p_close_at integer DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    live integer;
    granted bigint;
    retry bigint;
    ms bigint;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_lease_ms, 'lease time');
    IF p_probes IS NULL OR p_probes <= 0 THEN
        RAISE EXCEPTION 'probe count must be at least 1, got %', coalesce(p_probes::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    IF r.state = 'OPEN' AND (r.open_until IS NULL OR r.open_until <= clock_timestamp()) THEN
        UPDATE public.rc_circuit_breakers
            SET state = 'HALF_OPEN', round_probes = p_probes,
                round_close_at = LEAST(GREATEST(coalesce(p_close_at, p_probes), 1), p_probes)
            WHERE namespace = p_ns AND resource_key = p_key
            RETURNING * INTO r;
    ELSIF r.state = 'HALF_OPEN' AND r.round_probes IS NULL THEN
        -- A round begun by a plain write (the ancestor, an operator): size it now.
        UPDATE public.rc_circuit_breakers
            SET round_probes = p_probes,
                round_close_at = LEAST(GREATEST(coalesce(p_close_at, p_probes), 1), p_probes),
                round_id = coalesce(round_id, version)
            WHERE namespace = p_ns AND resource_key = p_key
            RETURNING * INTO r;
    END IF;
    IF r.state = 'HALF_OPEN' THEN
        DELETE FROM public.rc_probe_leases
            WHERE namespace = p_ns AND resource_key = p_key
              AND (expires_at <= clock_timestamp() OR round_id IS DISTINCT FROM r.round_id);
        SELECT count(*) INTO live FROM public.rc_probe_leases
            WHERE namespace = p_ns AND resource_key = p_key;
        IF live + r.probe_successes + r.probe_failures < r.round_probes THEN
            INSERT INTO public.rc_probe_leases (namespace, resource_key, holder, expires_at, round_id)
                VALUES (p_ns, p_key, coalesce(p_holder, session_user::text),
                        clock_timestamp() + ms * interval '1 millisecond', r.round_id)
                RETURNING lease_id INTO granted;
        ELSE
            SELECT GREATEST(1, ceil(extract(epoch FROM (min(expires_at) - clock_timestamp())) * 1000))::bigint
                INTO retry
                FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
        END IF;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key, granted, retry);
END
$$;

-- A probe's result. Counts only with a live lease of the current round; once the round's
-- results are in, closes when at least round_close_at succeeded, else opens again for
-- p_cooldown_ms. p_probes and p_close_at only size a round that has no size yet.
CREATE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    counted boolean;
    probes integer;
    close_at integer;
    ms bigint;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    IF p_success IS NULL THEN
        RAISE EXCEPTION 'probe result must not be NULL' USING ERRCODE = 'null_value_not_allowed';
    END IF;
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF NOT FOUND OR r.state IS DISTINCT FROM 'HALF_OPEN' THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    DELETE FROM public.rc_probe_leases
        WHERE lease_id = p_lease AND namespace = p_ns AND resource_key = p_key
          AND round_id IS NOT DISTINCT FROM r.round_id;
    counted := FOUND;
    IF NOT counted THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    probes := coalesce(r.round_probes, GREATEST(p_probes, 1));
    close_at := coalesce(r.round_close_at, LEAST(GREATEST(p_close_at, 1), probes));
    IF p_success THEN
        r.probe_successes := r.probe_successes + 1;
    ELSE
        r.probe_failures := r.probe_failures + 1;
    END IF;
    IF r.probe_successes + r.probe_failures < probes THEN
        UPDATE public.rc_circuit_breakers
            SET probe_successes = r.probe_successes, probe_failures = r.probe_failures
            WHERE namespace = p_ns AND resource_key = p_key;
    ELSIF r.probe_successes >= close_at THEN
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]'
            WHERE namespace = p_ns AND resource_key = p_key;
    ELSE
        UPDATE public.rc_circuit_breakers
            SET state = 'OPEN', open_until = clock_timestamp() + ms * interval '1 millisecond'
            WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;

-- A manual override: OPEN for p_cooldown_ms, or CLOSED with an empty window. Ends any round.
CREATE FUNCTION public.rc_force(p_ns text, p_key text, p_state text, p_cooldown_ms bigint)
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

-- rc_trip for each key, in the order given (callers sort them, so two instances batching
-- overlapping keys lock rows in the same order). A key with bad arguments gets its error in o_error
-- and the others go on: one bad element does not roll back the batch. The arguments are checked
-- here rather than by catching rc_trip's exceptions: an exception block is a subtransaction per
-- key, which costs a quarter of the transitions per second.
CREATE FUNCTION public.rc_trip_many(
    p_ns text, p_keys text[], p_cooldown_ms bigint[], p_failures integer[], p_logs jsonb[],
    p_basis bigint[] DEFAULT NULL)
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    err text;
BEGIN
    PERFORM public.rc_require_write();
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := coalesce(public.rc_key_error(p_ns, p_keys[i]),
                        CASE WHEN p_cooldown_ms[i] IS NULL THEN 'cooldown must not be NULL' END);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT p_keys[i], NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, err;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT p_keys[i], t.*, NULL::text
            FROM public.rc_trip(p_ns, p_keys[i], p_cooldown_ms[i], p_failures[i], p_logs[i],
                                p_basis[i]) AS t;
    END LOOP;
END
$$;

-- rc_force for each key, in order; per-key errors as in rc_trip_many.
CREATE FUNCTION public.rc_force_many(
    p_ns text, p_keys text[], p_states text[], p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    err text;
BEGIN
    PERFORM public.rc_require_write();
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := coalesce(public.rc_key_error(p_ns, p_keys[i]),
                        CASE WHEN p_states[i] IS NULL OR p_states[i] NOT IN ('OPEN', 'CLOSED')
                             THEN 'rc_force: state must be OPEN or CLOSED, not '
                                  || coalesce(p_states[i], 'NULL') END,
                        CASE WHEN p_states[i] = 'OPEN' AND p_cooldown_ms[i] IS NULL
                             THEN 'cooldown must not be NULL' END);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT p_keys[i], NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, err;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT p_keys[i], t.*, NULL::text
            FROM public.rc_force(p_ns, p_keys[i], p_states[i], p_cooldown_ms[i]) AS t;
    END LOOP;
END
$$;

-- Rounds already on when this migration runs get an identity; their leases belong to them.
UPDATE public.rc_circuit_breakers SET round_id = version
    WHERE state = 'HALF_OPEN' AND round_id IS NULL;
UPDATE public.rc_probe_leases l SET round_id = b.round_id
    FROM public.rc_circuit_breakers b
    WHERE l.round_id IS NULL AND b.namespace = l.namespace AND b.resource_key = l.resource_key;
