-- Dual-stack test workloads: an IPv6 address beside the IPv4 one when the node has an IPv6
-- pod CIDR (a world workload's from the documentation prefix). NULL: IPv4 only.
ALTER TABLE test_workloads ADD COLUMN ip6 inet
    CONSTRAINT test_workloads_ip6_family CHECK (family(ip6) = 6);
ALTER TABLE test_workloads
    ADD CONSTRAINT test_workloads_cluster_ip6_key UNIQUE (tenant_id, cluster_id, ip6);
