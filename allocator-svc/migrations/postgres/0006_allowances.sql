-- An operator's allowance for a cluster: the address ranges (JSON list of pool entries) inside
-- which that cluster may declare pools of its own. A cluster without a row may declare any pool.
CREATE TABLE allowances (
    cluster TEXT PRIMARY KEY,
    ranges  TEXT NOT NULL
);
