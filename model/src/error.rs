//! A validation failure tied to the field that caused it.

use serde::{Deserialize, Serialize};

/// One invalid field: `field` is a path like `spec.ingress[0].fromCIDR[1]`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
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
