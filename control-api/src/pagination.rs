//! Cursor pagination and label filtering shared by every collection.

use axum::extract::FromRequestParts;
use axum::http::request::Parts;
use base64::{engine::general_purpose::URL_SAFE_NO_PAD, Engine};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use sqlx::{Postgres, QueryBuilder};
use utoipa::{IntoParams, ToSchema};
use uuid::Uuid;
use weft_model::selector::{LabelSelector, SelectorOperator};

use crate::error::ApiError;

pub const DEFAULT_LIMIT: u32 = 100;
pub const MAX_LIMIT: u32 = 1000;

/// The `limit` of a page, as [`ListParams::resolve`] accepts it.
pub fn limit_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::integer(
        1,
        i64::from(MAX_LIMIT),
        "Page size, 1 to 1000 (default 100).",
    )
    .build()
}

/// [`decode_cursor`] as a regular expression: 16 bytes in unpadded base64url (the last
/// character carries 2 bits).
pub const CURSOR_PATTERN: &str = "^[A-Za-z0-9_-]{21}[AQgw]$";

/// A list's `cursor`, as [`decode_cursor`] accepts it.
pub fn cursor_schema() -> utoipa::openapi::schema::Object {
    weft_model::contract::string("`next_cursor` of the previous page.")
        .pattern(Some(CURSOR_PATTERN))
        .build()
}

/// Query string parsed strictly: an unknown parameter is an error, not silently ignored.
pub struct Query<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequestParts<S> for Query<T> {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let q = parts.uri.query().unwrap_or("");
        // PostgreSQL text cannot hold NUL: refused here, by name, for every parameter (a
        // lookup by such a value would otherwise fail in the database, as a 500).
        if let Some((name, _)) =
            form_urlencoded::parse(q.as_bytes()).find(|(k, v)| k.contains('\0') || v.contains('\0'))
        {
            return Err(ApiError::invalid_field(
                name.replace('\0', "\\0"),
                "must not contain the NUL character (U+0000)",
            ));
        }
        let de = serde_urlencoded::Deserializer::new(form_urlencoded::parse(q.as_bytes()));
        serde_path_to_error::deserialize(de)
            .map(Query)
            .map_err(|e| {
                // The parameter that was wrong, when serde knows it.
                let field = match e.path().to_string() {
                    p if p == "." => "query".to_string(),
                    p => p,
                };
                ApiError::invalid_field(field, e.into_inner().to_string())
            })
    }
}

/// Parameters every list accepts.
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct ListParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(schema_with = limit_schema)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor_schema)]
    pub cursor: Option<String>,
    /// Label selector in Kubernetes syntax, e.g. `app=web,tier!=db,env in (prod,staging)`.
    #[param(schema_with = weft_model::selector::selector_query_schema)]
    pub labels: Option<String>,
}

/// Parameters of a list without labels (tokens, members).
#[derive(Debug, Default, Deserialize, IntoParams)]
#[serde(deny_unknown_fields)]
#[into_params(parameter_in = Query)]
pub struct PageParams {
    /// Page size, 1 to 1000 (default 100).
    #[param(schema_with = limit_schema)]
    pub limit: Option<u32>,
    /// `next_cursor` of the previous page.
    #[param(schema_with = cursor_schema)]
    pub cursor: Option<String>,
}

impl PageParams {
    pub fn resolve(&self) -> Result<ListQuery, ApiError> {
        ListParams {
            limit: self.limit,
            cursor: self.cursor.clone(),
            labels: None,
        }
        .resolve()
    }
}

/// One page of a collection.
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Page<T> {
    pub items: Vec<T>,
    /// Pass as `cursor` to get the next page; absent on the last page.
    pub next_cursor: Option<String>,
}

/// A validated list request.
pub struct ListQuery {
    pub limit: u32,
    pub after: Option<Uuid>,
    pub selector: Option<LabelSelector>,
}

impl ListParams {
    pub fn resolve(&self) -> Result<ListQuery, ApiError> {
        let limit = self.limit.unwrap_or(DEFAULT_LIMIT);
        if !(1..=MAX_LIMIT).contains(&limit) {
            return Err(ApiError::invalid_field(
                "limit",
                format!("must be between 1 and {MAX_LIMIT}"),
            ));
        }
        let after = self.cursor.as_deref().map(decode_cursor).transpose()?;
        let selector = self
            .labels
            .as_deref()
            .map(LabelSelector::parse_query)
            .transpose()
            .map_err(|e| ApiError::invalid_field("labels", e.message))?;
        Ok(ListQuery {
            limit,
            after,
            selector,
        })
    }
}

fn decode_cursor(c: &str) -> Result<Uuid, ApiError> {
    let bad = || ApiError::invalid_field("cursor", "not a cursor this API issued");
    let bytes = URL_SAFE_NO_PAD.decode(c).map_err(|_| bad())?;
    Uuid::from_slice(&bytes).map_err(|_| bad())
}

fn encode_cursor(id: Uuid) -> String {
    URL_SAFE_NO_PAD.encode(id.as_bytes())
}

impl ListQuery {
    /// Appends ` AND <filters> ORDER BY id LIMIT n+1` to a query whose WHERE is open.
    /// Ids are UUIDv7, so id order is creation order and the cursor is stable.
    pub fn push_tail(&self, qb: &mut QueryBuilder<'_, Postgres>, table: &str) {
        if let Some(after) = self.after {
            qb.push(format!(" AND {table}.id > ")).push_bind(after);
        }
        if let Some(sel) = &self.selector {
            push_label_filter(qb, &format!("{table}.labels"), sel);
        }
        qb.push(format!(" ORDER BY {table}.id LIMIT "))
            .push_bind(i64::from(self.limit) + 1);
    }

    /// Cuts the extra row fetched by `push_tail` into a `next_cursor`.
    pub fn page<T>(&self, mut rows: Vec<T>, id: impl Fn(&T) -> Uuid) -> Page<T> {
        let next_cursor = if rows.len() > self.limit as usize {
            rows.truncate(self.limit as usize);
            rows.last().map(|r| encode_cursor(id(r)))
        } else {
            None
        };
        Page {
            items: rows,
            next_cursor,
        }
    }
}

/// Translates a label selector into SQL over a jsonb labels column, so filtering happens
/// in the database and pages stay full.
pub fn push_label_filter(qb: &mut QueryBuilder<'_, Postgres>, column: &str, sel: &LabelSelector) {
    for (k, v) in &sel.match_labels {
        qb.push(format!(" AND {column}->>"))
            .push_bind(k.clone())
            .push(" = ")
            .push_bind(v.clone());
    }
    for req in &sel.match_expressions {
        match req.operator {
            SelectorOperator::In => {
                qb.push(format!(" AND {column}->>"))
                    .push_bind(req.key.clone())
                    .push(" = ANY(")
                    .push_bind(req.values.clone())
                    .push(")");
            }
            SelectorOperator::NotIn => {
                qb.push(format!(" AND NOT coalesce({column}->>"))
                    .push_bind(req.key.clone())
                    .push(" = ANY(")
                    .push_bind(req.values.clone())
                    .push("), false)");
            }
            SelectorOperator::Exists => {
                qb.push(format!(" AND {column} ? "))
                    .push_bind(req.key.clone());
            }
            SelectorOperator::DoesNotExist => {
                qb.push(format!(" AND NOT {column} ? "))
                    .push_bind(req.key.clone());
            }
        }
    }
}
