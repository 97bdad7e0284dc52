//! Tenants, API tokens, clusters and join tokens: the scene most tests set before they
//! start, over any way of calling the REST API.

use axum::http::StatusCode;
use serde_json::{json, Value};

use crate::server::{request, Http, InProcess, Reply};

/// A way to call the REST API; the fixtures come with it.
#[allow(async_fn_in_trait)] // test code: every caller is a concrete type
pub trait Rest {
    async fn rest(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply;

    /// POSTs `body` to `path` as `token`, asserts 201 Created, returns the body.
    async fn created(&self, path: &str, token: &str, body: Value) -> Value {
        let r = self.rest("POST", path, Some(token), Some(body)).await;
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

impl Rest for InProcess {
    async fn rest(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.send(request(method, path, token, body)).await
    }
}

impl Rest for Http {
    async fn rest(
        &self,
        method: &str,
        path: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        self.send(method, path, token, body).await
    }
}
