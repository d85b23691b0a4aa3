-- 0009: a change log, so that an instance can follow the table without LISTEN (issue "scale").
--
-- LISTEN needs a session of its own on the primary: it is refused on a streaming replica, heard
-- by no one through pgbouncer in transaction mode, and one per instance is what limits a fleet
-- on one primary. A follower instead asks every interval for the changes it has not seen yet.
--
-- "Since the last version seen" would be wrong: versions are taken when a row is written and
-- commits come later, so a row written before another and committed after it (its version is
-- lower) would be skipped forever. What the follower keeps instead is the snapshot of its last
-- poll (`pg_current_snapshot()`, which works on a replica too). A change it has not seen is
-- exactly a change whose transaction was not yet finished in that snapshot: its transaction id
-- is at or above the snapshot's xmax, or in its list of transactions in progress. Everything
-- older was finished then, so it was visible to that poll if it committed at all.
--
-- The deferred trigger that sends each NOTIFY (0006) writes the change here too, at commit, with
-- the writer's top-level transaction id: the log holds every change of state or cooldown,
-- whoever made it (this crate, a Python service, an operator in psql), deletions as CLOSED with
-- a fresh version, and TRUNCATE as a reset that asks followers to reload everything.
--
-- Each change also says who made it and why, so that `resilient-circuit history` can answer
-- "why did this breaker open, and who closed it?":
-- actor: the writing session as the server knows it: application_name, login role, client
--   address, backend pid, and the instance id (host:pid:start) an instance of this crate sets in
--   `resilient_circuit.instance` on its pooled sessions (self-reported; not through a
--   transaction pooler, where a session setting would leak to other clients). A Python service
--   or psql shows as what it is, by its application_name and address.
-- why: for a change to OPEN, the row's failure_count and execution_log (the window that tripped,
--   as this crate and the Python ancestor both write it); and the note a session set in
--   `resilient_circuit.note` for its transaction (`resilient-circuit open|close|delete --note`).
-- Both are read at commit, in the deferred trigger, from the session and the row: nothing the
-- writer sends changes, so Python services and older instances are recorded too.

CREATE TABLE IF NOT EXISTS public.rc_changes (
    txid          bigint       NOT NULL,
    version       bigint       NOT NULL,
    namespace     varchar(255) NOT NULL,
    resource_key  varchar(255) NOT NULL,
    from_state    varchar(50)  NULL,
    state         varchar(50)  NOT NULL,
    open_until    timestamptz  NULL,
    reset         boolean      NOT NULL DEFAULT false,
    at            timestamptz  NOT NULL DEFAULT clock_timestamp(),
    actor         jsonb        NULL,
    why           jsonb        NULL
);
-- The poll reads by transaction id; the pruning by time.
CREATE INDEX IF NOT EXISTS rc_changes_txid ON public.rc_changes (txid);
CREATE INDEX IF NOT EXISTS rc_changes_at ON public.rc_changes (at);
-- Readable by exactly the roles that may read the breaker table (row security; the trigger
-- writes as the owner, which the policy does not bind). A plain grant plus a policy, rather than
-- a SECURITY DEFINER reader, spares every poll the definer's save and restore of its settings:
-- polls are what a large polling fleet sends all day.
REVOKE ALL ON public.rc_changes FROM PUBLIC;
GRANT SELECT ON public.rc_changes TO PUBLIC;
ALTER TABLE public.rc_changes ENABLE ROW LEVEL SECURITY;
DROP POLICY IF EXISTS rc_changes_readers ON public.rc_changes;
CREATE POLICY rc_changes_readers ON public.rc_changes FOR SELECT
    USING (pg_catalog.has_table_privilege('public.rc_circuit_breakers', 'SELECT'));

-- How long the log keeps a change. A follower that has not polled for longer reloads everything
-- (it reloads after any failed poll anyway), so this only has to be far longer than a poll
-- interval. Change it with UPDATE public.rc_change_log_settings SET retention = '6 hours'.
CREATE TABLE IF NOT EXISTS public.rc_change_log_settings (
    one       boolean  PRIMARY KEY DEFAULT true CHECK (one),
    retention interval NOT NULL DEFAULT interval '1 hour'
              CHECK (retention >= interval '10 minutes')
);
INSERT INTO public.rc_change_log_settings DEFAULT VALUES ON CONFLICT DO NOTHING;
REVOKE ALL ON public.rc_change_log_settings FROM PUBLIC;
GRANT SELECT ON public.rc_change_log_settings TO PUBLIC;

-- Appends one change, with its actor and why (see the top). Every 256th version it also drops
-- the changes older than the retention: amortized, the pruning costs one indexed range delete
-- per 256 transitions.
CREATE OR REPLACE FUNCTION public.rc_log_change(
    p_ns text, p_key text, p_from text, p_state text, p_version bigint, p_open_until timestamptz,
    p_reset boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    failures integer;
    window_log jsonb;
BEGIN
    IF p_state = 'OPEN' THEN
        SELECT failure_count, execution_log INTO failures, window_log
            FROM public.rc_circuit_breakers WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    INSERT INTO public.rc_changes
        (txid, version, namespace, resource_key, from_state, state, open_until, reset, actor, why)
    VALUES (pg_catalog.pg_current_xact_id()::text::bigint, p_version, p_ns, p_key, p_from,
            p_state, p_open_until, p_reset,
            pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                'application', NULLIF(pg_catalog.current_setting('application_name'), ''),
                'user', session_user::text,
                'client', pg_catalog.host(pg_catalog.inet_client_addr()),
                'backend_pid', pg_catalog.pg_backend_pid(),
                'instance', NULLIF(
                    pg_catalog.current_setting('resilient_circuit.instance', true), ''))),
            NULLIF(pg_catalog.jsonb_strip_nulls(pg_catalog.jsonb_build_object(
                'note', NULLIF(
                    pg_catalog.current_setting('resilient_circuit.note', true), ''),
                'failures', failures,
                'window', window_log)), '{}'::jsonb));
    IF p_version % 256 = 0 THEN
        DELETE FROM public.rc_changes
            WHERE at < pg_catalog.clock_timestamp()
                       - (SELECT retention FROM public.rc_change_log_settings);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.rc_log_change(text, text, text, text, bigint, timestamptz, boolean)
    FROM PUBLIC;

-- 0006's trigger functions, each now also writing the log (same NOTIFYs as before).
CREATE OR REPLACE FUNCTION public.rc_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v := nextval('public.rc_circuit_breakers_version_seq');
        PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
            OLD.namespace, OLD.resource_key, 'CLOSED', v, 0));
        PERFORM public.rc_log_change(OLD.namespace, OLD.resource_key, OLD.state, 'CLOSED', v,
            NULL, false);
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.resource_key IS DISTINCT FROM OLD.resource_key
                             OR NEW.namespace IS DISTINCT FROM OLD.namespace) THEN
        -- A renamed row: the old key has no row any more.
        PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
            OLD.namespace, OLD.resource_key, 'CLOSED', NEW.version, 0));
        PERFORM public.rc_log_change(OLD.namespace, OLD.resource_key, OLD.state, 'CLOSED',
            NEW.version, NULL, false);
    END IF;
    PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
        NEW.namespace, NEW.resource_key, NEW.state, NEW.version,
        public.rc_remaining_ms(NEW.open_until)));
    PERFORM public.rc_log_change(NEW.namespace, NEW.resource_key,
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state, NEW.version, NEW.open_until,
        false);
    RETURN NULL;
END
$$;

CREATE OR REPLACE FUNCTION public.rc_notify_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v bigint := nextval('public.rc_circuit_breakers_version_seq');
BEGIN
    DELETE FROM public.rc_probe_leases;
    PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('reset', '', '', 'CLOSED',
        v, 0));
    PERFORM public.rc_log_change('', '', NULL, 'CLOSED', v, NULL, true);
    RETURN NULL;
END
$$;

-- The changes of namespace p_ns (and resets) that were not visible to the snapshot p_after, with
-- the snapshot of this poll in every row (one row with NULL change columns when there is none).
-- p_after NULL: no changes, only the snapshot (a follower takes it before its first full load).
-- One statement with no session state: it works through pgbouncer in transaction mode and on a
-- hot standby. STABLE, so the log is read in the very snapshot it returns. PL/pgSQL, so that its
-- query is planned once per session: followers send it as an unnamed statement (pgbouncer cannot
-- keep prepared ones), which would have an inlined SQL function planned on every poll. Measured
-- with pgbench -M extended on PostgreSQL 15 (2 cores, loaded): this form 1.3-1.4 ms a call, the
-- same as SECURITY DEFINER 1.9 ms, as an inlined SQL function 3.2-3.3 ms, `SELECT 1` 0.5-0.8 ms.
CREATE OR REPLACE FUNCTION public.rc_changes_since(p_ns text, p_after text)
RETURNS TABLE (o_snapshot text, o_key text, o_state text, o_version bigint,
               o_remaining_ms bigint, o_reset boolean, o_at_us bigint)
LANGUAGE plpgsql STABLE AS $$
BEGIN
    RETURN QUERY
    WITH s AS (SELECT pg_catalog.pg_current_snapshot()::text AS now_snap,
                      p_after::pg_catalog.pg_snapshot AS prev)
    SELECT s.now_snap, c.resource_key::text, c.state::text, c.version,
           public.rc_remaining_ms(c.open_until), c.reset,
           pg_catalog.floor(pg_catalog.date_part('epoch', c.at) * 1000000)::bigint
    FROM s LEFT JOIN public.rc_changes c
      ON s.prev IS NOT NULL
     AND (c.txid >= pg_catalog.pg_snapshot_xmax(s.prev)::text::bigint
          OR c.txid = ANY (ARRAY(SELECT x::text::bigint
                                 FROM pg_catalog.pg_snapshot_xip(s.prev) AS x)))
     AND (c.namespace = p_ns OR c.reset)
    ORDER BY c.version;
END
$$;
