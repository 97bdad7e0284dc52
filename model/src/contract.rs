//! The validators' rules as OpenAPI schemas. Each rule's limits are the constants its
//! validator uses; a pattern is the validator's rule written as a regular expression (no
//! look-around, so every JSON Schema tool can generate from it), and
//! `control-api/tests/contract.rs` checks at every boundary that the two agree.

use utoipa::openapi::schema::{ObjectBuilder, Type};

/// A string schema.
pub fn string(description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::String)
        .description(Some(description))
}

/// An integer schema bounded on both sides.
pub fn integer(min: i64, max: i64, description: &str) -> ObjectBuilder {
    ObjectBuilder::new()
        .schema_type(Type::Integer)
        .format(Some(utoipa::openapi::SchemaFormat::KnownFormat(
            utoipa::openapi::KnownFormat::Int64,
        )))
        .minimum(Some(min as f64))
        .maximum(Some(max as f64))
        .description(Some(description))
}

/// Like [`integer`], also allowing `null` (an optional field).
pub fn optional_integer(min: i64, max: i64, description: &str) -> ObjectBuilder {
    integer(min, max, description).schema_type(utoipa::openapi::schema::SchemaType::from_iter([
        Type::Integer,
        Type::Null,
    ]))
}

/// An IPv4 or IPv6 address (`format: ipv4` or `ipv6`), to which callers add their other
/// forms, description and examples.
pub fn ip_address_any_of() -> utoipa::openapi::schema::AnyOfBuilder {
    let format = |f: &str| {
        ObjectBuilder::new()
            .schema_type(Type::String)
            .format(Some(utoipa::openapi::SchemaFormat::Custom(f.into())))
    };
    utoipa::openapi::schema::AnyOfBuilder::new()
        .item(format("ipv4"))
        .item(format("ipv6"))
}

/// The whitespace the query syntaxes allow between tokens, as a regex class. ASCII only and
/// spelled out: `\s` means a different set in every regex dialect (ECMAScript's, which JSON
/// Schema uses, leaves out U+0085; Python's and Rust's include it), so a pattern written with
/// `\s` and a parser trimming with `str::trim` disagree on what is valid.
#[macro_export]
#[doc(hidden)]
macro_rules! query_ws {
    () => {
        "[ \\t\\n\\r]"
    };
}

/// Whether `c` is whitespace in a query syntax (the set [`query_ws!`] names).
pub fn is_query_ws(c: char) -> bool {
    matches!(c, ' ' | '\t' | '\n' | '\r')
}

/// Declares a unit type whose OpenAPI schema (a named component) is built by `$build`,
/// for `#[schema(value_type = ...)]` / `#[param(value_type = ...)]` on the fields the
/// rule applies to.
#[macro_export]
macro_rules! contract_schema {
    ($(#[$m:meta])* $ty:ident => $build:expr) => {
        $(#[$m])*
        pub struct $ty;
        impl utoipa::PartialSchema for $ty {
            fn schema() -> utoipa::openapi::RefOr<utoipa::openapi::schema::Schema> {
                ($build).into()
            }
        }
        impl utoipa::ToSchema for $ty {}
    };
}
