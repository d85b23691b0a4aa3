-- rc_force for each key, in order: how an instance publishes `force_open` / `force_closed`,
-- which are overrides (granted with the operator's rights). Per-key errors as in
-- rc_trip_many: a key refused (bad arguments, forced open by its live configuration) gets its
-- error in o_error and the others go on. At most 1000 keys a call.
CREATE OR REPLACE FUNCTION public.rc_force_many(
    p_ns text, p_keys text[], p_states text[], p_cooldown_ms bigint[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    err text;
BEGIN
    IF coalesce(array_length(p_keys, 1), 0) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 overrides a call, got %', array_length(p_keys, 1)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := coalesce(public.rc_key_error(p_ns, p_keys[i]),
                        CASE WHEN p_states[i] IS NULL OR p_states[i] NOT IN ('OPEN', 'CLOSED')
                             THEN 'rc_force: state must be OPEN or CLOSED, not '
                                  || coalesce(p_states[i], 'NULL') END,
                        CASE WHEN p_states[i] = 'OPEN' AND p_cooldown_ms[i] IS NULL
                             THEN 'cooldown must not be NULL' END,
                        CASE WHEN public.rc_forced_open(p_ns, p_keys[i])
                             THEN 'breaker ' || p_keys[i]
                                  || ' is forced open by its live configuration; return it to normal with: resilient-circuit config '
                                  || p_keys[i] || ' --mode normal' END);
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
REVOKE ALL ON FUNCTION public.rc_force_many(text, text[], text[], bigint[]) FROM PUBLIC;
