-- What is wrong with one key's fleet-rate report, or NULL (checked before anything is written,
-- so that a batch answers a bad element with its error and goes on: see rc_trip_many).
-- PL/pgSQL so that its plan is kept for the session (see rc_view.sql).
CREATE OR REPLACE FUNCTION public.rc_rate_error(
    p_ns text, p_key text, p_failures bigint, p_calls bigint, p_limit_num integer,
    p_limit_den integer, p_min_calls integer, p_period_ms bigint, p_cooldown_ms bigint)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN coalesce(public.rc_key_error(p_ns, p_key), CASE
        WHEN p_failures IS NULL OR p_calls IS NULL OR p_failures < 0 OR p_calls < p_failures
             OR p_calls < 1 THEN
            'a report must hold 0 <= failures <= calls and at least 1 call, got '
            || coalesce(p_failures::text, 'NULL') || ' of ' || coalesce(p_calls::text, 'NULL')
        WHEN p_limit_num IS NULL OR p_limit_den IS NULL OR p_limit_num < 1
             OR p_limit_den < p_limit_num OR p_limit_den > 8192 THEN
            'the failure rate limit must be a ratio k/n with 1 <= k <= n <= 8192, got '
            || coalesce(p_limit_num::text, 'NULL') || '/' || coalesce(p_limit_den::text, 'NULL')
        WHEN p_min_calls IS NULL OR p_min_calls < 1 THEN
            'min_calls must be at least 1, got ' || coalesce(p_min_calls::text, 'NULL')
        WHEN p_period_ms IS NULL OR p_period_ms < 1 OR p_period_ms > public.rc_max_ms() THEN
            'the period must be 1 ms to ten years, got ' || coalesce(p_period_ms::text, 'NULL')
        WHEN p_cooldown_ms IS NULL THEN
            'cooldown must not be NULL'
    END);
END
$$;
REVOKE ALL ON FUNCTION public.rc_rate_error(text, text, bigint, bigint, integer, integer, integer, bigint, bigint)
    FROM PUBLIC;
