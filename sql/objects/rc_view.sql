-- The current row of one key as the transition functions return it; a missing row is CLOSED at
-- version 0. o_retry_ms: when no lease was granted in a half-open round, how long until the
-- first live lease expires (ask again then, or on a notification); NULL otherwise.
-- PL/pgSQL rather than SQL: a SQL function with a SET clause is never inlined and plans its
-- query on every call (about 60 µs); PL/pgSQL keeps the plan for the session (about 3 µs).
CREATE OR REPLACE FUNCTION public.rc_view(p_ns text, p_key text, p_lease bigint DEFAULT NULL,
                                          p_retry_ms bigint DEFAULT NULL)
RETURNS TABLE (o_state text, o_version bigint, o_remaining_ms bigint, o_lease_id bigint,
               o_retry_ms bigint)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT coalesce(b.state, 'CLOSED')::text, coalesce(b.version, 0)::bigint,
           coalesce(public.rc_remaining_ms(b.open_until), 0), p_lease, p_retry_ms
    FROM (SELECT 1) AS one
    LEFT JOIN public.rc_circuit_breakers b ON b.namespace = p_ns AND b.resource_key = p_key;
END
$$;
REVOKE ALL ON FUNCTION public.rc_view(text, text, bigint, bigint) FROM PUBLIC;
