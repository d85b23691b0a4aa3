-- A group's own state (docs::groups): how many of its members are OPEN or HALF_OPEN, announced
-- to the instances (op "group") and logged (kind "group") whenever that changes; a threshold
-- past which the group as a whole is OPEN; and an operator's live configuration of the cap and
-- the threshold, which wins over what the instances declare.
--
-- The counts are kept at commit by rc_announce, under the lock of the group's row here: a lock
-- only commit-time triggers take, so that counting waits for nothing a transaction may hold
-- while it waits for a member (rc_group_full's lock on rc_groups is taken mid-statement).
CREATE TABLE IF NOT EXISTS public.rc_group_state (
    namespace    varchar(255) NOT NULL,
    name         varchar(255) NOT NULL,
    open_members integer      NOT NULL DEFAULT 0,
    members      integer      NOT NULL DEFAULT 0,
    -- OPEN while open_members reaches the group's threshold (open_at), else CLOSED.
    state        varchar(50)  NOT NULL DEFAULT 'CLOSED' CHECK (state IN ('OPEN', 'CLOSED')),
    -- Grows with every change of the counts: instances keep the newest they heard.
    version      bigint       NOT NULL DEFAULT 0,
    changed_at   timestamptz  NOT NULL DEFAULT clock_timestamp(),
    PRIMARY KEY (namespace, name),
    FOREIGN KEY (namespace, name) REFERENCES public.rc_groups (namespace, name)
        ON DELETE CASCADE
);
REVOKE ALL ON public.rc_group_state FROM PUBLIC;

ALTER TABLE public.rc_groups
    -- The instances' declared threshold: the group is OPEN as a whole while at least
    -- open_at_num / open_at_den of its members are open (NULL: never).
    ADD COLUMN IF NOT EXISTS open_at_num integer NULL,
    ADD COLUMN IF NOT EXISTS open_at_den integer NULL,
    -- An operator's live configuration (resilient-circuit group NAME ...), which wins over the
    -- declarations until reset; NULL: the declared value. live_open_at_num 0: never.
    ADD COLUMN IF NOT EXISTS live_max_open_num integer NULL,
    ADD COLUMN IF NOT EXISTS live_max_open_den integer NULL,
    ADD COLUMN IF NOT EXISTS live_open_at_num integer NULL,
    ADD COLUMN IF NOT EXISTS live_open_at_den integer NULL,
    ADD COLUMN IF NOT EXISTS live_note text NULL;
ALTER TABLE public.rc_groups DROP CONSTRAINT IF EXISTS rc_groups_open_at_check;
ALTER TABLE public.rc_groups ADD CONSTRAINT rc_groups_open_at_check CHECK (
    (open_at_num IS NULL) = (open_at_den IS NULL)
    AND (open_at_num IS NULL OR (open_at_num >= 1 AND open_at_den >= open_at_num
                                 AND open_at_den <= 8192))
    AND (live_max_open_num IS NULL) = (live_max_open_den IS NULL)
    AND (live_max_open_num IS NULL OR (live_max_open_num >= 1
                                       AND live_max_open_den >= live_max_open_num
                                       AND live_max_open_den <= 8192))
    AND (live_open_at_num IS NULL) = (live_open_at_den IS NULL)
    AND (live_open_at_num IS NULL OR (live_open_at_num >= 0
                                      AND live_open_at_den >= greatest(live_open_at_num, 1)
                                      AND live_open_at_den <= 8192)));

-- Every group's state row, counted as of now.
INSERT INTO public.rc_group_state AS s (namespace, name, open_members, members)
SELECT g.namespace, g.name,
       (SELECT count(*) FROM public.rc_group_members m
          JOIN public.rc_circuit_breakers b
            ON b.namespace = m.namespace AND b.resource_key = m.resource_key
         WHERE m.namespace = g.namespace AND m.group_name = g.name
           AND b.state IN ('OPEN', 'HALF_OPEN')),
       (SELECT count(*) FROM public.rc_group_members m
         WHERE m.namespace = g.namespace AND m.group_name = g.name)
FROM public.rc_groups g
ON CONFLICT (namespace, name) DO NOTHING;

-- rc_group_join takes the threshold and answers the group's state: made anew.
DROP FUNCTION IF EXISTS public.rc_group_join(text, text, text[], integer, integer);
