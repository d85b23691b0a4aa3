-- An operator's deletion of a key's row (`resilient-circuit delete`): every instance sees the
-- key CLOSED with a fresh version, and what was judged of it is spent (rc_bump_version). True
-- when there was a row. Refused for a key forced open by its live configuration. A key with no
-- row has no trigger to spend its votes and reports: the decree spends them itself.
CREATE OR REPLACE FUNCTION public.rc_delete(p_ns text, p_key text)
RETURNS TABLE (o_deleted boolean)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.rc_check_key(p_ns, p_key);
    DELETE FROM public.rc_circuit_breakers WHERE namespace = p_ns AND resource_key = p_key;
    IF FOUND THEN
        RETURN QUERY SELECT true;
        RETURN;
    END IF;
    DELETE FROM public.rc_probe_leases WHERE namespace = p_ns AND resource_key = p_key;
    DELETE FROM public.rc_votes WHERE namespace = p_ns AND resource_key = p_key;
    DELETE FROM public.rc_rate_reports WHERE namespace = p_ns AND resource_key = p_key;
    RETURN QUERY SELECT false;
END
$$;
REVOKE ALL ON FUNCTION public.rc_delete(text, text) FROM PUBLIC;
