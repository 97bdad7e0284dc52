//! Tenants, API tokens, clusters and join tokens: the scene most tests set before they
//! start, over any way of calling the REST API.

use axum::http::{header, StatusCode};
use serde_json::{json, Value};

use axum::Router;

use crate::server::{request, send, Http, Reply};

/// How a harness reaches the REST API.
pub enum Via<'a> {
    /// The app in this process, without a socket.
    App(&'a Router),
    /// Over HTTP (see [`crate::server::serve_rest`]).
    Http(&'a Http),
}

/// A way to call the REST API; the fixtures come with it.
#[allow(async_fn_in_trait)] // test code: every caller is a concrete type
pub trait Rest {
    fn via(&self) -> Via<'_>;

    /// Sends a request as `token` (none: anonymous); `body` is sent as JSON when given.
    async fn call(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        match self.via() {
            Via::App(app) => send(app, request(method, path, token, body)).await,
            Via::Http(http) => {
                let url = format!("{}{path}", http.url);
                let mut req = http.client.request(method.parse().expect("method"), url);
                if let Some(t) = token {
                    req = req.bearer_auth(t);
                }
                if let Some(b) = body {
                    req = req
                        .header(header::CONTENT_TYPE, "application/json")
                        .body(b.to_string());
                }
                let resp = req.send().await.expect("API answers");
                let (status, headers) = (resp.status(), resp.headers().clone());
                let bytes = resp.bytes().await.expect("body");
                Reply::parse(status, headers, &bytes)
            }
        }
    }

    /// `GET path` as `token`.
    async fn get(&self, path: &str, token: &str) -> Reply {
        self.call("GET", path, Some(token), None).await
    }

    /// `POST path` with a JSON `body` as `token`.
    async fn post(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("POST", path, Some(token), Some(body)).await
    }

    /// `PUT path` with a JSON `body` as `token`.
    async fn put(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("PUT", path, Some(token), Some(body)).await
    }

    /// `PATCH path` with a JSON `body` as `token`.
    async fn patch(&self, path: &str, token: &str, body: Value) -> Reply {
        self.call("PATCH", path, Some(token), Some(body)).await
    }

    /// `DELETE path` as `token`.
    async fn delete(&self, path: &str, token: &str) -> Reply {
        self.call("DELETE", path, Some(token), None).await
    }

    /// POSTs `body` to `path` as `token`, asserts 201 Created, returns the body.
    async fn created(&self, path: &str, token: &str, body: Value) -> Value {
        let r = self.call("POST", path, Some(token), Some(body)).await;
        assert_eq!(r.status, StatusCode::CREATED, "POST {path}: {}", r.body);
        r.body
    }

    /// Creates tenant `name` as `operator` (without a token).
    async fn create_tenant(&self, name: &str, operator: &str) {
        self.created("/v1/tenants", operator, json!({"name": name}))
            .await;
    }

    /// Creates an API token with `role` in `tenant`, as `by`; returns its secret.
    async fn api_token(&self, tenant: &str, role: &str, by: &str) -> String {
        let name = format!("{role}-{}", &uuid::Uuid::new_v4().simple().to_string()[..8]);
        let b = self
            .created(
                &format!("/v1/tenants/{tenant}/api-tokens"),
                by,
                json!({"name": name, "role": role}),
            )
            .await;
        b["token"].as_str().expect("token").to_string()
    }

    /// Creates tenant `name` as `operator` and an API token of `role` in it.
    async fn tenant_with(&self, name: &str, role: &str, operator: &str) -> String {
        self.create_tenant(name, operator).await;
        self.api_token(name, role, operator).await
    }

    /// Creates cluster `cluster` in `tenant`, as `token`; returns it.
    async fn cluster(&self, tenant: &str, cluster: &str, token: &str) -> Value {
        self.created(
            &format!("/v1/tenants/{tenant}/clusters"),
            token,
            json!({"name": cluster}),
        )
        .await
    }

    /// A join token of `tenant/cluster` (`body`: its name, uses, expiry), as `token`;
    /// returns its secret.
    async fn join_token(&self, tenant: &str, cluster: &str, token: &str, body: Value) -> String {
        let b = self
            .created(
                &format!("/v1/tenants/{tenant}/clusters/{cluster}/join-tokens"),
                token,
                body,
            )
            .await;
        b["token"].as_str().expect("token").to_string()
    }
}

impl Rest for Http {
    fn via(&self) -> Via<'_> {
        Via::Http(self)
    }
}
