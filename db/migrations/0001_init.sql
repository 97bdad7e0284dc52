-- Weft schema: every tenant-owned row carries tenant_id; every query is scoped by it.
-- Constraint names are stable: the API maps them to 409 answers.

-- One global desired-state revision. A single row (not a sequence) so that writers
-- serialise on it: revisions commit in order, and an agent that follows them never
-- misses a lower revision that committed late.
CREATE TABLE desired_state (
    singleton boolean PRIMARY KEY DEFAULT true CHECK (singleton),
    revision  bigint  NOT NULL
);
INSERT INTO desired_state (singleton, revision) VALUES (true, 0);

CREATE TABLE tenants (
    id           uuid PRIMARY KEY,
    name         text NOT NULL CONSTRAINT tenants_name_key UNIQUE,
    display_name text NOT NULL DEFAULT '',
    labels       jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at   timestamptz NOT NULL DEFAULT now(),
    updated_at   timestamptz NOT NULL DEFAULT now(),
    revision     bigint NOT NULL
);

-- The log of desired-state changes, one row per resource change, in revision order.
-- Agents resume from a revision by reading it (later issues); kept for a bounded window.
CREATE TABLE desired_state_changes (
    revision    bigint NOT NULL PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    kind        text NOT NULL,
    resource_id uuid NOT NULL,
    op          text NOT NULL CHECK (op IN ('create', 'update', 'delete')),
    changed_at  timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX desired_state_changes_tenant ON desired_state_changes (tenant_id, revision);

CREATE TABLE clusters (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    revision    bigint NOT NULL,
    CONSTRAINT clusters_tenant_name_key UNIQUE (tenant_id, name),
    -- lets children reference (tenant_id, cluster) so a row can never point across tenants
    CONSTRAINT clusters_tenant_id_key UNIQUE (tenant_id, id)
);

CREATE TABLE nodes (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    cluster_id       uuid NOT NULL,
    name             text NOT NULL,
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb,
    addresses        inet[] NOT NULL DEFAULT '{}',
    pod_cidrs        cidr[] NOT NULL DEFAULT '{}',
    credential_hash  bytea,
    agent_version    text,
    kernel_version   text,
    last_seen        timestamptz,
    applied_revision bigint NOT NULL DEFAULT 0,
    health           jsonb NOT NULL DEFAULT '{}'::jsonb,
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    revision         bigint NOT NULL,
    CONSTRAINT nodes_cluster_name_key UNIQUE (cluster_id, name),
    CONSTRAINT nodes_tenant_id_key UNIQUE (tenant_id, id),
    CONSTRAINT nodes_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX nodes_tenant ON nodes (tenant_id, id);

-- Join tokens: shown once, stored as SHA-256 of a 256-bit random secret.
CREATE TABLE join_tokens (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    cluster_id uuid NOT NULL,
    name       text NOT NULL,
    token_hash bytea NOT NULL CONSTRAINT join_tokens_hash_key UNIQUE,
    max_uses   integer CHECK (max_uses IS NULL OR max_uses > 0),
    uses       integer NOT NULL DEFAULT 0,
    expires_at timestamptz NOT NULL,
    revoked_at timestamptz,
    created_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT join_tokens_cluster_name_key UNIQUE (cluster_id, name),
    CONSTRAINT join_tokens_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id) ON DELETE CASCADE
);

-- Security identities: a number per distinct label set within a tenant (same labels,
-- same number, across clusters). Numbers below 256 are reserved (host, world, ...).
CREATE TABLE identities (
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    number       bigint NOT NULL CHECK (number >= 256),
    labels       jsonb NOT NULL,
    created_at   timestamptz NOT NULL DEFAULT now(),
    last_used_at timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (tenant_id, number),
    CONSTRAINT identities_tenant_labels_key UNIQUE (tenant_id, labels)
);

CREATE TABLE endpoints (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL,
    cluster_id uuid NOT NULL,
    node_id    uuid NOT NULL,
    name       text NOT NULL,
    labels     jsonb NOT NULL DEFAULT '{}'::jsonb,
    ipv4       inet,
    ipv6       inet,
    identity   bigint,
    state      text NOT NULL DEFAULT 'ready' CHECK (state IN ('creating', 'ready', 'disconnected', 'terminating')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    revision   bigint NOT NULL,
    CONSTRAINT endpoints_node_name_key UNIQUE (node_id, name),
    CONSTRAINT endpoints_node_fk FOREIGN KEY (tenant_id, node_id)
        REFERENCES nodes (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT endpoints_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id) ON DELETE CASCADE,
    CONSTRAINT endpoints_identity_fk FOREIGN KEY (tenant_id, identity)
        REFERENCES identities (tenant_id, number)
);
CREATE INDEX endpoints_tenant ON endpoints (tenant_id, id);

-- Policies are tenant-wide; cluster_ids limits them to some clusters (NULL: all).
CREATE TABLE policies (
    id          uuid PRIMARY KEY,
    tenant_id   uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name        text NOT NULL,
    description text NOT NULL DEFAULT '',
    labels      jsonb NOT NULL DEFAULT '{}'::jsonb,
    specs       jsonb NOT NULL,
    cluster_ids uuid[],
    created_at  timestamptz NOT NULL DEFAULT now(),
    updated_at  timestamptz NOT NULL DEFAULT now(),
    revision    bigint NOT NULL,
    CONSTRAINT policies_tenant_name_key UNIQUE (tenant_id, name)
);
CREATE INDEX policies_tenant ON policies (tenant_id, id);

CREATE TABLE services (
    id               uuid PRIMARY KEY,
    tenant_id        uuid NOT NULL,
    cluster_id       uuid NOT NULL,
    name             text NOT NULL,
    labels           jsonb NOT NULL DEFAULT '{}'::jsonb,
    algorithm        text NOT NULL CHECK (algorithm IN ('random', 'maglev')),
    affinity_timeout integer CHECK (affinity_timeout IS NULL OR affinity_timeout > 0),
    created_at       timestamptz NOT NULL DEFAULT now(),
    updated_at       timestamptz NOT NULL DEFAULT now(),
    revision         bigint NOT NULL,
    CONSTRAINT services_cluster_name_key UNIQUE (cluster_id, name),
    CONSTRAINT services_tenant_id_key UNIQUE (tenant_id, id),
    CONSTRAINT services_cluster_fk FOREIGN KEY (tenant_id, cluster_id)
        REFERENCES clusters (tenant_id, id) ON DELETE CASCADE
);
CREATE INDEX services_tenant ON services (tenant_id, cluster_id, id);

-- A VIP:port/protocol belongs to one service per cluster.
CREATE TABLE service_frontends (
    service_id uuid NOT NULL,
    tenant_id  uuid NOT NULL,
    cluster_id uuid NOT NULL,
    position   integer NOT NULL,
    vip        inet NOT NULL,
    port       integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    protocol   text NOT NULL CHECK (protocol IN ('TCP', 'UDP')),
    PRIMARY KEY (service_id, position),
    CONSTRAINT service_frontends_vip_key UNIQUE (cluster_id, vip, port, protocol),
    CONSTRAINT service_frontends_service_fk FOREIGN KEY (tenant_id, service_id)
        REFERENCES services (tenant_id, id) ON DELETE CASCADE
);

CREATE TABLE service_backends (
    service_id uuid NOT NULL,
    tenant_id  uuid NOT NULL,
    position   integer NOT NULL,
    address    inet NOT NULL,
    port       integer NOT NULL CHECK (port BETWEEN 1 AND 65535),
    weight     integer NOT NULL CHECK (weight BETWEEN 0 AND 65535),
    state      text NOT NULL CHECK (state IN ('active', 'terminating', 'quarantined', 'maintenance')),
    PRIMARY KEY (service_id, position),
    CONSTRAINT service_backends_addr_key UNIQUE (service_id, address, port),
    CONSTRAINT service_backends_service_fk FOREIGN KEY (tenant_id, service_id)
        REFERENCES services (tenant_id, id) ON DELETE CASCADE
);

-- Tenant API tokens: shown once, stored as SHA-256 of a 256-bit random secret.
CREATE TABLE api_tokens (
    id           uuid PRIMARY KEY,
    tenant_id    uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    name         text NOT NULL,
    role         text NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
    token_hash   bytea NOT NULL CONSTRAINT api_tokens_hash_key UNIQUE,
    expires_at   timestamptz,
    last_used_at timestamptz,
    revoked_at   timestamptz,
    created_at   timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT api_tokens_tenant_name_key UNIQUE (tenant_id, name)
);
