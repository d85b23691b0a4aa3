-- 0010: the change log says who made each change and why, so that `resilient-circuit history`
-- can answer "why did this breaker open, and who closed it?" (issue "fleet": audit trail).
--
-- actor: the writing session as the server knows it: application_name, login role, client
--   address, backend pid, and the instance id (host:pid:start) an instance of this crate sets in
--   `resilient_circuit.instance` on its pooled sessions (not through a transaction pooler, where
--   a session setting would leak to other clients). A Python service or psql shows as what it
--   is, by its application_name and address.
-- why: for a change to OPEN, the row's failure_count and execution_log (the window that tripped,
--   as this crate and the Python ancestor both write it); and the note a session set in
--   `resilient_circuit.note` for its transaction (`resilient-circuit open|close|delete --note`).
--
-- Both are read at commit, in the deferred trigger, from the session and the row: nothing the
-- writer sends changes, so Python services and older instances are recorded too.

ALTER TABLE public.rc_changes
    ADD COLUMN IF NOT EXISTS actor jsonb NULL,
    ADD COLUMN IF NOT EXISTS why jsonb NULL;

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
