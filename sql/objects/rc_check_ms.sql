-- A duration argument in milliseconds, clamped to [0, rc_max_ms()]; NULL is an error.
CREATE OR REPLACE FUNCTION public.rc_check_ms(p_ms bigint, p_what text) RETURNS bigint
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_ms IS NULL THEN
        RAISE EXCEPTION '% must not be NULL', p_what USING ERRCODE = 'null_value_not_allowed';
    END IF;
    RETURN LEAST(GREATEST(p_ms, 0), public.rc_max_ms());
END
$$;
REVOKE ALL ON FUNCTION public.rc_check_ms(bigint, text) FROM PUBLIC;
