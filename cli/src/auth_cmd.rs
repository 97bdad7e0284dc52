//! `weft login`, `weft context …`, `weft tenant …`.

use std::time::Duration;

use anyhow::{anyhow, bail, Context as _, Result};
use clap::{Args, Subcommand};
use serde_json::{json, Value};

use crate::client::{Client, Target};
use crate::config::{Config, Context, Credential};
use crate::output::{self, Format};

/// Sign in and save a context (API URL + tenant + credential).
#[derive(Args)]
#[command(after_help = "Examples:\n  \
    weft login --api-url https://weft.example.com --token weft_…        # an API token\n  \
    weft login --api-url https://weft.example.com --issuer https://id.example.com\n  \
    weft login --tenant acme --name acme-prod                         # pick tenant and context name\n\n\
    With --issuer (or WEFT_OIDC_ISSUER) it signs you in with OpenID Connect: it prints a URL to\n\
    open (and opens $BROWSER when set) and listens on http://127.0.0.1:<port>/callback for the\n\
    answer. Credentials are stored 0600 in $XDG_CONFIG_HOME/weft/config.yaml and never printed.")]
pub struct LoginArgs {
    /// A tenant API token (`weft_…`) instead of an OpenID Connect sign-in.
    #[arg(long, conflicts_with_all = ["issuer", "token_stdin"])]
    token: Option<String>,
    /// Read the API token from standard input (keeps it out of the shell history).
    #[arg(long)]
    token_stdin: bool,
    /// OpenID Connect issuer to sign in with.
    #[arg(long, env = "WEFT_OIDC_ISSUER")]
    issuer: Option<String>,
    /// OAuth client id registered for the CLI at the issuer (a public client).
    #[arg(long, env = "WEFT_OIDC_CLIENT_ID", default_value = "weft-cli")]
    client_id: String,
    /// Resource indicator (RFC 8707) to ask access tokens for: the API's audience.
    #[arg(long, env = "WEFT_OIDC_RESOURCE")]
    resource: Option<String>,
    /// Scopes to ask for; `offline_access` gets a refresh token where the issuer allows.
    #[arg(long, default_value = "openid email offline_access")]
    scopes: String,
    /// How long to wait for the browser sign-in, in seconds.
    #[arg(long, default_value_t = 300)]
    timeout_seconds: u64,
    /// Name of the context to save (default: the tenant's name, else `default`).
    #[arg(long)]
    name: Option<String>,
}

/// Contexts: API URL + tenant + credential, saved by `weft login`.
#[derive(Subcommand)]
pub enum ContextCmd {
    /// List contexts (credentials are never shown).
    #[command(after_help = "Example:\n  weft context list -o json")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Make a context the current one.
    #[command(after_help = "Example:\n  weft context use acme-prod")]
    Use { name: String },
    /// Delete a context and its stored credential.
    #[command(after_help = "Example:\n  weft context delete old")]
    Delete { name: String },
}

/// Tenants you can see, and creating one (a signed-in person becomes its owner).
#[derive(Subcommand)]
pub enum TenantCmd {
    /// List the tenants the caller can see.
    #[command(after_help = "Example:\n  weft tenant list")]
    List {
        /// Output format.
        #[arg(short, long, value_enum, default_value_t)]
        output: Format,
    },
    /// Create a tenant (as a signed-in person, you become its owner).
    #[command(after_help = "Example:\n  weft tenant create acme --use")]
    Create {
        name: String,
        #[arg(long)]
        display_name: Option<String>,
        /// Also make it the current context's tenant.
        #[arg(long = "use")]
        use_it: bool,
    },
    /// Make this the current context's tenant.
    #[command(after_help = "Example:\n  weft tenant use acme")]
    Use { name: String },
}

pub async fn login(target: &Target, a: LoginArgs) -> Result<()> {
    let mut cfg = Config::load()?;
    let existing = cfg.context(target.context.as_deref()).ok().flatten();
    let api_url = target
        .api_url
        .clone()
        .or_else(|| existing.as_ref().map(|(_, c)| c.api_url.clone()))
        .ok_or_else(|| anyhow!("which API? pass --api-url URL (or set WEFT_API_URL)"))?;
    let api_url = api_url.trim_end_matches('/').to_string();
    let ca_cert = target
        .ca_cert
        .clone()
        .or_else(|| existing.as_ref().and_then(|(_, c)| c.ca_cert.clone()))
        .map(|p| std::path::absolute(&p).unwrap_or(p));
    let token = match (a.token, a.token_stdin) {
        (Some(t), _) => Some(t),
        (None, true) => {
            let mut t = String::new();
            std::io::stdin()
                .read_line(&mut t)
                .context("reading the token from standard input")?;
            Some(t.trim().to_string())
        }
        (None, false) => None,
    };
    let credential = match token {
        Some(t) if t.is_empty() => bail!("the token is empty"),
        Some(t) => Credential::ApiToken { token: t },
        None => {
            let issuer =
                a.issuer
                    .clone()
                    .or_else(|| match existing.as_ref().map(|(_, c)| &c.credential) {
                        Some(Credential::Oidc(o)) => Some(o.issuer.clone()),
                        _ => None,
                    });
            let Some(issuer) = issuer else {
                bail!(
                    "how to sign in? pass --token weft_… (an API token) or --issuer URL (your \
                     OpenID Connect provider; or set WEFT_OIDC_ISSUER)"
                );
            };
            let http = crate::client::http(ca_cert.as_deref())?;
            let cred = crate::oidc::login(
                &http,
                &crate::oidc::LoginRequest {
                    issuer: &issuer,
                    client_id: &a.client_id,
                    resource: a.resource.as_deref(),
                    scopes: &a.scopes,
                    timeout: Duration::from_secs(a.timeout_seconds),
                },
            )
            .await?;
            Credential::Oidc(cred)
        }
    };
    let bearer = match &credential {
        Credential::ApiToken { token } => token.clone(),
        Credential::Oidc(o) => o.access_token.clone(),
    };
    let client = Client::with_token(&api_url, &bearer, None, ca_cert.as_deref())?;
    let me = client
        .get("/v1/me")
        .await
        .context("the API refused the credential")?
        .body;
    let tenants: Vec<String> = me["tenants"]
        .as_array()
        .map(|ts| {
            ts.iter()
                .filter_map(|t| t["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let tenant = match &target.tenant {
        Some(t) => Some(t.clone()),
        None if tenants.len() == 1 => Some(tenants[0].clone()),
        None => existing
            .as_ref()
            .and_then(|(_, c)| c.tenant.clone())
            .filter(|t| tenants.contains(t)),
    };
    let name = a
        .name
        .or_else(|| tenant.clone())
        .unwrap_or_else(|| "default".to_string());
    // Access tokens need not carry an e-mail: the ID token's is the next best name.
    let signed_in_as = match &credential {
        Credential::Oidc(o) => o.subject.clone(),
        Credential::ApiToken { .. } => None,
    };
    cfg.contexts.insert(
        name.clone(),
        Context {
            api_url: api_url.clone(),
            tenant: tenant.clone(),
            ca_cert,
            credential,
        },
    );
    cfg.current_context = Some(name.clone());
    cfg.save()?;
    let who = me["user"]["email"]
        .as_str()
        .map(str::to_string)
        .or(signed_in_as)
        .unwrap_or_else(|| me["kind"].as_str().unwrap_or("caller").replace('_', " "));
    println!("Logged in to {api_url} as {who}.");
    match &tenant {
        Some(t) => println!("Context {name:?} (tenant {t}) saved and made current."),
        None if tenants.is_empty() => println!(
            "Context {name:?} saved and made current. You belong to no tenant yet: \
             `weft tenant create NAME --use`, or ask an admin to invite you."
        ),
        None => println!(
            "Context {name:?} saved and made current. Pick a tenant: `weft tenant use NAME` \
             (yours: {}).",
            tenants.join(", ")
        ),
    }
    Ok(())
}

pub fn context(cmd: ContextCmd) -> Result<()> {
    let mut cfg = Config::load()?;
    match cmd {
        ContextCmd::List { output } => {
            let data: Vec<Value> = cfg
                .contexts
                .iter()
                .map(|(name, c)| {
                    let user = match &c.credential {
                        Credential::Oidc(o) => o.subject.clone(),
                        Credential::ApiToken { .. } => None,
                    };
                    json!({
                        "name": name,
                        "current": cfg.current_context.as_deref() == Some(name),
                        "api_url": c.api_url,
                        "tenant": c.tenant,
                        "credential": c.credential.describe(),
                        "user": user,
                    })
                })
                .collect();
            output::print(
                output,
                &Value::Array(data.clone()),
                &["current", "name", "api url", "tenant", "credential"],
                || {
                    data.iter()
                        .map(|d| {
                            vec![
                                if d["current"] == true { "*" } else { "" }.to_string(),
                                output::cell(&d["name"]),
                                output::cell(&d["api_url"]),
                                output::cell(&d["tenant"]),
                                match d["user"].as_str() {
                                    Some(u) => format!("oidc ({u})"),
                                    None => output::cell(&d["credential"]),
                                },
                            ]
                        })
                        .collect()
                },
            )
        }
        ContextCmd::Use { name } => {
            if !cfg.contexts.contains_key(&name) {
                bail!("no context {name:?}: see `weft context list`");
            }
            cfg.current_context = Some(name.clone());
            cfg.save()?;
            println!("Switched to context {name:?}.");
            Ok(())
        }
        ContextCmd::Delete { name } => {
            if cfg.contexts.remove(&name).is_none() {
                bail!("no context {name:?}: see `weft context list`");
            }
            if cfg.current_context.as_deref() == Some(&name) {
                cfg.current_context = None;
            }
            cfg.save()?;
            println!("Deleted context {name:?}.");
            Ok(())
        }
    }
}

fn set_current_tenant(tenant: &str) -> Result<()> {
    let mut cfg = Config::load()?;
    let name = cfg
        .current_context
        .clone()
        .ok_or_else(|| anyhow!("no current context: run `weft login` first"))?;
    if let Some(c) = cfg.contexts.get_mut(&name) {
        c.tenant = Some(tenant.to_string());
    }
    cfg.save()?;
    println!("Context {name:?} now uses tenant {tenant}.");
    Ok(())
}

pub async fn tenant(target: &Target, cmd: TenantCmd) -> Result<()> {
    let client = Client::new(target).await?;
    match cmd {
        TenantCmd::List { output } => {
            let items = client.list_all("/v1/tenants", &[]).await?;
            output::print(
                output,
                &Value::Array(items.clone()),
                &["name", "display name", "age"],
                || {
                    items
                        .iter()
                        .map(|t| {
                            vec![
                                output::cell(&t["name"]),
                                output::cell(&t["display_name"]),
                                output::age(&t["created_at"]),
                            ]
                        })
                        .collect()
                },
            )
        }
        TenantCmd::Create {
            name,
            display_name,
            use_it,
        } => {
            let mut body = json!({ "name": name });
            if let Some(d) = display_name {
                body["display_name"] = json!(d);
            }
            client.post("/v1/tenants", body).await?;
            println!("tenant/{name} created");
            if use_it {
                set_current_tenant(&name)?;
            }
            Ok(())
        }
        TenantCmd::Use { name } => {
            client
                .get(&format!("/v1/tenants/{}", crate::client::seg(&name)))
                .await?;
            set_current_tenant(&name)
        }
    }
}
