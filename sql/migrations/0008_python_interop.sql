-- 0008: a half-open round begun by an instance starts the way the Python ancestor starts one:
-- failure_count 0, open_until NULL and an empty execution_log.
--
-- The ancestor (resilient-circuit 0.8.x) reads execution_log back as the window of the state it
-- adopts. When it moves a row OPEN -> HALF_OPEN itself it writes '[]', so its peers probe from an
-- empty window. rc_acquire_probe moved the row without touching the column, so a Python process
-- that adopted a HALF_OPEN begun by this crate probed from the trip's own failures: with a probe
-- window of three (success_limit=Fraction(2, 3)) after a trip on three failures, its first
-- successful probe made the window two failures of three and it reopened the breaker for the whole
-- fleet (tests/it/python.rs: recovery_crosses_between_python_and_rust). This crate reads neither
-- failure_count nor execution_log. open_until NULL is what the ancestor writes for HALF_OPEN too; it reads as 0 ms
-- left, as the past cooldown end did, and the ancestor's first probe write no longer changes it
-- (a new version and a notification for nothing). Only that UPDATE changes; the rest is 0006's
-- definition.

CREATE OR REPLACE FUNCTION public.rc_acquire_probe(
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
                round_close_at = LEAST(GREATEST(coalesce(p_close_at, p_probes), 1), p_probes),
                failure_count = 0, open_until = NULL, execution_log = '[]'
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
