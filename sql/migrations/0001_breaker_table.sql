-- 0001: the breaker table, in the Python ancestor's layout (resilient-circuit 0.8.x), so that
-- Python services keep reading and writing it. Every statement is idempotent: the ancestor's own
-- setup command may have created some of it already.

CREATE TABLE IF NOT EXISTS public.rc_circuit_breakers (
    resource_key  varchar(255) NOT NULL,
    namespace     varchar(255) NOT NULL DEFAULT 'default',
    state         varchar(50)  NOT NULL,
    failure_count integer      NOT NULL DEFAULT 0,
    open_until    timestamptz  NULL,
    execution_log jsonb        NULL,
    created_at    timestamptz  DEFAULT now(),
    updated_at    timestamptz  DEFAULT now(),
    PRIMARY KEY (resource_key, namespace)
);

-- The ancestor's indexes, by its names, so its `pg-check` is satisfied.
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_state ON public.rc_circuit_breakers (state);
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_open_until ON public.rc_circuit_breakers (open_until);
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_key_state ON public.rc_circuit_breakers (resource_key, state);
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_state_updated ON public.rc_circuit_breakers (state, updated_at);
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_namespace ON public.rc_circuit_breakers (namespace);
CREATE INDEX IF NOT EXISTS idx_rc_circuit_breakers_key_namespace ON public.rc_circuit_breakers (resource_key, namespace);

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
