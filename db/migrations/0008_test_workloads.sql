-- `weft connectivity test`: echo servers the agents run (test workloads) and the one-shot
-- TCP probes they make, with their results. Tenant-scoped like every other table.

CREATE TABLE test_workloads (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    cluster_id uuid NOT NULL,
    node_id    uuid NOT NULL,
    name       text NOT NULL,
    kind       text NOT NULL CHECK (kind IN ('pod', 'world')),
    ip         inet NOT NULL,
    labels     jsonb NOT NULL DEFAULT '{}'::jsonb,
    echo_ports integer[] NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    -- The desired-state revision that created it: the workload is running once its node
    -- has applied this revision (test workloads are never updated in place).
    revision   bigint NOT NULL,
    CONSTRAINT test_workloads_cluster_name_key UNIQUE (tenant_id, cluster_id, name),
    -- Backs the allocator's lock: two workloads of a cluster never share an address.
    CONSTRAINT test_workloads_cluster_ip_key UNIQUE (tenant_id, cluster_id, ip),
    CONSTRAINT test_workloads_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT test_workloads_node_fk FOREIGN KEY (tenant_id, node_id)
        REFERENCES nodes (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX test_workloads_tenant ON test_workloads (tenant_id, cluster_id, id);

CREATE TABLE probes (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL,
    cluster_id    uuid NOT NULL,
    -- The node whose agent makes the connection.
    node_id       uuid NOT NULL,
    -- Name of the test workload it connects from; NULL: from the node itself. A name, not
    -- a reference: the result outlives the workload.
    from_workload text,
    target_ip     inet NOT NULL,
    target_port   integer NOT NULL CHECK (target_port BETWEEN 1 AND 65535),
    timeout_ms    integer NOT NULL CHECK (timeout_ms > 0),
    labels        jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at    timestamptz NOT NULL DEFAULT now(),
    -- The desired-state revision of its last change (creation, then its result).
    revision      bigint NOT NULL,
    -- The result: all NULL while pending.
    outcome       text CHECK (outcome IN ('connected', 'refused', 'timeout', 'error')),
    detail        text,
    latency_us    bigint,
    reply_from    text,
    finished_at   timestamptz,
    CONSTRAINT probes_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT probes_node_fk FOREIGN KEY (tenant_id, node_id)
        REFERENCES nodes (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX probes_tenant ON probes (tenant_id, cluster_id, id);
-- What the desired-state compiler reads on every push.
CREATE INDEX probes_pending ON probes (tenant_id, node_id) WHERE outcome IS NULL;

DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['test_workloads', 'probes']
    LOOP
        EXECUTE format('ALTER TABLE %I ENABLE ROW LEVEL SECURITY', t);
        EXECUTE format('ALTER TABLE %I FORCE ROW LEVEL SECURITY', t);
        EXECUTE format(
            'CREATE POLICY tenant_isolation ON %I USING (tenant_id = weft_tenant()) '
            'WITH CHECK (tenant_id = weft_tenant())', t);
        EXECUTE format('GRANT SELECT, INSERT, UPDATE, DELETE ON %I TO weft_app', t);
    END LOOP;
END
$$;
