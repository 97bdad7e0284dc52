//! Labels and the Kubernetes rules for their keys and values.

use crate::error::FieldError;

/// Labels of a resource or endpoint. Ordered so that identities derived from them are stable.
pub type Labels = std::collections::BTreeMap<String, String>;

/// Longest label name or value (Kubernetes).
pub const MAX_LABEL_NAME_LEN: usize = 63;
/// Longest label key prefix, a DNS subdomain (Kubernetes).
pub const MAX_LABEL_PREFIX_LEN: usize = 253;

/// A label name or value: [`check_name_part`] as a regular expression.
macro_rules! label_name {
    () => {
        "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
    };
}
/// [`validate_label_key`] as a regular expression (the prefix's length limit of 253 is
/// stated in words: a regular expression without look-ahead cannot say it).
#[macro_export]
#[doc(hidden)]
macro_rules! label_key_body {
    () => {
        concat!(
            "(",
            "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            "(\\.",
            "[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?",
            ")*/)?",
            "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
        )
    };
}
pub const LABEL_KEY_PATTERN: &str = concat!("^", label_key_body!(), "$");

/// A label map's schema: keys matching `key_pattern`, values label values.
pub fn label_map_schema(
    key_pattern: &str,
    description: &str,
) -> utoipa::openapi::schema::ObjectBuilder {
    use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
    ObjectBuilder::new()
        .schema_type(Type::Object)
        .description(Some(description))
        .property_names(Some(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .min_length(Some(1))
                .pattern(Some(key_pattern))
                .build(),
        )))
        .additional_properties(Some(Schema::Object(
            ObjectBuilder::new()
                .schema_type(Type::String)
                .max_length(Some(MAX_LABEL_NAME_LEN))
                .pattern(Some(LABEL_VALUE_PATTERN))
                .build(),
        )))
        .examples([serde_json::json!({"app": "web"})])
}
/// [`validate_label_value`] as a regular expression.
pub const LABEL_VALUE_PATTERN: &str = concat!("^(", label_name!(), ")?$");

crate::contract_schema! {
    /// A label key, as [`validate_label_key`] accepts it.
    LabelKey => crate::contract::string(
        "A Kubernetes label key: an optional DNS-subdomain prefix of at most 253 characters \
         and '/', then a name of 1 to 63 alphanumerics, '-', '_' or '.' that starts and ends \
         with an alphanumeric.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_LABEL_PREFIX_LEN + 1 + MAX_LABEL_NAME_LEN))
    .pattern(Some(LABEL_KEY_PATTERN))
    .examples(["app"])
}

crate::contract_schema! {
    /// A label value, as [`validate_label_value`] accepts it.
    LabelValue => crate::contract::string(
        "A Kubernetes label value: empty, or 1 to 63 alphanumerics, '-', '_' or '.' that \
         starts and ends with an alphanumeric.",
    )
    .max_length(Some(MAX_LABEL_NAME_LEN))
    .pattern(Some(LABEL_VALUE_PATTERN))
    .examples(["web"])
}

crate::contract_schema! {
    /// Labels, as [`validate_labels`] accepts them.
    LabelMap => label_map_schema(
        LABEL_KEY_PATTERN,
        "Labels: Kubernetes label keys (a key's prefix is at most 253 characters) to label \
         values.",
    )
}

/// Checks every label; the field paths are `labels.<key>`.
pub fn validate_labels(labels: &Labels) -> Result<(), Vec<FieldError>> {
    let errors = validate_labels_at(labels, "labels");
    if errors.is_empty() {
        Ok(())
    } else {
        Err(errors)
    }
}

/// Like [`validate_labels`], with field paths under `path` (e.g. `metadata.labels`).
pub fn validate_labels_at(labels: &Labels, path: &str) -> Vec<FieldError> {
    let mut errors = Vec::new();
    for (key, value) in labels {
        let field = format!("{path}.{key}");
        if let Err(msg) = validate_label_key(key) {
            errors.push(FieldError::new(
                &field,
                format!("invalid label key {key:?}: {msg}"),
            ));
        }
        if let Err(msg) = validate_label_value(value) {
            errors.push(FieldError::new(
                &field,
                format!("invalid label value {value:?}: {msg}"),
            ));
        }
    }
    errors
}

/// A Kubernetes label key: an optional DNS-subdomain prefix and '/', then a name.
pub fn validate_label_key(key: &str) -> Result<(), String> {
    let (prefix, name) = match key.split_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        if prefix.is_empty() {
            return Err("prefix before '/' must not be empty".into());
        }
        if prefix.len() > MAX_LABEL_PREFIX_LEN {
            return Err(format!(
                "prefix must be at most {MAX_LABEL_PREFIX_LEN} characters"
            ));
        }
        if !is_dns_subdomain(prefix) {
            return Err("prefix must be a lowercase DNS subdomain".into());
        }
    }
    if name.is_empty() {
        return Err("name must not be empty".into());
    }
    check_name_part(name)
}

/// A Kubernetes label value: empty, or a name-like string of at most 63 characters.
pub fn validate_label_value(value: &str) -> Result<(), String> {
    if value.is_empty() {
        return Ok(());
    }
    check_name_part(value)
}

/// `[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?`, at most 63 characters.
fn check_name_part(s: &str) -> Result<(), String> {
    if s.len() > MAX_LABEL_NAME_LEN {
        return Err(format!(
            "must be at most {MAX_LABEL_NAME_LEN} characters, got {}",
            s.len()
        ));
    }
    let inner_ok = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.');
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    if !s.chars().all(inner_ok) || !ends_ok(s.chars().next()) || !ends_ok(s.chars().last()) {
        return Err("must consist of alphanumerics, '-', '_' or '.', and start and end with an alphanumeric".into());
    }
    Ok(())
}

fn is_dns_subdomain(s: &str) -> bool {
    s.split('.').all(|part| {
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
        !part.is_empty()
            && part.len() <= 63
            && part.chars().all(|c| ok(c) || c == '-')
            && part.chars().next().is_some_and(ok)
            && part.chars().last().is_some_and(ok)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_keys_table() {
        let long63 = "a".repeat(63);
        let long64 = "a".repeat(64);
        let cases: Vec<(String, bool)> = vec![
            ("app".into(), true),
            ("app.kubernetes.io/name".into(), true),
            ("io.kubernetes.pod.namespace".into(), true),
            ("A_b-c.D".into(), true),
            (long63.clone(), true),
            (format!("example.com/{long63}"), true),
            ("".into(), false),
            (long64, false),
            ("/app".into(), false),
            ("example.com/".into(), false),
            ("Example.com/app".into(), false),
            ("a/b/c".into(), false),
            ("-app".into(), false),
            ("app_".into(), false),
            ("app key".into(), false),
        ];
        for (key, ok) in cases {
            assert_eq!(validate_label_key(&key).is_ok(), ok, "key {key:?}");
        }
    }

    #[test]
    fn label_values_and_paths() {
        let labels: Labels = [
            ("app".to_string(), "web".to_string()),
            ("empty".to_string(), String::new()),
            ("bad".to_string(), "-x".to_string()),
            ("bad key".to_string(), "ok".to_string()),
        ]
        .into();
        let errors = validate_labels(&labels).unwrap_err();
        let fields: Vec<&str> = errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["labels.bad", "labels.bad key"]);
        assert!(
            errors[0].message.contains("invalid label value \"-x\""),
            "{}",
            errors[0].message
        );
        assert!(validate_labels(&Labels::new()).is_ok());
        assert!(validate_label_value(&"v".repeat(64)).is_err());
    }
}
