//! The REST API: one module per resource, merged into one router and one OpenAPI document.

pub mod api_tokens;
pub mod audit_log;
pub mod clusters;
pub mod common;
pub mod connectivity;
pub mod flows;
pub mod health;
pub mod install;
pub mod inventory;
pub mod join_tokens;
pub mod me;
pub mod members;
pub mod policies;
pub mod services;
pub mod session;
pub mod tenants;

use utoipa::openapi::security::{
    ApiKey, ApiKeyValue, HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme,
};
use utoipa::openapi::OpenApi as Spec;
use utoipa::{Modify, OpenApi};
use utoipa_axum::router::OpenApiRouter;

use crate::state::AppState;

#[derive(OpenApi)]
#[openapi(
    info(
        title = "Weft API",
        description = "Weft control plane: tenants, clusters, identity-based network policies, \
                       load-balanced services and what the node agents report. Errors are RFC 7807 \
                       `application/problem+json` documents with a stable `type`.",
    ),
    modifiers(&BearerAuth),
    // Schemas only parameters refer to (utoipa collects those of bodies by itself).
    components(schemas(
        crate::etag::ETag,
        weft_model::flow::TimeOrDuration,
        weft_model::flow::IpOrCidr,
        weft_model::selector::SelectorQuery,
    )),
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "auth", description = "Console sign-in with OpenID Connect, and sign-out"),
        (name = "me", description = "Who is calling"),
        (name = "tenants", description = "Tenants (organisations)"),
        (name = "members", description = "People of a tenant, their roles, and invites"),
        (name = "api-tokens", description = "Tenant API tokens for automation"),
        (name = "clusters", description = "Clusters of nodes"),
        (name = "services", description = "Load-balanced services of a cluster"),
        (name = "policies", description = "Network policies (CiliumNetworkPolicy-compatible)"),
        (name = "inventory", description = "Read-only: nodes, endpoints, identities"),
        (name = "audit", description = "Who changed what, when"),
        (name = "flows", description = "Observed network flows: stored, live, and as a service map"),
        (name = "connectivity", description = "Connectivity tests: echo-server test workloads the agents run, and probes between them"),
        (name = "install", description = "Installing node agents: the install script and agent downloads"),
    )
)]
struct ApiDoc;

struct BearerAuth;

impl Modify for BearerAuth {
    fn modify(&self, spec: &mut Spec) {
        let components = spec.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(
                HttpBuilder::new()
                    .scheme(HttpAuthScheme::Bearer)
                    .bearer_format("weft_... or JWT")
                    .description(Some(
                        "A tenant API token (`weft_...`), the operator's bootstrap token, or an \
                         access token (JWT, `typ` `at+jwt`) from the configured OpenID Connect \
                         issuer with this API as its audience",
                    ))
                    .build(),
            ),
        );
        components.add_security_scheme(
            "session",
            SecurityScheme::ApiKey(ApiKey::Cookie(ApiKeyValue::with_description(
                crate::session::SESSION_COOKIE,
                "The console session cookie from signing in at `/auth/login` (HttpOnly, \
                 Secure, SameSite=Lax). Writes (any method but GET/HEAD/OPTIONS) made with it \
                 must also send the value of the `weft_csrf` cookie in the `X-CSRF-Token` \
                 header.",
            ))),
        );
    }
}

/// Every operation that takes a bearer credential also takes the session cookie (both
/// resolve to the same `Principal`): say so in the spec, as an alternative requirement.
fn sessions_accepted_wherever_bearer_is(spec: &mut Spec) {
    let bearer = SecurityRequirement::new("bearer", Vec::<String>::new());
    let session = SecurityRequirement::new("session", Vec::<String>::new());
    crate::extract::for_each_operation(spec, |op| {
        if let Some(reqs) = op.security.as_mut() {
            if reqs.contains(&bearer) && !reqs.contains(&session) {
                reqs.push(session.clone());
            }
        }
    });
}

/// Every API route with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    let mut router = OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(session::router())
        .merge(me::router())
        .merge(tenants::router())
        .merge(members::router())
        .merge(api_tokens::router())
        .merge(clusters::router())
        .merge(services::router())
        .merge(policies::router())
        .merge(connectivity::router())
        .merge(inventory::router())
        .merge(audit_log::router())
        .merge(flows::router())
        .merge(join_tokens::router())
        .merge(install::router());
    sessions_accepted_wherever_bearer_is(router.get_openapi_mut());
    crate::extract::state_no_nul(router.get_openapi_mut());
    router
}

/// The OpenAPI document, as served at `/openapi.json` and checked in at `openapi/openapi.json`.
pub fn openapi() -> Spec {
    routes().split_for_parts().1
}
