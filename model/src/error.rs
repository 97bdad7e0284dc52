//! The one error shape every validator in the model returns, so the REST edge can turn any of
//! them into `errors: [{field, message}]` without knowing where they came from.

use serde::{Deserialize, Serialize};

/// A problem with one field of the input. `field` is a path such as `spec.ingress[0].fromCIDR[1]`.
#[derive(
    Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema, thiserror::Error,
)]
#[error("{field}: {message}")]
pub struct FieldError {
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}
