-- An operator's live configuration of group p_group (`resilient-circuit group`): its cap on
-- open members (p_max_num / p_max_den) and its threshold, past which the group as a whole is
-- OPEN (p_open_num / p_open_den; 0/1: none). Each given ratio replaces the live one, NULLs keep
-- it; p_reset first clears them (back to what the instances declare). Live values win over the
-- instances' declarations. The group must exist (an instance joined it). The state is counted
-- again at once, so a new threshold takes effect now; a lower cap refuses the next entries
-- into OPEN and closes nothing. The note (at most 1000 characters) is kept with the group and
-- in the change log. For the roles granted the operator's rights.
CREATE OR REPLACE FUNCTION public.rc_group_configure(
    p_ns text, p_group text, p_max_num integer DEFAULT NULL, p_max_den integer DEFAULT NULL,
    p_open_num integer DEFAULT NULL, p_open_den integer DEFAULT NULL,
    p_reset boolean DEFAULT false, p_note text DEFAULT NULL)
RETURNS TABLE (o_members integer, o_open integer, o_state text, o_version bigint,
               o_max_open text, o_open_at text)
LANGUAGE plpgsql SECURITY DEFINER SET search_path = pg_catalog, pg_temp AS $$
BEGIN
    PERFORM public.rc_check_key(p_ns, p_group);
    IF p_note IS NOT NULL THEN
        PERFORM public.rc_check_text(p_note, 'a note', 1000);
    END IF;
    IF (p_max_num IS NULL) <> (p_max_den IS NULL) OR (p_open_num IS NULL) <> (p_open_den IS NULL)
    THEN
        RAISE EXCEPTION 'a ratio is a whole k/n: give both numbers'
            USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_max_num < 1 OR p_max_den < p_max_num OR p_max_den > 8192 THEN
        RAISE EXCEPTION 'a group''s cap must be a ratio k/n with 1 <= k <= n <= 8192, got %/%',
            p_max_num, p_max_den USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF p_open_num < 0 OR p_open_den < greatest(p_open_num, 1) OR p_open_den > 8192 THEN
        RAISE EXCEPTION 'a group''s threshold must be a ratio k/n with 0 <= k <= n <= 8192 (0: none), got %/%',
            p_open_num, p_open_den USING ERRCODE = 'invalid_parameter_value';
    END IF;
    IF coalesce(p_reset, false) THEN
        UPDATE public.rc_groups
            SET live_max_open_num = NULL, live_max_open_den = NULL, live_open_at_num = NULL,
                live_open_at_den = NULL, live_note = NULL
            WHERE namespace = p_ns AND name = p_group;
    END IF;
    UPDATE public.rc_groups SET
        live_max_open_num = coalesce(p_max_num, live_max_open_num),
        live_max_open_den = coalesce(p_max_den, live_max_open_den),
        live_open_at_num = coalesce(p_open_num, live_open_at_num),
        live_open_at_den = coalesce(p_open_den, live_open_at_den),
        live_note = coalesce(p_note, live_note),
        updated_at = clock_timestamp()
    WHERE namespace = p_ns AND name = p_group;
    IF NOT FOUND THEN
        RAISE EXCEPTION 'no group % in namespace %: an instance creates it when it joins',
            p_group, p_ns USING ERRCODE = 'no_data_found';
    END IF;
    PERFORM set_config('resilient_circuit.note', coalesce(p_note, ''), true);
    PERFORM public.rc_group_tally(p_ns, p_group);
    RETURN QUERY SELECT * FROM public.rc_group_view(p_ns, p_group);
END
$$;
REVOKE ALL ON FUNCTION public.rc_group_configure(text, text, integer, integer, integer, integer,
                                                 boolean, text) FROM PUBLIC;
