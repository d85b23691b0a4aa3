-- 0014: the shared table as a security boundary (the threat model is the crate's
-- `docs::security`). Tables and data only: every function and trigger is redefined in
-- sql/objects/, which setup applies after this file.
--
-- * Rights are EXECUTE grants on the functions (checked by PostgreSQL on current_user), made
--   by `setup --grant-*`; the check on session_user's UPDATE right goes.
-- * Notifications go to a channel whose name is as secret as the key that signs them.
-- * Votes and rate reports are spent by the state change that ends their episode (the trigger),
--   expire by a time stored with them, and are counted under a row lock no stranger can take.
-- * A fleet rate is the fleet's: once a key is being judged, every instance holding it reports
--   (rc_judgements), each its counts over its last period (one row per reporter).
-- * Every table prunes by time.

-- What the old definitions used and the new ones do not (their work moved into the objects
-- named beside them).
DROP TRIGGER IF EXISTS rc_spend_judgements_delete ON public.rc_circuit_breakers;    -- rc_bump_version
DROP TRIGGER IF EXISTS rc_spend_judgements_truncate ON public.rc_circuit_breakers;  -- rc_announce
DROP TRIGGER IF EXISTS rc_reset_reopens ON public.rc_circuit_breakers;              -- rc_bump_version
DROP TRIGGER IF EXISTS rc_notify_insert ON public.rc_circuit_breakers;              -- rc_announce
DROP TRIGGER IF EXISTS rc_notify_update ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_delete ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_notify_truncate ON public.rc_circuit_breakers;
DROP TRIGGER IF EXISTS rc_config_notify ON public.rc_breaker_config;                 -- rc_announce
DROP FUNCTION IF EXISTS public.rc_spend_judgements();
DROP FUNCTION IF EXISTS public.rc_reset_reopens();
DROP FUNCTION IF EXISTS public.rc_notify_change();
DROP FUNCTION IF EXISTS public.rc_notify_truncate();
DROP FUNCTION IF EXISTS public.rc_config_notify();
DROP FUNCTION IF EXISTS public.rc_notify_payload(text, text, text, text, bigint, bigint);
DROP FUNCTION IF EXISTS public.rc_log_change(text, text, text, text, bigint, timestamptz, boolean);
DROP FUNCTION IF EXISTS public.rc_require_write();
DROP FUNCTION IF EXISTS public.rc_notify_key();
-- Kept for instances older than 0011 during an upgrade; they cannot read this release's
-- notifications either.
DROP FUNCTION IF EXISTS public.rc_report_probe(text, text, bigint, boolean, integer, integer, bigint);
-- rc_report_rate is rc_report_rates' loop body now; rc_vote and rc_report_rates name their
-- caller as a voter or reporter (a stable name), and are made anew.
DROP FUNCTION IF EXISTS public.rc_report_rate(text, text, text, integer, integer, integer, integer,
                                              integer, bigint, bigint);
DROP FUNCTION IF EXISTS public.rc_report_rates(text, text, text[], integer[], integer[], integer[],
                                               integer[], integer[], bigint[], bigint[]);
DROP FUNCTION IF EXISTS public.rc_vote(text, text, text, integer, integer, integer, bigint, bigint,
                                       bigint);
-- Reports carry 64-bit counts now.
DROP FUNCTION IF EXISTS public.rc_rate_error(text, text, integer, integer, integer, integer, integer,
                                             bigint, bigint);

-- When the row last changed state, whoever wrote it (kept by rc_bump_version, which ignores
-- what a writer puts here): `status` shows it, and the episode of the votes and rate reports
-- is the time since.
ALTER TABLE public.rc_circuit_breakers
    ADD COLUMN IF NOT EXISTS state_changed_at timestamptz NOT NULL DEFAULT pg_catalog.now();

-- The notification channel: random, stored with the key and as secret as it (rc_notify_secret()
-- hands both to the roles granted it). A role that cannot read it cannot LISTEN to the fleet's
-- changes, let alone forge them.
ALTER TABLE public.rc_notify_key ADD COLUMN IF NOT EXISTS channel text NULL;
UPDATE public.rc_notify_key
    SET channel = 'rc_' || pg_catalog.replace(pg_catalog.gen_random_uuid()::text, '-', '')
    WHERE channel IS NULL;
ALTER TABLE public.rc_notify_key ALTER COLUMN channel SET NOT NULL;

-- Votes, one per voter and key. `voter` is the voting instance's stable name (a pod keeps it
-- across restarts, see PostgresOptions::instance_name), so a crash-looping pod is one voter;
-- `role` is the session's login, for the change log. A vote counts until `expires_at`.
DROP TABLE IF EXISTS public.rc_votes;
CREATE TABLE public.rc_votes (
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    voter        text         NOT NULL CHECK (pg_catalog.char_length(voter) BETWEEN 1 AND 255),
    role         text         NOT NULL,
    cast_at      timestamptz  NOT NULL,
    expires_at   timestamptz  NOT NULL,
    failures     integer      NOT NULL CHECK (failures >= 0),
    calls        integer      NOT NULL CHECK (calls >= failures),
    PRIMARY KEY (namespace, resource_key, voter)
);
CREATE INDEX rc_votes_expires_at ON public.rc_votes (expires_at);
REVOKE ALL ON public.rc_votes FROM PUBLIC;

-- Fleet-rate reports: one row per reporter and key, its latest, holding the calls and failures
-- it saw over its last period; it counts until `expires_at` (a few of its reporting intervals:
-- a reporter that stopped, or died, soon drops out of the sum).
DROP TABLE IF EXISTS public.rc_rate_reports;
CREATE TABLE public.rc_rate_reports (
    namespace    varchar(255) NOT NULL,
    resource_key varchar(255) NOT NULL,
    reporter     text         NOT NULL CHECK (pg_catalog.char_length(reporter) BETWEEN 1 AND 255),
    reported_at  timestamptz  NOT NULL,
    expires_at   timestamptz  NOT NULL,
    failures     bigint       NOT NULL CHECK (failures >= 0),
    calls        bigint       NOT NULL CHECK (calls >= failures AND calls >= 1),
    PRIMARY KEY (namespace, resource_key, reporter)
);
CREATE INDEX rc_rate_reports_expires_at ON public.rc_rate_reports (expires_at);
REVOKE ALL ON public.rc_rate_reports FROM PUBLIC;

-- One row per key being judged by the fleet (a vote, a rate report), locked while its
-- judgement is made so that racing judgements of a key without a breaker row see each other: a
-- table only the owner can read, rather than an advisory lock, since any session may take any
-- advisory lock and these ids would be computable from the key.
-- * judged_until: while in the future, every instance holding the key reports its failure
--   rate each interval (a fleet rate is judged over the whole fleet, not only the instances
--   that see failures); extended by every report at or above the limit.
-- * judging_since: when the current judgement began; the key does not open on it before one
--   reporting interval has passed, so that every instance told of it has reported.
-- * announced_until: the end the instances were last told of (op "judge"); told again when the
--   judgement starts and when it has grown by half a period since.
CREATE TABLE IF NOT EXISTS public.rc_judgements (
    namespace       varchar(255) NOT NULL,
    resource_key    varchar(255) NOT NULL,
    touched_at      timestamptz  NOT NULL,
    judged_until    timestamptz  NULL,
    judging_since   timestamptz  NULL,
    announced_until timestamptz  NULL,
    PRIMARY KEY (namespace, resource_key)
);
REVOKE ALL ON public.rc_judgements FROM PUBLIC;

-- The change log also carries what followers that poll must hear besides rows: a live
-- configuration that changed (`config`) and a fleet-rate judgement that started (`judge`).
ALTER TABLE public.rc_changes
    ADD COLUMN IF NOT EXISTS kind text NOT NULL DEFAULT 'row'
        CHECK (kind IN ('row', 'reset', 'config', 'judge'));
UPDATE public.rc_changes SET kind = 'reset' WHERE reset AND kind = 'row';
-- Its rows gain a kind: the function is made anew (sql/objects/rc_changes_since.sql).
DROP FUNCTION IF EXISTS public.rc_changes_since(text, text);

CREATE INDEX IF NOT EXISTS idx_rc_probe_leases_expires_at ON public.rc_probe_leases (expires_at);

-- Settings the owner may change (UPDATE public.rc_change_log_settings SET ...), and when the
-- tables were last pruned (rc_prune, at most once a minute).
-- * max_report_calls_per_second: the most calls per second one instance is believed to make to
--   one key; a fleet-rate report claiming more over its period is cut to it.
ALTER TABLE public.rc_change_log_settings
    ADD COLUMN IF NOT EXISTS pruned_at timestamptz NOT NULL DEFAULT '-infinity',
    ADD COLUMN IF NOT EXISTS max_report_calls_per_second integer NOT NULL DEFAULT 10000
        CHECK (max_report_calls_per_second >= 1);
REVOKE ALL ON public.rc_change_log_settings FROM PUBLIC;

-- Granted to the roles setup names (they verify the schema at connect), not to every login.
REVOKE ALL ON public.rc_schema_migrations FROM PUBLIC;
REVOKE ALL ON public.rc_schema_objects FROM PUBLIC;

-- The roles setup granted, and as what: a later setup grants them again what a new definition
-- of a function needs, and `check` compares each role's rights with its kinds.
CREATE TABLE IF NOT EXISTS public.rc_role_grants (
    role       text        NOT NULL,
    kind       text        NOT NULL CHECK (kind IN ('reader', 'instance', 'python', 'operator')),
    granted_at timestamptz NOT NULL DEFAULT pg_catalog.now(),
    PRIMARY KEY (role, kind)
);
REVOKE ALL ON public.rc_role_grants FROM PUBLIC;

-- Bounded texts: a note is for a person to read.
ALTER TABLE public.rc_breaker_config DROP CONSTRAINT IF EXISTS rc_breaker_config_note;
ALTER TABLE public.rc_breaker_config ADD CONSTRAINT rc_breaker_config_note
    CHECK (note IS NULL OR pg_catalog.char_length(note) <= 1000) NOT VALID;
