//! `GET /v1/me`: who is calling, and the tenants they can act in, with their roles.

use axum::extract::State;
use serde::{Deserialize, Serialize};
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::common::ReadErrors;
use crate::auth::{Principal, UserAuth};
use crate::error::Result;
use crate::state::AppState;
use crate::store::me;
pub use crate::store::me::{MyTenant, UserInfo};

pub fn router() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(me))
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, ToSchema, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum CallerKind {
    /// A person signed in to the console (session cookie).
    Session,
    /// A person presenting an access token (JWT) from the identity provider.
    AccessToken,
    /// A tenant API token.
    ApiToken,
    /// The operator's bootstrap token.
    Operator,
}

#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct Me {
    pub kind: CallerKind,
    /// The person, for sessions and access tokens.
    pub user: Option<UserInfo>,
    /// The API token, for API tokens.
    pub token_id: Option<Uuid>,
    /// The tenants the caller belongs to and its role in each (empty for the operator,
    /// who may act as owner in every tenant).
    pub tenants: Vec<MyTenant>,
}

/// Who I am and my tenants (any signed-in caller).
#[utoipa::path(get, path = "/v1/me", tag = "me",
    responses((status = 200, body = Me), ReadErrors),
    security(("bearer" = []), ("session" = [])))]
async fn me(State(st): State<AppState>, who: Principal) -> Result<axum::Json<Me>> {
    let me = match who {
        Principal::Operator => Me {
            kind: CallerKind::Operator,
            user: None,
            token_id: None,
            tenants: vec![],
        },
        Principal::ApiToken {
            token_id,
            tenant_id,
            role,
            ..
        } => {
            let mut tx = st.pool.begin().await?;
            let tenants = me::token_tenant(&mut tx, tenant_id, role).await?;
            tx.commit().await?;
            Me {
                kind: CallerKind::ApiToken,
                user: None,
                token_id: Some(token_id),
                tenants,
            }
        }
        Principal::User { user_id, via, .. } => {
            let mut tx = st.pool.begin().await?;
            let (user, tenants) = me::person(&mut tx, user_id).await?;
            tx.commit().await?;
            Me {
                kind: match via {
                    UserAuth::Session => CallerKind::Session,
                    UserAuth::AccessToken => CallerKind::AccessToken,
                },
                user: Some(user),
                token_id: None,
                tenants,
            }
        }
    };
    Ok(axum::Json(me))
}
