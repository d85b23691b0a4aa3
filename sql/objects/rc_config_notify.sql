CREATE OR REPLACE FUNCTION public.rc_config_notify() RETURNS trigger
LANGUAGE plpgsql AS $$
DECLARE
    r record := coalesce(NEW, OLD);
BEGIN
    PERFORM pg_catalog.pg_notify('rc_breaker_config',
        pg_catalog.json_build_object('ns', r.namespace, 'key', r.resource_key)::text);
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS rc_config_notify ON public.rc_breaker_config;
CREATE CONSTRAINT TRIGGER rc_config_notify AFTER INSERT OR UPDATE OR DELETE
    ON public.rc_breaker_config DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_config_notify();
