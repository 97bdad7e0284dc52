//! HTTP rules as Cilium reads them (`PortRuleHTTP`): a request is allowed when one rule of
//! the set matches it, and a rule matches when every field it gives matches — `method`,
//! `path` and `host` are regular expressions matched against the whole value (the path with
//! its query, as Envoy's `:path`), `headers` are `Name` (present) or `Name: value` (equal).

use hyper::header::{HeaderMap, HeaderName};
use regex::Regex;
use weft_model::desired::HttpMatch;

/// One compiled rule.
#[derive(Debug)]
struct Rule {
    method: Option<Regex>,
    /// Whether the rule has a path (matched by the set's `paths`).
    has_path: bool,
    host: Option<Regex>,
    headers: Vec<(HeaderName, Option<String>)>,
}

/// The HTTP rules of one redirect entry, compiled. The paths are also one `RegexSet`, so
/// that a request's path is matched against every rule in one pass: the cost stays flat as
/// rules are added (most rules differ by path).
#[derive(Debug)]
pub struct RuleSet {
    rules: Vec<Rule>,
    /// The path patterns of the rules that have one, and which rule each belongs to.
    paths: regex::RegexSet,
    path_rule: Vec<usize>,
    /// The headers the rules name, in order, each with whether its value is shown in flow
    /// records (see [`RuleSet::recorded`]).
    named: Vec<(HeaderName, bool)>,
}

/// What a flow record shows instead of a header value that may be a credential.
pub const REDACTED: &str = "[redacted]";

/// Whether a header's value may be a credential by its name (`Authorization`, `Cookie`,
/// `X-Api-Key`, `X-Auth-Token`, …).
fn sensitive(name: &HeaderName) -> bool {
    const WORDS: [&str; 8] = [
        "auth",
        "cookie",
        "token",
        "secret",
        "key",
        "pass",
        "session",
        "credential",
    ];
    WORDS.iter().any(|w| name.as_str().contains(w))
}

/// What the rules look at in a request.
pub struct RequestView<'a> {
    pub method: &'a str,
    /// Path and query, as sent (`/a/b?x=1`).
    pub path: &'a str,
    /// The `Host` header (or the request target's authority).
    pub host: Option<&'a str>,
    pub headers: &'a HeaderMap,
}

fn whole(field: &str, re: &Option<String>) -> Result<Option<Regex>, String> {
    re.as_ref()
        .map(|re| {
            Regex::new(&format!("^(?:{re})$"))
                .map_err(|e| format!("{field} {re:?} is not a regular expression: {e}"))
        })
        .transpose()
}

impl RuleSet {
    /// Compiles the rules; an invalid one refuses the whole set (validation already
    /// refuses such policies, so this is a control plane that sent something else).
    pub fn compile(http: &[HttpMatch]) -> Result<RuleSet, String> {
        let mut rules = Vec::with_capacity(http.len());
        let (mut patterns, mut path_rule) = (Vec::new(), Vec::new());
        for (i, h) in http.iter().enumerate() {
            if let Some(p) = &h.path {
                patterns.push(format!("^(?:{p})$"));
                path_rule.push(i);
            }
            let mut headers = Vec::with_capacity(h.headers.len());
            for spec in &h.headers {
                let (name, value) = match spec.split_once(':') {
                    Some((n, v)) => (n.trim(), Some(v.trim().to_string())),
                    None => (spec.trim(), None),
                };
                let name = HeaderName::from_bytes(name.as_bytes())
                    .map_err(|_| format!("header {spec:?} does not name a header"))?;
                headers.push((name, value));
            }
            rules.push(Rule {
                method: whole("method", &h.method)?,
                // Compiled alone too, for an error naming the field.
                has_path: whole("path", &h.path)?.is_some(),
                host: whole("host", &h.host)?,
                headers,
            });
        }
        let paths = regex::RegexSet::new(&patterns)
            .map_err(|e| format!("the rules' paths do not compile together: {e}"))?;
        // A value a rule compares against is a shared secret as often as not: hidden too.
        let mut named: Vec<(HeaderName, bool)> = Vec::new();
        for (name, want) in rules.iter().flat_map(|r| &r.headers) {
            let shown = want.is_none() && !sensitive(name);
            match named.iter_mut().find(|(n, _)| n == name) {
                Some((_, s)) => *s &= shown,
                None => named.push((name.clone(), shown)),
            }
        }
        Ok(RuleSet {
            rules,
            paths,
            path_rule,
            named,
        })
    }

    /// The request's headers that the rules name, for its flow record (Hubble's
    /// `l7.http.headers`): each value as sent, or [`REDACTED`] when it may be a credential
    /// (by the header's name, or because a rule compares it with a value).
    pub fn recorded(&self, headers: &HeaderMap) -> Vec<(String, String)> {
        let mut out = Vec::new();
        for (name, shown) in &self.named {
            for v in headers.get_all(name) {
                let value = match v.to_str() {
                    Ok(v) if *shown => v.to_string(),
                    _ => REDACTED.to_string(),
                };
                out.push((name.as_str().to_string(), value));
            }
        }
        out
    }

    /// Whether one of the rules allows the request.
    pub fn allows(&self, r: &RequestView<'_>) -> bool {
        let mut path_ok = vec![false; self.rules.len()];
        for m in self.paths.matches(r.path).iter() {
            path_ok[self.path_rule[m]] = true;
        }
        self.rules
            .iter()
            .zip(path_ok)
            .any(|(rule, path_ok)| (!rule.has_path || path_ok) && rule.matches_but_path(r))
    }
}

impl Rule {
    /// Every field but the path (the set matched it).
    fn matches_but_path(&self, r: &RequestView<'_>) -> bool {
        let re = |re: &Option<Regex>, v: Option<&str>| match re {
            None => true,
            Some(re) => v.is_some_and(|v| re.is_match(v)),
        };
        re(&self.method, Some(r.method))
            && re(&self.host, r.host)
            && self.headers.iter().all(|(name, want)| {
                let mut values = r.headers.get_all(name).iter();
                match want {
                    None => values.next().is_some(),
                    Some(want) => values.any(|v| v.to_str().is_ok_and(|v| v.trim() == want)),
                }
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(
        method: Option<&str>,
        path: Option<&str>,
        host: Option<&str>,
        headers: &[&str],
    ) -> HttpMatch {
        HttpMatch {
            method: method.map(Into::into),
            path: path.map(Into::into),
            host: host.map(Into::into),
            headers: headers.iter().map(|h| h.to_string()).collect(),
        }
    }

    fn allows(
        set: &RuleSet,
        method: &str,
        path: &str,
        host: Option<&str>,
        headers: &[(&str, &str)],
    ) -> bool {
        let mut map = HeaderMap::new();
        for (k, v) in headers {
            map.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        set.allows(&RequestView {
            method,
            path,
            host,
            headers: &map,
        })
    }

    #[test]
    fn records_show_the_named_headers_and_hide_what_may_be_a_credential() {
        let set = RuleSet::compile(&[
            m(None, None, None, &["X-Request-Id", "Authorization"]),
            m(None, None, None, &["X-Env: prod", "X-Trace"]),
            m(None, None, None, &["x-trace: 1"]),
        ])
        .expect("valid");
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("x-request-id", "r-1"),
            ("authorization", "Bearer s3cret"),
            ("x-env", "prod"),
            ("x-trace", "1"),
            ("x-other", "not named"),
        ] {
            h.append(
                HeaderName::from_bytes(k.as_bytes()).expect("name"),
                v.parse().expect("value"),
            );
        }
        assert_eq!(
            set.recorded(&h),
            [
                ("x-request-id", "r-1"),
                ("authorization", REDACTED),
                ("x-env", REDACTED),
                ("x-trace", REDACTED),
            ]
            .map(|(k, v)| (k.to_string(), v.to_string()))
        );
        assert!(RuleSet::compile(&[m(Some("GET"), None, None, &[])])
            .expect("valid")
            .recorded(&h)
            .is_empty());
    }

    #[test]
    fn fields_are_anded_rules_ored_and_regexes_match_whole() {
        let set = RuleSet::compile(&[
            m(Some("GET"), Some("/public/.*"), None, &[]),
            m(
                Some("POST|PUT"),
                Some("/upload"),
                Some("api\\.example\\.com"),
                &["X-Token"],
            ),
        ])
        .expect("valid");
        assert!(allows(&set, "GET", "/public/a", None, &[]));
        assert!(
            !allows(&set, "GET", "/public", None, &[]),
            "path regex is anchored"
        );
        assert!(!allows(&set, "GET", "/private/public/a", None, &[]));
        assert!(
            !allows(&set, "GETX", "/public/a", None, &[]),
            "method regex is anchored"
        );
        assert!(!allows(&set, "DELETE", "/public/a", None, &[]));
        assert!(allows(
            &set,
            "PUT",
            "/upload",
            Some("api.example.com"),
            &[("x-token", "1")]
        ));
        assert!(
            !allows(&set, "PUT", "/upload", Some("api.example.com"), &[]),
            "header missing"
        );
        assert!(!allows(
            &set,
            "PUT",
            "/upload",
            Some("apixexample.com"),
            &[("x-token", "1")]
        ));
        assert!(
            !allows(&set, "PUT", "/upload", None, &[("x-token", "1")]),
            "no host"
        );
        // The query is part of the path, as Envoy's `:path`.
        assert!(!allows(
            &set,
            "POST",
            "/upload?x=1",
            Some("api.example.com"),
            &[("x-token", "")]
        ));
    }

    #[test]
    fn header_values_compare_exactly_and_empty_rules_allow_all() {
        let set = RuleSet::compile(&[m(None, None, None, &["X-Env: prod"])]).expect("valid");
        assert!(allows(&set, "GET", "/", None, &[("X-Env", "prod")]));
        assert!(allows(
            &set,
            "GET",
            "/",
            None,
            &[("X-Env", "dev"), ("x-env", "prod")]
        ));
        assert!(!allows(&set, "GET", "/", None, &[("X-Env", "production")]));
        let all = RuleSet::compile(&[m(None, None, None, &[])]).expect("valid");
        assert!(allows(&all, "PATCH", "/anything?at=all", None, &[]));
        let none = RuleSet::compile(&[]).expect("valid");
        assert!(!allows(&none, "GET", "/", None, &[]));
    }

    #[test]
    fn invalid_rules_are_refused_by_name() {
        let e = RuleSet::compile(&[m(Some("("), None, None, &[])]).expect_err("invalid");
        assert!(e.starts_with("method \"(\""), "{e}");
        let e = RuleSet::compile(&[m(None, None, None, &["bad name: x"])]).expect_err("invalid");
        assert!(e.contains("bad name"), "{e}");
    }
}
