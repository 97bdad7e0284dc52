//! Rules for resource names and label keys/values, shared by every interface.

/// Longest name a resource may have (DNS label length, as Kubernetes).
pub const MAX_NAME_LEN: usize = 63;

/// [`validate_name`] as a regular expression (with `MAX_NAME_LEN`).
pub const NAME_PATTERN: &str = "^[a-z0-9]([-a-z0-9]*[a-z0-9])?$";

crate::contract_schema! {
    /// A resource name, as [`validate_name`] accepts it.
    Name => crate::contract::string(
        "A DNS label: 1 to 63 lowercase letters, digits and '-', starting and ending with \
         a letter or digit.",
    )
    .min_length(Some(1))
    .max_length(Some(MAX_NAME_LEN))
    .pattern(Some(NAME_PATTERN))
    .examples(["web"])
}

/// Why a resource name was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NameError {
    #[error("must not be empty")]
    Empty,
    #[error("must be at most {MAX_NAME_LEN} characters, got {0}")]
    TooLong(usize),
    #[error("must contain only lowercase letters, digits and '-', and start and end with a letter or digit")]
    BadCharacters,
}

/// Checks a resource name: a DNS label (lowercase alphanumerics and '-', at most 63 chars).
pub fn validate_name(name: &str) -> Result<(), NameError> {
    if name.is_empty() {
        return Err(NameError::Empty);
    }
    if name.len() > MAX_NAME_LEN {
        return Err(NameError::TooLong(name.len()));
    }
    let ok_char = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-';
    let ends_ok = |c: Option<char>| c.is_some_and(|c| c.is_ascii_lowercase() || c.is_ascii_digit());
    if !name.chars().all(ok_char) || !ends_ok(name.chars().next()) || !ends_ok(name.chars().last())
    {
        return Err(NameError::BadCharacters);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_table() {
        let cases: &[(&str, Result<(), NameError>)] = &[
            ("web", Ok(())),
            ("prod-eu-1", Ok(())),
            ("a", Ok(())),
            ("", Err(NameError::Empty)),
            ("-web", Err(NameError::BadCharacters)),
            ("web-", Err(NameError::BadCharacters)),
            ("Web", Err(NameError::BadCharacters)),
            ("web_1", Err(NameError::BadCharacters)),
            ("web.1", Err(NameError::BadCharacters)),
        ];
        for (name, want) in cases {
            assert_eq!(&validate_name(name), want, "name {name:?}");
        }
        let long = "a".repeat(64);
        assert_eq!(validate_name(&long), Err(NameError::TooLong(64)));
        assert_eq!(validate_name(&"a".repeat(63)), Ok(()));
    }
}
