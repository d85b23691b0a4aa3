-- A deleted row is CLOSED for everyone (as rc_notify_change announces it), and TRUNCATE resets
-- every key: the votes and rate reports gathered for them are spent, as a close spends them in
-- rc_vote and rc_report_rate. As the owner: the deleting role may not touch either table.
CREATE OR REPLACE FUNCTION public.rc_spend_judgements() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, public AS $$
BEGIN
    IF TG_OP = 'TRUNCATE' THEN
        DELETE FROM public.rc_votes;
        DELETE FROM public.rc_rate_reports;
    ELSE
        DELETE FROM public.rc_votes
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
        DELETE FROM public.rc_rate_reports
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
    END IF;
    RETURN NULL;
END
$$;
DROP TRIGGER IF EXISTS rc_spend_judgements_delete ON public.rc_circuit_breakers;
CREATE TRIGGER rc_spend_judgements_delete AFTER DELETE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_spend_judgements();
DROP TRIGGER IF EXISTS rc_spend_judgements_truncate ON public.rc_circuit_breakers;
CREATE TRIGGER rc_spend_judgements_truncate AFTER TRUNCATE ON public.rc_circuit_breakers
    FOR EACH STATEMENT EXECUTE FUNCTION public.rc_spend_judgements();
