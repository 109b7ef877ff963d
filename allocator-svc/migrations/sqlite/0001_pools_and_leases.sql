-- ferrolb allocator schema, SQLite (the embedded single-replica store).
--
-- Addresses are 16-byte big-endian keys (IPv4 as ::ffff:a.b.c.d), so byte order is address order
-- and one index serves both families. Times are milliseconds since the Unix epoch.

-- Pools as declared, with their validated spec as JSON.
CREATE TABLE pools (
    name        TEXT PRIMARY KEY,
    spec        TEXT NOT NULL,
    declared_by TEXT NOT NULL,
    created_ms  BIGINT NOT NULL,
    updated_ms  BIGINT NOT NULL
);

-- One row per address in use. The primary key is the invariant that an address has one holder:
-- `share_group` names it, either one owner ('owner:<owner key>') or the services that share the
-- address ('key:<sharing key>\x1f<backend key>'). Leases point at (addr, share_group), so a lease
-- can only sit on an address whose group is its own.
CREATE TABLE addresses (
    addr        BLOB PRIMARY KEY,
    family      BIGINT NOT NULL,
    pool        TEXT NOT NULL,
    share_group TEXT NOT NULL,
    UNIQUE (addr, share_group)
);
CREATE INDEX addresses_pool_group ON addresses (pool, share_group, addr);

-- One row per owner and family: an owner holds at most one address of each family.
CREATE TABLE leases (
    owner_key   TEXT NOT NULL,
    family      BIGINT NOT NULL,
    owner       TEXT NOT NULL,          -- the owner as JSON
    cluster     TEXT NOT NULL,          -- '' for external owners
    namespace   TEXT NOT NULL,
    client      TEXT NOT NULL,          -- '' for services
    addr        BLOB NOT NULL,
    share_group TEXT NOT NULL,
    pool        TEXT NOT NULL,
    primary_rank BIGINT NOT NULL,       -- 0 for the primary family's address
    sharing_key TEXT NOT NULL,
    backend_key TEXT NOT NULL,
    ports       TEXT NOT NULL,          -- JSON
    request     TEXT NOT NULL,          -- the request that made the lease, JSON, for moves
    stranded    BIGINT NOT NULL DEFAULT 0,
    created_ms  BIGINT NOT NULL,
    expires_ms  BIGINT,
    revision    BIGINT NOT NULL,
    PRIMARY KEY (owner_key, family),
    FOREIGN KEY (addr, share_group) REFERENCES addresses (addr, share_group) ON UPDATE CASCADE
);
CREATE INDEX leases_addr ON leases (addr);
CREATE INDEX leases_pool ON leases (pool);
CREATE INDEX leases_expiry ON leases (expires_ms) WHERE expires_ms IS NOT NULL;

-- Ports in use on shared addresses: two services never use the same (protocol, port) of one IP.
CREATE TABLE lease_ports (
    addr      BLOB NOT NULL,
    protocol  BIGINT NOT NULL,
    port      BIGINT NOT NULL,
    owner_key TEXT NOT NULL,
    PRIMARY KEY (addr, protocol, port)
);
CREATE INDEX lease_ports_owner ON lease_ports (owner_key);

-- The last address each owner released per family, offered back within the grace period.
CREATE TABLE recent_releases (
    owner_key   TEXT NOT NULL,
    family      BIGINT NOT NULL,
    addr        BLOB NOT NULL,
    released_ms BIGINT NOT NULL,
    PRIMARY KEY (owner_key, family)
);

-- The store's revision, and the version of the pool configuration. Every writer locks this row
-- first and holds it until it commits, so writers take turns, revisions become visible in order,
-- and a watcher that reads past revision N has seen everything up to N.
CREATE TABLE revision (
    id            BIGINT PRIMARY KEY CHECK (id = 1),
    value         BIGINT NOT NULL,
    pools_version BIGINT NOT NULL
);
INSERT INTO revision (id, value, pools_version) VALUES (1, 0, 0);

-- Every change to a lease, for WatchLeases.
CREATE TABLE lease_events (
    revision  BIGINT PRIMARY KEY,
    kind      BIGINT NOT NULL,
    pool      TEXT NOT NULL,
    lease     TEXT NOT NULL,            -- the lease as JSON
    at_ms     BIGINT NOT NULL
);
