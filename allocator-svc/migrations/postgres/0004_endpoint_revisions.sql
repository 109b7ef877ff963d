-- The cluster revision that last wrote each Service's endpoints: deciders that keep endpoints in
-- memory read only the rows written since they last looked.

ALTER TABLE service_endpoints ADD COLUMN revision BIGINT NOT NULL DEFAULT 0;
CREATE INDEX service_endpoints_revision ON service_endpoints (revision);
