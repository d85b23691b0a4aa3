-- Deletes what has outlived its use, by time, at most once a minute whoever calls (the first
-- caller after the minute takes the settings row; the others skip it rather than wait): the
-- change log past its retention, expired votes, rate reports and probe leases (of keys never
-- heard of again too), judgements untouched for an hour and over, and the key locks of keys
-- without a row. Called by rc_announce (every
-- change) and by the judging functions.
CREATE OR REPLACE FUNCTION public.rc_prune() RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    retention interval;
BEGIN
    SELECT s.retention INTO retention FROM public.rc_change_log_settings s
        WHERE s.pruned_at < clock_timestamp() - interval '1 minute'
        FOR UPDATE SKIP LOCKED;
    IF NOT FOUND THEN
        RETURN;
    END IF;
    UPDATE public.rc_change_log_settings SET pruned_at = clock_timestamp();
    DELETE FROM public.rc_changes WHERE at < clock_timestamp() - retention;
    DELETE FROM public.rc_votes WHERE expires_at <= clock_timestamp();
    DELETE FROM public.rc_rate_reports WHERE expires_at <= clock_timestamp();
    DELETE FROM public.rc_probe_leases WHERE expires_at <= clock_timestamp() - interval '1 minute';
    DELETE FROM public.rc_judgements
        WHERE touched_at < clock_timestamp() - interval '1 hour'
          AND (judged_until IS NULL OR judged_until < clock_timestamp());
    -- The key locks of keys without a row, but none a transaction holds (it may be inserting).
    DELETE FROM public.rc_key_locks WHERE (namespace, resource_key) IN (
        SELECT l.namespace, l.resource_key FROM public.rc_key_locks l
        WHERE NOT EXISTS (SELECT 1 FROM public.rc_circuit_breakers b
                          WHERE b.namespace = l.namespace AND b.resource_key = l.resource_key)
        FOR UPDATE SKIP LOCKED);
END
$$;
REVOKE ALL ON FUNCTION public.rc_prune() FROM PUBLIC;
