-- True when the live configuration forces `p_key` open (mode forced_open).
CREATE OR REPLACE FUNCTION public.rc_forced_open(p_ns text, p_key text) RETURNS boolean
LANGUAGE sql STABLE SET search_path = pg_catalog, pg_temp AS $$
    SELECT EXISTS (SELECT 1 FROM public.rc_breaker_config
                   WHERE namespace = p_ns AND resource_key = p_key AND mode = 'forced_open')
$$;
REVOKE ALL ON FUNCTION public.rc_forced_open(text, text) FROM PUBLIC;
