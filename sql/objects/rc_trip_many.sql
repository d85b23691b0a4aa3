-- rc_trip for each key, in the order given: how an instance publishes the trips of its own
-- windows (callers sort the keys, so two instances batching overlapping keys lock rows in the
-- same order). A key with bad arguments gets its error in o_error and the others go on: one
-- bad element does not roll back the batch. The arguments are checked here rather than by
-- catching rc_trip's exceptions: an exception block is a subtransaction per key, which costs a
-- quarter of the transitions per second. At most 1000 keys a call.
CREATE OR REPLACE FUNCTION public.rc_trip_many(
    p_ns text, p_keys text[], p_cooldown_ms bigint[], p_failures integer[], p_logs jsonb[],
    p_basis bigint[] DEFAULT NULL)
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint,
               o_lease_id bigint, o_retry_ms bigint, o_error text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    err text;
BEGIN
    IF coalesce(array_length(p_keys, 1), 0) > 1000 THEN
        RAISE EXCEPTION 'at most 1000 trips a call, got %', array_length(p_keys, 1)
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    FOR i IN 1 .. coalesce(array_length(p_keys, 1), 0) LOOP
        err := coalesce(public.rc_key_error(p_ns, p_keys[i]),
                        CASE WHEN p_cooldown_ms[i] IS NULL THEN 'cooldown must not be NULL' END);
        IF err IS NOT NULL THEN
            RETURN QUERY SELECT p_keys[i], NULL::text, NULL::bigint, NULL::bigint, NULL::bigint,
                                NULL::bigint, err;
            CONTINUE;
        END IF;
        RETURN QUERY SELECT p_keys[i], t.*, NULL::text
            FROM public.rc_trip(p_ns, p_keys[i], p_cooldown_ms[i], p_failures[i], p_logs[i],
                                p_basis[i]) AS t;
    END LOOP;
END
$$;
REVOKE ALL ON FUNCTION public.rc_trip_many(text, text[], bigint[], integer[], jsonb[], bigint[])
    FROM PUBLIC;
