-- The Baton archive (README, "Archiving to PostgreSQL"). Applied by every
-- gateway started with --archive, so it only creates what is missing.
-- PostgreSQL 13 or later; CockroachDB 24.3 or later takes it all but the
-- TRUNCATE trigger (see the README for each exception).

-- Every verified entry of every chain, as the gateway stored it: its
-- canonical content bytes (what the hash covers), the chain fields, and
-- the content's fields split out for queries. Append-only.
CREATE TABLE IF NOT EXISTS baton_entries (
    agent   text        NOT NULL,
    seq     bigint      NOT NULL CHECK (seq >= 1),
    ts      timestamptz NOT NULL,
    event   text        NOT NULL,
    context text,
    data    jsonb       NOT NULL,
    content bytea       NOT NULL,
    prev    bytea       NOT NULL CHECK (length(prev) = 32),
    hash    bytea       NOT NULL CHECK (length(hash) = 32),
    sig     bytea       CHECK (sig IS NULL OR length(sig) = 64),
    PRIMARY KEY (agent, seq)
);
CREATE INDEX IF NOT EXISTS baton_entries_event_ts ON baton_entries (event, ts);

-- Each chain's head as archived (written in the same transaction as its
-- entries, so it is where the next rows start), its cluster and key.
CREATE TABLE IF NOT EXISTS baton_chains (
    agent       text        PRIMARY KEY,
    cluster     text,
    public_key  bytea,
    head_seq    bigint      NOT NULL,
    head_hash   bytea       NOT NULL,
    archived_by text        NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now()
);

CREATE OR REPLACE FUNCTION baton_append_only() RETURNS trigger
LANGUAGE plpgsql AS $$
BEGIN
    RAISE EXCEPTION 'baton_entries is append-only: % refused', TG_OP;
END
$$;

DROP TRIGGER IF EXISTS baton_entries_append_only ON baton_entries;
CREATE TRIGGER baton_entries_append_only
    BEFORE UPDATE OR DELETE ON baton_entries
    FOR EACH ROW EXECUTE FUNCTION baton_append_only();

-- (CockroachDB: no statement triggers; revoke TRUNCATE instead)
DROP TRIGGER IF EXISTS baton_entries_no_truncate ON baton_entries;
CREATE TRIGGER baton_entries_no_truncate
    BEFORE TRUNCATE ON baton_entries
    FOR EACH STATEMENT EXECUTE FUNCTION baton_append_only();

-- Views for operators.

-- The newest archived entry of each chain.
CREATE OR REPLACE VIEW baton_latest AS
SELECT c.agent, c.cluster, e.seq, e.ts, e.event, e.context, e.data
FROM baton_chains c
JOIN baton_entries e ON e.agent = c.agent AND e.seq = c.head_seq;

-- Entries per UTC day per cluster.
CREATE OR REPLACE VIEW baton_entries_per_day AS
SELECT c.cluster, date_trunc('day', e.ts AT TIME ZONE 'UTC') AS day, count(*) AS entries
FROM baton_entries e
JOIN baton_chains c ON c.agent = e.agent
GROUP BY c.cluster, date_trunc('day', e.ts AT TIME ZONE 'UTC');

-- The alerts gateways recorded in their own chains in the last day, with
-- what they name.
CREATE OR REPLACE VIEW baton_recent_alerts AS
SELECT e.agent AS gateway, e.seq, e.ts,
       e.data ->> 'kind' AS kind, e.data ->> 'agent' AS agent, e.data ->> 'detail' AS detail
FROM baton_entries e
WHERE e.event = 'alert' AND e.ts > now() - interval '1 day';
