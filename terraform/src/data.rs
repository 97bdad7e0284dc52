//! Data sources: `weft_tenant`, `weft_cluster` (by name), `weft_nodes`, `weft_endpoints`,
//! `weft_identities`. Lists follow `next_cursor` with `limit=1000`.

use std::collections::HashMap;

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{json, Value as J};
use tf_provider::schema::{
    Attribute, AttributeConstraint::*, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{ValueAny, ValueEmpty};
use tf_provider::{map, DataSource, Diagnostics};

use crate::client::{report, transport, Answer, Client, Context};
use crate::rest::{attr, from_json, plain, str_of, string_map};
use crate::Shared;

use AttributeType::{Bool, Number, String as Str};

#[derive(Clone, Copy)]
pub enum Data {
    Tenant,
    Cluster,
    Nodes,
    Endpoints,
    Identities,
}

fn object(fields: &[(&str, AttributeType)]) -> AttributeType {
    AttributeType::List(
        AttributeType::Object(
            fields
                .iter()
                .map(|(k, t)| (k.to_string(), t.clone()))
                .collect(),
        )
        .into(),
    )
}

fn pick(item: &J, fields: &[&str]) -> J {
    J::Object(
        fields
            .iter()
            .map(|f| (f.to_string(), item[*f].clone()))
            .collect(),
    )
}

const NODE: &[&str] = &[
    "id",
    "name",
    "labels",
    "addresses",
    "connected",
    "applied_revision",
    "agent_version",
];
const ENDPOINT: &[&str] = &[
    "id",
    "cluster_id",
    "node_id",
    "name",
    "labels",
    "ipv4",
    "ipv6",
    "identity",
    "state",
];

impl Data {
    fn attributes(self) -> HashMap<String, Attribute> {
        match self {
            Data::Tenant => map! {
                "id" => attr(Str, Computed, "tenant id"),
                "name" => attr(Str, Computed, "tenant name"),
                "display_name" => attr(Str, Computed, "display name"),
                "labels" => attr(string_map(), Computed, "labels"),
            },
            Data::Cluster => map! {
                "name" => attr(Str, Required, "the cluster's name"),
                "id" => attr(Str, Computed, "cluster id"),
                "description" => attr(Str, Computed, "description"),
                "labels" => attr(string_map(), Computed, "labels"),
            },
            Data::Nodes => map! {
                "cluster" => attr(Str, Required, "cluster name or id"),
                "nodes" => attr(object(&[
                    ("id", Str), ("name", Str), ("labels", string_map()),
                    ("addresses", AttributeType::List(Str.into())),
                    ("connected", Bool), ("applied_revision", Number), ("agent_version", Str),
                ]), Computed, "the cluster's nodes with their status"),
            },
            Data::Endpoints => map! {
                "cluster" => attr(Str, Optional, "cluster name or id"),
                "labels" => attr(Str, Optional, "label selector, e.g. app=web"),
                "endpoints" => attr(object(&[
                    ("id", Str), ("cluster_id", Str), ("node_id", Str), ("name", Str),
                    ("labels", string_map()), ("ipv4", Str), ("ipv6", Str),
                    ("identity", Number), ("state", Str),
                ]), Computed, "workload endpoints"),
            },
            Data::Identities => map! {
                "labels" => attr(Str, Optional, "label selector"),
                "identities" => attr(object(&[("number", Number), ("labels", string_map())]),
                    Computed, "security identities"),
            },
        }
    }

    async fn fetch(self, client: &Client, config: &J) -> Result<J, Answer> {
        let get = |path: String| async move {
            let a = client
                .call(Method::GET, &path, None, None)
                .await
                .map_err(transport)?;
            if a.status == 200 {
                Ok(a.body)
            } else {
                Err(a)
            }
        };
        let query = |keys: &[&str]| {
            let q: Vec<String> = keys
                .iter()
                .filter_map(|k| config[*k].as_str().map(|v| format!("{k}={}", encode(v))))
                .collect();
            if q.is_empty() {
                String::new()
            } else {
                format!("?{}", q.join("&"))
            }
        };
        Ok(match self {
            Data::Tenant => {
                let t = get(format!("/v1/tenants/{}", client.tenant)).await?;
                pick(&t, &["id", "name", "display_name", "labels"])
            }
            Data::Cluster => {
                let c = get(client.tenant_path(&format!("/clusters/{}", str_of(config, "name"))))
                    .await?;
                pick(&c, &["id", "name", "description", "labels"])
            }
            Data::Nodes => {
                let items = client
                    .list(
                        &client
                            .tenant_path(&format!("/clusters/{}/nodes", str_of(config, "cluster"))),
                    )
                    .await?;
                let nodes: Vec<J> = items
                    .iter()
                    .map(|n| {
                        let mut flat = n.clone();
                        flat["connected"] = n["status"]["connected"].clone();
                        flat["applied_revision"] = n["status"]["applied_revision"].clone();
                        flat["agent_version"] = n["status"]["agent_version"].clone();
                        pick(&flat, NODE)
                    })
                    .collect();
                json!({"cluster": config["cluster"], "nodes": nodes})
            }
            Data::Endpoints => {
                let items = client
                    .list(
                        &client
                            .tenant_path(&format!("/endpoints{}", query(&["cluster", "labels"]))),
                    )
                    .await?;
                let list: Vec<J> = items.iter().map(|e| pick(e, ENDPOINT)).collect();
                json!({"cluster": config["cluster"], "labels": config["labels"], "endpoints": list})
            }
            Data::Identities => {
                let items = client
                    .list(&client.tenant_path(&format!("/identities{}", query(&["labels"]))))
                    .await?;
                let list: Vec<J> = items
                    .iter()
                    .map(|i| pick(i, &["number", "labels"]))
                    .collect();
                json!({"labels": config["labels"], "identities": list})
            }
        })
    }
}

/// Percent-encodes a query value.
fn encode(v: &str) -> String {
    v.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub struct DataSourceOf(pub Shared, pub Data);

#[async_trait]
impl DataSource for DataSourceOf {
    type State<'a> = ValueAny;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::plain("Weft data source"),
                attributes: self.1.attributes(),
                ..Default::default()
            },
        })
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        config: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::State<'a>> {
        let client = self.0.client(diags)?;
        let config = plain(&config);
        match self.1.fetch(&client, &config).await {
            Ok(j) => {
                let names = self.1.attributes();
                Some(ValueAny::Map(
                    names
                        .keys()
                        .map(|k| (k.clone(), from_json(&j[k.as_str()])))
                        .collect(),
                ))
            }
            Err(a) => {
                report(
                    diags,
                    &Context {
                        doing: "reading a data source".into(),
                        role: "viewer",
                        sent_revision: None,
                        nested: &[],
                    },
                    &a,
                );
                None
            }
        }
    }
}
