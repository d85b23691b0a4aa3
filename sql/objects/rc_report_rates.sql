-- rc_report_rate for each key of one instance's flush, in the order given (callers sort them, so
-- two instances lock keys in the same order); a bad element gets its error in o_error and the
-- others go on.
CREATE OR REPLACE FUNCTION public.rc_report_rates(
    p_ns text, p_instance text, p_keys text[], p_failures integer[], p_calls integer[],
    p_limit_num integer[], p_limit_den integer[], p_min_calls integer[], p_period_ms bigint[],
    p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_fleet_failures bigint,
               o_fleet_calls bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    err text;
BEGIN
    PERFORM public.rc_require_write();
    IF p_instance IS NULL OR p_instance = '' THEN
        RAISE EXCEPTION 'a report needs the reporting instance''s id'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := public.rc_rate_error(p_ns, p_keys[i], p_failures[i], p_calls[i], p_limit_num[i],
                                    p_limit_den[i], p_min_calls[i], p_period_ms[i],
                                    p_cooldown_ms[i]);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT p_keys[i], NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, NULL::bigint, NULL::bigint, err;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT p_keys[i], t.*, NULL::text
            FROM public.rc_report_rate(p_ns, p_keys[i], p_instance, p_failures[i], p_calls[i],
                                       p_limit_num[i], p_limit_den[i], p_min_calls[i],
                                       p_period_ms[i], p_cooldown_ms[i]) AS t;
    END LOOP;
END
$$;
