//! ETags are a resource's revision: the global desired-state revision of its last change.

use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};

pub fn format(revision: i64) -> String {
    format!("\"{revision}\"")
}

/// Parses a strong ETag we issued (`"42"`); weak ones (`W/"42"`) are accepted too since
/// the revision identifies the representation exactly.
pub fn parse(text: &str) -> Option<i64> {
    let text = text.strip_prefix("W/").unwrap_or(text);
    let digits = text.strip_prefix('"')?.strip_suffix('"')?;
    if digits.is_empty() || digits.len() > MAX_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    digits.parse().ok()
}

/// Most digits of a revision we issue (any 18 digits fit an `i64`).
const MAX_DIGITS: usize = 18;

/// What `If-Match` takes, as a regular expression: [`parse`], or `*`.
pub const ETAG_PATTERN: &str = r#"^(\*|(W/)?"[0-9]{1,18}")$"#;

/// The `If-Match` parameter's description, the same on every write.
pub const IF_MATCH_DOC: &str = "An ETag this API issued for this resource (the `ETag` header \
    of a previous read or write, e.g. `\"42\"`): the change is made only if the resource is \
    still at that revision, else 412. Absent or `*`: unconditional. Any other value is \
    answered 400 with a problem naming `If-Match`.";

weft_model::contract_schema! {
    /// An ETag as this API issues them, for `If-Match`.
    ETag => weft_model::contract::string(
        "An ETag from a previous read of the resource, e.g. \"42\" (a revision), or `*`.",
    )
    .pattern(Some(ETAG_PATTERN))
    .examples(["\"1\""])
}

/// Adds the `ETag` header to a response.
pub fn tagged(revision: i64, resp: impl IntoResponse) -> Response {
    let mut resp = resp.into_response();
    if let Ok(v) = HeaderValue::from_str(&format(revision)) {
        resp.headers_mut().insert(header::ETAG, v);
    }
    resp
}

#[cfg(test)]
mod tests {
    #[test]
    fn round_trip() {
        assert_eq!(super::parse(&super::format(42)), Some(42));
        assert_eq!(super::parse("W/\"7\""), Some(7));
        assert_eq!(super::parse("42"), None);
        assert_eq!(super::parse("\"x\""), None);
        assert_eq!(super::parse("\"+1\""), None);
        assert_eq!(super::parse("\"\""), None);
        assert_eq!(super::parse(&format!("\"{}\"", "9".repeat(19))), None);
    }
}
