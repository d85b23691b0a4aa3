-- Every row of a namespace, for the snapshot an instance loads at connect and after reconnects.
CREATE OR REPLACE FUNCTION public.rc_snapshot(p_ns text)
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint)
LANGUAGE sql STABLE AS $$
    SELECT resource_key, state, version, public.rc_remaining_ms(open_until)
    FROM public.rc_circuit_breakers WHERE namespace = p_ns
$$;
