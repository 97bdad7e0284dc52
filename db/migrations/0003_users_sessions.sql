-- People who sign in with OpenID Connect, their tenant memberships and pending invites,
-- browser sessions, and in-flight sign-ins.
-- memberships and invitations are tenant-owned (tenant_id); users, sessions and
-- oidc_logins belong to a person or a browser, not to a tenant.

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
