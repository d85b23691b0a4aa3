-- Each write gets a new version and time; then, at commit, the instances hear of it.
CREATE OR REPLACE FUNCTION public.rc_config_stamp() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.version := nextval('public.rc_breaker_config_version_seq');
    NEW.updated_at := now();
    NEW.updated_by := session_user;
    RETURN NEW;
END
$$;
DROP TRIGGER IF EXISTS rc_config_stamp ON public.rc_breaker_config;
CREATE TRIGGER rc_config_stamp BEFORE INSERT OR UPDATE ON public.rc_breaker_config
    FOR EACH ROW EXECUTE FUNCTION public.rc_config_stamp();
