//! `terraform-provider-weft`: Weft's tenant as Terraform resources, over the REST API.

mod client;
mod cluster;
mod data;
mod policy;
mod rest;
mod service;
mod tokens;

use std::collections::HashMap;
use std::sync::{Arc, RwLock};

use async_trait::async_trait;
use serde::{Deserialize, Serialize};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{ValueEmpty, ValueString};
use tf_provider::{map, serve, Diagnostics, DynamicDataSource, DynamicResource, Provider};

use client::Client;

/// The client Configure made, shared with every resource.
#[derive(Clone, Default)]
pub struct Shared(Arc<RwLock<Option<Client>>>);

impl Shared {
    pub fn client(&self, diags: &mut Diagnostics) -> Option<Client> {
        let c = self.0.read().ok().and_then(|c| c.clone());
        if c.is_none() {
            diags.root_error_short("the weft provider is not configured");
        }
        c
    }
}

#[derive(Serialize, Deserialize, Default)]
pub struct Config<'a> {
    #[serde(borrow = "'a")]
    api_url: ValueString<'a>,
    token: ValueString<'a>,
    tenant: ValueString<'a>,
    ca_cert_file: ValueString<'a>,
}

struct WeftProvider(Shared);

fn string(constraint: AttributeConstraint, text: &str, sensitive: bool) -> Attribute {
    Attribute {
        attr_type: AttributeType::String,
        description: Description::plain(text.to_string()),
        constraint,
        sensitive,
        ..Default::default()
    }
}

/// A config value, or the environment variable's when the config leaves it out.
fn setting(v: &ValueString<'_>, env: &str) -> Option<String> {
    v.as_ref_option()
        .map(|s| s.to_string())
        .or_else(|| std::env::var(env).ok())
        .filter(|s| !s.is_empty())
}

#[async_trait]
impl Provider for WeftProvider {
    type Config<'a> = Config<'a>;
    type MetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        use AttributeConstraint::Optional;
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::plain(
                    "Weft: a tenant's clusters, policies, services, tokens and members",
                ),
                attributes: map! {
                    "api_url" => string(Optional, "API base URL (or WEFT_API_URL)", false),
                    "token" => string(Optional, "API token or OIDC access token (or WEFT_TOKEN)", true),
                    "tenant" => string(Optional, "tenant name (or WEFT_TENANT); default: the token's tenant", false),
                    "ca_cert_file" => string(Optional, "PEM file of certificates to trust for the API beside the system's: a private CA or a self-signed certificate (or WEFT_CA_CERT)", false),
                },
                ..Default::default()
            },
        })
    }

    async fn configure<'a>(
        &self,
        diags: &mut Diagnostics,
        _terraform_version: String,
        config: Self::Config<'a>,
    ) -> Option<()> {
        let Some(api_url) = setting(&config.api_url, "WEFT_API_URL") else {
            diags.root_error_short("api_url is not set (nor WEFT_API_URL)");
            return None;
        };
        let Some(token) = setting(&config.token, "WEFT_TOKEN") else {
            diags.root_error_short("token is not set (nor WEFT_TOKEN)");
            return None;
        };
        let ca_cert = setting(&config.ca_cert_file, "WEFT_CA_CERT");
        let mut client = match Client::new(&api_url, &token, ca_cert.as_deref()) {
            Ok(c) => c,
            Err(e) => {
                diags.root_error("ca_cert_file", e);
                return None;
            }
        };
        let me = match client
            .call(reqwest::Method::GET, "/v1/me", None, None)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                diags.root_error("cannot reach the Weft API", e);
                return None;
            }
        };
        if me.status == 401 {
            diags.root_error_short("token invalid, expired or revoked");
            return None;
        }
        if me.status != 200 {
            client::report(
                diags,
                &client::Context {
                    doing: "GET /v1/me".into(),
                    role: "viewer",
                    sent_revision: None,
                    nested: &[],
                },
                &me,
            );
            return None;
        }
        let seen: Vec<String> = me.body["tenants"]
            .as_array()
            .map(|ts| {
                ts.iter()
                    .filter_map(|t| t["name"].as_str().map(str::to_string))
                    .collect()
            })
            .unwrap_or_default();
        let operator = me.body["kind"].as_str() == Some("operator");
        client.tenant = match setting(&config.tenant, "WEFT_TENANT") {
            Some(t) if operator || seen.contains(&t) => t,
            Some(t) => {
                diags.root_error(
                    format!("tenant {t:?} is not one this token sees"),
                    format!("the token sees: {}", seen.join(", ")),
                );
                return None;
            }
            None if seen.len() == 1 => seen[0].clone(),
            None => {
                diags.root_error(
                    "tenant is not set (nor WEFT_TENANT)",
                    format!("the token sees: {}", seen.join(", ")),
                );
                return None;
            }
        };
        *self.0 .0.write().ok()? = Some(client);
        Some(())
    }

    fn get_resources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicResource>>> {
        Some(map! {
            "cluster" => rest::Rest(self.0.clone(), cluster::Cluster),
            "policy" => rest::Rest(self.0.clone(), policy::Policy),
            "service" => rest::Rest(self.0.clone(), service::Service),
            "join_token" => rest::Rest(self.0.clone(), tokens::JoinToken),
            "api_token" => rest::Rest(self.0.clone(), tokens::ApiToken),
            "member" => rest::Rest(self.0.clone(), tokens::Member),
        })
    }

    fn get_data_sources(
        &self,
        _diags: &mut Diagnostics,
    ) -> Option<HashMap<String, Box<dyn DynamicDataSource>>> {
        use data::{Data, DataSourceOf};
        let d = |k: Data| DataSourceOf(self.0.clone(), k);
        Some(map! {
            "tenant" => d(Data::Tenant),
            "cluster" => d(Data::Cluster),
            "nodes" => d(Data::Nodes),
            "endpoints" => d(Data::Endpoints),
            "identities" => d(Data::Identities),
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    serve("weft", WeftProvider(Shared::default())).await
}
