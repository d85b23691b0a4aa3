-- Counts group p_group of namespace p_ns again: its members, those OPEN or HALF_OPEN, and the
-- group's own state (OPEN while the open members reach its threshold: the operator's live
-- open_at, else the declared one; none, never). When any of these changed, its row of
-- rc_group_state gets them and a new version, and the trigger on that table announces it to
-- the instances (op "group") and logs it (kind "group"): sql/objects/rc_announce.sql.
--
-- Called by rc_announce at commit for a member whose row entered or left the open set, and by
-- rc_group_join and rc_group_configure; as the owner. The group's state row is locked until the
-- transaction ends, and the counts are read after the lock is granted, so of two transactions
-- changing members at once the second counts what the first committed: the last count is
-- always the true one. Only these functions take that lock, and at commit nothing else is
-- waited for while it is held (see migration 0018).
CREATE OR REPLACE FUNCTION public.rc_group_tally(p_ns text, p_group text) RETURNS void
LANGUAGE plpgsql VOLATILE SET search_path = pg_catalog, pg_temp AS $$
DECLARE
    g public.rc_groups%ROWTYPE;
    s public.rc_group_state%ROWTYPE;
    n_members integer;
    n_open integer;
    num integer;
    den integer;
    new_state text;
BEGIN
    SELECT * INTO g FROM public.rc_groups WHERE namespace = p_ns AND name = p_group;
    IF NOT FOUND THEN
        RETURN; -- dropped meanwhile
    END IF;
    INSERT INTO public.rc_group_state (namespace, name) VALUES (p_ns, p_group)
        ON CONFLICT (namespace, name) DO NOTHING;
    SELECT * INTO s FROM public.rc_group_state
        WHERE namespace = p_ns AND name = p_group FOR UPDATE;
    SELECT count(*) INTO n_members FROM public.rc_group_members
        WHERE namespace = p_ns AND group_name = p_group;
    SELECT count(*) INTO n_open FROM public.rc_group_members m
        JOIN public.rc_circuit_breakers b
          ON b.namespace = m.namespace AND b.resource_key = m.resource_key
        WHERE m.namespace = p_ns AND m.group_name = p_group
          AND b.state IN ('OPEN', 'HALF_OPEN');
    IF g.live_open_at_num IS NOT NULL THEN
        num := g.live_open_at_num;
        den := g.live_open_at_den;
    ELSE
        num := g.open_at_num;
        den := g.open_at_den;
    END IF;
    new_state := CASE WHEN num >= 1 AND n_members > 0
                           AND n_open::bigint * den >= num::bigint * n_members
                      THEN 'OPEN' ELSE 'CLOSED' END;
    IF (n_open, n_members, new_state) IS DISTINCT FROM (s.open_members, s.members, s.state) THEN
        UPDATE public.rc_group_state
            SET open_members = n_open, members = n_members, state = new_state,
                version = nextval('public.rc_circuit_breakers_version_seq'),
                changed_at = clock_timestamp()
            WHERE namespace = p_ns AND name = p_group;
    END IF;
END
$$;
REVOKE ALL ON FUNCTION public.rc_group_tally(text, text) FROM PUBLIC;
