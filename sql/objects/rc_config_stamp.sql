-- Before every write of a live configuration: a new version, time and author (the writer's
-- values are ignored), so instances tell a newer configuration from one they hold.
CREATE OR REPLACE FUNCTION public.rc_config_stamp() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.version := nextval('public.rc_breaker_config_version_seq');
    NEW.updated_at := now();
    NEW.updated_by := session_user;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.rc_config_stamp() FROM PUBLIC;

DROP TRIGGER IF EXISTS rc_config_stamp ON public.rc_breaker_config;
CREATE TRIGGER rc_config_stamp BEFORE INSERT OR UPDATE ON public.rc_breaker_config
    FOR EACH ROW EXECUTE FUNCTION public.rc_config_stamp();
