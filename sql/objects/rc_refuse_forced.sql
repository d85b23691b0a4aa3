-- The error a write that would end a forced-open key's hold gets, with the way out.
CREATE OR REPLACE FUNCTION public.rc_refuse_forced(p_key text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RAISE EXCEPTION 'breaker % is forced open by its live configuration', p_key
        USING ERRCODE = 'object_in_use',
              HINT = 'return it to normal with: resilient-circuit config ' || p_key
                     || ' --mode normal';
END
$$;
REVOKE ALL ON FUNCTION public.rc_refuse_forced(text) FROM PUBLIC;
