//! Import of CiliumNetworkPolicy and CiliumClusterwideNetworkPolicy YAML.
//!
//! # Namespaces
//! Cilium silently scopes a namespaced CiliumNetworkPolicy to its namespace. Weft policies are
//! tenant-wide, so the import writes that scope into the specs, the way Cilium does
//! internally, using the label Weft endpoints of Kubernetes pods carry,
//! `k8s:io.kubernetes.pod.namespace` (Weft ignores the `k8s:` source, see
//! [`crate::selector`]):
//! - the `endpointSelector` gets `k8s:io.kubernetes.pod.namespace: <namespace>` (replacing any
//!   namespace condition in its matchLabels: a CNP can only select pods of its namespace);
//! - every `fromEndpoints` / `toEndpoints` selector (allow and deny) that does not mention the
//!   namespace label gets the same condition, so `fromEndpoints: [{}]` means "pods of this
//!   namespace", as in Cilium; selectors that name a namespace, or select by namespace labels
//!   (`io.cilium.k8s.namespace.labels.*`), are left alone (cross-namespace rules);
//! - `nodeSelector` is refused in a namespaced policy, as Cilium does.
//!
//! A CiliumNetworkPolicy without `metadata.namespace` is left unscoped: kubectl would use the
//! current context's namespace, which Weft cannot know, and Weft also protects workloads that
//! have no namespace (VMs, bare metal). A CiliumClusterwideNetworkPolicy is never scoped and
//! must not have a namespace. One deliberate difference: Cilium narrows a clusterwide
//! policy's peer selectors without a namespace condition to Kubernetes pods (namespace label
//! exists); Weft does not, because its endpoints also include VMs and bare-metal workloads.
//!
//! Weft policy names are unique per tenant, so two documents with the same `metadata.name`
//! (even in different namespaces) are refused.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::error::FieldError;
use crate::labels::{validate_labels_at, Labels};
use crate::names::validate_name;
use crate::policy::{specs_from, PolicySpec};
use crate::selector::{normalize_selector_key, LabelSelector};

/// The only apiVersion accepted.
pub const API_VERSION: &str = "cilium.io/v2";
/// The label carrying a pod's namespace (after Weft drops the `k8s:` source).
pub const NAMESPACE_LABEL: &str = "io.kubernetes.pod.namespace";
/// The key the import writes, spelled as Cilium does.
pub const NAMESPACE_SELECTOR_KEY: &str = "k8s:io.kubernetes.pod.namespace";
/// Prefix of the labels Cilium copies from a pod's namespace onto the pod.
pub const NAMESPACE_LABELS_PREFIX: &str = "io.cilium.k8s.namespace.labels.";
/// Field name of errors that concern a whole document.
pub const DOCUMENT_FIELD: &str = "document";

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, utoipa::ToSchema)]
pub enum CnpKind {
    CiliumNetworkPolicy,
    CiliumClusterwideNetworkPolicy,
}

/// One imported document, ready to become a Weft policy.
#[derive(Debug, Clone, PartialEq)]
pub struct ImportedPolicy {
    pub name: String,
    pub labels: Labels,
    /// Validated; for a namespaced CNP, already scoped to the namespace (see module docs).
    pub specs: Vec<PolicySpec>,
    pub namespace: Option<String>,
    pub kind: CnpKind,
}

/// Every problem of one document. `document` counts the non-empty YAML documents from 0.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct DocumentError {
    pub document: usize,
    /// `metadata.name`, when the document has one.
    pub name: Option<String>,
    pub errors: Vec<FieldError>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct CiliumPolicy {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: Option<ObjectMeta>,
    #[serde(default)]
    spec: Option<PolicySpec>,
    #[serde(default)]
    specs: Option<Vec<PolicySpec>>,
    /// Written by Cilium; present in `kubectl get -o yaml` output, ignored.
    #[serde(default, rename = "status")]
    _status: Option<serde_yaml::Value>,
}

/// Not `deny_unknown_fields`: exported objects carry uid, resourceVersion, annotations...
/// which mean nothing to Weft.
#[derive(Deserialize)]
struct ObjectMeta {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    labels: Labels,
}

/// Parses one or many `---`-separated CNP/CCNP documents. All or nothing: on any problem,
/// returns the errors of every bad document (field paths relative to the document, such as
/// `spec.ingress[0].fromCIDR[0]` or `specs[1].egress[0]`).
pub fn parse_cnp_documents(yaml: &str) -> Result<Vec<ImportedPolicy>, Vec<DocumentError>> {
    // First pass: syntax, and the names (so that a document that fails to parse as a policy
    // can still be named in its error).
    let mut values = Vec::new();
    let mut failures = Vec::new();
    for doc in serde_yaml::Deserializer::from_str(yaml) {
        match serde_yaml::Value::deserialize(doc) {
            Ok(value) => values.push(value),
            Err(err) => {
                // The YAML stream cannot be resynchronised after a syntax error.
                failures.push(DocumentError {
                    document: values.iter().filter(|v| !v.is_null()).count(),
                    name: None,
                    errors: vec![yaml_error(&err)],
                });
                return Err(failures);
            }
        }
    }
    if values.iter().all(serde_yaml::Value::is_null) {
        return Err(vec![DocumentError {
            document: 0,
            name: None,
            errors: vec![FieldError::new(
                DOCUMENT_FIELD,
                "no policy documents in the input",
            )],
        }]);
    }

    // Second pass: the typed parse, from the text so errors keep their line and column.
    let mut policies = Vec::new();
    let mut seen: BTreeMap<String, usize> = BTreeMap::new();
    let docs = serde_yaml::Deserializer::from_str(yaml)
        .zip(&values)
        .filter(|(_, v)| !v.is_null());
    for (index, (doc, value)) in docs.enumerate() {
        let name = value
            .get("metadata")
            .and_then(|m| m.get("name"))
            .and_then(|n| n.as_str())
            .map(str::to_string);
        let result = CiliumPolicy::deserialize(doc)
            .map_err(|e| vec![yaml_error(&e)])
            .and_then(import_document);
        match result {
            Ok(policy) => {
                if let Some(first) = seen.insert(policy.name.clone(), index) {
                    failures.push(DocumentError {
                        document: index,
                        name,
                        errors: vec![FieldError::new(
                            "metadata.name",
                            format!(
                                "duplicate policy name {:?} (also in document {first})",
                                policy.name
                            ),
                        )],
                    });
                }
                policies.push(policy);
            }
            Err(errors) => failures.push(DocumentError {
                document: index,
                name,
                errors,
            }),
        }
    }
    if failures.is_empty() {
        Ok(policies)
    } else {
        Err(failures)
    }
}

fn import_document(doc: CiliumPolicy) -> Result<ImportedPolicy, Vec<FieldError>> {
    let mut errors = Vec::new();
    match doc.api_version.as_deref() {
        Some(API_VERSION) => {}
        Some(other) => errors.push(FieldError::new(
            "apiVersion",
            format!("unsupported apiVersion {other:?}: expected {API_VERSION:?}"),
        )),
        None => errors.push(FieldError::new(
            "apiVersion",
            format!("apiVersion is required ({API_VERSION:?})"),
        )),
    }
    let kind = match doc.kind.as_deref() {
        Some("CiliumNetworkPolicy") => Some(CnpKind::CiliumNetworkPolicy),
        Some("CiliumClusterwideNetworkPolicy") => Some(CnpKind::CiliumClusterwideNetworkPolicy),
        Some(other) => {
            errors.push(FieldError::new(
                "kind",
                format!("unsupported kind {other:?}: expected CiliumNetworkPolicy or CiliumClusterwideNetworkPolicy"),
            ));
            None
        }
        None => {
            errors.push(FieldError::new("kind", "kind is required"));
            None
        }
    };
    let (name, namespace, labels) = match doc.metadata {
        Some(m) => (m.name, m.namespace, m.labels),
        None => (None, None, Labels::new()),
    };
    match &name {
        Some(n) => {
            if let Err(e) = validate_name(n) {
                errors.push(FieldError::new(
                    "metadata.name",
                    format!("invalid name {n:?}: {e}"),
                ));
            }
        }
        None => errors.push(FieldError::new(
            "metadata.name",
            "metadata.name is required",
        )),
    }
    if let Some(ns) = &namespace {
        if kind == Some(CnpKind::CiliumClusterwideNetworkPolicy) {
            errors.push(FieldError::new(
                "metadata.namespace",
                "a CiliumClusterwideNetworkPolicy is cluster-scoped and must not have a namespace",
            ));
        } else if let Err(e) = validate_name(ns) {
            errors.push(FieldError::new(
                "metadata.namespace",
                format!("invalid namespace {ns:?}: {e}"),
            ));
        }
    }
    errors.extend(validate_labels_at(&labels, "metadata.labels"));

    let single = doc.spec.is_some();
    let specs = match specs_from(doc.spec, doc.specs) {
        Ok(specs) => specs,
        Err(spec_errors) => {
            errors.extend(spec_errors);
            Vec::new()
        }
    };
    let namespaced = kind == Some(CnpKind::CiliumNetworkPolicy) && namespace.is_some();
    if namespaced {
        for (i, spec) in specs.iter().enumerate() {
            if spec.node_selector.is_some() {
                let path = if single {
                    "spec".to_string()
                } else {
                    format!("specs[{i}]")
                };
                errors.push(FieldError::new(
                    format!("{path}.nodeSelector"),
                    "nodeSelector is only allowed in a CiliumClusterwideNetworkPolicy",
                ));
            }
        }
    }

    match (errors.is_empty(), name, kind) {
        (true, Some(name), Some(kind)) => {
            let specs = match (&namespace, namespaced) {
                (Some(ns), true) => specs
                    .into_iter()
                    .map(|s| scope_to_namespace(s, ns))
                    .collect(),
                _ => specs,
            };
            Ok(ImportedPolicy {
                name,
                labels,
                specs,
                namespace,
                kind,
            })
        }
        _ => Err(errors),
    }
}

/// Writes a namespaced CNP's implicit namespace scope into its spec (see module docs).
pub fn scope_to_namespace(mut spec: PolicySpec, namespace: &str) -> PolicySpec {
    if let Some(sel) = &mut spec.endpoint_selector {
        sel.match_labels
            .retain(|k, _| normalize_selector_key(k) != NAMESPACE_LABEL);
        sel.match_labels
            .insert(NAMESPACE_SELECTOR_KEY.to_string(), namespace.to_string());
    }
    let peer_selectors = spec
        .ingress
        .iter_mut()
        .chain(spec.ingress_deny.iter_mut())
        .flat_map(|r| r.from_endpoints.iter_mut().flatten())
        .chain(
            spec.egress
                .iter_mut()
                .chain(spec.egress_deny.iter_mut())
                .flat_map(|r| r.to_endpoints.iter_mut().flatten()),
        );
    for sel in peer_selectors {
        if !mentions_namespace(sel) {
            sel.match_labels
                .insert(NAMESPACE_SELECTOR_KEY.to_string(), namespace.to_string());
        }
    }
    spec
}

/// True when the selector already says which namespace(s) it means: by name, or by namespace
/// labels (`io.cilium.k8s.namespace.labels.<key>`), which Cilium also leaves unscoped.
fn mentions_namespace(sel: &LabelSelector) -> bool {
    let is_ns_key = |k: &str| {
        let k = normalize_selector_key(k);
        k == NAMESPACE_LABEL || k.starts_with(NAMESPACE_LABELS_PREFIX)
    };
    sel.match_labels.keys().any(|k| is_ns_key(k))
        || sel.match_expressions.iter().any(|r| is_ns_key(&r.key))
}

/// A serde_yaml error as a field error: its message starts with the path when there is one.
fn yaml_error(err: &serde_yaml::Error) -> FieldError {
    let text = err.to_string();
    let is_path = |p: &str| {
        !p.is_empty()
            && p.chars()
                .all(|c| c.is_ascii_alphanumeric() || "._-[]:/".contains(c))
    };
    match text.split_once(": ") {
        Some((path, message)) if is_path(path) => FieldError::new(path, message),
        _ => FieldError::new(DOCUMENT_FIELD, text),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::{evaluate, items, FlowProtocol, Peer, Subject, Traffic, Verdict};

    fn labels(pairs: &[(&str, &str)]) -> Labels {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    const MULTI: &str = r#"
# exported with kubectl: extra metadata and status are ignored
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata:
  name: allow-frontend
  namespace: prod
  uid: 0b9a7c1e-0000-0000-0000-000000000000
  resourceVersion: "123"
  annotations: {note: ignored}
  labels: {team: web}
spec:
  endpointSelector:
    matchLabels: {app: web}
  ingress:
    - fromEndpoints:
        - {}
        - matchLabels: {app: monitor, k8s:io.kubernetes.pod.namespace: observability}
    - fromEndpoints:
        - matchExpressions:
            - {key: io.kubernetes.pod.namespace, operator: In, values: [a, b]}
        - matchLabels: {"k8s:io.cilium.k8s.namespace.labels.team": ops}
  egressDeny:
    - toEndpoints: [{matchLabels: {app: db}}]
status:
  conditions: []
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata:
  name: cluster-baseline
specs:
  - endpointSelector: {}
    egress:
      - toEntities: [cluster]
  - nodeSelector: {matchLabels: {role: edge}}
    ingress:
      - fromEntities: [world]
        toPorts: [{ports: [{port: 443, protocol: TCP}]}]
---
"#;

    #[test]
    fn multi_document_with_namespace_scoping() {
        let policies = parse_cnp_documents(MULTI).expect("valid input");
        assert_eq!(policies.len(), 2);

        let cnp = &policies[0];
        assert_eq!(cnp.name, "allow-frontend");
        assert_eq!(cnp.kind, CnpKind::CiliumNetworkPolicy);
        assert_eq!(cnp.namespace.as_deref(), Some("prod"));
        assert_eq!(cnp.labels, labels(&[("team", "web")]));
        let spec = &cnp.specs[0];
        let ns = |sel: &LabelSelector| sel.match_labels.get(NAMESPACE_SELECTOR_KEY).cloned();
        assert_eq!(
            spec.endpoint_selector.as_ref().and_then(ns).as_deref(),
            Some("prod")
        );
        // `{}` becomes "this namespace"; selectors naming a namespace keep theirs.
        assert_eq!(
            ns(&items(&spec.ingress[0].from_endpoints)[0]).as_deref(),
            Some("prod")
        );
        assert_eq!(
            ns(&items(&spec.ingress[0].from_endpoints)[1]).as_deref(),
            Some("observability")
        );
        assert!(items(&spec.ingress[1].from_endpoints)[0]
            .match_labels
            .is_empty());
        assert_eq!(
            items(&spec.ingress[1].from_endpoints)[1].match_labels.len(),
            1
        );
        assert_eq!(
            ns(&items(&spec.egress_deny[0].to_endpoints)[0]).as_deref(),
            Some("prod")
        );

        let ccnp = &policies[1];
        assert_eq!(ccnp.kind, CnpKind::CiliumClusterwideNetworkPolicy);
        assert_eq!(ccnp.namespace, None);
        assert_eq!(ccnp.specs.len(), 2);
        assert_eq!(
            ccnp.specs[0].endpoint_selector,
            Some(LabelSelector::default())
        );

        // The scoping has the Cilium meaning under the evaluator.
        let web_in = |ns: &str| Subject::endpoint(labels(&[("app", "web"), (NAMESPACE_LABEL, ns)]));
        let peer_in = |ns: &str| Peer::endpoint(labels(&[("app", "x"), (NAMESPACE_LABEL, ns)]));
        let specs = &cnp.specs;
        let verdict = |subject: &Subject, peer: Peer| {
            evaluate(
                specs,
                subject,
                &Traffic::ingress(peer, FlowProtocol::Tcp, 80),
            )
            .verdict
        };
        assert_eq!(verdict(&web_in("prod"), peer_in("prod")), Verdict::Allowed);
        assert_eq!(verdict(&web_in("prod"), peer_in("dev")), Verdict::Denied);
        assert_eq!(verdict(&web_in("prod"), peer_in("a")), Verdict::Allowed);
        assert_eq!(
            verdict(&web_in("dev"), peer_in("dev")),
            Verdict::DefaultAllowed
        );
    }

    #[test]
    fn realistic_cnp_imports_and_round_trips() {
        let mut yaml = String::from(
            "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata:\n  name: web\nspec:\n",
        );
        for line in crate::policy::tests::REALISTIC.lines() {
            yaml.push_str("  ");
            yaml.push_str(line);
            yaml.push('\n');
        }
        let policies = parse_cnp_documents(&yaml).expect("valid realistic CNP");
        let spec = &policies[0].specs[0];
        let json = serde_json::to_string(spec).expect("serialize");
        assert_eq!(
            &serde_json::from_str::<PolicySpec>(&json).expect("parse back"),
            spec
        );
    }

    #[test]
    fn per_document_errors() {
        let yaml = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: good}
spec: {endpointSelector: {}}
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: bad-cidr}
specs:
  - endpointSelector: {}
  - endpointSelector: {}
    egress: [{toCIDR: [10.0.0.0/33]}]
---
apiVersion: networking.k8s.io/v1
kind: CiliumNetworkPolicy
metadata: {name: Bad_Name}
spec: {endpointSelector: {}}
"#;
        let errors = parse_cnp_documents(yaml).expect_err("two bad documents");
        assert_eq!(errors.len(), 2, "{errors:#?}");
        assert_eq!(errors[0].document, 1);
        assert_eq!(errors[0].name.as_deref(), Some("bad-cidr"));
        assert_eq!(errors[0].errors.len(), 1);
        assert_eq!(errors[0].errors[0].field, "specs[1].egress[0].toCIDR[0]");
        assert!(errors[0].errors[0]
            .message
            .starts_with("invalid CIDR \"10.0.0.0/33\""));
        assert_eq!(errors[1].document, 2);
        assert_eq!(errors[1].name.as_deref(), Some("Bad_Name"));
        let fields: Vec<&str> = errors[1].errors.iter().map(|e| e.field.as_str()).collect();
        assert_eq!(fields, ["apiVersion", "metadata.name"]);
        assert!(errors[1].errors[0].message.contains("networking.k8s.io/v1"));
    }

    /// Each bad single document: the expected (field, message part) of its first error.
    #[test]
    fn document_error_table() {
        let head = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\n";
        let cases: Vec<(String, &str, &str)> = vec![
            ("".into(), DOCUMENT_FIELD, "no policy documents"),
            ("# only a comment\n---\n".into(), DOCUMENT_FIELD, "no policy documents"),
            ("just text\n".into(), DOCUMENT_FIELD, "invalid type: string \"just text\", expected struct CiliumPolicy"),
            (format!("{head}metadata: {{name: a}}\nspec: [\n"), DOCUMENT_FIELD, "at line 5 column 1"),
            (format!("{head}metadata: {{name: a}}\nspec:\n  endpointSelector: {{}}\n    ingress: []\n"), DOCUMENT_FIELD, "line"),
            ("kind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n".into(), "apiVersion", "apiVersion is required"),
            ("apiVersion: cilium.io/v2\nkind: NetworkPolicy\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n".into(), "kind", "unsupported kind \"NetworkPolicy\""),
            ("apiVersion: cilium.io/v2\nmetadata: {name: a}\nspec: {endpointSelector: {}}\n".into(), "kind", "kind is required"),
            (format!("{head}spec: {{endpointSelector: {{}}}}\n"), "metadata.name", "metadata.name is required"),
            (format!("{head}metadata: {{name: web.prod}}\nspec: {{endpointSelector: {{}}}}\n"), "metadata.name", "invalid name \"web.prod\""),
            (format!("{head}metadata: {{name: a, namespace: Prod}}\nspec: {{endpointSelector: {{}}}}\n"), "metadata.namespace", "invalid namespace"),
            (
                "apiVersion: cilium.io/v2\nkind: CiliumClusterwideNetworkPolicy\nmetadata: {name: a, namespace: prod}\nspec: {endpointSelector: {}}\n".into(),
                "metadata.namespace",
                "cluster-scoped",
            ),
            (format!("{head}metadata: {{name: a, labels: {{\"bad key\": x}}}}\nspec: {{endpointSelector: {{}}}}\n"), "metadata.labels.bad key", "invalid label key"),
            (format!("{head}metadata: {{name: a}}\n"), "spec", "one of spec or specs is required"),
            (format!("{head}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}}}\nspecs: []\n"), "spec", "not both"),
            (format!("{head}metadata: {{name: a}}\nspecs: []\n"), "specs", "at least one"),
            (format!("{head}metadata: {{name: a, namespace: prod}}\nspec: {{nodeSelector: {{}}}}\n"), "spec.nodeSelector", "only allowed in a CiliumClusterwideNetworkPolicy"),
            (format!("{head}metadata: {{name: a}}\nspek: {{}}\n"), DOCUMENT_FIELD, "unknown field `spek`"),
            (
                format!("{head}metadata: {{name: a}}\nspec:\n  endpointSelector: {{}}\n  ingress:\n    - toPorts: [{{ports: [{{port: 80, protocol: HTTP}}]}}]\n"),
                "spec.ingress[0].toPorts[0].ports[0].protocol",
                "unknown variant `HTTP`",
            ),
            (format!("{head}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}, egress: [{{toEntities: [internet]}}]}}\n"), "spec.egress[0].toEntities[0]", "unknown entity"),
            (
                format!("{head}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}}}\n---\n{head}metadata: {{name: a}}\nspec: {{endpointSelector: {{}}}}\n"),
                "metadata.name",
                "duplicate policy name \"a\" (also in document 0)",
            ),
        ];
        for (yaml, field, message) in cases {
            let errors = parse_cnp_documents(&yaml).expect_err(&yaml);
            let first = &errors[0].errors[0];
            assert_eq!(first.field, field, "input:\n{yaml}\n{errors:#?}");
            assert!(
                first.message.contains(message),
                "input:\n{yaml}\n{:?} does not contain {message:?}",
                first.message
            );
        }
    }

    #[test]
    fn scoping_is_not_applied_without_namespace() {
        let yaml = "apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: a}\nspec:\n  endpointSelector: {}\n  ingress: [{fromEndpoints: [{}]}]\n";
        let policies = parse_cnp_documents(yaml).expect("valid");
        assert_eq!(policies[0].namespace, None);
        assert_eq!(
            policies[0].specs[0].endpoint_selector,
            Some(LabelSelector::default())
        );
        assert_eq!(
            policies[0].specs[0].ingress[0].from_endpoints,
            Some(vec![LabelSelector::default()])
        );
    }
}
