-- A probe's result. It counts only with a live lease of the current round. The round ends:
-- * closed, once its results are in and at least round_close_at succeeded (the reopen count
--   goes to 0);
-- * reopened, as soon as closing has become impossible (more failures than the round can
--   spare), for rc_grown_cooldown_ms(cooldown, p_max_cooldown_ms, reopens + 1), counting the
--   reopen. The cooldown is the key's live configuration's when it has one, else
--   p_cooldown_ms; p_max_cooldown_ms NULL is a fixed cooldown (no growth). A maximum shorter
--   than the cooldown is refused: the caller's settings are wrong, and silently using either
--   would hide it.
-- p_probes and p_close_at size a round that has no size yet (begun by a plain write), bounded
-- as in rc_acquire_probe. The change log says how the round went (rc_explain).
CREATE OR REPLACE FUNCTION public.rc_report_probe(
    p_ns text, p_key text, p_lease bigint, p_success boolean,
    p_probes integer, p_close_at integer, p_cooldown_ms bigint, p_max_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    probes integer;
    close_at integer;
    ms bigint;
    max_ms bigint;
    n integer;
    rest bigint;
    round jsonb;
BEGIN
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
    IF p_probes IS NULL OR p_probes < 1 OR p_probes > 8192 THEN
        RAISE EXCEPTION 'probe count must be 1 to 8192, got %', coalesce(p_probes::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
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
    IF NOT FOUND THEN
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    probes := coalesce(r.round_probes, p_probes);
    close_at := coalesce(r.round_close_at, LEAST(GREATEST(p_close_at, 1), probes));
    IF p_success THEN
        r.probe_successes := r.probe_successes + 1;
    ELSE
        r.probe_failures := r.probe_failures + 1;
    END IF;
    IF r.probe_successes + r.probe_failures < probes
       AND r.probe_failures <= probes - close_at THEN
        -- The round goes on: closing is still possible and results are missing.
        UPDATE public.rc_circuit_breakers
            SET probe_successes = r.probe_successes, probe_failures = r.probe_failures
            WHERE namespace = p_ns AND resource_key = p_key;
        RETURN QUERY SELECT * FROM public.rc_view(p_ns, p_key);
        RETURN;
    END IF;
    round := jsonb_build_object('successes', r.probe_successes, 'failures', r.probe_failures,
                                'needed', close_at, 'probes', probes);
    IF r.probe_successes >= close_at THEN
        PERFORM public.rc_explain(p_key, jsonb_build_object('probes', round));
        UPDATE public.rc_circuit_breakers
            SET state = 'CLOSED', failure_count = 0, open_until = NULL, execution_log = '[]'
            WHERE namespace = p_ns AND resource_key = p_key;
    ELSE
        ms := coalesce((SELECT c.cooldown_ms FROM public.rc_breaker_config c
                        WHERE c.namespace = p_ns AND c.resource_key = p_key), ms);
        IF max_ms IS NOT NULL THEN
            max_ms := GREATEST(max_ms, ms);
        END IF;
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
REVOKE ALL ON FUNCTION public.rc_report_probe(text, text, bigint, boolean, integer, integer, bigint,
                                              bigint) FROM PUBLIC;
