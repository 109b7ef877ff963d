-- What clusters report about themselves, and the announcers connected to any replica.
-- Every change bumps cluster_revision, and every replica recomputes who announces what.

CREATE TABLE cluster_nodes (
    cluster             TEXT NOT NULL,
    name                TEXT NOT NULL,
    labels              TEXT NOT NULL,   -- JSON object
    network_unavailable BIGINT NOT NULL,
    PRIMARY KEY (cluster, name)
);

CREATE TABLE l2_advertisements (
    cluster TEXT NOT NULL,
    name    TEXT NOT NULL,
    spec    TEXT NOT NULL,               -- the validated advertisement, JSON
    PRIMARY KEY (cluster, name)
);

-- Per Service (the owner of a lease): where its serving endpoints run.
CREATE TABLE service_endpoints (
    cluster      TEXT NOT NULL,
    namespace    TEXT NOT NULL,
    name         TEXT NOT NULL,
    nodes        TEXT NOT NULL,          -- JSON array of node names
    any_serving  BIGINT NOT NULL,
    local_policy BIGINT NOT NULL,
    PRIMARY KEY (cluster, namespace, name)
);

-- One row per connected announcer. The replica holding the stream deletes the row the moment the
-- stream breaks or its heartbeats stop, and keeps `expires_ms` ahead while it holds it, so the
-- sessions of a replica that died expire on their own.
CREATE TABLE announcer_sessions (
    cluster    TEXT NOT NULL,
    node       TEXT NOT NULL,
    session    BIGINT NOT NULL,
    replica    TEXT NOT NULL,
    ready      BIGINT NOT NULL,
    expires_ms BIGINT NOT NULL,
    PRIMARY KEY (cluster, node)
);

CREATE TABLE cluster_revision (
    id    BIGINT PRIMARY KEY CHECK (id = 1),
    value BIGINT NOT NULL
);
INSERT INTO cluster_revision (id, value) VALUES (1, 0);
