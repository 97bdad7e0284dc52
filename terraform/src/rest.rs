//! One implementation of a Terraform resource over a Weft REST collection; each resource
//! ([`Kind`]) says its schema, paths, writable document and how an API object reads back.
//!
//! State is a dynamic object (`ValueAny`), converted to JSON for the kinds; the ETag
//! (`revision`) is the private state, sent as `If-Match` on every update and delete.

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use reqwest::Method;
use serde_json::{Map, Value as J};
use tf_provider::schema::{
    Attribute, AttributeConstraint, AttributeType, Block, Description, Schema,
};
use tf_provider::value::{Value as TfValue, ValueAny, ValueEmpty, ValueNumber};
use tf_provider::{AttributePath, Diagnostics, Resource};

use crate::client::{report, transport, Answer, Client, Context};
use crate::Shared;

/// How an update is sent.
#[derive(PartialEq, Eq, Clone, Copy)]
pub enum Update {
    /// Full PUT of the writable document with `If-Match`.
    Put,
    /// PATCH of the writable document (members: `{"role"}`), no ETag.
    Patch,
    /// Nothing to send: every API attribute forces a replacement (tokens); an update only
    /// changes provider-side settings.
    Local,
}

#[async_trait]
pub trait Kind: Send + Sync + 'static {
    /// `weft_policy`.
    fn type_name(&self) -> &'static str;
    /// "policy", in messages.
    fn noun(&self) -> &'static str;
    /// The role writes need (named on 403).
    fn role(&self) -> &'static str {
        "editor"
    }
    fn description(&self) -> &'static str;
    /// Attributes besides the computed `id`.
    fn attributes(&self) -> HashMap<String, Attribute>;
    /// Attributes whose API field errors may point inside them (`frontends[0].vip`).
    /// No nested attributes or blocks: tf-provider 0.2.2 sends nested attributes with both
    /// `type` and `nested_type`, which Terraform refuses; such attributes are `dynamic`.
    fn nested(&self) -> &'static [&'static str] {
        &[]
    }
    /// Attributes whose change replaces the object.
    fn replaces(&self) -> &'static [&'static str] {
        &[]
    }
    /// Computed attributes that are unknown until the API answers a create.
    fn computed(&self) -> &'static [&'static str] {
        &[]
    }
    fn update(&self) -> Update {
        Update::Put
    }
    /// Plan-time checks of the config (values not known yet are `None`).
    fn validate(&self, _config: &BTreeMap<String, Option<J>>, _diags: &mut Diagnostics) {}
    /// The collection a create POSTs to, relative to the tenant (`/policies`).
    fn collection(&self, state: &J) -> String;
    /// The object's path relative to the tenant, from state (its `id`).
    fn item(&self, state: &J, key: &str) -> String {
        format!("{}/{key}", self.collection(state))
    }
    /// The writable document of a planned state.
    fn input(&self, planned: &J) -> J;
    /// The body of an update (the full writable document, but for members' `{"role"}`).
    fn update_input(&self, planned: &J) -> J {
        self.input(planned)
    }
    /// State from an API object; `prior` is the state (or plan) it refreshes, `None` on import.
    fn state_of(&self, api: &J, prior: Option<&J>) -> J;
    /// The planned state of an update: config values equal in meaning to the prior state's
    /// are given the prior's (so no diff shows).
    fn normalize_plan(&self, _prior: &J, _planned: &mut J) {}
    /// The object an import ID names, as a partial state for [`Kind::fetch`] (its `id` may
    /// be a name, resolved by the fetch).
    fn import_state(&self, id: &str) -> Result<J, String> {
        Ok(serde_json::json!({ "id": id }))
    }
    /// Reads the object of a state: `Ok(None)` when gone.
    async fn fetch(&self, client: &Client, state: &J) -> Result<Option<(J, Option<i64>)>, Answer> {
        let path = client.tenant_path(&self.item(state, str_of(state, "id")));
        let a = client
            .call(Method::GET, &path, None, None)
            .await
            .map_err(transport)?;
        match a.status {
            200 => {
                let rev = a.revision.or_else(|| a.body["revision"].as_i64());
                Ok(Some((a.body, rev)))
            }
            404 => Ok(None),
            _ => Err(a),
        }
    }
    /// Whether `wait_for_realization` applies (an attribute of the kind).
    fn realizes(&self) -> bool {
        false
    }
}

/// A string field of a JSON object, "" when absent.
pub fn str_of<'a>(j: &'a J, key: &str) -> &'a str {
    j[key].as_str().unwrap_or_default()
}

/// JSON of a Terraform value; `None` when any part is unknown.
pub fn to_json(v: &ValueAny) -> Option<J> {
    Some(match v {
        ValueAny::String(s) => J::String(s.clone()),
        ValueAny::Number(n) => J::from(*n),
        ValueAny::Bool(b) => J::Bool(*b),
        ValueAny::List(l) => J::Array(l.iter().map(to_json).collect::<Option<_>>()?),
        ValueAny::Map(m) => J::Object(
            m.iter()
                .map(|(k, v)| Some((k.clone(), to_json(v)?)))
                .collect::<Option<Map<_, _>>>()?,
        ),
        ValueAny::Null => J::Null,
        ValueAny::Unknown => return None,
    })
}

/// JSON of a state or plan, its unknown parts (computed, not yet known) as null.
pub fn plain(v: &ValueAny) -> J {
    match v {
        ValueAny::List(l) => J::Array(l.iter().map(plain).collect()),
        ValueAny::Map(m) => J::Object(m.iter().map(|(k, v)| (k.clone(), plain(v))).collect()),
        ValueAny::Unknown => J::Null,
        v => to_json(v).unwrap_or_default(),
    }
}

pub fn from_json(j: &J) -> ValueAny {
    match j {
        J::String(s) => ValueAny::String(s.clone()),
        J::Number(n) => ValueAny::Number(n.as_i64().unwrap_or_default()),
        J::Bool(b) => ValueAny::Bool(*b),
        J::Array(a) => ValueAny::List(a.iter().map(from_json).collect()),
        J::Object(o) => ValueAny::Map(o.iter().map(|(k, v)| (k.clone(), from_json(v))).collect()),
        J::Null => ValueAny::Null,
    }
}

fn fields(v: &ValueAny) -> BTreeMap<String, ValueAny> {
    match v {
        ValueAny::Map(m) => m.clone(),
        _ => BTreeMap::new(),
    }
}

pub struct Rest<K: Kind>(pub Shared, pub K);

impl<K: Kind> Rest<K> {
    fn names(&self) -> Vec<String> {
        let mut n: Vec<String> = self.1.attributes().into_keys().collect();
        n.push("id".into());
        n
    }

    /// A state object with exactly the schema's attributes (missing ones null).
    fn complete(&self, j: &J) -> ValueAny {
        ValueAny::Map(
            self.names()
                .into_iter()
                .map(|n| {
                    let v = from_json(&j[n.as_str()]);
                    (n, v)
                })
                .collect(),
        )
    }

    fn cx(&self, doing: String, sent_revision: Option<i64>) -> Context<'static> {
        Context {
            doing,
            role: self.1.role(),
            sent_revision,
            nested: self.1.nested(),
        }
    }

    fn what(&self, state: &J) -> String {
        let name = str_of(state, "name");
        let name = if name.is_empty() {
            str_of(state, "email")
        } else {
            name
        };
        format!("{} {name:?}", self.1.noun())
    }

    /// Polls until every node the object applies to runs its revision (`wait_for_realization`).
    async fn wait(&self, client: &Client, state: &J, diags: &mut Diagnostics) -> Option<()> {
        if !(self.1.realizes() && state["wait_for_realization"] == J::Bool(true)) {
            return Some(());
        }
        let deadline = Instant::now() + Duration::from_secs(300);
        loop {
            let (body, _) = match self.1.fetch(client, state).await {
                Ok(Some(found)) => found,
                Ok(None) => return Some(()),
                Err(a) => {
                    report(
                        diags,
                        &self.cx(format!("waiting for {}", self.what(state)), None),
                        &a,
                    );
                    return None;
                }
            };
            let realized = body["status"]["realized_nodes"].as_i64().unwrap_or(0);
            let total = body["status"]["total_nodes"].as_i64().unwrap_or(0);
            if realized >= total {
                return Some(());
            }
            if Instant::now() > deadline {
                let revision = body["revision"].as_i64().unwrap_or(0);
                let behind = nodes_behind(client, state, &body, revision).await;
                diags.root_error(
                    format!(
                        "{} is not realized after 5m: {realized} of {total} nodes",
                        self.what(state)
                    ),
                    format!(
                        "revision {revision} is written; nodes behind (applied_revision < {revision}): {}",
                        if behind.is_empty() { "unknown".to_string() } else { behind.join(", ") }
                    ),
                );
                return None;
            }
            tokio::time::sleep(Duration::from_secs(1)).await;
        }
    }
}

/// The nodes (`cluster/node`) that have not applied `revision`: those of a service's
/// cluster, or of a policy's clusters (every cluster when it has none).
async fn nodes_behind(client: &Client, state: &J, body: &J, revision: i64) -> Vec<String> {
    let clusters: Vec<String> = if let Some(c) = state["cluster"].as_str() {
        vec![c.to_string()]
    } else if let Some(list) = body["clusters"].as_array() {
        list.iter()
            .filter_map(|c| c.as_str().map(str::to_string))
            .collect()
    } else {
        client
            .list(&client.tenant_path("/clusters"))
            .await
            .unwrap_or_default()
            .iter()
            .filter_map(|c| c["name"].as_str().map(str::to_string))
            .collect()
    };
    let mut behind = Vec::new();
    for c in clusters {
        let nodes = client
            .list(&client.tenant_path(&format!("/clusters/{c}/nodes")))
            .await
            .unwrap_or_default();
        for n in nodes {
            if n["status"]["applied_revision"].as_i64().unwrap_or(0) < revision {
                behind.push(format!("{c}/{}", str_of(&n, "name")));
            }
        }
    }
    behind
}

/// The revision (ETag) of what state holds.
type Revision = ValueNumber;

#[async_trait]
impl<K: Kind> Resource for Rest<K> {
    type State<'a> = ValueAny;
    type PrivateState<'a> = Revision;
    type ProviderMetaState<'a> = ValueEmpty;

    fn schema(&self, _diags: &mut Diagnostics) -> Option<Schema> {
        let mut attributes = self.1.attributes();
        attributes.insert(
            "id".into(),
            Attribute {
                attr_type: AttributeType::String,
                description: Description::plain("id (UUID)"),
                constraint: AttributeConstraint::Computed,
                ..Default::default()
            },
        );
        Some(Schema {
            version: 1,
            block: Block {
                description: Description::plain(self.1.description()),
                attributes,
                ..Default::default()
            },
        })
    }

    async fn validate<'a>(&self, diags: &mut Diagnostics, config: Self::State<'a>) -> Option<()> {
        let known = fields(&config)
            .into_iter()
            .map(|(k, v)| {
                let j = to_json(&v);
                (k, j)
            })
            .collect();
        self.1.validate(&known, diags);
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
        let prior = plain(&state);
        match self.1.fetch(&client, &prior).await {
            Ok(None) => None,
            Ok(Some((body, rev))) => Some((
                self.complete(&self.1.state_of(&body, Some(&prior))),
                rev.map_or(TfValue::Null, TfValue::Value),
            )),
            Err(a) => {
                report(
                    diags,
                    &self.cx(format!("reading {}", self.what(&prior)), None),
                    &a,
                );
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
        let mut state = fields(&proposed_state);
        state.insert("id".into(), ValueAny::Unknown);
        for c in self.1.computed() {
            state.insert(c.to_string(), ValueAny::Unknown);
        }
        Some((ValueAny::Map(state), TfValue::Null))
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
        let prior = fields(&prior_state);
        let mut planned = fields(&proposed_state);
        if let (Some(p), Some(mut j)) = (to_json(&prior_state), to_json(&proposed_state)) {
            self.1.normalize_plan(&p, &mut j);
            planned = fields(&self.complete(&j));
        }
        let replace: Vec<AttributePath> = self
            .1
            .replaces()
            .iter()
            .filter(|a| prior.get(**a) != planned.get(**a))
            .map(|a| AttributePath::new(a.to_string()))
            .collect();
        if !replace.is_empty() {
            planned.insert("id".into(), ValueAny::Unknown);
            for c in self.1.computed() {
                planned.insert(c.to_string(), ValueAny::Unknown);
            }
        } else {
            planned.insert(
                "id".into(),
                prior.get("id").cloned().unwrap_or(ValueAny::Null),
            );
        }
        Some((ValueAny::Map(planned), prior_private_state, replace))
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
        let planned = plain(&planned_state);
        let path = client.tenant_path(&self.1.collection(&planned));
        let cx = self.cx(format!("creating {}", self.what(&planned)), None);
        let a = match client
            .call(Method::POST, &path, Some(&self.1.input(&planned)), None)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                report(diags, &cx, &transport(e));
                return None;
            }
        };
        match a.status {
            200 | 201 => {
                let rev = a.revision.or_else(|| a.body["revision"].as_i64());
                let state = self.1.state_of(&a.body, Some(&planned));
                self.wait(&client, &state, diags).await?;
                Some((
                    self.complete(&state),
                    rev.map_or(TfValue::Null, TfValue::Value),
                ))
            }
            409 => {
                let key = self.import_hint(&planned);
                let name = match str_of(&planned, "name") {
                    "" => str_of(&planned, "email"),
                    n => n,
                };
                let summary = if self.1.update() == Update::Local {
                    // Tokens cannot be imported, and a revoked one keeps its name.
                    format!(
                        "{} {name:?} already exists in tenant {} (a revoked token keeps its name): give this one another name",
                        self.1.noun(),
                        client.tenant,
                    )
                } else {
                    format!(
                        "{} {name:?} already exists in tenant {}: import it with terraform import {}.{name} {key}",
                        self.1.noun(),
                        client.tenant,
                        self.1.type_name(),
                    )
                };
                diags.error(
                    summary,
                    format!(
                        "{} (x-request-id {})",
                        str_of(&a.body, "detail"),
                        a.request_id
                    ),
                    AttributePath::new("name"),
                );
                None
            }
            _ => {
                report(diags, &cx, &a);
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
        let prior = plain(&prior_state);
        let planned = plain(&planned_state);
        let method = match self.1.update() {
            Update::Local => return Some((planned_state, planned_private_state)),
            Update::Put => Method::PUT,
            Update::Patch => Method::PATCH,
        };
        let rev = match self.1.update() {
            Update::Put => planned_private_state.as_option(),
            _ => None,
        };
        let path = client.tenant_path(&self.1.item(&prior, str_of(&prior, "id")));
        let cx = self.cx(format!("updating {}", self.what(&prior)), rev);
        let a = match client
            .call(method, &path, Some(&self.1.update_input(&planned)), rev)
            .await
        {
            Ok(a) => a,
            Err(e) => {
                report(diags, &cx, &transport(e));
                return None;
            }
        };
        if a.status != 200 {
            report(diags, &cx, &a);
            return None;
        }
        let rev = a.revision.or_else(|| a.body["revision"].as_i64());
        let state = self.1.state_of(&a.body, Some(&planned));
        self.wait(&client, &state, diags).await?;
        Some((
            self.complete(&state),
            rev.map_or(TfValue::Null, TfValue::Value),
        ))
    }

    async fn destroy<'a>(
        &self,
        diags: &mut Diagnostics,
        prior_state: Self::State<'a>,
        planned_private_state: Self::PrivateState<'a>,
        _meta: Self::ProviderMetaState<'a>,
    ) -> Option<()> {
        let client = self.0.client(diags)?;
        let prior = plain(&prior_state);
        let path = client.tenant_path(&self.1.item(&prior, str_of(&prior, "id")));
        let rev = planned_private_state.as_option();
        let cx = self.cx(format!("deleting {}", self.what(&prior)), rev);
        match client.call(Method::DELETE, &path, None, rev).await {
            Ok(a) if matches!(a.status, 200 | 204 | 404) => Some(()),
            Ok(a) => {
                report(diags, &cx, &a);
                None
            }
            Err(e) => {
                report(diags, &cx, &transport(e));
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
        let partial = match self.1.import_state(&id) {
            Ok(p) => p,
            Err(e) => {
                diags.root_error(format!("cannot import {} {id:?}", self.1.noun()), e);
                return None;
            }
        };
        let cx = self.cx(format!("importing {} {id:?}", self.1.noun()), None);
        match self.1.fetch(&client, &partial).await {
            Ok(Some((body, rev))) => {
                let mut state = self.1.state_of(&body, None);
                // What the import ID gave besides the object (e.g. a service's cluster).
                if let (J::Object(s), J::Object(p)) = (&mut state, &partial) {
                    for (k, v) in p {
                        if k != "id" && s.get(k).is_none_or(J::is_null) {
                            s.insert(k.clone(), v.clone());
                        }
                    }
                }
                Some((
                    self.complete(&state),
                    rev.map_or(TfValue::Null, TfValue::Value),
                ))
            }
            Ok(None) => {
                diags.root_error_short(format!(
                    "no {} {id:?} in tenant {}",
                    self.1.noun(),
                    client.tenant
                ));
                None
            }
            Err(a) => {
                report(diags, &cx, &a);
                None
            }
        }
    }
}

impl<K: Kind> Rest<K> {
    /// The import ID of a planned object (for the 409 hint).
    fn import_hint(&self, planned: &J) -> String {
        let name = match str_of(planned, "name") {
            "" => str_of(planned, "email"),
            n => n,
        };
        match planned["cluster"].as_str() {
            Some(c) if self.1.type_name() == "weft_service" => format!("{c}/{name}"),
            _ => name.to_string(),
        }
    }
}

/// Schema helpers.
pub fn attr(t: AttributeType, c: AttributeConstraint, d: &str) -> Attribute {
    Attribute {
        attr_type: t,
        description: Description::plain(d.to_string()),
        constraint: c,
        ..Default::default()
    }
}

pub fn secret(t: AttributeType, c: AttributeConstraint, d: &str) -> Attribute {
    Attribute {
        sensitive: true,
        ..attr(t, c, d)
    }
}

pub fn string_map() -> AttributeType {
    AttributeType::Map(AttributeType::String.into())
}

/// Checks `name` and `labels` with weft-model's own validation.
pub fn validate_name_labels(
    noun: &str,
    config: &BTreeMap<String, Option<J>>,
    diags: &mut Diagnostics,
) {
    if let Some(Some(J::String(name))) = config.get("name") {
        if let Err(e) = weft_model::names::validate_name(name) {
            diags.error(
                format!("Invalid {noun} name"),
                format!("name: {name:?} {e}"),
                AttributePath::new("name"),
            );
        }
    }
    if let Some(Some(J::Object(labels))) = config.get("labels") {
        let known: Option<weft_model::labels::Labels> = labels
            .iter()
            .map(|(k, v)| Some((k.clone(), v.as_str()?.to_string())))
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
}

/// `labels` of an API object for state: an empty map stays null when the prior had null.
pub fn labels_of(api: &J, prior: Option<&J>) -> J {
    let labels = api["labels"].clone();
    let empty = labels.as_object().is_none_or(Map::is_empty);
    if empty && prior.is_none_or(|p| p["labels"].is_null()) {
        J::Null
    } else {
        labels
    }
}

/// A string field: "" stays null when the prior had null.
pub fn text_of(api: &J, key: &str, prior: Option<&J>) -> J {
    let s = str_of(api, key);
    if s.is_empty() && prior.is_none_or(|p| p[key].is_null()) {
        J::Null
    } else {
        J::String(s.to_string())
    }
}
