-- Every breaker row of a namespace for `resilient-circuit status`: the state, since when, the
-- cooldown left by the database clock (OPEN only), the version, the last write and the key's
-- live mode. Runs with the caller's rights.
CREATE OR REPLACE FUNCTION public.rc_status(p_ns text)
RETURNS TABLE (o_key text, o_state text, o_failure_count integer, o_remaining_ms bigint,
               o_version bigint, o_updated_at timestamptz, o_state_changed_at timestamptz,
               o_mode text)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT b.resource_key, b.state, b.failure_count,
           CASE WHEN b.state = 'OPEN' THEN public.rc_remaining_ms(b.open_until) END,
           b.version, b.updated_at, b.state_changed_at, coalesce(c.mode, 'normal')
    FROM public.rc_circuit_breakers b
    LEFT JOIN public.rc_breaker_config c
           ON c.namespace = b.namespace AND c.resource_key = b.resource_key
    WHERE b.namespace = p_ns
    ORDER BY b.resource_key
$$;
REVOKE ALL ON FUNCTION public.rc_status(text) FROM PUBLIC;
