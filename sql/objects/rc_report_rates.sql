-- One instance's fleet-rate reports (TripPolicy::FleetRate), one per key, in the order given
-- (callers sort them, so two instances lock keys in the same order): the calls and failures it
-- saw over its last period. Each replaces the reporter's previous report of the key and counts
-- until three of its reporting intervals (p_interval_ms) have passed without a new one, at most
-- the period. When the live reports of a key add up to at least min_calls calls and failures /
-- calls reaches the limit, the key opens for the cooldown and the change log says so (the
-- fleet's counts, the limit, the reporters); the state change spends the reports
-- (rc_bump_version).
--
-- The fleet rate is the whole fleet's: a report at or above the limit puts the key under
-- judgement for a period (rc_judgements.judged_until), and the instances are told (op "judge",
-- when it starts and each time it has grown by half a period), so that every instance holding
-- the key reports at once and then each interval, its healthy calls too, until a period passes
-- with no report at or above the limit. The key does not open before one reporting interval of
-- the judgement has passed: the first report is one instance's, and the fleet's answer to the
-- notice comes within that interval. Until a judgement instances report only their own rate at
-- or above the limit: a fleet whose every instance is under the limit is under it, and sends
-- nothing.
--
-- * p_reporter is the reporting instance's id, one per process and start (a restarted instance
--   counts afresh; its old report expires), 1 to 255 characters.
-- * A report is believed up to what one instance can have seen in a period:
--   rc_change_log_settings.max_report_calls_per_second calls for each of its seconds, and at most
--   as many failures as calls.
-- * The limit, minimum and period are the key's live configuration's when it has a fleet-rate
--   policy; the caller's (bounded as rc_rate_error says) otherwise. A live configuration with
--   another policy, or a mode that never trips, records no report.
-- * Not recorded either: a report on a key already OPEN or HALF_OPEN (its probe round decides
--   now).
-- * Counted under the key's judgement lock (rc_judge_lock), so that racing reports of a key
--   without a row see each other and open it once.
-- * A bad element gets its error in o_error and the others go on; at most 1000 keys a call.
--
-- Outliers (docs::outliers): a reporter whose own rate is far above the rest of the fleet's is
-- an outlier, and its report does not count towards opening the key. The rule, over the live
-- reports of the key, each reporter against the sum of the others':
--   * its own failures / calls is at or above the limit, on at least a tenth of min_calls calls;
--   * the others' calls add up to at least min_calls;
--   * the others' failures / calls is under a quarter of the limit.
-- It is judged again at every report of the key, for every reporter (so a report of a healthy
-- instance already leaves out an outlier that has not reported since). The change log records
-- when a reporter becomes an outlier and when it stops being one (kind "outlier", the key's row
-- as it stays; why: {"outlier": {"instance", "outlier", its counts, the others'}}); a report
-- that expires stops it too.
--
-- Returns each key's row as afterwards, as the other transition functions do, the fleet's
-- counts with this report (0 when it was not recorded; outliers left out), o_judged_ms: how
-- long the key is still under judgement (0: not), and o_outlier: whether the reporter is an
-- outlier of the key.
CREATE OR REPLACE FUNCTION public.rc_report_rates(
    p_ns text, p_reporter text, p_interval_ms bigint, p_keys text[], p_failures bigint[],
    p_calls bigint[], p_limit_num integer[], p_limit_den integer[], p_min_calls integer[],
    p_period_ms bigint[], p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_fleet_failures bigint,
               o_fleet_calls bigint, o_judged_ms bigint, o_error text, o_outlier boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    who text := public.rc_check_text(p_reporter, 'a reporter''s name', 255);
    per_second integer := (SELECT max_report_calls_per_second FROM public.rc_change_log_settings);
    interval_ms bigint;
    err text;
    k text;
    r public.rc_circuit_breakers%ROWTYPE;
    cfg public.rc_breaker_config%ROWTYPE;
    j public.rc_judgements%ROWTYPE;
    num integer;
    den integer;
    min_calls integer;
    period_ms bigint;
    ms bigint;
    n_calls bigint;
    n_failures bigint;
    fleet_failures bigint;
    fleet_calls bigint;
    reporters integer;
    judged_ms bigint;
    o record;
    is_outlier boolean;
    me_outlier boolean;
    -- The outlier records of this key's report, for the change log.
    outliers jsonb[];
BEGIN
    IF coalesce(array_length(p_keys, 1), 0) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 reports a call, got %', array_length(p_keys, 1)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_interval_ms IS NULL OR p_interval_ms < 1 THEN
        RAISE EXCEPTION 'the reporting interval must be at least 1 ms, got %',
            coalesce(p_interval_ms::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    interval_ms := LEAST(p_interval_ms, public.rc_max_ms());
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        k := p_keys[i];
        err := public.rc_rate_error(p_ns, k, p_failures[i], p_calls[i], p_limit_num[i],
                                    p_limit_den[i], p_min_calls[i], p_period_ms[i],
                                    p_cooldown_ms[i]);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT k, NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::bigint, NULL::bigint, err, NULL::boolean;
            CONTINUE;
        END IF;
        num := p_limit_num[i];
        den := p_limit_den[i];
        min_calls := p_min_calls[i];
        period_ms := p_period_ms[i];
        ms := public.rc_check_ms(p_cooldown_ms[i], 'cooldown');
        PERFORM public.rc_judge_lock(p_ns, k);
        SELECT * INTO cfg FROM public.rc_breaker_config
            WHERE namespace = p_ns AND resource_key = k;
        IF FOUND THEN
            IF cfg.mode <> 'normal' OR cfg.trip_policy IN ('any_instance', 'quorum') THEN
                RETURN QUERY SELECT k, v.*, 0::bigint, 0::bigint, 0::bigint, NULL::text, false
                    FROM public.rc_view(p_ns, k) v;
                CONTINUE;
            END IF;
            IF cfg.trip_policy = 'fleet_rate' THEN
                num := cfg.rate_num;
                den := cfg.rate_den;
                min_calls := cfg.rate_min_calls;
                period_ms := cfg.rate_period_ms;
            END IF;
            ms := coalesce(cfg.cooldown_ms, ms);
        END IF;
        SELECT * INTO r FROM public.rc_circuit_breakers
            WHERE namespace = p_ns AND resource_key = k FOR UPDATE;
        IF FOUND AND r.state IN ('OPEN', 'HALF_OPEN') THEN
            RETURN QUERY SELECT k, v.*, 0::bigint, 0::bigint, 0::bigint, NULL::text, false
                FROM public.rc_view(p_ns, k) v;
            CONTINUE;
        END IF;
        n_calls := LEAST(p_calls[i],
                         GREATEST(1, ceil(per_second::double precision * period_ms / 1000))::bigint);
        n_failures := LEAST(p_failures[i], n_calls);
        INSERT INTO public.rc_rate_reports AS q
            (namespace, resource_key, reporter, reported_at, expires_at, failures, calls)
            VALUES (p_ns, k, who, clock_timestamp(),
                    clock_timestamp() + LEAST(period_ms, 3 * interval_ms) * interval '1 millisecond',
                    n_failures, n_calls)
            ON CONFLICT (namespace, resource_key, reporter) DO UPDATE
                SET reported_at = EXCLUDED.reported_at, expires_at = EXCLUDED.expires_at,
                    failures = EXCLUDED.failures, calls = EXCLUDED.calls;
        -- At or above the limit: the fleet is judged for a period from now.
        SELECT * INTO j FROM public.rc_judgements WHERE namespace = p_ns AND resource_key = k;
        IF n_failures > 0 AND n_failures * den >= num::bigint * n_calls THEN
            IF j.judged_until IS NULL OR j.judged_until <= clock_timestamp() THEN
                j.judging_since := clock_timestamp(); -- a new judgement
            END IF;
            j.judged_until := GREATEST(coalesce(j.judged_until, '-infinity'),
                                       clock_timestamp() + period_ms * interval '1 millisecond');
            IF j.announced_until IS NULL OR j.announced_until < clock_timestamp()
               OR j.judged_until > j.announced_until + period_ms * interval '500 microseconds' THEN
                j.announced_until := j.judged_until; -- rc_announce tells the instances
            END IF;
            UPDATE public.rc_judgements
                SET judged_until = j.judged_until, judging_since = j.judging_since,
                    announced_until = j.announced_until
                WHERE namespace = p_ns AND resource_key = k;
        END IF;
        judged_ms := coalesce(public.rc_remaining_ms(j.judged_until), 0);
        -- An outlier whose report expired stops being one.
        outliers := '{}';
        FOR o IN DELETE FROM public.rc_rate_reports
                     WHERE namespace = p_ns AND resource_key = k
                       AND expires_at <= clock_timestamp()
                     RETURNING reporter, outlier_since
        LOOP
            IF o.outlier_since IS NOT NULL THEN
                outliers := outliers || jsonb_build_object(
                    'instance', o.reporter, 'outlier', false, 'expired', true);
            END IF;
        END LOOP;
        me_outlier := false;
        FOR o IN
            SELECT q.reporter, q.failures, q.calls, q.outlier_since,
                   t.failures - q.failures AS others_failures, t.calls - q.calls AS others_calls
            FROM public.rc_rate_reports q,
                 (SELECT sum(a.failures) AS failures, sum(a.calls) AS calls
                  FROM public.rc_rate_reports a
                  WHERE a.namespace = p_ns AND a.resource_key = k) t
            WHERE q.namespace = p_ns AND q.resource_key = k
            ORDER BY q.reporter
        LOOP
            is_outlier := o.failures > 0 AND o.failures * den >= num::bigint * o.calls
                AND o.calls * 10 >= min_calls
                AND o.others_calls >= min_calls
                AND o.others_failures * den * 4 < num::bigint * o.others_calls;
            IF is_outlier IS DISTINCT FROM (o.outlier_since IS NOT NULL) THEN
                UPDATE public.rc_rate_reports
                    SET outlier_since = CASE WHEN is_outlier THEN clock_timestamp() END
                    WHERE namespace = p_ns AND resource_key = k AND reporter = o.reporter;
                outliers := outliers || jsonb_build_object(
                    'instance', o.reporter, 'outlier', is_outlier,
                    'failures', o.failures, 'calls', o.calls,
                    'others_failures', o.others_failures, 'others_calls', o.others_calls,
                    'limit', num || '/' || den);
            END IF;
            IF o.reporter = who THEN
                me_outlier := is_outlier;
            END IF;
        END LOOP;
        INSERT INTO public.rc_changes
            (txid, version, namespace, resource_key, from_state, state, open_until, reset, kind,
             actor, why)
        SELECT pg_current_xact_id()::text::bigint, coalesce(r.version, 0), p_ns, k,
               coalesce(r.state, 'CLOSED'), coalesce(r.state, 'CLOSED'), NULL, false, 'outlier',
               public.rc_actor(), jsonb_build_object('outlier', w)
        FROM unnest(outliers) AS w;
        SELECT coalesce(sum(q.failures), 0), coalesce(sum(q.calls), 0), count(*)
            INTO fleet_failures, fleet_calls, reporters
            FROM public.rc_rate_reports q
            WHERE q.namespace = p_ns AND q.resource_key = k AND q.outlier_since IS NULL;
        IF fleet_calls >= min_calls AND fleet_failures > 0
           AND fleet_failures * den >= num::bigint * fleet_calls
           AND j.judging_since <= clock_timestamp() - interval_ms * interval '1 millisecond' THEN
            PERFORM public.rc_open_for_fleet(p_ns, k, fleet_failures, ms,
                jsonb_build_object('fleet_rate', jsonb_build_object(
                    'failures', fleet_failures, 'calls', fleet_calls, 'instances', reporters,
                    'limit', num || '/' || den, 'min_calls', min_calls,
                    'period_ms', period_ms)));
        END IF;
        RETURN QUERY SELECT k, v.*, fleet_failures, fleet_calls, judged_ms, NULL::text,
                            me_outlier
            FROM public.rc_view(p_ns, k) v;
    END LOOP;
    PERFORM public.rc_prune();
END
$$;
REVOKE ALL ON FUNCTION public.rc_report_rates(text, text, bigint, text[], bigint[], bigint[], integer[],
                                              integer[], integer[], bigint[], bigint[]) FROM PUBLIC;
