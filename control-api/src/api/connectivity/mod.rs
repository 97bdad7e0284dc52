//! What `weft connectivity test` drives: test workloads (echo servers the agents run) and
//! probes (one TCP connection each, made once by an agent, with its result).

pub mod probes;
pub mod workloads;

use serde::{Deserialize, Serialize};
use sqlx::PgConnection;
use utoipa::{IntoParams, IntoResponses, ToSchema};
use utoipa_axum::router::OpenApiRouter;
use uuid::Uuid;
use weft_model::selector::LabelSelector;

use super::common::{self, Scope};
use crate::error::{ApiError, Problem, Result};
use crate::pagination::{ListParams, ListQuery};
use crate::state::AppState;

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .merge(workloads::router())
        .merge(probes::router())
}

/// Parameters of the test-workload and probe lists.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct SelectorListParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(schema_with = crate::pagination::limit_schema)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = crate::pagination::cursor_schema)]
    pub cursor: Option<String>,
    /// Label selector in Kubernetes syntax, e.g. `app=web,tier!=db,env in (prod,staging)`.
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    pub selector: Option<String>,
    /// The same as `selector` (the name the other collections use).
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    pub labels: Option<String>,
}

impl SelectorListParams {
    fn resolve(&self) -> Result<ListQuery> {
        let mut list = ListParams {
            limit: self.limit,
            cursor: self.cursor.clone(),
            labels: None,
        }
        .resolve()?;
        // Both are checked; given both, an item must match both.
        let selector = self
            .selector
            .as_deref()
            .map(|s| parse_selector("selector", s));
        let labels = self.labels.as_deref().map(|l| parse_selector("labels", l));
        list.selector = match (selector.transpose()?, labels.transpose()?) {
            (Some(s), Some(l)) => Some(s.and(l)),
            (s, l) => s.or(l),
        };
        Ok(list)
    }
}

/// Deleting a collection needs an explicit selector (`selector=` alone selects all).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct DeleteParams {
    /// Label selector in Kubernetes syntax; required. The empty selector matches all.
    #[param(value_type = weft_model::selector::SelectorQuery, required = true)]
    pub selector: Option<String>,
}

impl DeleteParams {
    fn resolve(&self) -> Result<LabelSelector> {
        let s = self.selector.as_deref().ok_or_else(|| {
            ApiError::invalid_field(
                "selector",
                "required: name what to delete with a label selector (`selector=` for all)",
            )
        })?;
        parse_selector("selector", s)
    }
}

fn parse_selector(field: &str, query: &str) -> Result<LabelSelector> {
    LabelSelector::parse_query(query).map_err(|e| ApiError::invalid_field(field, e.message))
}

/// How many resources a collection delete removed.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Deleted {
    pub deleted: u64,
}

/// A node of the scope's cluster named in a body field; a name that is not one is 422.
async fn node_in_cluster(
    conn: &mut PgConnection,
    scope: Scope,
    field: &str,
    key: &str,
) -> Result<(Uuid, String)> {
    let found: Option<(Uuid, String)> = match common::find_id(conn, "nodes", scope, key).await? {
        Some(id) => crate::store::inventory::node_name(conn, id).await?,
        None => None,
    };
    found.ok_or_else(|| {
        ApiError::unprocessable(field, format!("{key:?} is not a node of this cluster"))
    })
}

/// Errors a create may answer besides the common ones.
#[allow(dead_code)] // only read by the OpenAPI generator
#[derive(IntoResponses)]
pub enum CreateErrors {
    /// A field names something that cannot be used: a node that is not in the cluster or
    /// has no IPv4 pod CIDR, a test workload that does not exist. `errors` names the field.
    #[response(status = 422, content_type = "application/problem+json")]
    Unprocessable(Problem),
}
