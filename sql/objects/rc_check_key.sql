-- A key argument, or rc_key_error's message as an error.
CREATE OR REPLACE FUNCTION public.rc_check_key(p_ns text, p_key text) RETURNS void
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    err text := public.rc_key_error(p_ns, p_key);
BEGIN
    IF err IS NOT NULL THEN
        RAISE EXCEPTION '%', err USING ERRCODE = 'invalid_parameter_value';
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.rc_check_key(text, text) FROM PUBLIC;
