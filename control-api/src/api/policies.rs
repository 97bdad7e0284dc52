//! `/v1/tenants/{tenant}/policies`: network policies, tenant-wide unless scoped to
//! clusters. The spec is CiliumNetworkPolicy's, so existing policies import as they are.

use std::collections::HashSet;

use axum::extract::{Path, State};
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::{IntoParams, ToSchema};
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;
use weft_model::cnp;
use weft_model::error::FieldError;
use weft_model::labels::Labels;
use weft_model::policy::{self, Condition, PolicySpec};

use super::common::{self, Description, LabelMap, Name, ReadErrors, Scope, WriteErrors};
use crate::auth::{need, Tenant, TenantCtx};
use crate::error::{ApiError, Result};
use crate::extract::{IfMatch, Json, YamlBody};
use crate::pagination::{ListParams, Page, Query};
use crate::state::AppState;
use crate::store::audit::{self, Subject};
use crate::store::policies::{self, PolicyRow, PolicyWrite};
use crate::store::{self, Op};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_policies, create_policy))
        .routes(routes!(get_policy, put_policy, patch_policy, delete_policy))
        .routes(routes!(import_policies))
}

/// Most rules (specs) one policy may hold.
const MAX_SPECS: usize = 64;

/// The writable part of a policy. Give either `spec` (one rule) or `specs` (several),
/// as in CiliumNetworkPolicy.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PolicyInput {
    #[schema(value_type = Name, example = "web-from-frontend")]
    pub name: String,
    #[serde(default)]
    #[schema(value_type = LabelMap)]
    pub labels: Labels,
    #[serde(default)]
    #[schema(value_type = Description)]
    pub description: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spec: Option<PolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schema(min_items = 1, max_items = 64)]
    pub specs: Option<Vec<PolicySpec>>,
    /// Clusters (names or ids) the policy applies to; absent: every cluster of the tenant.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
}

/// A [`PolicyInput`] as the spec states it: its fields, and exactly one of `spec` (an
/// object) or `specs` (an array), which `PolicyInput::rules` checks.
pub struct PolicyDocument;

impl utoipa::PartialSchema for PolicyDocument {
    fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
        use utoipa::openapi::schema::{AllOfBuilder, ObjectBuilder, OneOfBuilder, Type};
        let given = |field: &str, ty: Type| {
            ObjectBuilder::new()
                .property(field, ObjectBuilder::new().schema_type(ty))
                .required(field)
        };
        AllOfBuilder::new()
            .item(utoipa::openapi::Ref::from_schema_name("PolicyInput"))
            .item(
                OneOfBuilder::new()
                    .item(given("spec", Type::Object))
                    .item(given("specs", Type::Array)),
            )
            .description(Some(
                "A policy: exactly one of `spec` (one rule) or `specs` (1 to 64 rules). Each \
                 rule follows Cilium's semantics across its fields, which a schema cannot state: \
                 exactly one of `endpointSelector` or `nodeSelector`, one kind of peer \
                 (endpoints, CIDRs or entities) per ingress/egress rule, L7 rules only with \
                 ports; a violation is answered 400 naming the field.",
            ))
            .into()
    }
}

impl utoipa::ToSchema for PolicyDocument {
    fn schemas(
        schemas: &mut Vec<(
            String,
            utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
        )>,
    ) {
        schemas.push((
            <PolicyInput as utoipa::ToSchema>::name().into(),
            <PolicyInput as utoipa::PartialSchema>::schema(),
        ));
        <PolicyInput as utoipa::ToSchema>::schemas(schemas);
    }
}

impl PolicyInput {
    /// The rules, checked: exactly one of `spec` / `specs`, each valid.
    fn rules(&self) -> Result<Vec<PolicySpec>> {
        let mut errs = Vec::new();
        common::check_common(&mut errs, &self.name, &self.labels, &self.description);
        let specs = match policy::specs_from(self.spec.clone(), self.specs.clone()) {
            Ok(specs) if specs.len() > MAX_SPECS => {
                errs.push(FieldError::new(
                    "specs",
                    format!("at most {MAX_SPECS} rules"),
                ));
                Vec::new()
            }
            Ok(specs) => specs,
            Err(mut e) => {
                errs.append(&mut e);
                Vec::new()
            }
        };
        common::finish(errs)?;
        Ok(specs)
    }
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Policy {
    pub id: Uuid,
    pub name: String,
    pub labels: Labels,
    pub description: String,
    /// The policy's rules (a policy created with `spec` has one).
    pub specs: Vec<PolicySpec>,
    /// Names of the clusters it is limited to; absent: all clusters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<Vec<String>>,
    pub created_at: DateTime<Utc>,
    pub updated_at: DateTime<Utc>,
    pub revision: i64,
    /// "Realized on 41 of 42 nodes", and the fields Weft accepts but does not enforce.
    pub status: PolicyStatus,
}

#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct PolicyStatus {
    /// Nodes whose agent has applied this revision (or a later one) to its maps.
    pub realized_nodes: i64,
    /// Nodes the policy applies to.
    pub total_nodes: i64,
    /// One `NotEnforced` condition per accepted field Weft does not enforce: the traffic
    /// such a field would need is dropped (`UNSUPPORTED_RULE`), never allowed.
    #[serde(default)]
    pub conditions: Vec<Condition>,
}

/// `?strict=true` on an import: refuse what would only be accepted with a `NotEnforced`
/// condition. (An import has no dry run: `dry_run` there is an unknown parameter, refused.)
#[derive(Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ImportParams {
    /// Refuse fields Weft accepts but does not enforce, instead of warning.
    #[serde(default)]
    pub strict: bool,
}

/// Under `strict`, the conditions become field errors.
fn check_strict(strict: bool, conditions: &[Condition]) -> Result<()> {
    if !strict {
        return Ok(());
    }
    common::finish(
        conditions
            .iter()
            .map(|c| {
                FieldError::new(
                    c.field.clone(),
                    format!("not enforced by Weft (refused by strict): {}", c.reason),
                )
            })
            .collect(),
    )
}

/// One `Warning: 299 - "<field>: <reason>"` header per condition, as Kubernetes does, and
/// one per piece of advice (`policy::advice`: enforced, but maybe not as meant).
fn with_warnings(
    mut resp: Response,
    conditions: &[Condition],
    advice: &[(String, String)],
) -> Response {
    let texts = conditions
        .iter()
        .map(|c| format!("{}: not enforced: {}", c.field, c.reason))
        .chain(
            advice
                .iter()
                .map(|(field, text)| format!("{field}: {text}")),
        );
    for text in texts {
        let text = text
            .replace(['"', '\\'], "'")
            .replace(|ch: char| !(ch == ' ' || ch.is_ascii_graphic()), "?");
        if let Ok(v) = HeaderValue::from_str(&format!("299 - \"{text}\"")) {
            resp.headers_mut().append(axum::http::header::WARNING, v);
        }
    }
    resp
}

impl From<PolicyRow> for Policy {
    fn from(r: PolicyRow) -> Self {
        let conditions = policy::conditions(&r.specs);
        Policy {
            id: r.id,
            name: r.name,
            labels: r.labels,
            description: r.description,
            specs: r.specs,
            clusters: r.clusters,
            created_at: r.created_at,
            updated_at: r.updated_at,
            revision: r.revision,
            status: PolicyStatus {
                realized_nodes: r.realized_nodes,
                total_nodes: r.total_nodes,
                conditions,
            },
        }
    }
}

impl From<Policy> for PolicyInput {
    /// One rule reads back as `spec`, several as `specs`, so a merge patch of either
    /// shape applies to what the client last saw.
    fn from(p: Policy) -> Self {
        let (spec, specs) = match <[PolicySpec; 1]>::try_from(p.specs) {
            Ok([one]) => (Some(one), None),
            Err(many) => (None, Some(many)),
        };
        PolicyInput {
            name: p.name,
            labels: p.labels,
            description: p.description,
            spec,
            specs,
            clusters: p.clusters,
        }
    }
}

async fn load(conn: &mut PgConnection, id: Uuid) -> Result<Policy> {
    Ok(policies::load(conn, id).await?.into())
}

/// Query parameters of policy writes.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct WriteParams {
    /// `true`: make every check of the write (the policy's fields, its clusters, a taken
    /// name, `If-Match`) and answer 200 with the policy as it would be, writing nothing: no
    /// revision, no audit entry. Its `revision` and, on create, `id` are the ones the write
    /// would have had.
    #[serde(default)]
    pub dry_run: bool,
    /// Refuse fields Weft accepts but does not enforce, instead of warning.
    #[serde(default)]
    pub strict: bool,
}

/// A dry run's answer: the write's transaction is rolled back (before its audit entry),
/// and the policy it would have written comes back with 200 and no ETag (that revision
/// does not exist).
async fn dry_run_answer(
    tx: sqlx::Transaction<'_, sqlx::Postgres>,
    p: Policy,
    conditions: &[Condition],
) -> Result<Response> {
    tx.rollback().await?;
    let advice = policy::advice(&p.specs);
    Ok(with_warnings(
        axum::response::IntoResponse::into_response(axum::Json(p)),
        conditions,
        &advice,
    ))
}

/// Resolves the `clusters` scope to ids; an unknown cluster is a field error.
async fn cluster_ids(
    conn: &mut PgConnection,
    tenant: Uuid,
    clusters: &Option<Vec<String>>,
) -> Result<Option<Vec<Uuid>>> {
    let Some(keys) = clusters else {
        return Ok(None);
    };
    let mut ids = Vec::with_capacity(keys.len());
    let mut errs = Vec::new();
    for (i, key) in keys.iter().enumerate() {
        match common::find_id(conn, "clusters", Scope::tenant(tenant), key).await? {
            Some(id) => ids.push(id),
            None => errs.push(FieldError::new(
                format!("clusters[{i}]"),
                format!("no cluster {key:?} in this tenant"),
            )),
        }
    }
    common::finish(errs)?;
    Ok(Some(ids))
}

/// List policies (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/policies", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"), ListParams),
    responses((status = 200, body = Page<Policy>), ReadErrors),
    security(("bearer" = [])))]
async fn list_policies(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Query(params): Query<ListParams>,
) -> Result<axum::Json<Page<Policy>>> {
    let list = params.resolve()?;
    let mut tx = t.begin(&st.pool).await?;
    let rows = policies::list(&mut tx, t.id, &list).await?;
    let rows = rows.into_iter().map(Policy::from).collect();
    Ok(axum::Json(list.page(rows, |p: &Policy| p.id)))
}

/// Get a policy by id or name (viewer).
#[utoipa::path(get, path = "/v1/tenants/{tenant}/policies/{policy}", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("policy" = String, Path, description = "Policy id or name")),
    responses((status = 200, body = Policy, headers(("ETag" = String))), ReadErrors),
    security(("bearer" = [])))]
async fn get_policy(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Viewer>,
    Path((_tenant, policy)): Path<(String, String)>,
) -> Result<Response> {
    let mut conn = t.begin(&st.pool).await?;
    let id = common::require_id(
        &mut conn,
        "policies",
        "policy",
        Scope::tenant(t.id),
        &policy,
    )
    .await?;
    let p = load(&mut conn, id).await?;
    Ok(common::ok(p.revision, p))
}

/// Inserts a new policy inside the caller's transaction.
async fn insert(
    tx: &mut PgConnection,
    tenant: Uuid,
    input: &PolicyInput,
    specs: &[PolicySpec],
    clusters: Option<Vec<Uuid>>,
) -> Result<(i64, Uuid)> {
    let id = Uuid::now_v7();
    let rev = store::bump_revision(tx, tenant, "policy", id, Op::Create).await?;
    policies::insert(
        tx,
        tenant,
        id,
        rev,
        PolicyWrite {
            name: &input.name,
            labels: &input.labels,
            description: &input.description,
            specs,
            clusters,
        },
    )
    .await?;
    Ok((rev, id))
}

/// Rewrites an existing policy inside the caller's transaction (row already locked).
async fn rewrite(
    tx: &mut PgConnection,
    tenant: Uuid,
    id: Uuid,
    input: &PolicyInput,
    specs: &[PolicySpec],
    clusters: Option<Vec<Uuid>>,
) -> Result<i64> {
    let rev = store::bump_revision(tx, tenant, "policy", id, Op::Update).await?;
    policies::update(
        tx,
        id,
        rev,
        PolicyWrite {
            name: &input.name,
            labels: &input.labels,
            description: &input.description,
            specs,
            clusters,
        },
    )
    .await?;
    Ok(rev)
}

/// Create a policy (editor). With `dry_run=true`: 200 with the policy it would create.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/policies", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"), WriteParams),
    request_body = PolicyDocument,
    responses((status = 201, body = Policy, headers(("ETag" = String), ("Location" = String),
        ("Warning" = String, description = "One `299 - \"…\"` per field Weft accepts but does not enforce"))),
              (status = 200, body = Policy, description = "Dry run: the policy as it would be created; nothing written"),
              WriteErrors),
    security(("bearer" = [])))]
async fn create_policy(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Query(params): Query<WriteParams>,
    Json(input): Json<PolicyInput>,
) -> Result<Response> {
    let specs = input.rules()?;
    let conditions = policy::conditions(&specs);
    check_strict(params.strict, &conditions)?;
    let mut tx = t.begin(&st.pool).await?;
    let clusters = cluster_ids(&mut tx, t.id, &input.clusters).await?;
    let (rev, id) = insert(&mut tx, t.id, &input, &specs, clusters).await?;
    let p = load(&mut tx, id).await?;
    if params.dry_run {
        return dry_run_answer(tx, p, &conditions).await;
    }
    audit::created(&mut tx, &t, subject(&p), &p).await?;
    tx.commit().await?;
    tracing::info!(tenant = %t.name, policy = %p.name, revision = rev, "policy created");
    let location = format!("/v1/tenants/{}/policies/{}", t.id, p.id);
    let advice = policy::advice(&specs);
    Ok(with_warnings(
        common::created(rev, location, p),
        &conditions,
        &advice,
    ))
}

fn subject(p: &Policy) -> Subject<'_> {
    Subject {
        kind: "policy",
        id: p.id,
        name: &p.name,
    }
}

async fn update(
    st: &AppState,
    t: &TenantCtx,
    key: &str,
    expected: Option<i64>,
    params: &WriteParams,
    change: impl FnOnce(PolicyInput) -> Result<PolicyInput>,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let (id, current) =
        common::lock_row(&mut tx, "policies", "policy", Scope::tenant(t.id), key).await?;
    let before = load(&mut tx, id).await?;
    let input = change(before.clone().into())?;
    let specs = input.rules()?;
    let conditions = policy::conditions(&specs);
    check_strict(params.strict, &conditions)?;
    common::check_precondition(expected, current)?;
    let clusters = cluster_ids(&mut tx, t.id, &input.clusters).await?;
    let rev = rewrite(&mut tx, t.id, id, &input, &specs, clusters).await?;
    let p = load(&mut tx, id).await?;
    if params.dry_run {
        return dry_run_answer(tx, p, &conditions).await;
    }
    audit::updated(&mut tx, t, subject(&p), &before, &p).await?;
    tx.commit().await?;
    let advice = policy::advice(&specs);
    Ok(with_warnings(common::ok(rev, p), &conditions, &advice))
}

/// Replace a policy (editor). With `dry_run=true`: 200 with the policy as it
/// would be, nothing written.
#[utoipa::path(put, path = "/v1/tenants/{tenant}/policies/{policy}", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("policy" = String, Path, description = "Policy id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC), WriteParams),
    request_body = PolicyDocument,
    responses((status = 200, body = Policy, headers(("ETag" = String),
        ("Warning" = String, description = "One `299 - \"…\"` per field Weft accepts but does not enforce"))), WriteErrors),
    security(("bearer" = [])))]
async fn put_policy(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, policy)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    Query(params): Query<WriteParams>,
    Json(input): Json<PolicyInput>,
) -> Result<Response> {
    update(&st, &t, &policy, expected, &params, |_| Ok(input)).await
}

/// Change some fields of a policy with a JSON merge patch (editor). With `dry_run=true`: 200 with the policy as it
/// would be, nothing written.
#[utoipa::path(patch, path = "/v1/tenants/{tenant}/policies/{policy}", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("policy" = String, Path, description = "Policy id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC), WriteParams),
    request_body(content = Object, content_type = "application/merge-patch+json"),
    responses((status = 200, body = Policy, headers(("ETag" = String),
        ("Warning" = String, description = "One `299 - \"…\"` per field Weft accepts but does not enforce"))), WriteErrors),
    security(("bearer" = [])))]
async fn patch_policy(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, policy)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
    Query(params): Query<WriteParams>,
    Json(patch): Json<serde_json::Map<String, Value>>,
) -> Result<Response> {
    update(&st, &t, &policy, expected, &params, |cur| {
        common::patched(&cur, &patch)
    })
    .await
}

/// Delete a policy (editor).
#[utoipa::path(delete, path = "/v1/tenants/{tenant}/policies/{policy}", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"),
           ("policy" = String, Path, description = "Policy id or name"),
           ("If-Match" = Option<crate::etag::ETag>, Header, nullable = false, description = crate::etag::IF_MATCH_DOC)),
    responses((status = 204, description = "Deleted"), WriteErrors),
    security(("bearer" = [])))]
async fn delete_policy(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Path((_tenant, policy)): Path<(String, String)>,
    IfMatch(expected): IfMatch,
) -> Result<Response> {
    let mut tx = t.begin(&st.pool).await?;
    let id = common::lock_for_write(
        &mut tx,
        "policies",
        "policy",
        Scope::tenant(t.id),
        &policy,
        expected,
    )
    .await?;
    let before = load(&mut tx, id).await?;
    store::bump_revision(&mut tx, t.id, "policy", id, Op::Delete).await?;
    policies::delete(&mut tx, id).await?;
    audit::deleted(&mut tx, &t, subject(&before), &before).await?;
    tx.commit().await?;
    Ok(common::no_content())
}

/// What an import did, per policy name.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct ImportResult {
    pub created: Vec<String>,
    pub updated: Vec<String>,
    pub policies: Vec<Policy>,
}

/// Import CiliumNetworkPolicy / CiliumClusterwideNetworkPolicy YAML (editor): one or many
/// `---` documents, `spec` or `specs`. Policies are created or replaced by name, all or
/// nothing: one bad document fails the import and each bad document's errors are listed
/// with field paths like `documents[2].spec.ingress[0].fromCIDR[0]`.
#[utoipa::path(post, path = "/v1/tenants/{tenant}/policies/import", tag = "policies",
    params(("tenant" = String, Path, description = "Tenant id or name"), ImportParams),
    request_body(content = String, content_type = "application/yaml",
        description = "CiliumNetworkPolicy YAML, one or more documents"),
    responses((status = 200, body = ImportResult, headers(
        ("Warning" = String, description = "One `299 - \"…\"` per field Weft accepts but does not enforce"))), WriteErrors),
    security(("bearer" = [])))]
async fn import_policies(
    State(st): State<AppState>,
    Tenant(t, _): Tenant<need::Editor>,
    Query(params): Query<ImportParams>,
    YamlBody(yaml): YamlBody,
) -> Result<Response> {
    let imported = cnp::parse_cnp_documents(&yaml).map_err(|docs| {
        ApiError::validation(
            docs.into_iter()
                .flat_map(|d| {
                    let doc = d.document;
                    d.errors.into_iter().map(move |e| {
                        FieldError::new(format!("documents[{doc}].{}", e.field), e.message)
                    })
                })
                .collect(),
        )
    })?;
    let mut seen = HashSet::new();
    let dups: Vec<FieldError> = imported
        .iter()
        .enumerate()
        .filter(|(_, p)| !seen.insert(p.name.clone()))
        .map(|(i, p)| {
            FieldError::new(
                format!("documents[{i}].metadata.name"),
                format!("policy {:?} appears more than once in this import", p.name),
            )
        })
        .collect();
    common::finish(dups)?;
    // YAML's "\0" escape reaches here; PostgreSQL cannot store it.
    let nul: Vec<FieldError> = imported
        .iter()
        .enumerate()
        .filter_map(|(i, p)| {
            let doc = serde_json::to_value((&p.labels, &p.specs)).ok()?;
            crate::extract::nul_at(&doc, String::new()).map(|_| {
                FieldError::new(
                    format!("documents[{i}]"),
                    "must not contain the NUL character (U+0000)",
                )
            })
        })
        .collect();
    common::finish(nul)?;
    // Conditions per document, with paths as the document wrote them (`spec` or `specs[i]`).
    let (mut conditions, mut advice) = (Vec::new(), Vec::new());
    for (i, p) in imported.iter().enumerate() {
        for c in policy::conditions(&p.specs) {
            conditions.push(Condition {
                field: format!("documents[{i}].{}", c.field),
                ..c
            });
        }
        for (field, text) in policy::advice(&p.specs) {
            advice.push((format!("documents[{i}].{field}"), text));
        }
    }
    check_strict(params.strict, &conditions)?;

    let mut tx = t.begin(&st.pool).await?;
    let mut result = ImportResult {
        created: vec![],
        updated: vec![],
        policies: vec![],
    };
    for p in imported {
        let input = PolicyInput {
            name: p.name.clone(),
            labels: p.labels,
            description: String::new(),
            spec: None,
            specs: Some(p.specs),
            clusters: None,
        };
        let specs = input.rules()?;
        let existing = common::find_id(&mut tx, "policies", Scope::tenant(t.id), &p.name).await?;
        let before = match existing {
            Some(id) => {
                store::rows::lock(&mut tx, "policies", id).await?;
                Some(load(&mut tx, id).await?)
            }
            None => None,
        };
        let id = match existing {
            Some(id) => {
                rewrite(&mut tx, t.id, id, &input, &specs, None).await?;
                result.updated.push(p.name);
                id
            }
            None => {
                let (_, id) = insert(&mut tx, t.id, &input, &specs, None).await?;
                result.created.push(p.name);
                id
            }
        };
        let after = load(&mut tx, id).await?;
        let action = if before.is_some() {
            "import-update"
        } else {
            "import-create"
        };
        let before = before.as_ref().and_then(audit::snapshot);
        audit::record(
            &mut tx,
            &t,
            action,
            subject(&after),
            before,
            audit::snapshot(&after),
        )
        .await?;
        result.policies.push(after);
    }
    tx.commit().await?;
    tracing::info!(tenant = %t.name, created = result.created.len(), updated = result.updated.len(), "policies imported");
    Ok(with_warnings(
        axum::Json(result).into_response(),
        &conditions,
        &advice,
    ))
}
