//! Contexts (API URL + tenant + credential) in `$XDG_CONFIG_HOME/weft/config.yaml`
//! (`~/.config/weft/config.yaml` without it). The file holds secrets: it is written 0600
//! in a 0700 directory, replaced atomically, and never printed.

use std::collections::BTreeMap;
use std::fs;
use std::io::Write;
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

use anyhow::{bail, Context as _, Result};
use serde::{Deserialize, Serialize};

#[derive(Debug, Default, Clone, Serialize, Deserialize, PartialEq)]
pub struct Config {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub current_context: Option<String>,
    #[serde(default)]
    pub contexts: BTreeMap<String, Context>,
}

#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Context {
    pub api_url: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tenant: Option<String>,
    /// A PEM file of certificates to trust for the API beside the system's (a private CA
    /// or a self-signed certificate), from `weft login --ca-cert`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_cert: Option<std::path::PathBuf>,
    pub credential: Credential,
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Credential {
    /// A tenant API token (`weft_…`).
    ApiToken { token: String },
    /// Tokens from an OpenID Connect issuer (`weft login` without `--token`).
    Oidc(OidcCredential),
}

#[derive(Clone, Serialize, Deserialize, PartialEq)]
pub struct OidcCredential {
    pub issuer: String,
    pub client_id: String,
    pub token_endpoint: String,
    pub access_token: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refresh_token: Option<String>,
    /// Unix seconds; absent when the provider did not say.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub expires_at: Option<i64>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub resource: Option<String>,
    /// Who signed in, for `weft context list`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subject: Option<String>,
}

/// Never let a secret reach a log or a terminal through `{:?}`.
impl std::fmt::Debug for Credential {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.describe())
    }
}

impl Credential {
    pub fn describe(&self) -> &'static str {
        match self {
            Credential::ApiToken { .. } => "api-token",
            Credential::Oidc(_) => "oidc",
        }
    }
}

/// The configuration directory: `$XDG_CONFIG_HOME/weft` or `~/.config/weft`.
pub fn dir() -> Result<PathBuf> {
    if let Some(x) = std::env::var_os("XDG_CONFIG_HOME").filter(|v| !v.is_empty()) {
        return Ok(PathBuf::from(x).join("weft"));
    }
    let home = std::env::var_os("HOME")
        .filter(|v| !v.is_empty())
        .context("neither XDG_CONFIG_HOME nor HOME is set: cannot find the weft configuration")?;
    Ok(PathBuf::from(home).join(".config").join("weft"))
}

pub fn path() -> Result<PathBuf> {
    Ok(dir()?.join("config.yaml"))
}

impl Config {
    pub fn load() -> Result<Config> {
        Self::load_from(&path()?)
    }

    pub fn load_from(path: &Path) -> Result<Config> {
        match fs::read_to_string(path) {
            Ok(text) => serde_yaml::from_str(&text)
                .with_context(|| format!("{} is not a valid weft configuration", path.display())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Config::default()),
            Err(e) => Err(e).with_context(|| format!("reading {}", path.display())),
        }
    }

    pub fn save(&self) -> Result<()> {
        self.save_to(&path()?)
    }

    /// Writes a private temporary file beside the target and renames it over, so a crash
    /// never leaves half a file and the secret is never readable by others, even briefly.
    pub fn save_to(&self, path: &Path) -> Result<()> {
        let dir = path
            .parent()
            .context("configuration path has no directory")?;
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        fs::set_permissions(dir, fs::Permissions::from_mode(0o700))
            .with_context(|| format!("making {} private", dir.display()))?;
        let tmp = dir.join(format!(".config.yaml.{}", std::process::id()));
        let text = serde_yaml::to_string(self)?;
        // A leftover from a crashed run could have other permissions: start afresh.
        let _ = fs::remove_file(&tmp);
        let mut f = fs::OpenOptions::new()
            .write(true)
            .create_new(true)
            .mode(0o600)
            .open(&tmp)
            .with_context(|| format!("writing {}", tmp.display()))?;
        f.write_all(text.as_bytes())?;
        f.sync_all()?;
        fs::rename(&tmp, path).with_context(|| format!("replacing {}", path.display()))?;
        Ok(())
    }

    /// The context to use: the named one, else the current one.
    pub fn context(&self, name: Option<&str>) -> Result<Option<(String, Context)>> {
        let Some(name) = name.or(self.current_context.as_deref()) else {
            return Ok(None);
        };
        match self.contexts.get(name) {
            Some(c) => Ok(Some((name.to_string(), c.clone()))),
            None => {
                bail!("no context {name:?}: see `weft context list`, or `weft login` to create it")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn saves_privately_and_reads_back() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("weft/config.yaml");
        let mut cfg = Config::default();
        cfg.contexts.insert(
            "acme".into(),
            Context {
                api_url: "http://127.0.0.1:1".into(),
                tenant: Some("acme".into()),
                ca_cert: None,
                credential: Credential::ApiToken {
                    token: "weft_secret".into(),
                },
            },
        );
        cfg.current_context = Some("acme".into());
        cfg.save_to(&path).unwrap();
        let mode = fs::metadata(&path).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, 0o600);
        let dmode = fs::metadata(path.parent().unwrap())
            .unwrap()
            .permissions()
            .mode()
            & 0o777;
        assert_eq!(dmode, 0o700);
        assert_eq!(Config::load_from(&path).unwrap(), cfg);
        assert!(!format!("{cfg:?}").contains("weft_secret"));
        assert!(cfg.context(Some("nope")).is_err());
        assert_eq!(cfg.context(None).unwrap().unwrap().0, "acme");
    }
}
