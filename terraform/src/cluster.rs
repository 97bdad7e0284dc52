//! `weft_cluster`: `/v1/tenants/{t}/clusters`. Every call after create uses the id, so a
//! rename is an update in place; the revision (ETag) is the private state, sent as If-Match.

use std::borrow::Cow;
use std::collections::BTreeMap;

use async_trait::async_trait;
use reqwest::Method;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value as TfValue, ValueEmpty, ValueMap, ValueNumber, ValueString};
use tf_provider::{map, AttributePath, Diagnostics, Resource};

use crate::client::{report, Answer};
use crate::Shared;

pub struct ClusterResource(pub Shared);

#[derive(Serialize, Deserialize, Clone, Default)]
pub struct ClusterState<'a> {
    #[serde(borrow = "'a")]
    id: ValueString<'a>,
    name: ValueString<'a>,
    description: ValueString<'a>,
    labels: ValueMap<'a, ValueString<'a>>,
}

/// The revision (ETag) of what state holds.
type Revision = ValueNumber;

fn owned(s: &str) -> ValueString<'static> {
    TfValue::Value(Cow::Owned(s.to_string()))
}

/// The writable document (`ClusterInput`) of a planned state.
fn input(s: &ClusterState<'_>) -> Value {
    let labels: BTreeMap<String, String> = s
        .labels
        .as_ref_option()
        .map(|m| {
            m.iter()
                .filter_map(|(k, v)| Some((k.to_string(), v.as_ref_option()?.to_string())))
                .collect()
        })
        .unwrap_or_default();
    json!({
        "name": s.name.as_deref_option().unwrap_or_default(),
        "description": s.description.as_deref_option().unwrap_or_default(),
        "labels": labels,
    })
}

/// State from the API's cluster; an empty description or label map stays null when the
/// prior state had it null, so leaving them out of the config shows no diff.
fn state_of<'a>(body: &Value, prior: Option<&ClusterState<'_>>) -> ClusterState<'a> {
    let description = body["description"].as_str().unwrap_or_default();
    let labels: BTreeMap<Cow<'a, str>, ValueString<'a>> = body["labels"]
        .as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| (Cow::Owned(k.clone()), owned(v.as_str().unwrap_or_default())))
                .collect()
        })
        .unwrap_or_default();
    let prior_null = |f: fn(&ClusterState<'_>) -> bool| prior.is_none_or(f);
    ClusterState {
        id: owned(body["id"].as_str().unwrap_or_default()),
        name: owned(body["name"].as_str().unwrap_or_default()),
        description: if description.is_empty() && prior_null(|p| p.description.is_null()) {
            TfValue::Null
        } else {
            owned(description)
        },
        labels: if labels.is_empty() && prior_null(|p| p.labels.is_null()) {
            TfValue::Null
        } else {
            TfValue::Value(labels)
        },
    }
}

fn revision(a: &Answer) -> Revision {
    a.revision
        .or_else(|| a.body["revision"].as_i64())
        .map_or(TfValue::Null, TfValue::Value)
}

#[async_trait]
impl Resource for ClusterResource {
    type State<'a> = ClusterState<'a>;
    type PrivateState<'a> = Revision;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let attr = |t: AttributeType, c: AttributeConstraint, d: &str| Attribute {
            attr_type: t,
            description: Description::plain(d.to_string()),
            constraint: c,
            ..Default::default()
        };
        use AttributeConstraint::*;
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::plain("A Weft cluster"),
                attributes: map! {
                    "id" => attr(AttributeType::String, Computed, "cluster id"),
                    "name" => attr(AttributeType::String, Required, "unique in the tenant; a DNS label"),
                    "description" => attr(AttributeType::String, Optional, "free text"),
                    "labels" => attr(AttributeType::Map(AttributeType::String.into()), Optional, "labels"),
                },
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        if let Some(name) = config.name.as_deref_option() {
            if let Err(e) = weft_model::names::validate_name(name) {
                diags.error(
                    "Invalid cluster name",
                    format!("{name:?} {e}"),
                    AttributePath::new("name"),
                );
            }
        }
        if let Some(labels) = config.labels.as_ref_option() {
            let known: Option<weft_model::labels::Labels> = labels
                .iter()
                .map(|(k, v)| Some((k.to_string(), v.as_ref_option()?.to_string())))
                .collect();
            if let Some(known) = known {
                if let Err(errors) = weft_model::labels::validate_labels(&known) {
                    for e in errors {
                        diags.error(
                            "Invalid labels",
                            format!("{}: {}", e.field, e.message),
                            AttributePath::new("labels"),
                        );
                    }
                }
            }
        }
        Some(())
    }

    async fn read<'a>(
        &self,
        diags: &mut Diagnostics,
        state: Self::State<'a>,
        private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let Some(client) = self.0.client(diags) else {
            return Some((state, private_state));
        };
        let id = state.id.as_deref_option().unwrap_or_default().to_string();
        let path = client.tenant_path(&format!("/clusters/{id}"));
        match client.call(Method::GET, &path, None, None).await {
            Ok(a) if a.status == 404 => None,
            Ok(a) if a.status == 200 => Some((state_of(&a.body, Some(&state)), revision(&a))),
            Ok(a) => {
                report(diags, "reading the cluster", &a);
                Some((state, private_state))
            }
            Err(e) => {
                diags.root_error("reading the cluster", e);
                Some((state, private_state))
            }
        }
    }

    async fn plan_create<'a>(
        &self,
        _diags: &mut Diagnostics,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let mut state = proposed_state;
        state.id = TfValue::Unknown;
        Some((state, TfValue::Null))
    }

    async fn plan_update<'a>(
        &self,
        _diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        proposed_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>, Vec<AttributePath>)> {
        let mut state = proposed_state;
        state.id = prior_state.id;
        Some((state, prior_private_state, vec![]))
    }

    async fn plan_destroy<'a>(
        &self,
        _diags: &mut Diagnostics,
        _prior_state: Self::State<'a>,
        prior_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<Self::PrivateState<'a>> {
        Some(prior_private_state)
    }

    async fn create<'a>(
        &self,
        diags: &mut Diagnostics,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        _planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let client = self.0.client(diags)?;
        let path = client.tenant_path("/clusters");
        let a = match client
            .call(Method::POST, &path, Some(&input(&planned_state)), None)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                diags.root_error("creating the cluster", e);
                return None;
            }
        };
        match a.status {
            201 | 200 => Some((state_of(&a.body, Some(&planned_state)), revision(&a))),
            409 => {
                let name = planned_state.name.as_deref_option().unwrap_or_default();
                diags.error(
                    format!(
                        "cluster {name:?} already exists in tenant {}: import it with terraform import weft_cluster.<name> {name}",
                        client.tenant
                    ),
                    a.body["detail"].as_str().unwrap_or_default().to_string(),
                    AttributePath::new("name"),
                );
                None
            }
            _ => {
                report(diags, "creating the cluster", &a);
                None
            }
        }
    }

    async fn update<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        planned_state: Self::State<'a>,
        _config_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let client = self.0.client(diags)?;
        let id = prior_state.id.as_deref_option().unwrap_or_default();
        let path = client.tenant_path(&format!("/clusters/{id}"));
        let a = match client
            .call(
                Method::PUT,
                &path,
                Some(&input(&planned_state)),
                planned_private_state.as_option(),
            )
            .await
        {
            Ok(a) => a,
            Err(e) => {
                diags.root_error("updating the cluster", e);
                return None;
            }
        };
        if a.status == 200 {
            return Some((state_of(&a.body, Some(&planned_state)), revision(&a)));
        }
        report(diags, "updating the cluster", &a);
        None
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let client = self.0.client(diags)?;
        let id = prior_state.id.as_deref_option().unwrap_or_default();
        let path = client.tenant_path(&format!("/clusters/{id}"));
        match client
            .call(
                Method::DELETE,
                &path,
                None,
                planned_private_state.as_option(),
            )
            .await
        {
            Ok(a) if matches!(a.status, 204 | 200 | 404) => Some(()),
            Ok(a) => {
                report(diags, "deleting the cluster", &a);
                None
            }
            Err(e) => {
                diags.root_error("deleting the cluster", e);
                None
            }
        }
    }

    async fn import<'a>(
        &self,
        diags: &mut Diagnostics,
        id: String,
    ) -> Option<(Self::State<'a>, Self::PrivateState<'a>)> {
        let client = self.0.client(diags)?;
        let path = client.tenant_path(&format!("/clusters/{id}"));
        match client.call(Method::GET, &path, None, None).await {
            Ok(a) if a.status == 200 => Some((state_of(&a.body, None), revision(&a))),
            Ok(a) => {
                report(diags, &format!("importing cluster {id:?}"), &a);
                None
            }
            Err(e) => {
                diags.root_error("importing the cluster", e);
                None
            }
        }
    }
}
