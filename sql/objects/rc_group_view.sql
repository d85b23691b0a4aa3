-- Group p_group's state as its row of rc_group_state holds it, with the cap and threshold in
-- force (an operator's live ones, else the declared): members, open members, state, version,
-- and the two ratios as text ('k/n'; the threshold NULL when there is none). No row when the
-- group does not exist. For rc_group_join, rc_group_configure and rc_group_states, as the owner.
CREATE OR REPLACE FUNCTION public.rc_group_view(p_ns text, p_group text)
RETURNS TABLE (o_members integer, o_open integer, o_state text, o_version bigint,
               o_max_open text, o_open_at text)
LANGUAGE plpgsql STABLE SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    RETURN QUERY
    SELECT coalesce(s.members, 0), coalesce(s.open_members, 0),
           coalesce(s.state, 'CLOSED')::text, coalesce(s.version, 0),
           coalesce(g.live_max_open_num, g.max_open_num) || '/'
               || coalesce(g.live_max_open_den, g.max_open_den),
           CASE WHEN g.live_open_at_num = 0 THEN NULL
                WHEN g.live_open_at_num IS NOT NULL
                    THEN g.live_open_at_num || '/' || g.live_open_at_den
                WHEN g.open_at_num IS NOT NULL THEN g.open_at_num || '/' || g.open_at_den END
    FROM public.rc_groups g
    LEFT JOIN public.rc_group_state s ON s.namespace = g.namespace AND s.name = g.name
    WHERE g.namespace = p_ns AND g.name = p_group;
END
$$;
REVOKE ALL ON FUNCTION public.rc_group_view(text, text) FROM PUBLIC;
