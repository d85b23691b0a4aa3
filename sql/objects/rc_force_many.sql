-- rc_force for each key, in order; per-key errors as in rc_trip_many.
CREATE OR REPLACE FUNCTION public.rc_force_many(
    p_ns text, p_keys text[], p_states text[], p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    err text;
BEGIN
    PERFORM public.rc_require_write();
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := coalesce(public.rc_key_error(p_ns, p_keys[i]),
                        CASE WHEN p_states[i] IS NULL OR p_states[i] NOT IN ('OPEN', 'CLOSED')
                             THEN 'rc_force: state must be OPEN or CLOSED, not '
                                  || coalesce(p_states[i], 'NULL') END,
                        CASE WHEN p_states[i] = 'OPEN' AND p_cooldown_ms[i] IS NULL
                             THEN 'cooldown must not be NULL' END);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT p_keys[i], NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, err;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT p_keys[i], t.*, NULL::text
            FROM public.rc_force(p_ns, p_keys[i], p_states[i], p_cooldown_ms[i]) AS t;
    END LOOP;
END
$$;
