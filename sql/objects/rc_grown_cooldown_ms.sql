-- The cooldown after the p_reopens-th failed round, in milliseconds: p_base_ms for a trip
-- (p_reopens 0) or without a maximum (NULL), else min(p_max_ms, p_base_ms * 2^p_reopens) minus
-- up to 10% of it at random. The exponent is capped at 64 (2^64 ms exceeds rc_max_ms() for any
-- base of at least 1 ms), so the product cannot overflow. Arguments are checked by the caller.
-- VOLATILE: random().
-- PL/pgSQL so that its plan is kept for the session (see rc_view.sql).
CREATE OR REPLACE FUNCTION public.rc_grown_cooldown_ms(
    p_base_ms bigint, p_max_ms bigint, p_reopens integer)
RETURNS bigint
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN (
        SELECT CASE
            WHEN p_max_ms IS NULL OR p_reopens IS NULL OR p_reopens <= 0 THEN p_base_ms
            ELSE g.ms - pg_catalog.floor(g.ms * 0.1 * pg_catalog.random())::bigint
        END
        FROM (SELECT LEAST(p_max_ms::float8,
                           p_base_ms * pg_catalog.power(2::float8, LEAST(p_reopens, 64)))::bigint
                     AS ms) AS g
    );
END
$$;
REVOKE ALL ON FUNCTION public.rc_grown_cooldown_ms(bigint, bigint, integer) FROM PUBLIC;
