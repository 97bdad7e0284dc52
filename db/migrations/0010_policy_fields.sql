-- Cilium on Kubernetes lets a node's own host reach its pods (kubelet probes); a per-cluster
-- setting, on by default as in Cilium.
ALTER TABLE clusters ADD COLUMN allow_host_to_local_pods boolean NOT NULL DEFAULT true;

-- Ports endpoints declare by name (`http=8080/TCP`), for named-port policy rules.
ALTER TABLE endpoints ADD COLUMN named_ports jsonb NOT NULL DEFAULT '[]'::jsonb;
