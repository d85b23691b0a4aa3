-- Outlier instances (docs::outliers): while a key's fleet rate is judged, an instance whose own
-- failure rate is far above the rest of the fleet's is an outlier. Its reports do not count
-- towards opening the key for the fleet; it is told so in the answer to its report, and the
-- change log records when it becomes one and when it stops (kind "outlier").
ALTER TABLE public.rc_rate_reports ADD COLUMN IF NOT EXISTS outlier_since timestamptz NULL;

ALTER TABLE public.rc_changes DROP CONSTRAINT IF EXISTS rc_changes_kind_check;
ALTER TABLE public.rc_changes ADD CONSTRAINT rc_changes_kind_check
    CHECK (kind IN ('row', 'reset', 'config', 'judge', 'group', 'outlier'));

-- rc_report_rates answers whether its reporter is an outlier of each key (o_outlier): a new
-- result column, so the function is made anew (sql/objects/rc_report_rates.sql).
DROP FUNCTION IF EXISTS public.rc_report_rates(text, text, bigint, text[], bigint[], bigint[],
                                               integer[], integer[], integer[], bigint[], bigint[]);
