//! `GET /v1/me`: who is calling, and the tenants they can act in, with their roles.

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use sqlx::FromRow;
use utoipa::ToSchema;
use utoipa_axum::{router::OpenApiRouter, routes};
use uuid::Uuid;

use super::common::ReadErrors;
use crate::auth::{self, Principal, Role, UserAuth};
use crate::error::Result;
use crate::state::AppState;

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

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct UserInfo {
    pub id: Uuid,
    pub email: Option<String>,
    pub email_verified: bool,
    pub name: Option<String>,
    pub created_at: DateTime<Utc>,
    pub last_login_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Serialize, Deserialize, ToSchema, FromRow)]
pub struct MyTenant {
    pub id: Uuid,
    pub name: String,
    pub display_name: String,
    #[schema(value_type = Role)]
    pub role: String,
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
            auth::set_tenant(&mut tx, tenant_id).await?;
            let tenants: Vec<MyTenant> = sqlx::query_as(
                "SELECT id, name, display_name, $2 AS role FROM tenants WHERE id = $1",
            )
            .bind(tenant_id)
            .bind(role.as_str())
            .fetch_all(&mut *tx)
            .await?;
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
            auth::set_user(&mut tx, user_id).await?;
            let user: UserInfo = sqlx::query_as(
                "SELECT id, email, email_verified, name, created_at, last_login_at \
                 FROM users WHERE id = $1",
            )
            .bind(user_id)
            .fetch_one(&mut *tx)
            .await?;
            let tenants: Vec<MyTenant> = sqlx::query_as(
                "SELECT t.id, t.name, t.display_name, m.role \
                 FROM memberships m JOIN tenants t ON t.id = m.tenant_id \
                 WHERE m.user_id = $1 ORDER BY t.name",
            )
            .bind(user_id)
            .fetch_all(&mut *tx)
            .await?;
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
