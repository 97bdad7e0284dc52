//! Request extractors that answer every kind of bad input with its own problem document.

use axum::body::Bytes;
use axum::extract::rejection::BytesRejection;
use axum::extract::{FromRequest, FromRequestParts, Request};
use axum::http::{header, request::Parts, HeaderMap};
use serde::de::DeserializeOwned;

use crate::error::ApiError;

mod objects;

/// Largest request body we read (1 MiB).
pub const BODY_LIMIT: usize = 1024 * 1024;

/// A JSON body: requires a JSON content type, names the field that failed to parse,
/// and rejects unknown fields (the types use `deny_unknown_fields`).
pub struct Json<T>(pub T);

impl<S: Send + Sync, T: DeserializeOwned> FromRequest<S> for Json<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_content_type(
            req.headers(),
            &["application/json", "application/merge-patch+json"],
        )?;
        let bytes = body_bytes(req, state).await?;
        parse_json(&bytes).map(Json)
    }
}

/// A raw body of one of the YAML (or JSON, which is YAML) media types.
pub struct YamlBody(pub String);

impl<S: Send + Sync> FromRequest<S> for YamlBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, ApiError> {
        require_content_type(
            req.headers(),
            &[
                "application/yaml",
                "application/x-yaml",
                "text/yaml",
                "application/json",
            ],
        )?;
        let bytes = body_bytes(req, state).await?;
        let text = String::from_utf8(bytes.to_vec())
            .map_err(|e| ApiError::BadBody(format!("body is not UTF-8: {e}")))?;
        if text.contains('\0') {
            return Err(ApiError::BadBody(
                "body must not contain the NUL character (U+0000)".into(),
            ));
        }
        Ok(YamlBody(text))
    }
}

async fn body_bytes<S: Send + Sync>(req: Request, state: &S) -> Result<Bytes, ApiError> {
    Bytes::from_request(req, state).await.map_err(|e| match e {
        BytesRejection::FailedToBufferBody(_) if is_length_limit(&e) => {
            ApiError::PayloadTooLarge { limit: BODY_LIMIT }
        }
        other => ApiError::BadBody(other.body_text()),
    })
}

fn is_length_limit(e: &BytesRejection) -> bool {
    e.status() == axum::http::StatusCode::PAYLOAD_TOO_LARGE
}

fn require_content_type(headers: &HeaderMap, accepted: &[&str]) -> Result<(), ApiError> {
    let Some(value) = headers.get(header::CONTENT_TYPE) else {
        return Err(ApiError::UnsupportedMediaType(format!(
            "missing Content-Type; expected {}",
            accepted.join(" or ")
        )));
    };
    let mime = value
        .to_str()
        .unwrap_or("")
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    if accepted.contains(&mime.as_str()) {
        Ok(())
    } else {
        Err(ApiError::UnsupportedMediaType(format!(
            "Content-Type {mime:?} is not accepted here; expected {}",
            accepted.join(" or ")
        )))
    }
}

/// Parses JSON into `T`; syntax errors carry line and column, type errors the field path.
pub fn parse_json<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, ApiError> {
    let mut doc: serde_json::Value = serde_json::from_slice(bytes)
        .map_err(|e| ApiError::BadBody(format!("invalid JSON: {e}")))?;
    integral_floats(&mut doc);
    if let Some(field) = nul_at(&doc, String::new()) {
        return Err(ApiError::invalid_field(
            if field.is_empty() {
                "body".into()
            } else {
                field
            },
            "must not contain the NUL character (U+0000)",
        ));
    }
    serde_path_to_error::deserialize(objects::Objects(doc)).map_err(|e| {
        let path = e.path().to_string();
        let inner = e.into_inner();
        if inner.is_syntax() || inner.is_eof() {
            ApiError::BadBody(format!("invalid JSON: {inner}"))
        } else {
            let field = if path == "." {
                "body".to_string()
            } else {
                path
            };
            ApiError::invalid_field(field, strip_position(&inner.to_string()))
        }
    })
}

/// JSON Schema's `integer` includes numbers with a zero fraction (`3.0`, `1e3`); serde's
/// integers do not. Makes such numbers integers (where exact), so what the spec calls an
/// integer is read as one.
fn integral_floats(v: &mut serde_json::Value) {
    use serde_json::Value;
    match v {
        Value::Number(n) if n.is_f64() => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            // 2^53: beyond it an f64 no longer holds every integer exactly.
            if f.fract() == 0.0 && f.abs() <= 9_007_199_254_740_992.0 {
                *v = Value::from(f as i64);
            }
        }
        Value::Array(a) => a.iter_mut().for_each(integral_floats),
        Value::Object(o) => o.values_mut().for_each(integral_floats),
        _ => {}
    }
}

/// The path of the first string (value or key) holding U+0000, which PostgreSQL text cannot
/// store: such input is refused by name here rather than failing at the database.
pub fn nul_at(v: &serde_json::Value, path: String) -> Option<String> {
    use serde_json::Value;
    match v {
        Value::String(s) if s.contains('\0') => Some(path),
        Value::Array(a) => a
            .iter()
            .enumerate()
            .find_map(|(i, x)| nul_at(x, format!("{path}[{i}]"))),
        Value::Object(o) => o.iter().find_map(|(k, x)| {
            let p = if path.is_empty() {
                k.clone()
            } else {
                format!("{path}.{k}")
            };
            if k.contains('\0') {
                Some(p)
            } else {
                nul_at(x, p)
            }
        }),
        _ => None,
    }
}

/// What [`nul_at`] and `pagination::Query` enforce, stated in the spec: every string a
/// request body or a query parameter can carry that has no pattern, format or enum of its
/// own gets [`NO_NUL_PATTERN`] (inline schemas and the component schemas they reach).
pub fn state_no_nul(spec: &mut utoipa::openapi::OpenApi) {
    let mut reached = std::collections::BTreeSet::new();
    for_each_operation(spec, |op| {
        let bodies = op
            .request_body
            .iter_mut()
            .flat_map(|b| b.content.values_mut());
        for schema in bodies.filter_map(|c| c.schema.as_mut()) {
            no_nul_in(schema, &mut reached);
        }
        // Query parameters too: `pagination::Query` refuses NUL in any of them.
        let query = op
            .parameters
            .iter_mut()
            .flatten()
            .filter(|p| p.parameter_in == utoipa::openapi::path::ParameterIn::Query);
        for schema in query.filter_map(|p| p.schema.as_mut()) {
            no_nul_in(schema, &mut reached);
        }
    });
    let Some(c) = spec.components.as_mut() else {
        return;
    };
    let mut done = std::collections::BTreeSet::new();
    while let Some(name) = reached.iter().find(|n| !done.contains(*n)).cloned() {
        done.insert(name.clone());
        if let Some(schema) = c.schemas.get_mut(&name) {
            no_nul_in(schema, &mut reached);
        }
    }
}

/// Calls `f` on every operation of the spec.
pub(crate) fn for_each_operation(
    spec: &mut utoipa::openapi::OpenApi,
    mut f: impl FnMut(&mut utoipa::openapi::path::Operation),
) {
    for item in spec.paths.paths.values_mut() {
        let ops = [
            &mut item.get,
            &mut item.put,
            &mut item.post,
            &mut item.delete,
            &mut item.patch,
        ];
        ops.into_iter().flatten().for_each(&mut f);
    }
}

/// PostgreSQL text cannot hold U+0000: no request string may contain it.
pub const NO_NUL_PATTERN: &str = r"^[^\x00]*$";

/// Adds the pattern to `s` and what it holds; collects the component schemas it refers to.
fn no_nul_in(
    s: &mut utoipa::openapi::RefOr<utoipa::openapi::schema::Schema>,
    refs: &mut std::collections::BTreeSet<String>,
) {
    use utoipa::openapi::schema::{AdditionalProperties, ArrayItems, Schema, SchemaType, Type};
    use utoipa::openapi::RefOr;
    let schema = match s {
        RefOr::Ref(r) => {
            if let Some(name) = r.ref_location.strip_prefix("#/components/schemas/") {
                refs.insert(name.to_string());
            }
            return;
        }
        RefOr::T(schema) => schema,
    };
    let mut each =
        |items: &mut Vec<RefOr<Schema>>| items.iter_mut().for_each(|x| no_nul_in(x, refs));
    match schema {
        Schema::Object(o) => {
            let is_string = match &o.schema_type {
                SchemaType::Type(t) => *t == Type::String,
                SchemaType::Array(ts) => ts.contains(&Type::String),
                SchemaType::AnyValue => false,
            };
            if is_string && o.pattern.is_none() && o.format.is_none() && o.enum_values.is_none() {
                o.pattern = Some(NO_NUL_PATTERN.to_string());
            }
            o.properties.values_mut().for_each(|x| no_nul_in(x, refs));
            if let Some(ap) = o.additional_properties.as_mut() {
                if let AdditionalProperties::RefOr(r) = ap.as_mut() {
                    no_nul_in(r, refs);
                }
            }
        }
        Schema::Array(a) => {
            if let ArrayItems::RefOrSchema(r) = &mut a.items {
                no_nul_in(r, refs);
            }
        }
        Schema::OneOf(x) => each(&mut x.items),
        Schema::AllOf(x) => each(&mut x.items),
        Schema::AnyOf(x) => each(&mut x.items),
        _ => {}
    }
}

/// serde_json appends " at line 1 column 42" to data errors; the field path says more.
fn strip_position(msg: &str) -> String {
    match msg.rfind(" at line ") {
        Some(i) => msg[..i].to_string(),
        None => msg.to_string(),
    }
}

/// The optional `If-Match` precondition: `None` when absent or `*`.
pub struct IfMatch(pub Option<i64>);

impl<S: Send + Sync> FromRequestParts<S> for IfMatch {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, ApiError> {
        let Some(value) = parts.headers.get(header::IF_MATCH) else {
            return Ok(IfMatch(None));
        };
        let text = value
            .to_str()
            .map_err(|_| ApiError::invalid_field("If-Match", "not an ETag this API issued"))?
            .trim();
        if text == "*" {
            return Ok(IfMatch(None));
        }
        crate::etag::parse(text).map(|r| IfMatch(Some(r))).ok_or_else(|| {
            ApiError::invalid_field(
                "If-Match",
                format!("{text:?} is not an ETag this API issued (expected a value like \"\\\"42\\\"\")"),
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[derive(Debug, serde::Deserialize)]
    #[allow(dead_code)]
    struct Doc {
        from: Option<String>,
        #[serde(default)]
        rules: Vec<std::collections::BTreeMap<String, String>>,
    }

    fn field_of(body: &str) -> Option<String> {
        match parse_json::<Doc>(body.as_bytes()) {
            Err(ApiError::Validation { errors, .. }) => errors.first().map(|e| e.field.clone()),
            _ => None,
        }
    }

    #[test]
    fn a_nul_anywhere_is_refused_naming_where() {
        assert_eq!(field_of(r#"{"from":"a\u0000b"}"#).as_deref(), Some("from"));
        assert_eq!(
            field_of(r#"{"rules":[{"k":"v"},{"k":"\u0000"}]}"#).as_deref(),
            Some("rules[1].k")
        );
        assert_eq!(
            field_of(r#"{"rules":[{"k\u0000":"v"}]}"#).as_deref(),
            Some("rules[0].k\u{0}")
        );
        assert!(parse_json::<Doc>(br#"{"from":"ab","rules":[{"k":"v"}]}"#).is_ok());
    }
}
