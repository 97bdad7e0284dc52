-- People who sign in with OpenID Connect, their tenant memberships and pending invites,
-- browser sessions, and in-flight sign-ins.
-- memberships and invitations are tenant-owned (tenant_id, row-level security as in
-- 0002); users, sessions and oidc_logins belong to a person or a browser, not to a tenant.

-- A person, as known to an issuer: (issuer, subject) is the identity; the e-mail is what
-- the issuer last said, and only a verified one binds invites.
CREATE TABLE users (
    id             uuid PRIMARY KEY,
    issuer         text NOT NULL,
    subject        text NOT NULL,
    email          text,
    email_verified boolean NOT NULL DEFAULT false,
    name           text,
    created_at     timestamptz NOT NULL DEFAULT now(),
    last_login_at  timestamptz,
    CONSTRAINT users_issuer_subject_key UNIQUE (issuer, subject)
);
CREATE INDEX users_email ON users (lower(email));

CREATE TABLE memberships (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT memberships_tenant_user_key UNIQUE (tenant_id, user_id)
);
CREATE INDEX memberships_user ON memberships (user_id);

-- An invite by e-mail (stored lower-case); it becomes a membership on the person's first
-- sign-in with that (verified) address.
CREATE TABLE invitations (
    id         uuid PRIMARY KEY,
    tenant_id  uuid NOT NULL REFERENCES tenants (id) ON DELETE CASCADE,
    email      text NOT NULL CHECK (email = lower(email)),
    role       text NOT NULL CHECK (role IN ('owner', 'admin', 'editor', 'viewer')),
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz NOT NULL DEFAULT now(),
    CONSTRAINT invitations_tenant_email_key UNIQUE (tenant_id, email)
);
CREATE INDEX invitations_email ON invitations (email);

-- Browser sessions. Only SHA-256 hashes of the session id and of its CSRF token are kept.
CREATE TABLE sessions (
    id_hash    bytea PRIMARY KEY,
    user_id    uuid NOT NULL REFERENCES users (id) ON DELETE CASCADE,
    csrf_hash  bytea NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now(),
    expires_at timestamptz NOT NULL
);
CREATE INDEX sessions_user ON sessions (user_id);
CREATE INDEX sessions_expires ON sessions (expires_at);

-- Sign-ins under way: the PKCE verifier and nonce wait here, keyed by a hash of the
-- OAuth state, for the few minutes until the issuer sends the browser back.
CREATE TABLE oidc_logins (
    state_hash    bytea PRIMARY KEY,
    pkce_verifier text NOT NULL,
    nonce         text NOT NULL,
    return_to     text NOT NULL,
    expires_at    timestamptz NOT NULL
);
CREATE INDEX oidc_logins_expires ON oidc_logins (expires_at);

-- The person a transaction acts for, set by the API with
-- set_config('weft.user_id', <id>, true): it may see its own memberships in every tenant
-- (for /v1/me and the tenant list), and those tenants, and nothing else across tenants.
CREATE FUNCTION weft_user() RETURNS uuid
    LANGUAGE sql STABLE
    AS $$ SELECT nullif(current_setting('weft.user_id', true), '')::uuid $$;

ALTER TABLE memberships ENABLE ROW LEVEL SECURITY;
ALTER TABLE memberships FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON memberships
    USING (tenant_id = weft_tenant() OR user_id = weft_user())
    WITH CHECK (tenant_id = weft_tenant());

ALTER TABLE invitations ENABLE ROW LEVEL SECURITY;
ALTER TABLE invitations FORCE ROW LEVEL SECURITY;
CREATE POLICY tenant_isolation ON invitations
    USING (tenant_id = weft_tenant())
    WITH CHECK (tenant_id = weft_tenant());

-- A person sees the tenants they belong to (read only; permissive policies add up).
CREATE POLICY member_tenants ON tenants FOR SELECT
    USING (id IN (SELECT m.tenant_id FROM memberships m WHERE m.user_id = weft_user()));

GRANT SELECT, INSERT, UPDATE, DELETE ON memberships, invitations, users, sessions, oidc_logins
    TO weft_app;

-- A time-ordered UUID (version 7), like the ids the API makes: audit entries and
-- memberships written by SQL sort in time with the rest.
CREATE FUNCTION weft_uuid_v7() RETURNS uuid
    LANGUAGE sql VOLATILE
    AS $$
        SELECT encode(
            set_bit(set_bit(
                overlay(uuid_send(gen_random_uuid())
                        PLACING substring(int8send(floor(extract(epoch FROM clock_timestamp()) * 1000)::bigint) FROM 3)
                        FROM 1 FOR 6),
                52, 1), 53, 1),
            'hex')::uuid
    $$;

-- Sign-in turns the invites for a verified e-mail, in whatever tenants they are, into
-- memberships, and records each in that tenant's audit log. The only way across tenants
-- for invites; called after the ID token is verified.
CREATE FUNCTION weft_accept_invites(person uuid, address text, request text) RETURNS bigint
    LANGUAGE sql VOLATILE SECURITY DEFINER SET search_path = public
    AS $$
        WITH invited AS (
            DELETE FROM invitations WHERE email = lower(address) RETURNING tenant_id, role
        ), bound AS (
            INSERT INTO memberships (id, tenant_id, user_id, role)
            SELECT weft_uuid_v7(), tenant_id, person, role FROM invited
            ON CONFLICT ON CONSTRAINT memberships_tenant_user_key DO NOTHING
            RETURNING id, tenant_id, role
        ), audited AS (
            INSERT INTO audit_log (id, tenant_id, actor_kind, actor_id, actor_name, action,
                                   resource_kind, resource_id, resource_name, request_id,
                                   before, after)
            SELECT weft_uuid_v7(), b.tenant_id, 'user', person, lower(address),
                   'accept-invite', 'member', b.id, lower(address), request, NULL,
                   jsonb_build_object('id', b.id, 'status', 'active', 'email', lower(address),
                                      'user_id', person, 'role', b.role)
            FROM bound b
            RETURNING 1
        )
        SELECT count(*) FROM audited
    $$;

REVOKE ALL ON FUNCTION weft_accept_invites(uuid, text, text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION weft_accept_invites(uuid, text, text), weft_user() TO weft_app;
