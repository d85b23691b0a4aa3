-- Every row of a namespace: what an instance loads at connect, after every reconnect and on its
-- reconcile timer. Runs with the caller's rights (it needs SELECT on the table).
CREATE OR REPLACE FUNCTION public.rc_snapshot(p_ns text)
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT resource_key, state, version, public.rc_remaining_ms(open_until)
    FROM public.rc_circuit_breakers WHERE namespace = p_ns
$$;
REVOKE ALL ON FUNCTION public.rc_snapshot(text) FROM PUBLIC;
