-- A text argument a caller names itself or explains with (an instance's name, a probe
-- holder): 1 to p_max characters, or an error that says which and how long it was. Nothing a
-- caller sends is stored unbounded.
CREATE OR REPLACE FUNCTION public.rc_check_text(p_text text, p_what text, p_max integer)
RETURNS text
LANGUAGE plpgsql IMMUTABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    IF p_text IS NULL OR p_text = '' OR char_length(p_text) > p_max THEN
        RAISE EXCEPTION '% must have 1 to % characters, got %', p_what, p_max,
            coalesce(char_length(p_text)::text, 'NULL')
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    RETURN p_text;
END
$$;
REVOKE ALL ON FUNCTION public.rc_check_text(text, text, integer) FROM PUBLIC;
