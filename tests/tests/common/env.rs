//! The whole-system environment of the e2e tests: a control plane (tenant `acme`, cluster
//! `prod`), an underlay and `n` nodes running the real `node-agent`, with the REST helpers
//! the tests share.

use std::time::{Duration, Instant};

use axum::http::StatusCode;
use serde_json::Value;

use super::nodes::{ApiProcess, Node, Run, TempDir, Underlay, WITHIN};
use super::ControlPlane;

pub struct Env {
    pub cp: ControlPlane,
    pub owner: String,
    pub url: String,
    _tls: TempDir,
    pub ca: std::path::PathBuf,
    pub nodes: Vec<Node>,
    /// control-api as a process, when the test restarts it.
    pub api: Option<ApiProcess>,
    pub underlay: Underlay,
}

impl Env {
    /// `n` nodes; the agent service in this process.
    pub async fn new(n: u8) -> Env {
        Env::build(n, false).await
    }

    /// `n` nodes; the agent service in a control-api process (see [`ApiProcess`]).
    pub async fn with_api_process(n: u8) -> Env {
        Env::build(n, true).await
    }

    pub async fn build(n: u8, process: bool) -> Env {
        let cp = ControlPlane::new().await;
        let owner = cp.acme_prod().await;
        let underlay = Underlay::new();
        let tls = weft_testkit::tmp::dir("e2e-tls");
        let (url, ca, api) = if process {
            let (mut api, url, ca) = ApiProcess::new(&underlay, &cp.db_url, tls.path());
            tokio::task::block_in_place(|| api.start());
            (url, ca, Some(api))
        } else {
            let (url, ca) = cp.serve_agents_on(tls.path(), underlay.listen()).await;
            (url, ca, None)
        };
        let nodes = (1..=n).map(|i| Node::new(&underlay, i)).collect();
        Env {
            cp,
            owner,
            url,
            _tls: tls,
            ca,
            nodes,
            api,
            underlay,
        }
    }

    /// Dual stack, before the agents start: node `i` (from 1) also at `fd00:100::i` on the
    /// underlay, with the IPv6 pod CIDR `fd00:10:i::/64`.
    pub fn dual_stack(&mut self) {
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let i = i + 1;
            let addr = format!("fd00:100::{i}");
            n.ns.ip(&[
                "-6",
                "addr",
                "add",
                &format!("{addr}/64"),
                "dev",
                "ul0",
                "nodad",
            ])
            .expect("node IPv6 address");
            n.run_args.extend([
                "--address".to_string(),
                addr,
                "--pod-cidr".to_string(),
                format!("fd00:10:{i}::/64"),
            ]);
        }
    }

    pub async fn join_token(&self) -> String {
        self.cp.join_token(&self.owner).await
    }

    pub async fn start(&mut self, node: usize, register: bool) {
        let token = if register {
            Some(self.join_token().await)
        } else {
            None
        };
        let run = Run {
            url: &self.url,
            ca: &self.ca,
        };
        let n = &mut self.nodes[node];
        tokio::task::block_in_place(|| n.start_agent(&run, token.as_deref()));
    }

    /// The tenant's endpoints over REST: name -> (ipv4, identity).
    pub async fn rest_endpoints(&self) -> Vec<(String, String, Option<i64>)> {
        let r = self
            .cp
            .call("GET", "/v1/tenants/acme/endpoints", &self.owner, None)
            .await;
        assert_eq!(r.status, StatusCode::OK, "{}", r.body);
        let mut out: Vec<_> = r.body["items"]
            .as_array()
            .expect("items")
            .iter()
            .map(|e| {
                (
                    e["name"].as_str().unwrap_or_default().to_string(),
                    e["ipv4"].as_str().unwrap_or_default().to_string(),
                    e["identity"].as_i64(),
                )
            })
            .collect();
        out.sort();
        out
    }

    /// Waits until REST lists exactly these endpoint names.
    pub async fn until_rest_endpoints(&self, names: &[&str]) {
        let start = Instant::now();
        loop {
            let eps = self.rest_endpoints().await;
            let got: Vec<&str> = eps.iter().map(|e| e.0.as_str()).collect();
            if got == names && eps.iter().all(|e| e.2.is_some()) {
                return;
            }
            assert!(
                start.elapsed() < WITHIN,
                "REST endpoints {got:?}, want {names:?}\nnode-1: {}\nnode-2: {}",
                self.nodes[0].log(),
                self.nodes.get(1).map(Node::log).unwrap_or_default()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Waits (up to `within`) until node `name` is connected and has applied at least
    /// `revision`; its status.
    pub async fn until_applied(&self, name: &str, revision: i64, within: Duration) -> Value {
        let start = Instant::now();
        loop {
            let r = self.cp.node(&self.owner, name).await;
            let status = r.body["status"].clone();
            if status["connected"] == true
                && status["applied_revision"]
                    .as_i64()
                    .is_some_and(|r| r >= revision)
            {
                return status;
            }
            assert!(
                start.elapsed() < within,
                "{name} connected and applied {revision}: {status}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    pub async fn policy(&self, name: &str, from: &str) {
        self.cp.allow(&self.owner, name, "web", from).await;
    }

    pub async fn delete_policy(&self, name: &str) {
        self.cp.delete_policy(&self.owner, name).await;
    }
}

/// Waits until `endpoint list` on the node shows an identity and a desired-state id for
/// every endpoint; returns the list.
pub async fn until_assigned(node: &Node, n: usize) -> Vec<Value> {
    let start = Instant::now();
    loop {
        let list = tokio::task::block_in_place(|| node.list());
        let pods: Vec<&Value> = list.iter().filter(|e| e["name"] != "host").collect();
        if pods.len() == n
            && pods
                .iter()
                .all(|e| e["identity"].is_u64() && e["endpoint_id"].is_string())
        {
            return list;
        }
        assert!(
            start.elapsed() < WITHIN,
            "{}: identities assigned: {list:?}\n{}",
            node.name,
            node.log()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
