-- Keeps updated_at current on every write, as the ancestor's trigger of the same name does.
CREATE OR REPLACE FUNCTION public.update_rc_circuit_breakers_updated_at() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END
$$;

DO $$
BEGIN
    IF NOT EXISTS (
        SELECT 1 FROM pg_trigger
        WHERE tgrelid = 'public.rc_circuit_breakers'::regclass
          AND tgname = 'update_rc_circuit_breakers_updated_at'
    ) THEN
        CREATE TRIGGER update_rc_circuit_breakers_updated_at
            BEFORE UPDATE ON public.rc_circuit_breakers
            FOR EACH ROW EXECUTE FUNCTION public.update_rc_circuit_breakers_updated_at();
    END IF;
END
$$;
