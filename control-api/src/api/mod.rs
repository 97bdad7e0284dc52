//! The REST API: one module per resource, merged into one router and one OpenAPI document.

pub mod api_tokens;
pub mod audit_log;
pub mod clusters;
pub mod common;
pub mod health;
pub mod inventory;
pub mod join_tokens;
pub mod policies;
pub mod services;
pub mod tenants;

use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
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
    tags(
        (name = "health", description = "Liveness, readiness and metrics"),
        (name = "tenants", description = "Tenants (organisations)"),
        (name = "api-tokens", description = "Tenant API tokens for automation"),
        (name = "clusters", description = "Clusters of nodes"),
        (name = "services", description = "Load-balanced services of a cluster"),
        (name = "policies", description = "Network policies (CiliumNetworkPolicy-compatible)"),
        (name = "inventory", description = "Read-only: nodes, endpoints, identities"),
        (name = "audit", description = "Who changed what, when"),
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
                    .description(Some(
                        "A tenant API token (`weft_...`) or the operator's bootstrap token",
                    ))
                    .build(),
            ),
        );
    }
}

/// Every API route with its OpenAPI description.
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::with_openapi(ApiDoc::openapi())
        .merge(health::router())
        .merge(tenants::router())
        .merge(api_tokens::router())
        .merge(clusters::router())
        .merge(services::router())
        .merge(policies::router())
        .merge(inventory::router())
        .merge(audit_log::router())
        .merge(join_tokens::router())
}

/// The OpenAPI document, as served at `/openapi.json` and checked in at `openapi/openapi.json`.
pub fn openapi() -> Spec {
    routes().split_for_parts().1
}
