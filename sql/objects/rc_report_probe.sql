-- A probe's result, as 0006's rc_report_probe, with growing cooldowns: a round that fails
-- opens the row again for rc_grown_cooldown_ms(p_cooldown_ms, p_max_cooldown_ms, reopens + 1)
-- and counts the reopen; a round that closes resets the count. p_max_cooldown_ms NULL: a fixed
-- cooldown (growth off). A maximum shorter than the cooldown is refused: the caller's settings
-- are wrong, and silently using either would hide it.
CREATE OR REPLACE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint, p_max_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    counted boolean;
    probes integer;
    close_at integer;
    ms bigint;
    max_ms bigint;
    n integer;
    rest bigint;
    round jsonb;
BEGIN
    PERFORM public.rc_require_write();
    PERFORM public.rc_check_key(p_ns, p_key);
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    IF p_max_cooldown_ms IS NOT NULL THEN
        IF p_max_cooldown_ms < ms THEN
            RAISE EXCEPTION 'max cooldown of % ms is shorter than the cooldown of % ms: a growing cooldown starts at the cooldown and grows up to the max, so the max must be at least as long (NULL: no growth)',
                p_max_cooldown_ms, ms
                USING ERRCODE = 'invalid_parameter_value';
        END IF;
        max_ms := public.rc_check_ms(p_max_cooldown_ms, 'max cooldown');
    END IF;
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
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    -- The round is over: the change log says how it went (0010's rc_explain).
    round := jsonb_build_object('successes', r.probe_successes, 'failures', r.probe_failures,
                                'needed', close_at, 'probes', probes);
    IF r.probe_successes >= close_at THEN
        PERFORM public.rc_explain(p_key, jsonb_build_object('probes', round));
        -- reopens is reset by rc_reset_reopens; said here too for the reader.
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]',
                reopens = 0
            WHERE namespace = p_ns AND resource_key = p_key;
    ELSE
        -- A row written by hand may hold a negative count; the count stops short of overflow.
        n := LEAST(GREATEST(r.reopens, 0), 2147483646) + 1;
        rest := public.rc_grown_cooldown_ms(ms, max_ms, n);
        PERFORM public.rc_explain(p_key, jsonb_build_object(
            'probes', round, 'reopens', n, 'cooldown_ms', rest));
        UPDATE public.rc_circuit_breakers
            SET state = 'OPEN', reopens = n,
                open_until = clock_timestamp() + rest * interval '1 millisecond'
            WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
END
$$;

-- 0006's signature, kept for instances of the previous version during a rolling upgrade: the
-- same report with no maximum, so their failed rounds rest the fixed cooldown they ask for while
-- the row's count stays right for the upgraded instances.
CREATE OR REPLACE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    RETURN QUERY SELECT * FROM public.rc_report_probe(p_ns, p_key, p_lease, p_success, p_probes,
                                                      p_close_at, p_cooldown_ms, NULL::bigint);
END
$$;
