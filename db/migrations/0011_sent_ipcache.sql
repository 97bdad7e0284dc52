-- The ipcache is the same for every node of a cluster (but for each node's own addresses,
-- which are `host` there): what was sent to each node keeps it by content, once per tenant,
-- instead of one copy per node per change (O(nodes²) bytes written per change).
CREATE TABLE sent_ipcache (
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    digest     bytea NOT NULL,
    entries    jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, digest)
);

ALTER TABLE sent_ipcache ENABLE ROW LEVEL SECURITY;
ALTER TABLE sent_ipcache FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON sent_ipcache
    USING (tenant_id = weft_tenant()) WITH CHECK (tenant_id = weft_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON sent_ipcache TO weft_app;

-- NULL: the state's own `ipcache` is what was sent (rows written before this migration).
ALTER TABLE node_sync_state ADD COLUMN ipcache_digest bytea;
CREATE INDEX node_sync_state_ipcache ON node_sync_state (tenant_id, ipcache_digest);
