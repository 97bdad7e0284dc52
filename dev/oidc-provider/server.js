// Weft's local OpenID Connect provider for the demo and the tests: a real issuer
// (npm oidc-provider v9) with discovery, JWKS, authorization code + PKCE, client
// credentials and JWT access tokens for the Weft API (RFC 8707 resource indicators,
// RFC 9068 access tokens), and a real login form that checks passwords.
//
// Configuration is a JSON file named by WEFT_OIDC_PROVIDER_CONFIG (written by
// `cargo xtask`, mode 0600, so no secret travels on a command line):
//
//   {
//     "issuer": "http://127.0.0.1:PORT", "port": PORT,
//     "resources": { "<audience>": { "scope": "weft", "access_token_ttl": 600 } },
//     "default_resource": "<audience>",
//     "users": [ { "email": "...", "password": "...", "name": "..." } ],
//     "clients": [ { "client_id": "...", "client_secret": "...", "public": false,
//                    "redirect_uris": [...], "post_logout_redirect_uris": [...],
//                    "grant_types": [...], "access_token_ttl": 1 } ]
//   }
//
// Every configured client is first-party: consent is granted without a prompt.

import * as crypto from 'node:crypto';
import * as fs from 'node:fs';
import * as http from 'node:http';

import Provider from 'oidc-provider';

const configPath = process.env.WEFT_OIDC_PROVIDER_CONFIG;
if (!configPath) {
  console.error('WEFT_OIDC_PROVIDER_CONFIG must name the configuration file');
  process.exit(2);
}
const config = JSON.parse(fs.readFileSync(configPath, 'utf8'));

const sha256 = (s) => crypto.createHash('sha256').update(s).digest();

// Users, keyed by a stable subject derived from the e-mail address, so the same person
// has the same `sub` across restarts.
const users = new Map();
for (const u of config.users) {
  const email = u.email.toLowerCase();
  const sub = sha256(`weft-dev-user:${email}`).toString('hex').slice(0, 32);
  users.set(sub, {
    sub, email, name: u.name ?? email, passwordHash: sha256(u.password), emailVerified: u.email_verified ?? true,
  });
}
const userByEmail = (email) => [...users.values()].find((u) => u.email === email.toLowerCase());

const clientTtl = new Map(
  config.clients.filter((c) => c.access_token_ttl).map((c) => [c.client_id, c.access_token_ttl]),
);

// A fresh signing key per start: clients must fetch the JWKS, as with any real issuer.
const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const signingKey = {
  ...privateKey.export({ format: 'jwk' }),
  kid: crypto.randomBytes(8).toString('hex'),
  use: 'sig',
  alg: 'RS256',
};

const provider = new Provider(config.issuer, {
  clients: config.clients.map((c) => ({
    client_id: c.client_id,
    // A public client (the `weft` CLI) has no secret; as a native application its loopback
    // redirect URIs match on any port (RFC 8252 section 7.3).
    ...(c.public ? { application_type: 'native' } : { client_secret: c.client_secret }),
    redirect_uris: c.redirect_uris ?? [],
    post_logout_redirect_uris: c.post_logout_redirect_uris ?? [],
    grant_types: c.grant_types ?? ['authorization_code'],
    response_types: (c.grant_types ?? ['authorization_code']).includes('authorization_code') ? ['code'] : [],
    token_endpoint_auth_method: c.public ? 'none' : 'client_secret_basic',
  })),
  jwks: { keys: [signingKey] },
  cookies: { keys: [crypto.randomBytes(32).toString('hex')] },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name'],
  },
  pkce: { required: () => true },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async (_ctx, _client, oneOf) => oneOf ?? config.default_resource,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (_ctx, indicator, client) => {
        const rs = config.resources[indicator];
        if (!rs) throw new Provider.errors.InvalidTarget(`unknown resource ${indicator}`);
        return {
          scope: rs.scope,
          audience: indicator,
          accessTokenFormat: 'jwt',
          accessTokenTTL: clientTtl.get(client?.clientId) ?? rs.access_token_ttl ?? 600,
          jwt: { sign: { alg: 'RS256' } },
        };
      },
    },
  },
  findAccount: async (_ctx, sub) => {
    const u = users.get(sub);
    if (!u) return undefined;
    return {
      accountId: sub,
      claims: async () => ({ sub, email: u.email, email_verified: u.emailVerified, name: u.name }),
    };
  },
  interactions: { url: async (_ctx, interaction) => `/interaction/${interaction.uid}` },
  ttl: {
    AccessToken: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    ClientCredentials: (_ctx, token) => token.resourceServer?.accessTokenTTL ?? 600,
    AuthorizationCode: 60,
    IdToken: 600,
    Interaction: 600,
    Session: 3600,
    Grant: 3600,
  },
});

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({
  '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;',
}[c]));

// The login form's POST ends in redirects back to the clients (browsers apply
// `form-action` to each redirect of a form submission): allow their redirect origins, and
// loopback on any port for native clients such as the CLI.
const formTargets = [...new Set(config.clients.flatMap((c) => (c.redirect_uris ?? []).map((u) => new URL(u).origin)))];
const FORM_ACTION = ["'self'", ...formTargets, 'http://127.0.0.1:*'].join(' ');

function loginPage(res, uid, { status = 200, error = '', email = '' } = {}) {
  res.writeHead(status, {
    'content-type': 'text/html; charset=utf-8',
    'cache-control': 'no-store',
    'content-security-policy': `default-src 'none'; style-src 'unsafe-inline'; form-action ${FORM_ACTION}`,
  });
  res.end(`<!doctype html>
<html><head><meta charset="utf-8"><title>Sign in to Weft (dev identity provider)</title>
<style>body{font-family:sans-serif;max-width:22rem;margin:4rem auto}label,input,button{display:block;width:100%;margin:.4rem 0}.error{color:#b00}</style>
</head><body>
<h1>Sign in</h1>
<p>Weft development identity provider</p>
${error ? `<p class="error" role="alert">${escapeHtml(error)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
  <label>E-mail <input type="email" name="email" value="${escapeHtml(email)}" required autofocus></label>
  <label>Password <input type="password" name="password" required></label>
  <button type="submit">Sign in</button>
</form>
<form method="post" action="/interaction/${escapeHtml(uid)}/abort"><button type="submit">Cancel</button></form>
</body></html>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16 * 1024) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

function passwordMatches(user, password) {
  // Both sides are SHA-256 digests, so the comparison is constant-time and equal-length.
  return crypto.timingSafeEqual(user.passwordHash, sha256(password));
}

// Consent for our own (first-party) clients: grant what was asked, without a prompt.
async function grantConsent(req, res, details) {
  const { prompt: { details: missing }, params, session, grantId } = details;
  const grant = grantId
    ? await provider.Grant.find(grantId)
    : new provider.Grant({ accountId: session.accountId, clientId: params.client_id });
  if (missing.missingOIDCScope) grant.addOIDCScope(missing.missingOIDCScope.join(' '));
  if (missing.missingOIDCClaims) grant.addOIDCClaims(missing.missingOIDCClaims);
  for (const [indicator, scopes] of Object.entries(missing.missingResourceScopes ?? {})) {
    grant.addResourceScope(indicator, scopes.join(' '));
  }
  const id = await grant.save();
  await provider.interactionFinished(req, res, { consent: { grantId: id } }, { mergeWithLastSubmission: true });
}

async function interaction(req, res, url) {
  const [, , uid, action] = url.pathname.split('/');
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) {
    res.writeHead(400, { 'content-type': 'text/plain' }).end('interaction mismatch');
    return;
  }
  const prompt = details.prompt.name;
  if (req.method === 'GET' && !action) {
    if (prompt === 'login') return loginPage(res, uid);
    if (prompt === 'consent') return grantConsent(req, res, details);
  } else if (req.method === 'POST' && action === 'login' && prompt === 'login') {
    const form = await readForm(req);
    const email = form.get('email') ?? '';
    const user = userByEmail(email);
    // Always hash, so an unknown e-mail takes as long as a wrong password.
    const ok = passwordMatches(user ?? { passwordHash: sha256('\0') }, form.get('password') ?? '') && user;
    if (!ok) {
      console.log(`login refused for ${JSON.stringify(email)}`);
      return loginPage(res, uid, { status: 401, error: 'Invalid e-mail or password.', email });
    }
    console.log(`login accepted for ${user.email}`);
    return provider.interactionFinished(req, res, { login: { accountId: user.sub } }, { mergeWithLastSubmission: false });
  } else if (req.method === 'POST' && action === 'abort') {
    return provider.interactionFinished(req, res, {
      error: 'access_denied', error_description: 'the user cancelled the sign-in',
    }, { mergeWithLastSubmission: false });
  }
  res.writeHead(400, { 'content-type': 'text/plain' }).end(`unexpected ${req.method} in prompt ${prompt}`);
}

const handle = provider.callback();
const server = http.createServer(async (req, res) => {
  const url = new URL(req.url, config.issuer);
  if (url.pathname.startsWith('/interaction/')) {
    try {
      await interaction(req, res, url);
    } catch (err) {
      console.error(`interaction failed: ${err.message}`);
      if (!res.headersSent) res.writeHead(400, { 'content-type': 'text/plain' });
      res.end(`sign-in failed: ${err.message}`);
    }
    return;
  }
  handle(req, res);
});

provider.on('server_error', (_ctx, err) => console.error(`server error: ${err.stack}`));

server.listen(config.port, '127.0.0.1', () => {
  console.log(`weft dev OIDC provider: issuer ${config.issuer}`);
});

for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    server.close(() => process.exit(0));
    setTimeout(() => process.exit(0), 2000).unref();
  });
}
