-- Keeps updated_at current on every write, as the Python package's trigger of the same name
-- does (its `pg-setup` may have created both; it finds them as it expects).
CREATE OR REPLACE FUNCTION public.update_rc_circuit_breakers_updated_at() RETURNS trigger
LANGUAGE plpgsql SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.update_rc_circuit_breakers_updated_at() FROM PUBLIC;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_catalog.pg_trigger
        WHERE tgrelid = 'public.rc_circuit_breakers'::pg_catalog.regclass
          AND tgname = 'update_rc_circuit_breakers_updated_at'
    ) THEN
        CREATE TRIGGER update_rc_circuit_breakers_updated_at
            BEFORE UPDATE ON public.rc_circuit_breakers
            FOR EACH ROW EXECUTE FUNCTION public.update_rc_circuit_breakers_updated_at();
    END IF;
END
$$;
