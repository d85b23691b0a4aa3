-- Announces every change to the instances and records it in the change log, at commit (the
-- row triggers are deferred), as the owner. One function for every kind of change, so that the
-- payload is signed in one place:
--
--   a breaker row written   op "row": its state, version and cooldown left (a deleted row is
--                           CLOSED with a fresh version; a renamed row also CLOSES its old key)
--   the table truncated     op "reset": reload everything (the votes, reports and leases go;
--                           keys forced open by their live configuration come back OPEN)
--   a live configuration    op "config": read the key's configuration again
--   a fleet-rate judgement  op "judge": every instance holding the key reports its rate until
--                           remaining_ms has passed (rc_report_rates)
--   a group's counts        op "group": key is the group's name, state its own (OPEN past its
--                           threshold), version its rc_group_state version, and two more
--                           fields, open and members: how many of its members are OPEN or
--                           HALF_OPEN, of how many. A member's row entering or leaving the open
--                           set counts its group again first (rc_group_tally).
--
-- The payload, format 3, on the secret channel of rc_notify_key:
--   {"v":3,"op","ns","key","state","version","remaining_ms","at_us","mac"}, plus "open" and
--   "members" for op "group"
-- at_us is clock_timestamp() now, at commit: the listener measures lag by it and refuses (reads
-- the row instead) a payload older than its last reload or than a few seconds, so a captured
-- payload cannot be replayed later. mac = HMAC-SHA256(key, "3|op|<chars(ns)>:ns|<chars(key)>:
-- key|state|version|remaining_ms|at_us", then for op "group" "|open|members") in hex: lengths in characters, so the same in any
-- server encoding; the text is hashed as UTF-8, as the listener receives it.
--
-- The change log (rc_changes) gets every one of these (`kind`: row, reset, config, judge), so
-- that an instance following by polling hears them too; each breaker change with who made it (the session as the
-- server knows it, and the instance name an instance sets in `resilient_circuit.instance`) and
-- why (for an OPEN, the row's failure count and window; the note a session set in
-- `resilient_circuit.note`; what the functions said through rc_explain). Session settings are
-- the writer's: each is cut to a bound, and one that is not JSON is left out, never an error.
CREATE OR REPLACE FUNCTION public.rc_announce() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    secret public.rc_notify_key%ROWTYPE;
    -- The changes to announce: one, or two for a renamed row.
    ops text[] := '{}';
    nss text[] := '{}';
    keys text[] := '{}';
    froms text[] := '{}';
    states text[] := '{}';
    versions bigint[] := '{}';
    untils timestamptz[] := '{}';
    whys jsonb[] := '{}';
    -- op "group" only: open members, members.
    opens integer[] := '{}';
    totals integer[] := '{}';
    grp text;
    mac text;
    cfg record;
    remaining bigint;
    at_us bigint;
    signed text;
    held text;
    explained jsonb;
    actor jsonb;
BEGIN
    SELECT * INTO secret FROM public.rc_notify_key;
    IF TG_TABLE_NAME = 'rc_breaker_config' THEN
        cfg := coalesce(NEW, OLD);
        ops := ARRAY['config'];
        nss := ARRAY[cfg.namespace::text];
        keys := ARRAY[cfg.resource_key::text];
        froms := ARRAY[NULL];
        states := ARRAY[''];
        versions := ARRAY[CASE WHEN TG_OP = 'DELETE' THEN 0 ELSE cfg.version END];
        untils := ARRAY[NULL::timestamptz];
        whys := ARRAY[jsonb_build_object('config', CASE WHEN TG_OP = 'DELETE'
            THEN jsonb_build_object('reset', true)
            ELSE jsonb_strip_nulls(jsonb_build_object(
                'mode', NEW.mode, 'cooldown_ms', NEW.cooldown_ms,
                'failure_limit', NEW.failure_num || '/' || NEW.failure_den,
                'success_limit', NEW.success_num || '/' || NEW.success_den,
                'trip_policy', NEW.trip_policy, 'note', left(NEW.note, 1000))) END)];
    ELSIF TG_TABLE_NAME = 'rc_judgements' THEN
        ops := ARRAY['judge'];
        nss := ARRAY[NEW.namespace::text];
        keys := ARRAY[NEW.resource_key::text];
        froms := ARRAY[NULL];
        states := ARRAY[''];
        versions := ARRAY[0::bigint];
        untils := ARRAY[NEW.announced_until];
        whys := ARRAY[NULL::jsonb];
    ELSIF TG_TABLE_NAME = 'rc_group_state' THEN
        ops := ARRAY['group'];
        nss := ARRAY[NEW.namespace::text];
        keys := ARRAY[NEW.name::text];
        froms := ARRAY[OLD.state::text];
        states := ARRAY[NEW.state::text];
        versions := ARRAY[NEW.version];
        untils := ARRAY[NULL::timestamptz];
        opens := ARRAY[NEW.open_members];
        totals := ARRAY[NEW.members];
        whys := ARRAY[(SELECT jsonb_build_object('group', jsonb_strip_nulls(jsonb_build_object(
                    'name', NEW.name, 'open', NEW.open_members, 'members', NEW.members,
                    'max_open', v.o_max_open, 'open_at', v.o_open_at)))
                FROM public.rc_group_view(NEW.namespace, NEW.name) v)];
    ELSIF TG_LEVEL = 'STATEMENT' THEN
        -- TRUNCATE: no key has a row, a round, a vote or a report any more.
        DELETE FROM public.rc_probe_leases;
        DELETE FROM public.rc_votes;
        DELETE FROM public.rc_rate_reports;
        ops := ARRAY['reset'];
        nss := ARRAY[''];
        keys := ARRAY[''];
        froms := ARRAY[NULL];
        states := ARRAY['CLOSED'];
        versions := ARRAY[nextval('public.rc_circuit_breakers_version_seq')];
        untils := ARRAY[NULL::timestamptz];
        whys := ARRAY[NULL::jsonb];
    ELSIF TG_OP = 'DELETE' THEN
        ops := ARRAY['row'];
        nss := ARRAY[OLD.namespace::text];
        keys := ARRAY[OLD.resource_key::text];
        froms := ARRAY[OLD.state::text];
        states := ARRAY['CLOSED'];
        versions := ARRAY[nextval('public.rc_circuit_breakers_version_seq')];
        untils := ARRAY[NULL::timestamptz];
        whys := ARRAY[NULL::jsonb];
    ELSE
        IF TG_OP = 'UPDATE' AND (NEW.resource_key IS DISTINCT FROM OLD.resource_key
                                 OR NEW.namespace IS DISTINCT FROM OLD.namespace) THEN
            -- A renamed row: the old key has no row any more.
            ops := ARRAY['row'];
            nss := ARRAY[OLD.namespace::text];
            keys := ARRAY[OLD.resource_key::text];
            froms := ARRAY[OLD.state::text];
            states := ARRAY['CLOSED'];
            versions := ARRAY[NEW.version];
            untils := ARRAY[NULL::timestamptz];
            whys := ARRAY[NULL::jsonb];
        END IF;
        ops := ops || 'row'::text;
        nss := nss || NEW.namespace::text;
        keys := keys || NEW.resource_key::text;
        froms := froms || CASE WHEN TG_OP = 'UPDATE' THEN OLD.state::text END;
        states := states || NEW.state::text;
        versions := versions || NEW.version;
        untils := untils || NEW.open_until;
        -- An OPEN says why: the window that tripped (as this crate and the Python package
        -- write it). An empty window (a trip decided by the fleet) and a count of 0 (an
        -- override, a round that reopened) are left out rather than shown as if they were why.
        whys := whys || CASE WHEN NEW.state = 'OPEN' THEN jsonb_strip_nulls(jsonb_build_object(
            'failures', NULLIF(NEW.failure_count, 0),
            'window', CASE WHEN jsonb_typeof(NEW.execution_log) = 'array'
                            AND jsonb_array_length(NEW.execution_log) BETWEEN 1 AND 8192
                           THEN NEW.execution_log END)) END;
    END IF;

    -- Once a minute, the change log's old rows go. First: the count below holds its group's
    -- lock until commit, and must wait for nothing meanwhile.
    IF EXISTS (SELECT 1 FROM public.rc_change_log_settings
               WHERE pruned_at < clock_timestamp() - interval '1 minute') THEN
        PERFORM public.rc_prune();
    END IF;
    -- A member entering or leaving the open set: its group is counted again (which announces
    -- the group's new counts, through the trigger on rc_group_state).
    IF TG_TABLE_NAME = 'rc_circuit_breakers' AND TG_LEVEL = 'ROW' THEN
        FOR i IN 1 .. array_length(ops, 1) LOOP
            IF coalesce(froms[i] IN ('OPEN', 'HALF_OPEN'), false)
               <> (states[i] IN ('OPEN', 'HALF_OPEN')) THEN
                SELECT m.group_name INTO grp FROM public.rc_group_members m
                    WHERE m.namespace = nss[i] AND m.resource_key = keys[i];
                IF FOUND THEN
                    PERFORM public.rc_group_tally(nss[i], grp);
                END IF;
            END IF;
        END LOOP;
    END IF;

    held := current_setting('resilient_circuit.why', true);
    actor := public.rc_actor();

    FOR i IN 1 .. array_length(ops, 1) LOOP
        remaining := CASE WHEN ops[i] IN ('row', 'judge') THEN public.rc_remaining_ms(untils[i])
                          ELSE 0 END;
        at_us := floor(date_part('epoch', clock_timestamp()) * 1000000)::bigint;
        signed := concat_ws('|', '3', ops[i],
            char_length(nss[i]) || ':' || nss[i], char_length(keys[i]) || ':' || keys[i],
            states[i], versions[i]::text, remaining::text, at_us::text);
        IF ops[i] = 'group' THEN
            signed := signed || '|' || opens[i] || '|' || totals[i];
        END IF;
        mac := encode(sha256(secret.opad || sha256(secret.ipad || convert_to(signed, 'UTF8'))),
                      'hex');
        IF ops[i] = 'group' THEN
            PERFORM pg_notify(secret.channel, json_build_object(
                'v', 3, 'op', ops[i], 'ns', nss[i], 'key', keys[i], 'state', states[i],
                'version', versions[i], 'remaining_ms', remaining, 'at_us', at_us,
                'open', opens[i], 'members', totals[i], 'mac', mac)::text);
        ELSE
            PERFORM pg_notify(secret.channel, json_build_object(
                'v', 3, 'op', ops[i], 'ns', nss[i], 'key', keys[i], 'state', states[i],
                'version', versions[i], 'remaining_ms', remaining, 'at_us', at_us,
                'mac', mac)::text);
        END IF;
        explained := NULL;
        IF held IS NOT NULL AND held <> '' AND octet_length(held) <= 65536 THEN
            BEGIN
                explained := held::jsonb -> keys[i];
            EXCEPTION WHEN others THEN
                explained := NULL; -- set by hand to something else: no explanation, still a row
            END;
            IF jsonb_typeof(explained) IS DISTINCT FROM 'object' THEN
                explained := NULL;
            END IF;
        END IF;
        INSERT INTO public.rc_changes
            (txid, version, namespace, resource_key, from_state, state, open_until, reset,
             kind, actor, why)
        VALUES (pg_current_xact_id()::text::bigint, versions[i], nss[i], keys[i], froms[i],
                states[i], untils[i], ops[i] = 'reset', ops[i], actor,
                NULLIF(coalesce(whys[i], '{}') || jsonb_strip_nulls(jsonb_build_object(
                    'note', NULLIF(left(current_setting('resilient_circuit.note', true), 1000),
                                   '')))
                    || coalesce(explained, '{}'), '{}'));
    END LOOP;

    IF TG_LEVEL = 'STATEMENT' THEN
        -- Keys forced open by their live configuration stay open through a TRUNCATE.
        INSERT INTO public.rc_circuit_breakers
            (resource_key, namespace, state, failure_count, open_until, execution_log)
        SELECT c.resource_key, c.namespace, 'OPEN', 0,
               clock_timestamp() + public.rc_max_ms() * interval '1 millisecond', '[]'
        FROM public.rc_breaker_config c WHERE c.mode = 'forced_open';
        -- No member has a row now (but those forced open, counted at commit): every group is
        -- counted again.
        PERFORM public.rc_group_tally(s.namespace, s.name)
            FROM public.rc_group_state s ORDER BY s.namespace, s.name;
    END IF;
    RETURN NULL;
END
$$;
REVOKE ALL ON FUNCTION public.rc_announce() FROM PUBLIC;

DROP TRIGGER IF EXISTS rc_notify_insert ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_update ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_delete ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_truncate ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_config ON public.rc_breaker_config;
CREATE CONSTRAINT TRIGGER rc_notify_insert
    AFTER INSERT ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_announce();
-- The version changes with the state, the cooldown or the key: the Python package's
-- bookkeeping writes (failure_count, execution_log) wake nobody.
CREATE CONSTRAINT TRIGGER rc_notify_update
    AFTER UPDATE ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION public.rc_announce();
CREATE CONSTRAINT TRIGGER rc_notify_delete
    AFTER DELETE ON public.rc_circuit_breakers DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_announce();
CREATE TRIGGER rc_notify_truncate
    AFTER TRUNCATE ON public.rc_circuit_breakers
    FOR EACH STATEMENT EXECUTE FUNCTION public.rc_announce();
CREATE CONSTRAINT TRIGGER rc_notify_config
    AFTER INSERT OR UPDATE OR DELETE ON public.rc_breaker_config DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW EXECUTE FUNCTION public.rc_announce();
DROP TRIGGER IF EXISTS rc_notify_group ON public.rc_group_state;
CREATE CONSTRAINT TRIGGER rc_notify_group
    AFTER UPDATE ON public.rc_group_state DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.version IS DISTINCT FROM NEW.version)
    EXECUTE FUNCTION public.rc_announce();
DROP TRIGGER IF EXISTS rc_notify_judgement ON public.rc_judgements;
CREATE CONSTRAINT TRIGGER rc_notify_judgement
    AFTER UPDATE OF announced_until ON public.rc_judgements DEFERRABLE INITIALLY DEFERRED
    FOR EACH ROW WHEN (OLD.announced_until IS DISTINCT FROM NEW.announced_until)
    EXECUTE FUNCTION public.rc_announce();
