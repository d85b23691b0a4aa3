CREATE OR REPLACE FUNCTION public.rc_notify_truncate() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v bigint := nextval('public.rc_circuit_breakers_version_seq');
BEGIN
    DELETE FROM public.rc_probe_leases;
    PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('reset', '', '', 'CLOSED',
        v, 0));
    PERFORM public.rc_log_change('', '', NULL, 'CLOSED', v, NULL, true);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rc_notify_truncate ON public.rc_circuit_breakers;
CREATE TRIGGER rc_notify_truncate
    AFTER TRUNCATE ON public.rc_circuit_breakers
    FOR EACH STATEMENT EXECUTE FUNCTION public.rc_notify_truncate();
