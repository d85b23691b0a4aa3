-- Sets `p_key`'s live configuration (`resilient-circuit config`): each non-NULL argument replaces
-- the stored value, NULLs keep it; p_reset deletes the row first (back to the code's values,
-- mode normal). A ratio is given whole or not at all; a trip policy replaces the stored one with
-- its own numbers (the others NULL). The table's CHECKs refuse values no instance could use,
-- with the constraint's name; a note has at most 1000 characters. Entering or leaving
-- forced_open opens or closes the breaker's row (rc_config_mode), and every change reaches the
-- instances (rc_announce). For the roles granted the operator's rights.
CREATE OR REPLACE FUNCTION public.rc_configure(
    p_ns text, p_key text, p_mode text DEFAULT NULL, p_cooldown_ms bigint DEFAULT NULL,
    p_failure_num integer DEFAULT NULL, p_failure_den integer DEFAULT NULL,
    p_success_num integer DEFAULT NULL, p_success_den integer DEFAULT NULL,
    p_reset boolean DEFAULT false, p_note text DEFAULT NULL,
    p_trip_policy text DEFAULT NULL, p_quorum_instances integer DEFAULT NULL,
    p_quorum_within_ms bigint DEFAULT NULL, p_rate_num integer DEFAULT NULL,
    p_rate_den integer DEFAULT NULL, p_rate_min_calls integer DEFAULT NULL,
    p_rate_period_ms bigint DEFAULT NULL)
RETURNS TABLE (o_mode text, o_cooldown_ms bigint, o_failure_num integer, o_failure_den integer,
               o_success_num integer, o_success_den integer, o_version bigint,
               o_trip_policy text, o_quorum_instances integer, o_quorum_within_ms bigint,
               o_rate_num integer, o_rate_den integer, o_rate_min_calls integer,
               o_rate_period_ms bigint)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.rc_check_key(p_ns, p_key);
    IF p_note IS NOT NULL THEN
        PERFORM public.rc_check_text(p_note, 'a note', 1000);
    END IF;
    IF (p_failure_num IS NULL) <> (p_failure_den IS NULL)
       OR (p_success_num IS NULL) <> (p_success_den IS NULL) THEN
        RAISE EXCEPTION 'a limit is a whole ratio k/n: give both numbers'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(p_reset, false) THEN
        DELETE FROM public.rc_breaker_config WHERE namespace = p_ns AND resource_key = p_key;
    END IF;
    IF NOT coalesce(p_reset, false) OR p_mode IS NOT NULL OR p_cooldown_ms IS NOT NULL
       OR p_failure_num IS NOT NULL OR p_success_num IS NOT NULL
       OR p_trip_policy IS NOT NULL THEN
        INSERT INTO public.rc_breaker_config AS c
            (namespace, resource_key, mode, cooldown_ms, failure_num, failure_den, success_num,
             success_den, note, trip_policy, quorum_instances, quorum_within_ms, rate_num,
             rate_den, rate_min_calls, rate_period_ms)
        VALUES (p_ns, p_key, coalesce(p_mode, 'normal'), p_cooldown_ms, p_failure_num,
                p_failure_den, p_success_num, p_success_den, p_note, p_trip_policy,
                p_quorum_instances, p_quorum_within_ms, p_rate_num, p_rate_den,
                p_rate_min_calls, p_rate_period_ms)
        ON CONFLICT (namespace, resource_key) DO UPDATE SET
            mode = coalesce(p_mode, c.mode),
            cooldown_ms = coalesce(p_cooldown_ms, c.cooldown_ms),
            failure_num = coalesce(p_failure_num, c.failure_num),
            failure_den = coalesce(p_failure_den, c.failure_den),
            success_num = coalesce(p_success_num, c.success_num),
            success_den = coalesce(p_success_den, c.success_den),
            note = p_note,
            trip_policy = coalesce(p_trip_policy, c.trip_policy),
            quorum_instances = CASE WHEN p_trip_policy IS NULL THEN c.quorum_instances
                                    ELSE p_quorum_instances END,
            quorum_within_ms = CASE WHEN p_trip_policy IS NULL THEN c.quorum_within_ms
                                    ELSE p_quorum_within_ms END,
            rate_num = CASE WHEN p_trip_policy IS NULL THEN c.rate_num ELSE p_rate_num END,
            rate_den = CASE WHEN p_trip_policy IS NULL THEN c.rate_den ELSE p_rate_den END,
            rate_min_calls = CASE WHEN p_trip_policy IS NULL THEN c.rate_min_calls
                                  ELSE p_rate_min_calls END,
            rate_period_ms = CASE WHEN p_trip_policy IS NULL THEN c.rate_period_ms
                                  ELSE p_rate_period_ms END;
    END IF;
    RETURN QUERY SELECT coalesce(c.mode, 'normal'), c.cooldown_ms, c.failure_num, c.failure_den,
                        c.success_num, c.success_den, coalesce(c.version, 0), c.trip_policy,
                        c.quorum_instances, c.quorum_within_ms, c.rate_num, c.rate_den,
                        c.rate_min_calls, c.rate_period_ms
        FROM (SELECT 1) AS one
        LEFT JOIN public.rc_breaker_config c ON c.namespace = p_ns AND c.resource_key = p_key;
END
$$;
REVOKE ALL ON FUNCTION public.rc_configure(text, text, text, bigint, integer, integer, integer, integer,
                                           boolean, text, text, integer, bigint, integer, integer,
                                           integer, bigint) FROM PUBLIC;
