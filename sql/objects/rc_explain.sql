-- Adds `detail` to what the change log will say about `p_key` in this transaction: it is kept in
-- the transaction-local setting `resilient_circuit.why` (a JSON object by key), which
-- rc_announce merges into the change's `why` at commit. A value of the setting that is not a
-- JSON object, or is over 64 kB (set by hand), is replaced, never an error: a write must not
-- fail for the sake of its explanation.
CREATE OR REPLACE FUNCTION public.rc_explain(p_key text, p_detail jsonb) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    held text := current_setting('resilient_circuit.why', true);
    why jsonb := '{}';
    said jsonb;
BEGIN
    IF held IS NOT NULL AND held <> '' AND octet_length(held) <= 65536 THEN
        BEGIN
            why := held::jsonb;
        EXCEPTION WHEN others THEN
            why := '{}';
        END;
        IF jsonb_typeof(why) IS DISTINCT FROM 'object' THEN
            why := '{}';
        END IF;
    END IF;
    said := why -> p_key;
    IF jsonb_typeof(said) IS DISTINCT FROM 'object' THEN
        said := '{}';
    END IF;
    PERFORM set_config('resilient_circuit.why',
        (why || jsonb_build_object(p_key, said || p_detail))::text, true);
END
$$;
REVOKE ALL ON FUNCTION public.rc_explain(text, jsonb) FROM PUBLIC;
