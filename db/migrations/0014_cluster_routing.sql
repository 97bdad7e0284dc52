-- How a cluster's nodes carry pod traffic to each other: VXLAN between node addresses
-- (Cilium's default) or native routes per node pod CIDR.
ALTER TABLE clusters ADD COLUMN routing_mode text NOT NULL DEFAULT 'tunnel'
    CONSTRAINT clusters_routing_mode_check CHECK (routing_mode IN ('tunnel', 'native'));

-- The cluster's nodes (name, addresses, pod CIDRs) are shared by every node like the
-- ipcache, and sent with it: kept beside it, under the same digest. NULL: none.
ALTER TABLE sent_ipcache ADD COLUMN nodes jsonb;
