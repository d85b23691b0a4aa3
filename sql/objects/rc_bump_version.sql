-- Before every write of a breaker row, whoever writes it (an instance through the functions,
-- the Python package, an operator in psql), as the owner:
--
-- * the version: a new one from the sequence when the state, the cooldown or the key changes,
--   or when an operator's decree rewrites the row as it is (rc_force sets
--   `resilient_circuit.decree`: every instance then hears it, and ends what it held against
--   the row); else the old one, whatever the writer set. Taken under the row lock, so the
--   versions of a key follow commit order; a row that arrives under a key (an INSERT, a
--   renamed key) first waits for every transaction writing that key, its uncommitted INSERT
--   included, through the key's row in rc_key_locks.
-- * the episode: a new state (a deletion, a renamed key, an operator's decree even when the
--   state stays) spends the key's quorum votes, fleet-rate reports and probe leases; a new
--   state also resets the half-open round (its counts, its size) and stamps state_changed_at;
--   a CLOSED row's reopen count is 0.
-- * a group's cap holds: a member of a group (rc_group_members) entering OPEN from CLOSED, or
--   inserted OPEN, when as many of its group as the cap allows are open already, is left as it
--   is (the write skips the row, recorded by rc_group_full); an operator's decree is not.
-- * forced_open holds: a key whose live configuration forces it open cannot be closed,
--   deleted, moved or given a shorter cooldown by anyone; change its mode first.
CREATE OR REPLACE FUNCTION public.rc_bump_version() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    -- The write ends the row's state under its key: a new state, a deletion, a renamed key.
    ends boolean;
    -- An operator's decree (rc_force): it ends an episode even when the state stays.
    decree boolean := current_setting('resilient_circuit.decree', true) = 'on';
    -- An INSERT finding the key's row: it fails, or (an upsert) becomes that row's UPDATE,
    -- whose own run of this trigger ends the episode if the state changes.
    row_exists boolean;
BEGIN
    IF TG_OP = 'INSERT' THEN
        -- Wait for a transaction deleting this key (if any) to end, so that our version is
        -- taken after its and the two commit in version order. Locks nothing if no row exists.
        PERFORM 1 FROM public.rc_circuit_breakers
            WHERE namespace = NEW.namespace AND resource_key = NEW.resource_key FOR KEY SHARE;
        row_exists := FOUND;
        -- No row: wait for a transaction that inserted the key and has not committed (it may
        -- still delete it); its row is invisible here, its lock on the key is not. (A row
        -- that exists stays, under the lock just taken, and an upsert then updates it under
        -- its row lock: the common case of a trip pays for no key lock.)
        IF NOT row_exists THEN
            PERFORM public.rc_lock_key(NEW.namespace, NEW.resource_key);
            -- A row committed while we waited for the key (the insert we waited out) is the
            -- row this upsert will update: hold it, so that no one deletes it first (our
            -- version is taken below, and an upsert whose row is deleted under it inserts
            -- with that version, older than the delete's, committed after it).
            PERFORM 1 FROM public.rc_circuit_breakers
                WHERE namespace = NEW.namespace AND resource_key = NEW.resource_key
                FOR KEY SHARE;
            row_exists := FOUND;
            -- A key with no row entering OPEN: its group may be full (an upsert of an existing
            -- row is checked as the UPDATE it becomes).
            IF NOT row_exists AND NEW.state = 'OPEN' AND decree IS NOT TRUE
               AND public.rc_group_full(NEW.namespace, NEW.resource_key, 0) THEN
                RETURN NULL;
            END IF;
        END IF;
        -- (No forced_open check: a forced key always has its OPEN row, which an upsert
        -- reaches through UPDATE; the Python package's guarded upserts must not fail here.)
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
        NEW.state_changed_at := clock_timestamp();
        NEW.probe_successes := 0;
        NEW.probe_failures := 0;
        NEW.round_id := CASE WHEN NEW.state = 'HALF_OPEN' THEN NEW.version END;
        IF NEW.state IS DISTINCT FROM 'HALF_OPEN' THEN
            NEW.round_probes := NULL;
            NEW.round_close_at := NULL;
        END IF;
        IF NEW.state = 'CLOSED' THEN
            NEW.reopens := 0;
        END IF;
        IF (NEW.state IS DISTINCT FROM 'CLOSED' OR decree) AND NOT row_exists THEN
            -- No row was CLOSED: leaving it, or a decree, ends what was judged of it. (Not
            -- when the row exists: an upsert whose guard then refuses, or that does nothing,
            -- changes nothing of the key.)
            DELETE FROM public.rc_votes
                WHERE namespace = NEW.namespace AND resource_key = NEW.resource_key;
            DELETE FROM public.rc_rate_reports
                WHERE namespace = NEW.namespace AND resource_key = NEW.resource_key;
        END IF;
        RETURN NEW;
    END IF;

    ends := TG_OP = 'DELETE'
         OR NEW.state IS DISTINCT FROM OLD.state
         OR NEW.resource_key IS DISTINCT FROM OLD.resource_key
         OR NEW.namespace IS DISTINCT FROM OLD.namespace;
    -- A member entering OPEN past its group's cap is refused: the row stays as it is.
    IF TG_OP = 'UPDATE' AND NEW.state = 'OPEN' AND OLD.state = 'CLOSED' AND decree IS NOT TRUE
       AND public.rc_group_full(NEW.namespace, NEW.resource_key, OLD.version) THEN
        RETURN NULL;
    END IF;
    IF (ends OR NEW.open_until IS DISTINCT FROM OLD.open_until)
       AND public.rc_forced_open(OLD.namespace, OLD.resource_key) THEN
        IF TG_OP = 'DELETE' OR NEW.state IS DISTINCT FROM 'OPEN'
           OR NEW.resource_key IS DISTINCT FROM OLD.resource_key
           OR NEW.namespace IS DISTINCT FROM OLD.namespace THEN
            PERFORM public.rc_refuse_forced(OLD.resource_key);
        END IF;
        -- Still OPEN: the hold keeps its end (a longer one, as entering forced_open sets, is
        -- taken).
        IF OLD.open_until IS NOT NULL
           AND (NEW.open_until IS NULL OR NEW.open_until < OLD.open_until) THEN
            NEW.open_until := OLD.open_until;
        END IF;
    END IF;
    IF ends OR decree THEN
        -- One statement, not three: every transition pays for these on its way to commit.
        WITH leases AS (
            DELETE FROM public.rc_probe_leases
                WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key),
        votes AS (
            DELETE FROM public.rc_votes
                WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key)
        DELETE FROM public.rc_rate_reports
            WHERE namespace = OLD.namespace AND resource_key = OLD.resource_key;
    END IF;
    IF TG_OP = 'DELETE' THEN
        RETURN OLD;
    END IF;

    IF NEW.resource_key IS DISTINCT FROM OLD.resource_key
       OR NEW.namespace IS DISTINCT FROM OLD.namespace THEN
        PERFORM public.rc_lock_key(NEW.namespace, NEW.resource_key); -- as an INSERT does
    END IF;
    IF ends OR decree OR NEW.open_until IS DISTINCT FROM OLD.open_until THEN
        NEW.version := nextval('public.rc_circuit_breakers_version_seq');
    ELSE
        NEW.version := OLD.version;
    END IF;
    IF ends THEN
        NEW.state_changed_at := clock_timestamp();
        NEW.probe_successes := 0;
        NEW.probe_failures := 0;
        IF NEW.state = 'HALF_OPEN' THEN
            NEW.round_id := NEW.version;
            -- A size set in this same statement (rc_acquire_probe) is kept; else the first
            -- instance that asks for a probe sets it.
            IF NEW.round_probes IS NOT DISTINCT FROM OLD.round_probes THEN
                NEW.round_probes := NULL;
                NEW.round_close_at := NULL;
            END IF;
        ELSE
            NEW.round_id := NULL;
            NEW.round_probes := NULL;
            NEW.round_close_at := NULL;
        END IF;
    ELSE
        NEW.state_changed_at := OLD.state_changed_at;
    END IF;
    IF NEW.state = 'CLOSED' THEN
        NEW.reopens := 0;
    END IF;
    RETURN NEW;
END
$$;
REVOKE ALL ON FUNCTION public.rc_bump_version() FROM PUBLIC;

DROP TRIGGER IF EXISTS rc_bump_version ON public.rc_circuit_breakers;
CREATE TRIGGER rc_bump_version
    BEFORE INSERT OR UPDATE OR DELETE ON public.rc_circuit_breakers
    FOR EACH ROW EXECUTE FUNCTION public.rc_bump_version();
