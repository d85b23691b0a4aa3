-- True when the live configuration forces `p_key` open (mode forced_open). PL/pgSQL so that
-- its plan is kept for the session (see rc_view.sql).
CREATE OR REPLACE FUNCTION public.rc_forced_open(p_ns text, p_key text) RETURNS boolean
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN EXISTS (SELECT 1 FROM public.rc_breaker_config
                   WHERE namespace = p_ns AND resource_key = p_key AND mode = 'forced_open');
END
$$;
REVOKE ALL ON FUNCTION public.rc_forced_open(text, text) FROM PUBLIC;
