-- BGP mode: a cluster's BGPPeers, BGPAdvertisements and Communities, each stored whole as the
-- validated object (JSON). Changes bump cluster_revision like the rest of the cluster state.

CREATE TABLE bgp_objects (
    cluster TEXT NOT NULL,
    kind    TEXT NOT NULL,               -- peer, advertisement, community
    name    TEXT NOT NULL,
    spec    TEXT NOT NULL,
    PRIMARY KEY (cluster, kind, name)
);
