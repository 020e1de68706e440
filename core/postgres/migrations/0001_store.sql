-- switchboard's store on PostgreSQL: the same records as the embedded store, as tables.
-- Each record's full form is `doc` (the JSON the admin API shows, before masking); the
-- other columns are what queries filter, order and lease by.

-- De-duplication keys. A row exists only once its transaction committed, with the answer
-- every later request with the key gets; a claim in progress is an uncommitted insert,
-- which a concurrent duplicate's insert waits for.
CREATE TABLE sb_keys (
    key         text PRIMARY KEY,
    fingerprint text NOT NULL,
    event_id    uuid,
    response    jsonb NOT NULL,
    -- Past this, the key is free again (the provider's de-duplication window); NULL:
    -- until the event expires.
    dedup_until timestamptz,
    created_at  timestamptz NOT NULL DEFAULT now()
);

-- Events. The inbox is the events whose status is `received`; an instance routing one
-- holds a lease on it (lease_owner, lease_until), which another instance may take over
-- once it has run out.
CREATE TABLE sb_events (
    id              uuid PRIMARY KEY,
    provider        text NOT NULL,
    event_type      text NOT NULL,
    status          text NOT NULL,
    idempotency_key text NOT NULL,
    expires_at      timestamptz NOT NULL,
    lease_owner     uuid,
    lease_until     timestamptz,
    -- Runs of its route that started and did not finish (a poison event is parked
    -- after routes.max_crashes of them).
    route_starts    integer NOT NULL DEFAULT 0,
    doc             jsonb NOT NULL
);
CREATE INDEX sb_events_inbox ON sb_events (id) WHERE status = 'received';
CREATE INDEX sb_events_expiry ON sb_events (expires_at);
CREATE INDEX sb_events_status ON sb_events (status, id);
CREATE INDEX sb_events_provider ON sb_events (provider, id);

-- Outbox actions. `due_ms` is set while the action waits for its next attempt; an
-- instance that took it holds a lease, and a `sending` action's lease is renewed while
-- its attempt runs.
CREATE TABLE sb_actions (
    id          uuid PRIMARY KEY,
    event_id    uuid NOT NULL,
    channel     text NOT NULL,
    provider    text NOT NULL,
    status      text NOT NULL,
    due_ms      bigint,
    lease_owner uuid,
    lease_until timestamptz,
    doc         jsonb NOT NULL
);
CREATE INDEX sb_actions_due ON sb_actions (channel, due_ms) WHERE due_ms IS NOT NULL;
CREATE INDEX sb_actions_sending ON sb_actions (lease_until) WHERE status = 'sending';
CREATE INDEX sb_actions_event ON sb_actions (event_id);
CREATE INDEX sb_actions_status ON sb_actions (status, id);
