-- The current row of one key as the transition functions return it; a missing row is CLOSED at
-- version 0. o_retry_ms: when no lease was granted in a half-open round, how long until the
-- first live lease expires (ask again then, or on a notification); NULL otherwise.
CREATE OR REPLACE FUNCTION public.rc_view(p_ns text, p_key text, p_lease bigint DEFAULT NULL,
                                          p_retry_ms bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT coalesce(b.state, 'CLOSED'), coalesce(b.version, 0),
           coalesce(public.rc_remaining_ms(b.open_until), 0), p_lease, p_retry_ms
    FROM (SELECT 1) AS one
    LEFT JOIN public.rc_circuit_breakers b ON b.namespace = p_ns AND b.resource_key = p_key
$$;
REVOKE ALL ON FUNCTION public.rc_view(text, text, bigint, bigint) FROM PUBLIC;
