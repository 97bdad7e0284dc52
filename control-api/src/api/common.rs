//! Pieces every resource module shares: lookups by id-or-name, guarded writes,
//! merge-patch, responses and the documented error sets.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use serde_json::Value;
use sqlx::PgConnection;
use utoipa::IntoResponses;
use uuid::Uuid;
use weft_model::error::FieldError;
use weft_model::labels::{validate_labels, Labels};
use weft_model::names::validate_name;

use crate::error::{ApiError, Problem, Result};
use crate::etag;
use crate::store;

/// Longest free-text description a resource may carry, in characters.
pub const MAX_DESCRIPTION: usize = 1024;

/// Free text PostgreSQL can store: anything but NUL.
pub const NO_NUL_PATTERN: &str = "^[^\\x00]*$";

pub use weft_model::labels::LabelMap;
pub use weft_model::names::Name;

weft_model::contract_schema! {
    /// A resource's description, as `check_common` accepts it.
    Description => weft_model::contract::string("Free text of at most 1024 characters, without NUL.")
        .max_length(Some(MAX_DESCRIPTION))
        .pattern(Some(NO_NUL_PATTERN))
}

pub use crate::store::rows::{find_id, Scope};

/// Like `find_id` but a missing resource is a 404 naming it.
pub async fn require_id(
    conn: &mut PgConnection,
    table: &'static str,
    what: &str,
    scope: Scope,
    key: &str,
) -> Result<Uuid> {
    find_id(conn, table, scope, key)
        .await?
        .ok_or_else(|| ApiError::not_found(what, key))
}

/// The scope of the path's `{cluster}` (id or name) within the authorized tenant; 404 when
/// the tenant has no such cluster.
pub async fn cluster_scope(
    conn: &mut PgConnection,
    t: &store::TenantCtx,
    cluster: &str,
) -> Result<Scope> {
    let c = require_id(conn, "clusters", "cluster", Scope::tenant(t.id), cluster).await?;
    Ok(Scope::cluster(t.id, c))
}

/// Locks a row for the rest of the transaction and checks `If-Match` against it.
pub async fn lock_for_write(
    conn: &mut PgConnection,
    table: &'static str,
    what: &str,
    scope: Scope,
    key: &str,
    expected: Option<i64>,
) -> Result<Uuid> {
    let (id, current) = lock_row(conn, table, what, scope, key).await?;
    check_precondition(expected, current)?;
    Ok(id)
}

/// Locks a row for the rest of the transaction: its id and current revision. Updates
/// check `If-Match` against the revision only once the new state is validated, so an
/// invalid request is answered 400 whatever its precondition.
pub async fn lock_row(
    conn: &mut PgConnection,
    table: &'static str,
    what: &str,
    scope: Scope,
    key: &str,
) -> Result<(Uuid, i64)> {
    let id = require_id(conn, table, what, scope, key).await?;
    let current = store::rows::lock(conn, table, id).await?;
    Ok((id, current))
}

pub fn check_precondition(expected: Option<i64>, current: i64) -> Result<()> {
    match expected {
        Some(e) if e != current => Err(ApiError::PreconditionFailed(format!(
            "If-Match {} is stale: the resource is now at revision {current}",
            etag::format(e)
        ))),
        _ => Ok(()),
    }
}

/// RFC 7396 JSON merge patch: objects merge, `null` removes, anything else replaces.
pub fn merge_patch(target: &mut Value, patch: &Value) {
    match (target, patch) {
        (Value::Object(t), Value::Object(p)) => {
            for (k, v) in p {
                if v.is_null() {
                    t.remove(k);
                } else {
                    merge_patch(t.entry(k.clone()).or_insert(Value::Null), v);
                }
            }
        }
        (t, p) => *t = p.clone(),
    }
}

/// Applies a merge patch to a resource's writable document and parses the result,
/// so a PATCH is validated exactly like a PUT.
/// The patch is an object (the extractor refuses anything else before any precondition is
/// checked: a patch that is not an object could only replace the whole resource).
pub fn patched<T: Serialize + serde::de::DeserializeOwned>(
    current: &T,
    patch: &serde_json::Map<String, Value>,
) -> Result<T> {
    let mut doc = serde_json::to_value(current).map_err(anyhow::Error::from)?;
    merge_patch(&mut doc, &Value::Object(patch.clone()));
    crate::extract::parse_json(&serde_json::to_vec(&doc).map_err(anyhow::Error::from)?)
}

/// Checks the fields every resource has. Collects into `errs` so one answer lists all.
pub fn check_common(errs: &mut Vec<FieldError>, name: &str, labels: &Labels, description: &str) {
    if let Err(e) = validate_name(name) {
        errs.push(FieldError::new("name", e.to_string()));
    }
    if let Err(mut e) = validate_labels(labels) {
        errs.append(&mut e);
    }
    if description.contains('\0') {
        errs.push(FieldError::new("description", "must not contain NUL"));
    }
    if description.chars().count() > MAX_DESCRIPTION {
        errs.push(FieldError::new(
            "description",
            format!("must be at most {MAX_DESCRIPTION} characters"),
        ));
    }
}

pub fn finish(errs: Vec<FieldError>) -> Result<()> {
    if errs.is_empty() {
        Ok(())
    } else {
        Err(ApiError::validation(errs))
    }
}

/// 200 with the resource and its ETag.
pub fn ok<T: Serialize>(revision: i64, body: T) -> Response {
    etag::tagged(revision, axum::Json(body))
}

/// 201 with the resource, its ETag and its Location.
pub fn created<T: Serialize>(revision: i64, location: String, body: T) -> Response {
    let mut resp = etag::tagged(revision, (StatusCode::CREATED, axum::Json(body)));
    if let Ok(v) = HeaderValue::from_str(&location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

pub fn no_content() -> Response {
    StatusCode::NO_CONTENT.into_response()
}

/// How far a resource's current revision has reached the nodes it applies to.
#[derive(Debug, Clone, Serialize, serde::Deserialize, utoipa::ToSchema)]
pub struct Realization {
    /// Nodes whose agent has applied this revision (or a later one).
    pub realized_nodes: i64,
    /// Nodes the resource applies to.
    pub total_nodes: i64,
}

/// Errors any read may answer.
#[allow(dead_code)] // only read by the OpenAPI generator
#[derive(IntoResponses)]
pub enum ReadErrors {
    /// A query parameter is invalid.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Missing, invalid, expired or revoked credentials.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// No such resource in a tenant the caller can see.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// Too many failed credential attempts from this address; see `Retry-After`.
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// The database is not reachable (stopped, restarting, cut off); retry later. A write
    /// answered so may or may not have been committed: read before retrying a create.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

/// Errors any write may answer.
#[allow(dead_code)] // only read by the OpenAPI generator
#[derive(IntoResponses)]
pub enum WriteErrors {
    /// Invalid body or field; `errors` names each field.
    #[response(status = 400, content_type = "application/problem+json")]
    BadRequest(Problem),
    /// Missing, invalid, expired or revoked credentials.
    #[response(status = 401, content_type = "application/problem+json")]
    Unauthenticated(Problem),
    /// The caller's role in the tenant is too small.
    #[response(status = 403, content_type = "application/problem+json")]
    Forbidden(Problem),
    /// No such resource in a tenant the caller can see.
    #[response(status = 404, content_type = "application/problem+json")]
    NotFound(Problem),
    /// The name (or VIP) is already taken.
    #[response(status = 409, content_type = "application/problem+json")]
    Conflict(Problem),
    /// `If-Match` names a revision that is no longer current.
    #[response(status = 412, content_type = "application/problem+json")]
    PreconditionFailed(Problem),
    /// The body is over 1 MiB.
    #[response(status = 413, content_type = "application/problem+json")]
    PayloadTooLarge(Problem),
    /// The body is not JSON (or YAML where accepted).
    #[response(status = 415, content_type = "application/problem+json")]
    UnsupportedMediaType(Problem),
    /// Too many failed credential attempts from this address; see `Retry-After`.
    #[response(status = 429, content_type = "application/problem+json")]
    TooManyRequests(Problem),
    /// The database is not reachable (stopped, restarting, cut off); retry later. A write
    /// answered so may or may not have been committed: read before retrying a create.
    #[response(status = 503, content_type = "application/problem+json")]
    Unavailable(Problem),
}

#[cfg(test)]
mod tests {
    use super::merge_patch;
    use serde_json::json;

    #[test]
    fn merge_patch_follows_rfc7396() {
        let mut doc = json!({"a": "b", "c": {"d": "e", "f": "g"}, "l": [1, 2]});
        merge_patch(
            &mut doc,
            &json!({"a": "z", "c": {"f": null}, "l": [3], "n": {"x": 1}}),
        );
        assert_eq!(
            doc,
            json!({"a": "z", "c": {"d": "e"}, "l": [3], "n": {"x": 1}})
        );
    }
}
