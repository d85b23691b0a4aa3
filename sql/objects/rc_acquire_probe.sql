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
