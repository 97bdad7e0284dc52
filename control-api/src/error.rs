//! The API's one error type, answered as RFC 7807 `application/problem+json`.
//!
//! Internal causes are logged with the request's span and never sent to the client.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use weft_model::error::FieldError;

pub type Result<T, E = ApiError> = std::result::Result<T, E>;

/// An RFC 7807 problem document.
#[derive(Debug, Clone, Serialize, Deserialize, ToSchema)]
pub struct Problem {
    /// Stable identifier of the kind of problem, e.g. `urn:weft:problem:validation`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// The fields that were wrong, for validation problems.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub errors: Vec<FieldError>,
}

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("{detail}")]
    Validation {
        detail: String,
        errors: Vec<FieldError>,
    },
    #[error("malformed request body: {0}")]
    BadBody(String),
    #[error("{0}")]
    BadRequest(String),
    #[error("unsupported media type: {0}")]
    UnsupportedMediaType(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("{0}")]
    Unauthenticated(String),
    #[error("{0}")]
    Forbidden(String),
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    MethodNotAllowed(String),
    #[error("{detail}")]
    Conflict {
        detail: String,
        field: Option<String>,
    },
    #[error("{0}")]
    PreconditionFailed(String),
    /// Well-formed, but what a field refers to cannot be used (e.g. a node without a pod
    /// CIDR).
    #[error("{detail}")]
    Unprocessable { detail: String, field: String },
    #[error(
        "too many failed authentication attempts from this address or with this credential; \
         retry in {retry_after_secs} s (a valid credential is not limited)"
    )]
    TooManyRequests { retry_after_secs: u64 },
    #[error("{0}")]
    Unavailable(String),
    #[error("internal error")]
    Internal(#[source] anyhow::Error),
}

impl ApiError {
    pub fn validation(errors: Vec<FieldError>) -> Self {
        let detail = match errors.as_slice() {
            [one] => format!("{}: {}", one.field, one.message),
            many => format!("{} fields are invalid", many.len()),
        };
        ApiError::Validation { detail, errors }
    }

    pub fn invalid_field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self::validation(vec![FieldError::new(field, message)])
    }

    pub fn unprocessable(field: impl Into<String>, detail: impl Into<String>) -> Self {
        ApiError::Unprocessable {
            detail: detail.into(),
            field: field.into(),
        }
    }

    pub fn not_found(what: &str, key: &str) -> Self {
        ApiError::NotFound(format!("{what} {key:?} not found"))
    }

    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        use ApiError::*;
        match self {
            Validation { .. } => (StatusCode::BAD_REQUEST, "validation", "Invalid request"),
            BadBody(_) => (
                StatusCode::BAD_REQUEST,
                "malformed-body",
                "Malformed request body",
            ),
            BadRequest(_) => (StatusCode::BAD_REQUEST, "bad-request", "Bad request"),
            UnsupportedMediaType(_) => (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported-media-type",
                "Unsupported media type",
            ),
            PayloadTooLarge { .. } => (
                StatusCode::PAYLOAD_TOO_LARGE,
                "payload-too-large",
                "Request body too large",
            ),
            Unauthenticated(_) => (
                StatusCode::UNAUTHORIZED,
                "unauthenticated",
                "Authentication required",
            ),
            Forbidden(_) => (StatusCode::FORBIDDEN, "forbidden", "Not allowed"),
            NotFound(_) => (StatusCode::NOT_FOUND, "not-found", "Not found"),
            MethodNotAllowed(_) => (
                StatusCode::METHOD_NOT_ALLOWED,
                "method-not-allowed",
                "Method not allowed",
            ),
            Conflict { .. } => (StatusCode::CONFLICT, "conflict", "Conflict"),
            PreconditionFailed(_) => (
                StatusCode::PRECONDITION_FAILED,
                "precondition-failed",
                "Precondition failed",
            ),
            Unprocessable { .. } => (
                StatusCode::UNPROCESSABLE_ENTITY,
                "unprocessable",
                "Unprocessable request",
            ),
            TooManyRequests { .. } => (
                StatusCode::TOO_MANY_REQUESTS,
                "too-many-requests",
                "Too many requests",
            ),
            Unavailable(_) => (
                StatusCode::SERVICE_UNAVAILABLE,
                "unavailable",
                "Service unavailable",
            ),
            Internal(_) => (
                StatusCode::INTERNAL_SERVER_ERROR,
                "internal",
                "Internal error",
            ),
        }
    }

    pub fn problem(&self) -> Problem {
        let (status, slug, title) = self.parts();
        let errors = match self {
            ApiError::Validation { errors, .. } => errors.clone(),
            ApiError::Conflict {
                field: Some(field),
                detail,
            } => vec![FieldError::new(field.clone(), detail.clone())],
            ApiError::Unprocessable { field, detail } => {
                vec![FieldError::new(field.clone(), detail.clone())]
            }
            _ => Vec::new(),
        };
        let detail = match self {
            ApiError::Internal(_) => {
                "the server failed to handle this request; it has been logged".to_string()
            }
            other => other.to_string(),
        };
        Problem {
            kind: format!("urn:weft:problem:{slug}"),
            title: title.to_string(),
            status: status.as_u16(),
            detail,
            errors,
        }
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        match &self {
            ApiError::Internal(e) => tracing::error!(error = ?e, "request failed"),
            ApiError::Unavailable(why) => tracing::warn!(%why, "unavailable"),
            _ => tracing::debug!(error = %self, "request refused"),
        }
        let problem = self.problem();
        let status =
            StatusCode::from_u16(problem.status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut resp = (status, body).into_response();
        resp.headers_mut().insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        if let ApiError::TooManyRequests { retry_after_secs } = &self {
            if let Ok(v) = HeaderValue::from_str(&retry_after_secs.to_string()) {
                resp.headers_mut().insert(header::RETRY_AFTER, v);
            }
        }
        // The database is away for a moment: clients (the CLI, Terraform) wait this long
        // before they try again instead of hammering a recovering server.
        if let ApiError::Unavailable(_) = &self {
            resp.headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("5"));
        }
        if status == StatusCode::UNAUTHORIZED {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        resp
    }
}

impl From<sqlx::Error> for ApiError {
    fn from(e: sqlx::Error) -> Self {
        if let Some(db) = e.as_database_error() {
            if let Some(constraint) = db.constraint() {
                if let Some(conflict) = conflict_for_constraint(constraint) {
                    return conflict;
                }
            }
        }
        if database_gone(&e) {
            tracing::warn!(error = %e, "database not reachable");
            return ApiError::Unavailable("the database is not reachable; retry later".into());
        }
        ApiError::Internal(e.into())
    }
}

/// Whether the error says the database went away (stopped, restarted, unreachable), not
/// that the request was wrong: the client may retry later (503), nothing is a server bug.
/// SQLSTATE class 08 is a connection exception, class 57 an operator intervention
/// (`57P01` admin shutdown, `57P02` crash shutdown, `57P03` cannot connect now).
fn database_gone(e: &sqlx::Error) -> bool {
    match e {
        sqlx::Error::PoolTimedOut | sqlx::Error::PoolClosed | sqlx::Error::Io(_) => true,
        sqlx::Error::Database(db) => db
            .code()
            .is_some_and(|c| c.starts_with("08") || c.starts_with("57")),
        _ => false,
    }
}

impl From<anyhow::Error> for ApiError {
    fn from(e: anyhow::Error) -> Self {
        ApiError::Internal(e)
    }
}

/// Uniqueness is the database's job: named constraints become 409s naming the field.
fn conflict_for_constraint(constraint: &str) -> Option<ApiError> {
    let (field, detail) = match constraint {
        "tenants_name_key" => ("name", "a tenant with this name already exists"),
        "clusters_tenant_name_key" => ("name", "a cluster with this name already exists in the tenant"),
        "policies_tenant_name_key" => ("name", "a policy with this name already exists in the tenant"),
        "services_cluster_name_key" => ("name", "a service with this name already exists in the cluster"),
        "service_frontends_vip_key" => (
            "frontends",
            "a frontend with this VIP, port and protocol already belongs to another service in the cluster",
        ),
        "api_tokens_tenant_name_key" => ("name", "an API token with this name already exists in the tenant"),
        "join_tokens_cluster_name_key" => ("name", "a join token with this name already exists in the cluster"),
        "nodes_cluster_name_key" => ("name", "a node with this name already exists in the cluster"),
        "test_workloads_cluster_name_key" => ("name", "a test workload with this name already exists in the cluster"),
        "test_workloads_cluster_ip_key" => ("ip", "another test workload of the cluster has this address"),
        "invitations_tenant_email_key" => ("email", "this e-mail is already invited to the tenant"),
        "memberships_tenant_user_key" => ("email", "this person already belongs to the tenant"),
        _ => return None,
    };
    Some(ApiError::Conflict {
        detail: detail.to_string(),
        field: Some(field.to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_database_that_went_away_is_a_503_not_a_500() {
        let gone = [
            sqlx::Error::PoolTimedOut,
            sqlx::Error::PoolClosed,
            sqlx::Error::Io(std::io::Error::from(std::io::ErrorKind::ConnectionReset)),
        ];
        for e in gone {
            assert!(
                matches!(ApiError::from(e), ApiError::Unavailable(_)),
                "unavailable"
            );
        }
        assert!(matches!(
            ApiError::from(sqlx::Error::RowNotFound),
            ApiError::Internal(_)
        ));
    }
}
