-- Adds `detail` to what the change log will say about `p_key` in this transaction. A value of
-- the setting that is not a JSON object (set by hand) is replaced, never an error: a write must
-- not fail for the sake of its explanation.
CREATE OR REPLACE FUNCTION public.rc_explain(p_key text, p_detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE AS $$
DECLARE
    held text := pg_catalog.current_setting('resilient_circuit.why', true);
    why jsonb := '{}';
    said jsonb;
BEGIN
    IF held IS NOT NULL AND held <> '' THEN
        BEGIN
            why := held::jsonb;
        EXCEPTION WHEN others THEN
            why := '{}';
        END;
        IF pg_catalog.jsonb_typeof(why) IS DISTINCT FROM 'object' THEN
            why := '{}';
        END IF;
    END IF;
    said := why -> p_key;
    IF pg_catalog.jsonb_typeof(said) IS DISTINCT FROM 'object' THEN
        said := '{}';
    END IF;
    PERFORM pg_catalog.set_config('resilient_circuit.why',
        (why || pg_catalog.jsonb_build_object(p_key, said || p_detail))::text, true);
END
$$;
