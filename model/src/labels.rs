//! Labels (placeholder until the model-policy branch lands).
use crate::error::FieldError;
pub type Labels = std::collections::BTreeMap<String, String>;
pub fn validate_labels(labels: &Labels) -> Result<(), Vec<FieldError>> {
    let errs: Vec<_> = labels
        .keys()
        .filter(|k| k.is_empty())
        .map(|k| FieldError::new(format!("labels.{k}"), "empty key"))
        .collect();
    if errs.is_empty() {
        Ok(())
    } else {
        Err(errs)
    }
}
