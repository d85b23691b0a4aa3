-- 0009's rc_log_change, now also merging what rc_explain said about the key. An empty window (a
-- trip decided by votes) and a failure count of 0 (an override, a round that reopened) are left
-- out rather than shown as if they were why.
CREATE OR REPLACE FUNCTION public.rc_log_change(
    p_ns text, p_key text, p_from text, p_state text, p_version bigint, p_open_until timestamptz,
    p_reset boolean)
RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    failures integer;
    window_log jsonb;
    held text := pg_catalog.current_setting('resilient_circuit.why', true);
    explained jsonb;
BEGIN
    IF p_state = 'OPEN' THEN
        SELECT failure_count, execution_log INTO failures, window_log
            FROM public.rc_circuit_breakers WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    IF held IS NOT NULL AND held <> '' THEN
        BEGIN
            explained := held::jsonb -> p_key;
        EXCEPTION WHEN others THEN
            explained := NULL; -- set by hand to something else: no explanation, still a log row
        END;
        IF pg_catalog.jsonb_typeof(explained) IS DISTINCT FROM 'object' THEN
            explained := NULL;
        END IF;
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
                'failures', NULLIF(failures, 0),
                'window', NULLIF(window_log, '[]'::jsonb)))
                || coalesce(explained, '{}'::jsonb), '{}'::jsonb));
    IF p_version % 256 = 0 THEN
        DELETE FROM public.rc_changes
            WHERE at < pg_catalog.clock_timestamp()
                       - (SELECT retention FROM public.rc_change_log_settings);
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.rc_log_change(text, text, text, text, bigint, timestamptz, boolean)
    FROM PUBLIC;
