-- One instance's report for `p_key`: the calls and failures since its previous one. When the
-- reports younger than p_period_ms add up to at least p_min_calls calls and failures / calls >=
-- p_limit_num / p_limit_den, the key opens for p_cooldown_ms, the change log says so (the
-- fleet's counts, the limit, the instances), and the reports are spent.
--
-- Not recorded: a report on a key already OPEN or HALF_OPEN (the fleet stopped calling; its probe
-- round decides now). Counted under the same per-key advisory lock as votes, so that racing
-- reports for a key without a row see each other and open it once.
--
-- Returns the row as afterwards, as the other transition functions do, plus the fleet's counts
-- (o_fleet_failures, o_fleet_calls) with this report (0 when it was not recorded).
CREATE OR REPLACE FUNCTION public.rc_report_rate(
    p_ns text, p_key text, p_instance text, p_failures integer, p_calls integer,
    p_limit_num integer, p_limit_den integer, p_min_calls integer, p_period_ms bigint,
    p_cooldown_ms bigint)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint, o_fleet_failures bigint, o_fleet_calls bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    r public.rc_circuit_breakers%ROWTYPE;
    err text;
    ms bigint;
    fleet_failures bigint := 0;
    fleet_calls bigint := 0;
    reporters integer;
BEGIN
    PERFORM public.rc_require_write();
    err := public.rc_rate_error(p_ns, p_key, p_failures, p_calls, p_limit_num, p_limit_den,
                                p_min_calls, p_period_ms, p_cooldown_ms);
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_instance IS NULL OR p_instance = '' THEN
        RAISE EXCEPTION 'a report needs the reporting instance''s id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    ms := public.rc_check_ms(p_cooldown_ms, 'cooldown');
    PERFORM pg_advisory_xact_lock(hashtextextended('rc_votes|' || p_ns || '|' || p_key, 0));
    SELECT * INTO r FROM public.rc_circuit_breakers
        WHERE namespace = p_ns AND resource_key = p_key FOR UPDATE;
    IF FOUND AND r.state IN ('OPEN', 'HALF_OPEN') THEN
        RETURN QUERY SELECT v.*, 0::bigint, 0::bigint FROM public.rc_view(p_ns, p_key) v;
        RETURN;
    END IF;
    DELETE FROM public.rc_rate_reports
        WHERE namespace = p_ns AND resource_key = p_key
          AND (reported_at <= clock_timestamp() - p_period_ms * interval '1 millisecond'
               OR reported_at < r.updated_at);
    INSERT INTO public.rc_rate_reports
        (namespace, resource_key, instance, reported_at, failures, calls)
        VALUES (p_ns, p_key, p_instance, clock_timestamp(), p_failures, p_calls);
    SELECT coalesce(sum(failures), 0), coalesce(sum(calls), 0), count(DISTINCT instance)
        INTO fleet_failures, fleet_calls, reporters
        FROM public.rc_rate_reports WHERE namespace = p_ns AND resource_key = p_key;
    IF fleet_calls >= p_min_calls AND fleet_failures > 0
       AND fleet_failures * p_limit_den >= p_limit_num::bigint * fleet_calls THEN
        PERFORM public.rc_open_for_fleet(p_ns, p_key, fleet_failures, ms,
            jsonb_build_object('fleet_rate', jsonb_build_object(
                'failures', fleet_failures, 'calls', fleet_calls, 'instances', reporters,
                'limit', p_limit_num || '/' || p_limit_den, 'min_calls', p_min_calls,
                'period_ms', p_period_ms)));
        DELETE FROM public.rc_rate_reports WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    RETURN QUERY SELECT v.*, fleet_failures, fleet_calls FROM public.rc_view(p_ns, p_key) v;
END
$$;
