-- What is wrong with a key argument, or NULL: varchar(255) would silently cut trailing spaces,
-- and a function would then answer for a different key than it wrote.
-- PL/pgSQL so that its plan is kept for the session (see rc_view.sql).
CREATE OR REPLACE FUNCTION public.rc_key_error(p_ns text, p_key text) RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN CASE
        WHEN p_key IS NULL OR p_key = '' OR char_length(p_key) > 255 THEN
            'circuit breaker key must have 1 to 255 characters, got '
            || coalesce(char_length(p_key)::text, 'NULL')
        WHEN p_ns IS NULL OR p_ns = '' OR char_length(p_ns) > 255 THEN
            'namespace must have 1 to 255 characters, got '
            || coalesce(char_length(p_ns)::text, 'NULL')
    END;
END
$$;
REVOKE ALL ON FUNCTION public.rc_key_error(text, text) FROM PUBLIC;
