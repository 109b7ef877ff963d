-- A sharing key joins only the Services of one tenant (a cluster, or an external client): the
-- sharing group becomes 'key:<tenant>\x1f<sharing key>\x1f<backend key>'. Existing shared
-- addresses take the tenant of one of their leases; the leases follow through ON UPDATE CASCADE
-- (and explicitly below, for a store opened without foreign-key enforcement). An address already
-- shared across tenants stays shared by all its holders until they release it.

UPDATE addresses SET share_group = 'key:' || (
    SELECT CASE WHEN l.client = '' THEN 'cluster/' || l.cluster ELSE 'client/' || l.client END
    FROM leases l
    WHERE l.addr = addresses.addr AND l.share_group = addresses.share_group
    LIMIT 1
) || char(31) || substr(share_group, 5)
WHERE share_group LIKE 'key:%'
  AND EXISTS (SELECT 1 FROM leases l WHERE l.addr = addresses.addr AND l.share_group = addresses.share_group);

UPDATE leases SET share_group = (
    SELECT a.share_group FROM addresses a
    WHERE a.addr = leases.addr AND a.share_group LIKE 'key:%' || char(31) || substr(leases.share_group, 5)
    LIMIT 1
)
WHERE share_group LIKE 'key:%'
  AND NOT EXISTS (SELECT 1 FROM addresses a WHERE a.addr = leases.addr AND a.share_group = leases.share_group);
