-- The second wall: row-level security on every tenant-owned table, enforced for the role
-- the API runs its requests as, plus the audit log.

-- The role requests run as. NOLOGIN: the API connects as the schema owner (which runs the
-- migrations) and switches to it with SET ROLE on every pooled connection. It can neither
-- bypass RLS nor change the schema. Roles are per cluster, so create it only once.
DO $$
BEGIN
    IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE rolname = 'weft_app') THEN
        CREATE ROLE weft_app NOLOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE;
    END IF;
EXCEPTION
    -- Another database of the same cluster created it meanwhile.
    WHEN duplicate_object OR unique_violation THEN NULL;
END
$$;
GRANT weft_app TO CURRENT_USER;
GRANT USAGE ON SCHEMA public TO weft_app;

-- The tenant of the current transaction, set by the API with
-- set_config('weft.tenant_id', <id>, true). Unset: no tenant's rows are visible.
CREATE FUNCTION weft_tenant() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('weft.tenant_id', true), '')::uuid $$;

-- Set only by the operator's cross-tenant listing (set_config('weft.all_tenants', 'on', true)).
CREATE FUNCTION weft_all_tenants() RETURNS boolean
    LANGUAGE sql STABLE
    AS $$ SELECT coalesce(current_setting('weft.all_tenants', true), '') = 'on' $$;

CREATE TABLE audit_log (
    id            uuid PRIMARY KEY,
    tenant_id     uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    at            timestamptz NOT NULL DEFAULT now(),
    actor_kind    text NOT NULL CHECK (actor_kind IN ('operator', 'api_token', 'user', 'join_token', 'node')),
    actor_id      uuid,
    actor_name    text NOT NULL,
    action        text NOT NULL,
    resource_kind text NOT NULL,
    resource_id   uuid NOT NULL,
    resource_name text NOT NULL,
    request_id    text NOT NULL,
    before        jsonb,
    after         jsonb
);
CREATE INDEX audit_log_tenant ON audit_log (tenant_id, id);

-- Every tenant-owned table: visible and writable only inside its tenant's transactions.
DO $$
DECLARE
    t text;
BEGIN
    FOREACH t IN ARRAY ARRAY['clusters', 'nodes', 'join_tokens', 'identities', 'endpoints',
                             'policies', 'services', 'service_frontends', 'service_backends',
                             'api_tokens', 'desired_state_changes', 'audit_log']
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

ALTER TABLE tenants ENABLE ROW LEVEL SECURITY;
ALTER TABLE tenants FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON tenants
    USING (id = weft_tenant() OR weft_all_tenants())
    WITH CHECK (id = weft_tenant());
GRANT SELECT, INSERT, UPDATE, DELETE ON tenants TO weft_app;
GRANT SELECT, UPDATE ON desired_state TO weft_app;

-- Authentication happens before the tenant is known. These two narrow lookups are the
-- only way around RLS, and they return only what authentication needs.
CREATE FUNCTION weft_resolve_tenant(key text) RETURNS TABLE (id uuid, name text)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT t.id, t.name FROM tenants t
        WHERE t.name = key
           -- CASE, not AND: SQL does not promise to skip the cast for a non-UUID key.
           OR t.id = CASE WHEN key ~* '^[0-9a-f]{8}-?([0-9a-f]{4}-?){3}[0-9a-f]{12}$'
                          THEN key::uuid END
    $$;

CREATE FUNCTION weft_find_api_token(hash bytea)
    RETURNS TABLE (id uuid, tenant_id uuid, name text, role text, stale boolean)
    LANGUAGE sql STABLE SECURITY DEFINER SET search_path = public
    AS $$
        SELECT a.id, a.tenant_id, a.name, a.role,
               (a.last_used_at IS NULL OR a.last_used_at < now() - interval '1 minute')
        FROM api_tokens a
        WHERE a.token_hash = hash AND a.revoked_at IS NULL
          AND (a.expires_at IS NULL OR a.expires_at > now())
    $$;

CREATE FUNCTION weft_touch_api_token(token uuid) RETURNS void
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$ UPDATE api_tokens SET last_used_at = now() WHERE id = token $$;

REVOKE ALL ON FUNCTION weft_resolve_tenant(text), weft_find_api_token(bytea),
    weft_touch_api_token(uuid) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION weft_resolve_tenant(text), weft_find_api_token(bytea),
    weft_touch_api_token(uuid), weft_tenant(), weft_all_tenants() TO weft_app;
