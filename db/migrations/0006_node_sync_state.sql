-- What the control plane last sent each node, at which revision: an agent that reconnects
-- with that revision gets only the difference to the current state instead of a snapshot.
CREATE TABLE node_sync_state (
    node_id    uuid PRIMARY KEY REFERENCES nodes (id) ON DELETE CASCADE,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    revision   bigint NOT NULL,
    state      jsonb NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT now()
);

ALTER TABLE node_sync_state ENABLE ROW LEVEL SECURITY;
ALTER TABLE node_sync_state FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON node_sync_state
    USING (tenant_id = weft_tenant()) WITH CHECK (tenant_id = weft_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON node_sync_state TO weft_app;
