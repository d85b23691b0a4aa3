-- 0007: notifications say when the change committed, by the database's clock.
--
-- A new field `at_us` (microseconds since the Unix epoch, clock_timestamp() when the deferred
-- trigger runs, i.e. at commit) lets every listener measure how long a change took to reach its
-- snapshot (resilient_circuit_notification_lag_seconds) and stamp the change it streams to the
-- application. The format stays version 2 and the MAC covers the same fields as before, so
-- listeners built before this migration keep verifying and applying every payload during a
-- rolling upgrade (they ignore the field). The timestamp is informational: a replay of a genuine
-- payload with an edited `at_us` carries a version the listener already holds, and is ignored
-- before the timestamp is read.
CREATE OR REPLACE FUNCTION public.rc_notify_payload(
    p_op text, p_ns text, p_key text, p_state text, p_version bigint, p_remaining bigint)
RETURNS text
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    k public.rc_notify_key%ROWTYPE;
BEGIN
    SELECT * INTO k FROM public.rc_notify_key;
    RETURN pg_catalog.json_build_object(
        'v', 2, 'op', p_op, 'ns', p_ns, 'key', p_key, 'state', p_state,
        'version', p_version, 'remaining_ms', p_remaining,
        'at_us', pg_catalog.floor(pg_catalog.date_part('epoch', pg_catalog.clock_timestamp())
                                  * 1000000)::bigint,
        'mac', pg_catalog.encode(pg_catalog.sha256(k.opad || pg_catalog.sha256(k.ipad
            || pg_catalog.convert_to(pg_catalog.concat_ws('|', '2', p_op,
                   pg_catalog.octet_length(p_ns) || ':' || p_ns,
                   pg_catalog.octet_length(p_key) || ':' || p_key,
                   p_state, p_version::text, p_remaining::text), 'UTF8'))), 'hex'))::text;
END
$$;
REVOKE ALL ON FUNCTION public.rc_notify_payload(text, text, text, text, bigint, bigint) FROM PUBLIC;
