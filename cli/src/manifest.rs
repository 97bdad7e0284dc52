//! Files given to `apply` and `diff`: one or many `---` YAML (or JSON) documents, each a
//! native Weft object as the REST API takes it, or a CiliumNetworkPolicy /
//! CiliumClusterwideNetworkPolicy (converted here with the same code the API's import
//! uses). Objects are normalized, so what a file says and what the API returns compare
//! equal when they mean the same.

use std::collections::HashSet;

use anyhow::{anyhow, bail, Result};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use weft_model::labels::Labels;
use weft_model::policy::PolicySpec;
use weft_model::service::{Algorithm, Backend, Frontend, SessionAffinity};

/// A native policy document: the body of `POST /v1/tenants/{t}/policies`.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct NativePolicy {
    name: String,
    #[serde(default)]
    labels: Labels,
    #[serde(default)]
    description: String,
    #[serde(default)]
    spec: Option<PolicySpec>,
    #[serde(default)]
    specs: Option<Vec<PolicySpec>>,
    #[serde(default)]
    clusters: Option<Vec<String>>,
}

/// The normalized writable part of a policy.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
struct PolicyBody {
    name: String,
    labels: Labels,
    description: String,
    specs: Vec<PolicySpec>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    clusters: Option<Vec<String>>,
}

/// A service document: the body of `POST …/clusters/{c}/services`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct ServiceBody {
    name: String,
    #[serde(default)]
    labels: Labels,
    frontends: Vec<Frontend>,
    #[serde(default)]
    backends: Vec<Backend>,
    #[serde(default)]
    algorithm: Algorithm,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    session_affinity: Option<SessionAffinity>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Policy,
    Service,
}

impl Kind {
    pub fn as_str(self) -> &'static str {
        match self {
            Kind::Policy => "policy",
            Kind::Service => "service",
        }
    }
}

/// One object of a file, normalized.
#[derive(Debug, Clone, PartialEq)]
pub struct Object {
    pub name: String,
    /// What to send (and compare with what the API holds).
    pub body: Value,
    /// Where it came from, e.g. `document 2 (CiliumNetworkPolicy)`.
    pub origin: String,
}

/// The non-empty documents of a YAML stream (JSON is YAML too).
pub fn documents(text: &str) -> Result<Vec<serde_yaml::Value>> {
    let mut docs = Vec::new();
    for (i, de) in serde_yaml::Deserializer::from_str(text).enumerate() {
        let v = serde_yaml::Value::deserialize(de)
            .map_err(|e| anyhow!("document {i} is not valid YAML or JSON: {e}"))?;
        if !v.is_null() {
            docs.push(v);
        }
    }
    if docs.is_empty() {
        bail!("the input holds no documents");
    }
    Ok(docs)
}

fn errors_text(doc: usize, errs: impl IntoIterator<Item = (String, String)>) -> String {
    errs.into_iter()
        .map(|(f, m)| format!("\n  documents[{doc}].{f}: {m}"))
        .collect()
}

/// Name and labels; the specs were validated by `specs_from` or the CNP import.
fn check_policy(p: &PolicyBody) -> Vec<(String, String)> {
    let mut errs = Vec::new();
    if let Err(e) = weft_model::names::validate_name(&p.name) {
        errs.push(("name".to_string(), e.to_string()));
    }
    if let Err(e) = weft_model::labels::validate_labels(&p.labels) {
        errs.extend(e.into_iter().map(|e| (e.field, e.message)));
    }
    errs
}

/// Policies from a file: native documents and CNP/CCNP documents, in file order.
/// Every document is checked before anything is sent, so a bad one changes nothing.
pub fn policies(text: &str) -> Result<Vec<Object>> {
    let docs = documents(text)?;
    let mut out: Vec<Option<Object>> = vec![None; docs.len()];
    let mut problems = String::new();
    let mut cnp_docs = Vec::new();
    for (i, doc) in docs.iter().enumerate() {
        let kind = doc.get("kind").and_then(|k| k.as_str());
        match kind {
            Some(k) if k.starts_with("Cilium") => cnp_docs.push(i),
            Some(k) => problems.push_str(&format!(
                "\n  documents[{i}].kind: {k:?} is not a policy (give a native Weft policy, a \
                 CiliumNetworkPolicy or a CiliumClusterwideNetworkPolicy)"
            )),
            None => match serde_yaml::from_value::<NativePolicy>(doc.clone()) {
                Err(e) => problems.push_str(&format!("\n  documents[{i}]: {e}")),
                Ok(n) => match weft_model::policy::specs_from(n.spec, n.specs) {
                    Err(errs) => problems.push_str(&errors_text(
                        i,
                        errs.into_iter().map(|e| (e.field, e.message)),
                    )),
                    Ok(specs) => {
                        let mut clusters = n.clusters;
                        if let Some(c) = clusters.as_mut() {
                            c.sort();
                        }
                        let body = PolicyBody {
                            name: n.name,
                            labels: n.labels,
                            description: n.description,
                            specs,
                            clusters,
                        };
                        let errs = check_policy(&body);
                        if errs.is_empty() {
                            out[i] = Some(Object {
                                name: body.name.clone(),
                                body: serde_json::to_value(&body)?,
                                origin: format!("document {i}"),
                            });
                        } else {
                            problems.push_str(&errors_text(i, errs));
                        }
                    }
                },
            },
        }
    }
    if !cnp_docs.is_empty() {
        let yaml = cnp_docs
            .iter()
            .map(|&i| serde_yaml::to_string(&docs[i]))
            .collect::<Result<Vec<_>, _>>()?
            .join("---\n");
        match weft_model::cnp::parse_cnp_documents(&yaml) {
            Err(doc_errs) => {
                for d in doc_errs {
                    let i = cnp_docs.get(d.document).copied().unwrap_or(d.document);
                    problems.push_str(&errors_text(
                        i,
                        d.errors.into_iter().map(|e| (e.field, e.message)),
                    ));
                }
            }
            Ok(imported) => {
                for (k, p) in imported.into_iter().enumerate() {
                    let i = cnp_docs[k];
                    // As the API's import: no description, all clusters.
                    let body = PolicyBody {
                        name: p.name.clone(),
                        labels: p.labels,
                        description: String::new(),
                        specs: p.specs,
                        clusters: None,
                    };
                    out[i] = Some(Object {
                        name: p.name,
                        body: serde_json::to_value(&body)?,
                        origin: format!("document {i} ({:?})", p.kind),
                    });
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("nothing was applied; the input has errors:{problems}");
    }
    unique(out.into_iter().flatten().collect())
}

/// Services from a file (native documents only).
pub fn services(text: &str) -> Result<Vec<Object>> {
    let mut out = Vec::new();
    let mut problems = String::new();
    for (i, doc) in documents(text)?.into_iter().enumerate() {
        match serde_yaml::from_value::<ServiceBody>(doc) {
            Err(e) => problems.push_str(&format!("\n  documents[{i}]: {e}")),
            Ok(s) => {
                let spec = weft_model::service::ServiceSpec {
                    frontends: s.frontends.clone(),
                    backends: s.backends.clone(),
                    algorithm: s.algorithm,
                    session_affinity: s.session_affinity.clone(),
                };
                let mut errs: Vec<(String, String)> = Vec::new();
                if let Err(e) = weft_model::names::validate_name(&s.name) {
                    errs.push(("name".into(), e.to_string()));
                }
                if let Err(e) = spec.validate() {
                    errs.extend(e.into_iter().map(|e| (e.field, e.message)));
                }
                if errs.is_empty() {
                    out.push(Object {
                        name: s.name.clone(),
                        body: serde_json::to_value(&s)?,
                        origin: format!("document {i}"),
                    });
                } else {
                    problems.push_str(&errors_text(i, errs));
                }
            }
        }
    }
    if !problems.is_empty() {
        bail!("nothing was applied; the input has errors:{problems}");
    }
    unique(out)
}

fn unique(objects: Vec<Object>) -> Result<Vec<Object>> {
    let mut seen = HashSet::new();
    for o in &objects {
        if !seen.insert(o.name.clone()) {
            bail!(
                "nothing was applied: {:?} appears more than once in the input",
                o.name
            );
        }
    }
    Ok(objects)
}

/// What the API holds, in the same normalized shape as [`Object::body`].
pub fn normalize_live(kind: Kind, live: &Value) -> Result<Value> {
    let mut v = live.clone();
    let keep: &[&str] = match kind {
        Kind::Policy => &["name", "labels", "description", "specs", "clusters"],
        Kind::Service => &[
            "name",
            "labels",
            "frontends",
            "backends",
            "algorithm",
            "session_affinity",
        ],
    };
    if let Some(m) = v.as_object_mut() {
        m.retain(|k, val| keep.contains(&k.as_str()) && !val.is_null());
    }
    Ok(match kind {
        Kind::Policy => serde_json::to_value(serde_json::from_value::<PolicyBody>(v)?)?,
        Kind::Service => serde_json::to_value(serde_json::from_value::<ServiceBody>(v)?)?,
    })
}

/// The YAML that `diff` shows for a normalized object.
pub fn to_yaml(body: &Value) -> Result<String> {
    Ok(serde_yaml::to_string(body)?)
}

/// A policy as the API returns it, for tests.
#[cfg(test)]
fn live_policy(name: &str, specs: Value) -> Value {
    serde_json::json!({"id": "0190", "name": name, "labels": {}, "description": "", "specs": specs,
           "created_at": "2026-11-26T14:00:00Z", "updated_at": "2026-11-26T14:00:00Z",
           "revision": 7, "status": {"realized_nodes": 0, "total_nodes": 0}})
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    const NATIVE: &str = r#"
name: web-from-frontend
labels: {team: web}
spec:
  endpointSelector: {matchLabels: {app: web}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: frontend}}]
      toPorts: [{ports: [{port: "80", protocol: TCP}]}]
"#;

    const CNPS: &str = r#"
apiVersion: cilium.io/v2
kind: CiliumNetworkPolicy
metadata: {name: db-from-api, namespace: shop}
spec:
  endpointSelector: {matchLabels: {app: db}}
  ingress:
    - fromEndpoints: [{matchLabels: {app: api}}]
---
apiVersion: cilium.io/v2
kind: CiliumClusterwideNetworkPolicy
metadata: {name: deny-world}
spec:
  endpointSelector: {}
  egressDeny:
    - toEntities: [world]
"#;

    #[test]
    fn native_and_cnp_documents_normalize() {
        let text = format!("{NATIVE}---\n{CNPS}");
        let objs = policies(&text).unwrap();
        let names: Vec<_> = objs.iter().map(|o| o.name.as_str()).collect();
        assert_eq!(names, ["web-from-frontend", "db-from-api", "deny-world"]);
        assert_eq!(objs[0].body["specs"].as_array().unwrap().len(), 1);
        assert_eq!(objs[0].body["labels"]["team"], "web");
        // A namespaced CNP is scoped to its namespace, as the API's import does.
        let sel = objs[1].body["specs"][0]["endpointSelector"].to_string();
        assert!(sel.contains("shop"), "{sel}");
        assert!(objs[2].origin.contains("CiliumClusterwideNetworkPolicy"));
    }

    #[test]
    fn live_objects_compare_equal_to_their_file() {
        let objs = policies(NATIVE).unwrap();
        let live = live_policy("web-from-frontend", objs[0].body["specs"].clone());
        let mut live = live;
        live["labels"] = json!({"team": "web"});
        assert_eq!(normalize_live(Kind::Policy, &live).unwrap(), objs[0].body);
        live["description"] = json!("changed");
        assert_ne!(normalize_live(Kind::Policy, &live).unwrap(), objs[0].body);
    }

    #[test]
    fn bad_documents_are_all_reported_with_their_index() {
        let text = "name: ok\nspec: {endpointSelector: {}}\n---\nname: Bad_Name\nspec: {endpointSelector: {}}\n---\nkind: Deployment\n---\nname: x\nspec: {}\nspecs: []\n";
        let err = policies(text).unwrap_err().to_string();
        assert!(err.contains("documents[1].name"), "{err}");
        assert!(err.contains("documents[2].kind"), "{err}");
        assert!(err.contains("documents[3].spec"), "{err}");
        assert!(!err.contains("documents[0]"), "{err}");
        let err = policies(
            "name: a\nspec: {endpointSelector: {}}\n---\nname: a\nspec: {endpointSelector: {}}\n",
        )
        .unwrap_err()
        .to_string();
        assert!(err.contains("more than once"), "{err}");
        let err = policies("name: a\nspec: {endpointSelector: {}}\nbogus: 1\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("bogus"), "{err}");
        assert!(policies("").is_err());
        let err = policies("apiVersion: cilium.io/v2\nkind: CiliumNetworkPolicy\nmetadata: {name: c}\nspec:\n  endpointSelector: {}\n  ingress: [{fromCIDR: [nope]}]\n")
            .unwrap_err()
            .to_string();
        assert!(err.contains("documents[0]."), "{err}");
    }

    #[test]
    fn services_normalize_defaults() {
        let text = "name: api\nfrontends: [{vip: 10.96.1.1, port: 443, protocol: TCP}]\nbackends: [{address: 10.0.3.4, port: 8443}]\n";
        let objs = services(text).unwrap();
        let live = json!({"id": "x", "cluster_id": "y", "name": "api", "labels": {},
            "frontends": [{"vip": "10.96.1.1", "port": 443, "protocol": "TCP"}],
            "backends": [{"address": "10.0.3.4", "port": 8443, "weight": 1, "state": "active"}],
            "algorithm": objs[0].body["algorithm"].clone(), "session_affinity": null, "revision": 3,
            "status": {"realized_nodes": 0, "total_nodes": 0}});
        assert_eq!(normalize_live(Kind::Service, &live).unwrap(), objs[0].body);
        assert!(services("name: api\nfrontends: []\nweird: 1\n").is_err());
    }
}
