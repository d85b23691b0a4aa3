-- Resets the reopen count of a row written CLOSED (see the top). A trigger rather than a line in
-- each function, because the ancestor and operators write rows directly. Its WHEN clause keeps
-- every other write from calling it at all. It only sets a field of NEW and reads nothing, so it
-- needs neither the owner's rights nor a pinned search_path (both would make it slower, see
-- rc_notify_payload in 0006).
CREATE OR REPLACE FUNCTION public.rc_reset_reopens() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    NEW.reopens := 0;
    RETURN NEW;
END
$$;

DROP TRIGGER IF EXISTS rc_reset_reopens ON public.rc_circuit_breakers;
CREATE TRIGGER rc_reset_reopens
    BEFORE INSERT OR UPDATE ON public.rc_circuit_breakers
    FOR EACH ROW WHEN (NEW.state = 'CLOSED' AND NEW.reopens <> 0)
    EXECUTE FUNCTION public.rc_reset_reopens();
