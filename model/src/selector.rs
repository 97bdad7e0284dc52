//! Kubernetes-style label selectors: the structured form used in policies and the query form
//! (`app=web,env in (prod,staging)`) used by REST list filters.

use std::collections::btree_map::Entry;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::labels::{validate_label_key, validate_label_value, Labels};

/// Field name reported by [`LabelSelector::parse_query`] errors (the REST query parameter).
pub const QUERY_FIELD: &str = "labelSelector";

/// Selects resources by their labels. All conditions must hold; an empty selector selects
/// everything (as Cilium's `endpointSelector: {}`).
///
/// Keys may carry a Cilium label source prefix `k8s:` or `any:`; Weft labels have no source,
/// so the prefix is ignored when matching. Other sources (`reserved:`, `cidr:`...) are refused
/// by [`LabelSelector::validate`]: Weft selects those peers with entities and CIDRs instead.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelector {
    #[serde(default, skip_serializing_if = "Labels::is_empty")]
    #[schema(value_type = SelectorLabels)]
    pub match_labels: Labels,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub match_expressions: Vec<LabelSelectorRequirement>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct LabelSelectorRequirement {
    #[schema(value_type = SelectorKey)]
    pub key: String,
    pub operator: SelectorOperator,
    /// At least one for `In` and `NotIn`, none for `Exists` and `DoesNotExist`.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schema(value_type = Vec<crate::labels::LabelValue>)]
    pub values: Vec<String>,
}

/// Spelled exactly as Kubernetes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum SelectorOperator {
    In,
    NotIn,
    Exists,
    DoesNotExist,
}

/// Label sources Cilium writes in selector keys that mean "a label of the workload".
const IGNORED_SOURCES: [&str; 2] = ["k8s", "any"];

/// Strips a `k8s:` / `any:` source prefix from a selector key.
pub fn normalize_selector_key(key: &str) -> &str {
    match key.split_once(':') {
        Some((source, rest)) if IGNORED_SOURCES.contains(&source) => rest,
        _ => key,
    }
}

/// [`validate_selector_key`] as a regular expression.
pub const SELECTOR_KEY_PATTERN: &str = concat!("^((k8s|any):)?", crate::label_key_body!(), "$");

crate::contract_schema! {
    /// A selector's label key, as [`validate_selector_key`] accepts it.
    SelectorKey => crate::contract::string(
        "A Kubernetes label key, optionally with the Cilium source `k8s:` or `any:`.",
    )
    .min_length(Some(1))
    .pattern(Some(SELECTOR_KEY_PATTERN))
    .examples(["app"])
}

crate::contract_schema! {
    /// A selector's `matchLabels`.
    SelectorLabels => crate::labels::label_map_schema(
        SELECTOR_KEY_PATTERN,
        "Label keys (optionally with the source `k8s:` or `any:`) to label values.",
    )
}

macro_rules! selector_key {
    () => {
        concat!("((k8s|any):)?", crate::label_key_body!())
    };
}
macro_rules! set_value {
    () => {
        "[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?"
    };
}
macro_rules! requirement {
    () => {
        concat!(
            "(!",
            crate::query_ws!(),
            "*",
            selector_key!(),
            "|",
            selector_key!(),
            "(",
            crate::query_ws!(),
            "*(==|=|!=)",
            crate::query_ws!(),
            "*(",
            set_value!(),
            ")?|",
            crate::query_ws!(),
            "+(in|notin)",
            crate::query_ws!(),
            "*\\(",
            crate::query_ws!(),
            "*",
            set_value!(),
            crate::query_ws!(),
            "*(,",
            crate::query_ws!(),
            "*",
            set_value!(),
            crate::query_ws!(),
            "*)*\\))?)"
        )
    };
}

/// [`LabelSelector::parse_query`] as a regular expression.
pub const SELECTOR_QUERY_PATTERN: &str = concat!(
    "^",
    crate::query_ws!(),
    "*(",
    requirement!(),
    crate::query_ws!(),
    "*(,",
    crate::query_ws!(),
    "*",
    requirement!(),
    crate::query_ws!(),
    "*)*)?$"
);

crate::contract_schema! {
    /// A label selector in query syntax, as [`LabelSelector::parse_query`] accepts it.
    SelectorQuery => selector_query_schema()
}

/// A label selector in query syntax, as [`LabelSelector::parse_query`] accepts it.
pub fn selector_query_schema() -> utoipa::openapi::schema::Object {
    crate::contract::string(
        "Label selector in Kubernetes syntax, e.g. `app=web,tier!=db,env in (prod,staging),!legacy` \
         (keys may carry the source `k8s:` or `any:`).",
    )
    .pattern(Some(SELECTOR_QUERY_PATTERN))
    .examples(["app=web"])
    .build()
}

fn validate_selector_key(key: &str) -> Result<(), String> {
    if let Some((source, _)) = key.split_once(':') {
        if !IGNORED_SOURCES.contains(&source) {
            return Err(format!(
                "label source {source:?} is not supported by Weft (only \"k8s:\" and \"any:\"); select reserved peers with fromEntities/toEntities and IPs with CIDR rules"
            ));
        }
    }
    validate_label_key(normalize_selector_key(key))
}

impl LabelSelector {
    /// True when every condition holds. An empty selector matches everything.
    pub fn matches(&self, labels: &Labels) -> bool {
        self.match_labels
            .iter()
            .all(|(k, v)| labels.get(normalize_selector_key(k)) == Some(v))
            && self.match_expressions.iter().all(|r| r.matches(labels))
    }

    pub fn is_empty(&self) -> bool {
        self.match_labels.is_empty() && self.match_expressions.is_empty()
    }

    /// The selector of what both select. `other`'s exact labels become `In [value]`
    /// requirements, so two different values for one key select nothing, as they should.
    pub fn and(mut self, other: LabelSelector) -> LabelSelector {
        self.match_expressions.extend(
            other
                .match_labels
                .into_iter()
                .map(|(k, v)| req(k, SelectorOperator::In, vec![v])),
        );
        self.match_expressions.extend(other.match_expressions);
        self
    }

    /// Every problem, with fields under `path` (e.g. `spec.endpointSelector`).
    pub fn validate(&self, path: &str) -> Vec<FieldError> {
        let mut errors = Vec::new();
        for (key, value) in &self.match_labels {
            let field = format!("{path}.matchLabels.{key}");
            if let Err(msg) = validate_selector_key(key) {
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
        for (i, req) in self.match_expressions.iter().enumerate() {
            let base = format!("{path}.matchExpressions[{i}]");
            if let Err(msg) = validate_selector_key(&req.key) {
                errors.push(FieldError::new(
                    format!("{base}.key"),
                    format!("invalid label key {:?}: {msg}", req.key),
                ));
            }
            match req.operator {
                SelectorOperator::In | SelectorOperator::NotIn if req.values.is_empty() => errors
                    .push(FieldError::new(
                        format!("{base}.values"),
                        format!("operator {:?} needs at least one value", req.operator),
                    )),
                SelectorOperator::Exists | SelectorOperator::DoesNotExist
                    if !req.values.is_empty() =>
                {
                    errors.push(FieldError::new(
                        format!("{base}.values"),
                        format!("operator {:?} takes no values", req.operator),
                    ))
                }
                _ => {}
            }
            for (j, value) in req.values.iter().enumerate() {
                if let Err(msg) = validate_label_value(value) {
                    errors.push(FieldError::new(
                        format!("{base}.values[{j}]"),
                        format!("invalid label value {value:?}: {msg}"),
                    ));
                }
            }
        }
        errors
    }

    /// Parses the Kubernetes query syntax: `app=web,tier!=db,env in (prod,staging),!legacy,
    /// team notin (a,b),owner`. The empty string selects everything. `k!=v` is `NotIn [v]`,
    /// which, as in Kubernetes, also matches resources without the key.
    pub fn parse_query(query: &str) -> Result<LabelSelector, FieldError> {
        QueryParser { src: query, pos: 0 }
            .parse()
            .map_err(|msg| FieldError::new(QUERY_FIELD, msg))
    }
}

impl LabelSelectorRequirement {
    pub fn matches(&self, labels: &Labels) -> bool {
        let value = labels.get(normalize_selector_key(&self.key));
        match self.operator {
            SelectorOperator::In => value.is_some_and(|v| self.values.contains(v)),
            SelectorOperator::NotIn => value.is_none_or(|v| !self.values.contains(v)),
            SelectorOperator::Exists => value.is_some(),
            SelectorOperator::DoesNotExist => value.is_none(),
        }
    }
}

/// A small hand-written parser: the grammar is tiny and errors can say exactly where it broke.
struct QueryParser<'a> {
    src: &'a str,
    pos: usize,
}

impl QueryParser<'_> {
    fn parse(mut self) -> Result<LabelSelector, String> {
        let mut selector = LabelSelector::default();
        self.skip_ws();
        if self.at_end() {
            return Ok(selector);
        }
        loop {
            self.requirement(&mut selector)?;
            self.skip_ws();
            if self.at_end() {
                return Ok(selector);
            }
            self.expect(',')?;
        }
    }

    fn requirement(&mut self, selector: &mut LabelSelector) -> Result<(), String> {
        self.skip_ws();
        if self.eat("!") {
            let key = self.key()?;
            selector
                .match_expressions
                .push(req(key, SelectorOperator::DoesNotExist, vec![]));
            return Ok(());
        }
        let key = self.key()?;
        self.skip_ws();
        if self.at_end() || self.peek() == Some(',') {
            selector
                .match_expressions
                .push(req(key, SelectorOperator::Exists, vec![]));
        } else if self.eat("!=") {
            let value = self.value()?;
            selector
                .match_expressions
                .push(req(key, SelectorOperator::NotIn, vec![value]));
        } else if self.eat("==") || self.eat("=") {
            let value = self.value()?;
            // Keep the common form in matchLabels; a repeated key must stay a separate condition.
            match selector.match_labels.entry(key) {
                Entry::Vacant(slot) => {
                    slot.insert(value);
                }
                Entry::Occupied(slot) => {
                    let key = slot.key().clone();
                    selector
                        .match_expressions
                        .push(req(key, SelectorOperator::In, vec![value]));
                }
            }
        } else {
            let start = self.pos;
            let word = self.word();
            let op = match word {
                "in" => SelectorOperator::In,
                "notin" => SelectorOperator::NotIn,
                _ => {
                    return Err(format!(
                        "at position {start}: expected '=', '==', '!=', 'in', 'notin', ',' or end after key {key:?}, found {:?}",
                        self.rest_preview(start)
                    ))
                }
            };
            let values = self.value_set()?;
            selector.match_expressions.push(req(key, op, values));
        }
        Ok(())
    }

    fn key(&mut self) -> Result<String, String> {
        self.skip_ws();
        let start = self.pos;
        let key = self.word();
        if key.is_empty() {
            return Err(format!(
                "at position {start}: expected a label key, found {:?}",
                self.rest_preview(start)
            ));
        }
        validate_selector_key(key).map_err(|msg| format!("invalid label key {key:?}: {msg}"))?;
        Ok(key.to_string())
    }

    fn value(&mut self) -> Result<String, String> {
        self.skip_ws();
        let value = self.word();
        validate_label_value(value)
            .map_err(|msg| format!("invalid label value {value:?}: {msg}"))?;
        Ok(value.to_string())
    }

    fn value_set(&mut self) -> Result<Vec<String>, String> {
        self.skip_ws();
        self.expect('(')?;
        let mut values = Vec::new();
        loop {
            self.skip_ws();
            let start = self.pos;
            let value = self.value()?;
            if value.is_empty() {
                return Err(format!("at position {start}: expected a value in the set"));
            }
            values.push(value);
            self.skip_ws();
            if self.eat(")") {
                return Ok(values);
            }
            if self.at_end() {
                return Err(format!("at position {}: missing ')'", self.pos));
            }
            self.expect(',')?;
        }
    }

    /// A run of characters that are not delimiters.
    fn word(&mut self) -> &str {
        let start = self.pos;
        let rest = &self.src[start..];
        let len = rest
            .find(|c: char| crate::contract::is_query_ws(c) || "=!,()".contains(c))
            .unwrap_or(rest.len());
        self.pos += len;
        &self.src[start..start + len]
    }

    fn expect(&mut self, c: char) -> Result<(), String> {
        if self.peek() == Some(c) {
            self.pos += c.len_utf8();
            Ok(())
        } else {
            Err(format!(
                "at position {}: expected '{c}', found {:?}",
                self.pos,
                self.rest_preview(self.pos)
            ))
        }
    }

    fn eat(&mut self, s: &str) -> bool {
        if self.src[self.pos..].starts_with(s) {
            self.pos += s.len();
            true
        } else {
            false
        }
    }

    fn peek(&self) -> Option<char> {
        self.src[self.pos..].chars().next()
    }

    fn at_end(&self) -> bool {
        self.pos >= self.src.len()
    }

    fn skip_ws(&mut self) {
        let rest = &self.src[self.pos..];
        self.pos += rest.len() - rest.trim_start_matches(crate::contract::is_query_ws).len();
    }

    fn rest_preview(&self, from: usize) -> String {
        let rest = &self.src[from..];
        if rest.is_empty() {
            "end of input".to_string()
        } else {
            rest.chars().take(20).collect()
        }
    }
}

fn req(key: String, operator: SelectorOperator, values: Vec<String>) -> LabelSelectorRequirement {
    LabelSelectorRequirement {
        key,
        operator,
        values,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn expr(key: &str, operator: SelectorOperator, values: &[&str]) -> LabelSelectorRequirement {
        req(
            key.into(),
            operator,
            values.iter().map(|v| v.to_string()).collect(),
        )
    }

    #[test]
    fn and_selects_what_both_select() {
        let q = |s: &str| LabelSelector::parse_query(s).expect("query");
        let both = q("app=web,tier notin (db)").and(q("env=prod,app"));
        let cases = [
            (&[("app", "web"), ("env", "prod")][..], true),
            (&[("app", "web"), ("env", "dev")][..], false),
            (
                &[("app", "web"), ("env", "prod"), ("tier", "db")][..],
                false,
            ),
            (&[("env", "prod")][..], false),
        ];
        for (l, want) in cases {
            assert_eq!(both.matches(&labels(l)), want, "{l:?}");
        }
        // One key, two values: nothing.
        assert!(!q("app=web")
            .and(q("app=db"))
            .matches(&labels(&[("app", "web")])));
        assert!(q("").and(q("")).is_empty());
    }

    #[test]
    fn matching_table() {
        use SelectorOperator::*;
        let web = labels(&[("app", "web"), ("env", "prod")]);
        let sel = |ml: &[(&str, &str)], me: Vec<LabelSelectorRequirement>| LabelSelector {
            match_labels: labels(ml),
            match_expressions: me,
        };
        let cases: Vec<(&str, LabelSelector, bool)> = vec![
            ("empty selector", sel(&[], vec![]), true),
            ("matchLabels equal", sel(&[("app", "web")], vec![]), true),
            (
                "matchLabels k8s: source",
                sel(&[("k8s:app", "web")], vec![]),
                true,
            ),
            (
                "matchLabels any: source",
                sel(&[("any:app", "web")], vec![]),
                true,
            ),
            (
                "matchLabels other value",
                sel(&[("app", "db")], vec![]),
                false,
            ),
            (
                "matchLabels missing key",
                sel(&[("tier", "web")], vec![]),
                false,
            ),
            (
                "matchLabels all must hold",
                sel(&[("app", "web"), ("env", "dev")], vec![]),
                false,
            ),
            (
                "In hit",
                sel(&[], vec![expr("env", In, &["dev", "prod"])]),
                true,
            ),
            ("In miss", sel(&[], vec![expr("env", In, &["dev"])]), false),
            (
                "In missing key",
                sel(&[], vec![expr("tier", In, &["x"])]),
                false,
            ),
            (
                "NotIn hit",
                sel(&[], vec![expr("env", NotIn, &["prod"])]),
                false,
            ),
            (
                "NotIn miss",
                sel(&[], vec![expr("env", NotIn, &["dev"])]),
                true,
            ),
            (
                "NotIn missing key",
                sel(&[], vec![expr("tier", NotIn, &["x"])]),
                true,
            ),
            ("Exists", sel(&[], vec![expr("app", Exists, &[])]), true),
            (
                "Exists missing",
                sel(&[], vec![expr("tier", Exists, &[])]),
                false,
            ),
            (
                "DoesNotExist",
                sel(&[], vec![expr("app", DoesNotExist, &[])]),
                false,
            ),
            (
                "DoesNotExist missing",
                sel(&[], vec![expr("tier", DoesNotExist, &[])]),
                true,
            ),
            (
                "labels and expressions",
                sel(&[("app", "web")], vec![expr("env", In, &["prod"])]),
                true,
            ),
            (
                "labels ok, expression fails",
                sel(&[("app", "web")], vec![expr("env", DoesNotExist, &[])]),
                false,
            ),
        ];
        for (name, selector, want) in cases {
            assert_eq!(selector.matches(&web), want, "{name}");
        }
        assert!(LabelSelector::default().matches(&Labels::new()));
    }

    #[test]
    fn serde_spelling() {
        let json = r#"{"matchLabels":{"app":"web"},"matchExpressions":[{"key":"env","operator":"NotIn","values":["dev"]},{"key":"x","operator":"DoesNotExist"}]}"#;
        let sel: LabelSelector = serde_json::from_str(json).unwrap();
        assert_eq!(
            sel.match_expressions[1].operator,
            SelectorOperator::DoesNotExist
        );
        assert_eq!(serde_json::to_string(&sel).unwrap(), json);
        assert_eq!(
            serde_json::to_string(&LabelSelector::default()).unwrap(),
            "{}"
        );
        assert!(serde_json::from_str::<LabelSelector>(r#"{"matchLabel":{}}"#).is_err());
        assert!(serde_json::from_str::<LabelSelector>(
            r#"{"matchExpressions":[{"key":"a","operator":"in"}]}"#
        )
        .is_err());
    }

    #[test]
    fn validate_table() {
        use SelectorOperator::*;
        let cases: Vec<(LabelSelector, Vec<&str>)> = vec![
            (LabelSelector::default(), vec![]),
            (
                LabelSelector {
                    match_labels: labels(&[("k8s:io.kubernetes.pod.namespace", "prod")]),
                    ..Default::default()
                },
                vec![],
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("bad key", "v")]),
                    ..Default::default()
                },
                vec!["sel.matchLabels.bad key"],
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("app", "-v")]),
                    ..Default::default()
                },
                vec!["sel.matchLabels.app"],
            ),
            (
                LabelSelector {
                    match_labels: labels(&[("reserved:host", "")]),
                    ..Default::default()
                },
                vec!["sel.matchLabels.reserved:host"],
            ),
            (
                LabelSelector {
                    match_expressions: vec![expr("a", In, &[])],
                    ..Default::default()
                },
                vec!["sel.matchExpressions[0].values"],
            ),
            (
                LabelSelector {
                    match_expressions: vec![expr("a", NotIn, &[])],
                    ..Default::default()
                },
                vec!["sel.matchExpressions[0].values"],
            ),
            (
                LabelSelector {
                    match_expressions: vec![expr("a", Exists, &["x"])],
                    ..Default::default()
                },
                vec!["sel.matchExpressions[0].values"],
            ),
            (
                LabelSelector {
                    match_expressions: vec![expr("a", DoesNotExist, &["x"])],
                    ..Default::default()
                },
                vec!["sel.matchExpressions[0].values"],
            ),
            (
                LabelSelector {
                    match_expressions: vec![expr("a", In, &["ok"]), expr("", Exists, &[])],
                    ..Default::default()
                },
                vec!["sel.matchExpressions[1].key"],
            ),
            (
                LabelSelector {
                    match_expressions: vec![expr("a", In, &["ok", "bad value"])],
                    ..Default::default()
                },
                vec!["sel.matchExpressions[0].values[1]"],
            ),
        ];
        for (selector, want) in cases {
            let got: Vec<String> = selector
                .validate("sel")
                .into_iter()
                .map(|e| e.field)
                .collect();
            assert_eq!(got, want, "{selector:?}");
        }
    }

    #[test]
    fn query_parsing_table() {
        use SelectorOperator::*;
        let ok_cases: Vec<(&str, LabelSelector)> = vec![
            ("", LabelSelector::default()),
            ("   ", LabelSelector::default()),
            (
                "app=web",
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    ..Default::default()
                },
            ),
            (
                "app==web",
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    ..Default::default()
                },
            ),
            (
                "app=",
                LabelSelector {
                    match_labels: labels(&[("app", "")]),
                    ..Default::default()
                },
            ),
            (
                "app=web,app=api",
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    match_expressions: vec![expr("app", In, &["api"])],
                },
            ),
            (
                "app=web,tier!=db,env in (prod,staging),!legacy,team notin (a,b),owner",
                LabelSelector {
                    match_labels: labels(&[("app", "web")]),
                    match_expressions: vec![
                        expr("tier", NotIn, &["db"]),
                        expr("env", In, &["prod", "staging"]),
                        expr("legacy", DoesNotExist, &[]),
                        expr("team", NotIn, &["a", "b"]),
                        expr("owner", Exists, &[]),
                    ],
                },
            ),
            (
                " env  in ( prod , staging ) , example.com/team = a ",
                LabelSelector {
                    match_labels: labels(&[("example.com/team", "a")]),
                    match_expressions: vec![expr("env", In, &["prod", "staging"])],
                },
            ),
        ];
        for (query, want) in ok_cases {
            assert_eq!(
                LabelSelector::parse_query(query),
                Ok(want),
                "query {query:?}"
            );
        }

        let err_cases: &[(&str, &str)] = &[
            ("app=web,", "expected a label key"),
            (",app", "expected a label key"),
            ("app web", "expected '=', '==', '!=', 'in', 'notin'"),
            ("env in prod", "expected '('"),
            ("env in (prod", "missing ')'"),
            ("env in ()", "expected a value in the set"),
            ("env in (a,)", "expected a value in the set"),
            ("env notin (a b)", "expected ','"),
            ("!", "expected a label key"),
            ("bad key=1", "expected '=', '==', '!=', 'in', 'notin'"),
            ("-app=web", "invalid label key \"-app\""),
            ("app=-web", "invalid label value \"-web\""),
            ("reserved:host", "not supported by Weft"),
            ("app=web)", "expected ','"),
        ];
        for (query, want) in err_cases {
            let err = LabelSelector::parse_query(query).expect_err(query);
            assert_eq!(err.field, QUERY_FIELD);
            assert!(
                err.message.contains(want),
                "query {query:?}: {:?} does not contain {want:?}",
                err.message
            );
        }
    }

    #[test]
    fn parsed_not_equal_matches_missing_key() {
        let sel = LabelSelector::parse_query("tier!=db").unwrap();
        assert!(sel.matches(&labels(&[("app", "web")])));
        assert!(sel.matches(&labels(&[("tier", "web")])));
        assert!(!sel.matches(&labels(&[("tier", "db")])));
    }
}
