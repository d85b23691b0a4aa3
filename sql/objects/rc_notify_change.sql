-- 0006's trigger functions, each now also writing the log (same NOTIFYs as before).
CREATE OR REPLACE FUNCTION public.rc_notify_change() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
DECLARE
    v bigint;
BEGIN
    IF TG_OP = 'DELETE' THEN
        v := nextval('public.rc_circuit_breakers_version_seq');
        PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
            OLD.namespace, OLD.resource_key, 'CLOSED', v, 0));
        PERFORM public.rc_log_change(OLD.namespace, OLD.resource_key, OLD.state, 'CLOSED', v,
            NULL, false);
        RETURN NULL;
    END IF;
    IF TG_OP = 'UPDATE' AND (NEW.resource_key IS DISTINCT FROM OLD.resource_key
                             OR NEW.namespace IS DISTINCT FROM OLD.namespace) THEN
        -- A renamed row: the old key has no row any more.
        PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
            OLD.namespace, OLD.resource_key, 'CLOSED', NEW.version, 0));
        PERFORM public.rc_log_change(OLD.namespace, OLD.resource_key, OLD.state, 'CLOSED',
            NEW.version, NULL, false);
    END IF;
    PERFORM pg_notify('rc_circuit_breakers', public.rc_notify_payload('row',
        NEW.namespace, NEW.resource_key, NEW.state, NEW.version,
        public.rc_remaining_ms(NEW.open_until)));
    PERFORM public.rc_log_change(NEW.namespace, NEW.resource_key,
        CASE WHEN TG_OP = 'UPDATE' THEN OLD.state END, NEW.state, NEW.version, NEW.open_until,
        false);
    RETURN NULL;
END
$$;

DROP TRIGGER IF EXISTS rc_notify_insert ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_update ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_delete ON public.rc_circuit_breakers;
CREATE CONSTRAINT TRIGGER rc_notify_insert
    AFTER INSERT ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_notify_change();
CREATE CONSTRAINT TRIGGER rc_notify_update
    AFTER UPDATE ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION public.rc_notify_change();
CREATE CONSTRAINT TRIGGER rc_notify_delete
    AFTER DELETE ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_notify_change();
