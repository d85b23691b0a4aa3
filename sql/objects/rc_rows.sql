-- Some rows of a namespace, by key, as rc_snapshot has them: how an instance confirms
-- notifications it will not take on trust (unsigned, stale, or closing a key). Keys without a
-- row are absent from the answer (they are CLOSED). Runs with the caller's rights.
CREATE OR REPLACE FUNCTION public.rc_rows(p_ns text, p_keys text[])
RETURNS TABLE (o_key text, o_state text, o_version bigint, o_remaining_ms bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT resource_key, state, version, public.rc_remaining_ms(open_until)
    FROM public.rc_circuit_breakers WHERE namespace = p_ns AND resource_key = ANY (p_keys)
$$;
REVOKE ALL ON FUNCTION public.rc_rows(text, text[]) FROM PUBLIC;
