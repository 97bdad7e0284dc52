//! `weft_join_token`, `weft_api_token` and `weft_member`: objects the API lists but has no
//! GET by id for, so a read finds its id in the list. Tokens are never updated: any change
//! of an API attribute makes a new one (the secret is shown once, at create).

use std::collections::{BTreeMap, HashMap};

use async_trait::async_trait;
use serde_json::{json, Value as J};
use tf_provider::schema::{Attribute, AttributeConstraint::*, AttributeType};
use tf_provider::{map, AttributePath, Diagnostics};

use crate::client::{Answer, Client};
use crate::rest::{attr, secret, str_of, validate_name_labels, Kind, Update};

use AttributeType::{Number, String as Str};

/// Finds an item of a list by `pick`.
async fn find(
    client: &Client,
    path: &str,
    pick: impl Fn(&J) -> bool + Send,
) -> Result<Option<(J, Option<i64>)>, Answer> {
    let items = match client.list(&client.tenant_path(path)).await {
        Ok(items) => items,
        // The cluster is gone, and its tokens with it.
        Err(a) if a.status == 404 => return Ok(None),
        Err(a) => return Err(a),
    };
    Ok(items.into_iter().find(|i| pick(i)).map(|i| (i, None)))
}

fn prior_or(prior: Option<&J>, api: &J, key: &str) -> J {
    match api.get(key) {
        Some(v) if !v.is_null() => v.clone(),
        _ => prior.map_or(J::Null, |p| p[key].clone()),
    }
}

fn check_role(config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
    if let Some(Some(J::String(r))) = config.get("role") {
        if !["viewer", "editor", "admin", "owner"].contains(&r.as_str()) {
            diags.error(
                "Invalid role",
                format!("role: {r:?} is not one of viewer, editor, admin, owner"),
                AttributePath::new("role"),
            );
        }
    }
}

pub struct JoinToken;

#[async_trait]
impl Kind for JoinToken {
    fn type_name(&self) -> &'static str {
        "weft_join_token"
    }
    fn noun(&self) -> &'static str {
        "join token"
    }
    fn role(&self) -> &'static str {
        "admin"
    }
    fn description(&self) -> &'static str {
        "A join token that registers nodes with a cluster; its secret is shown at create only"
    }
    fn update(&self) -> Update {
        Update::Local
    }
    fn replaces(&self) -> &'static [&'static str] {
        &["cluster", "name", "expires_in_seconds", "max_uses"]
    }
    fn computed(&self) -> &'static [&'static str] {
        &[
            "token",
            "install_command",
            "expires_at",
            "uses",
            "revoked_at",
        ]
    }
    fn attributes(&self) -> HashMap<String, Attribute> {
        map! {
            "cluster" => attr(Str, Required, "the cluster (name or id)"),
            "name" => attr(Str, Required, "a DNS label"),
            "expires_in_seconds" => attr(Number, Optional, "lifetime, at most 30 days (default 3600)"),
            "max_uses" => attr(Number, Optional, "nodes that may register with it (default 1; 0: no limit)"),
            "recreate_if_invalid" => attr(Str, Optional,
                "\"always\": an expired, revoked or used-up token leaves the state, so the next apply makes a new one (default \"never\")"),
            "token" => secret(Str, Computed, "the secret (node-agent run --join-token)"),
            "install_command" => secret(Str, Computed, "one-line agent install command"),
            "expires_at" => attr(Str, Computed, "RFC 3339"),
            "uses" => attr(Number, Computed, "nodes registered with it"),
            "revoked_at" => attr(Str, Computed, "RFC 3339, when revoked"),
        }
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        validate_name_labels("join token", config, diags);
        if let Some(Some(J::Number(n))) = config.get("expires_in_seconds") {
            if !(1..=2_592_000).contains(&n.as_i64().unwrap_or(0)) {
                diags.error(
                    "Invalid join token",
                    "expires_in_seconds: between 1 and 2592000 (30 days)",
                    AttributePath::new("expires_in_seconds"),
                );
            }
        }
        if let Some(Some(J::Number(n))) = config.get("max_uses") {
            if n.as_i64().unwrap_or(-1) < 0 {
                diags.error(
                    "Invalid join token",
                    "max_uses: 0 (no limit) or more",
                    AttributePath::new("max_uses"),
                );
            }
        }
        if let Some(Some(J::String(r))) = config.get("recreate_if_invalid") {
            if r != "always" && r != "never" {
                diags.error(
                    "Invalid join token",
                    "recreate_if_invalid: \"always\" or \"never\"",
                    AttributePath::new("recreate_if_invalid"),
                );
            }
        }
    }
    fn collection(&self, state: &J) -> String {
        format!("/clusters/{}/join-tokens", str_of(state, "cluster"))
    }
    fn import_state(&self, _id: &str) -> Result<J, String> {
        Err("a join token cannot be imported: its secret is shown only when it is made".into())
    }
    fn input(&self, s: &J) -> J {
        let mut body = json!({"name": s["name"]});
        for k in ["expires_in_seconds", "max_uses"] {
            if !s[k].is_null() {
                body[k] = s[k].clone();
            }
        }
        body
    }
    fn state_of(&self, api: &J, prior: Option<&J>) -> J {
        let p = |k: &str| prior.map_or(J::Null, |p| p[k].clone());
        json!({
            "id": api["id"],
            "cluster": p("cluster"),
            "name": api["name"],
            "expires_in_seconds": p("expires_in_seconds"),
            "max_uses": p("max_uses"),
            "recreate_if_invalid": p("recreate_if_invalid"),
            "token": prior_or(prior, api, "token"),
            "install_command": prior_or(prior, api, "install_command"),
            "expires_at": api["expires_at"],
            "uses": api["uses"],
            "revoked_at": api["revoked_at"],
        })
    }
    async fn fetch(&self, client: &Client, state: &J) -> Result<Option<(J, Option<i64>)>, Answer> {
        let id = str_of(state, "id").to_string();
        let found = find(client, &self.collection(state), |t| t["id"] == id.as_str()).await?;
        if state["recreate_if_invalid"] == "always" {
            if let Some((t, _)) = &found {
                let max = t["max_uses"].as_i64().unwrap_or(0);
                let used_up = max > 0 && t["uses"].as_i64().unwrap_or(0) >= max;
                let expired = t["expires_at"]
                    .as_str()
                    .is_some_and(|e| e < now_rfc3339().as_str());
                if used_up || expired || !t["revoked_at"].is_null() {
                    return Ok(None);
                }
            }
        }
        Ok(found)
    }
}

/// Now as RFC 3339 UTC, comparable as text with the API's timestamps (same format).
fn now_rfc3339() -> String {
    let secs = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or_default();
    let (days, rem) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    // Civil from days (H. Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + i64::from(m <= 2);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

pub struct ApiToken;

#[async_trait]
impl Kind for ApiToken {
    fn type_name(&self) -> &'static str {
        "weft_api_token"
    }
    fn noun(&self) -> &'static str {
        "API token"
    }
    fn role(&self) -> &'static str {
        "admin"
    }
    fn description(&self) -> &'static str {
        "An API token of the tenant; its secret is shown at create only"
    }
    fn update(&self) -> Update {
        Update::Local
    }
    fn replaces(&self) -> &'static [&'static str] {
        &["name", "role", "expires_in_seconds"]
    }
    fn computed(&self) -> &'static [&'static str] {
        &["token", "expires_at"]
    }
    fn attributes(&self) -> HashMap<String, Attribute> {
        map! {
            "name" => attr(Str, Required, "a DNS label"),
            "role" => attr(Str, Required, "viewer, editor, admin or owner"),
            "expires_in_seconds" => attr(Number, Optional, "lifetime, at most two years; null: never expires"),
            "token" => secret(Str, Computed, "the secret"),
            "expires_at" => attr(Str, Computed, "RFC 3339"),
        }
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        validate_name_labels("API token", config, diags);
        check_role(config, diags);
        if let Some(Some(J::Number(n))) = config.get("expires_in_seconds") {
            if !(1..=63_072_000).contains(&n.as_i64().unwrap_or(0)) {
                diags.error(
                    "Invalid API token",
                    "expires_in_seconds: between 1 and 63072000 (two years)",
                    AttributePath::new("expires_in_seconds"),
                );
            }
        }
    }
    fn collection(&self, _state: &J) -> String {
        "/api-tokens".into()
    }
    fn import_state(&self, _id: &str) -> Result<J, String> {
        Err("an API token cannot be imported: its secret is shown only when it is made".into())
    }
    fn input(&self, s: &J) -> J {
        let mut body = json!({"name": s["name"], "role": s["role"]});
        if !s["expires_in_seconds"].is_null() {
            body["expires_in_seconds"] = s["expires_in_seconds"].clone();
        }
        body
    }
    fn state_of(&self, api: &J, prior: Option<&J>) -> J {
        json!({
            "id": api["id"],
            "name": api["name"],
            "role": api["role"],
            "expires_in_seconds": prior.map_or(J::Null, |p| p["expires_in_seconds"].clone()),
            "token": prior_or(prior, api, "token"),
            "expires_at": api["expires_at"],
        })
    }
    async fn fetch(&self, client: &Client, state: &J) -> Result<Option<(J, Option<i64>)>, Answer> {
        let id = str_of(state, "id").to_string();
        let found = find(client, "/api-tokens", |t| t["id"] == id.as_str()).await?;
        // Revoked: gone for Terraform, so planned again.
        Ok(found.filter(|(t, _)| t["revoked_at"].is_null()))
    }
}

pub struct Member;

#[async_trait]
impl Kind for Member {
    fn type_name(&self) -> &'static str {
        "weft_member"
    }
    fn noun(&self) -> &'static str {
        "member"
    }
    fn role(&self) -> &'static str {
        "admin"
    }
    fn description(&self) -> &'static str {
        "A member of the tenant (an invite until the person signs in)"
    }
    fn update(&self) -> Update {
        Update::Patch
    }
    fn replaces(&self) -> &'static [&'static str] {
        &["email"]
    }
    fn computed(&self) -> &'static [&'static str] {
        &["status", "user_id"]
    }
    fn attributes(&self) -> HashMap<String, Attribute> {
        map! {
            "email" => attr(Str, Required, "the person's e-mail; a change replaces the membership"),
            "role" => attr(Str, Required, "viewer, editor, admin or owner"),
            "status" => attr(Str, Computed, "invited or active"),
            "user_id" => attr(Str, Computed, "the person, once they have signed in"),
        }
    }
    fn validate(&self, config: &BTreeMap<String, Option<J>>, diags: &mut Diagnostics) {
        check_role(config, diags);
        if let Some(Some(J::String(e))) = config.get("email") {
            if e.split_once('@')
                .is_none_or(|(a, b)| a.is_empty() || b.is_empty())
            {
                diags.error(
                    "Invalid member",
                    format!("email: {e:?} is not an e-mail address"),
                    AttributePath::new("email"),
                );
            }
        }
    }
    fn collection(&self, _state: &J) -> String {
        "/members".into()
    }
    /// By e-mail: an invite's id becomes the membership's when the person signs in.
    fn item(&self, state: &J, _key: &str) -> String {
        format!("/members/{}", str_of(state, "email"))
    }
    fn import_state(&self, id: &str) -> Result<J, String> {
        Ok(if id.contains('@') {
            json!({"email": id})
        } else {
            json!({"id": id})
        })
    }
    fn input(&self, s: &J) -> J {
        json!({"email": s["email"], "role": s["role"]})
    }
    fn update_input(&self, s: &J) -> J {
        json!({"role": s["role"]})
    }
    fn state_of(&self, api: &J, prior: Option<&J>) -> J {
        let email = match prior.and_then(|p| p["email"].as_str()) {
            Some(e) if e.eq_ignore_ascii_case(str_of(api, "email")) => J::String(e.into()),
            _ => api["email"].clone(),
        };
        json!({
            "id": api["id"],
            "email": email,
            "role": api["role"],
            "status": api["status"],
            "user_id": api["user_id"],
        })
    }
    async fn fetch(&self, client: &Client, state: &J) -> Result<Option<(J, Option<i64>)>, Answer> {
        let id = str_of(state, "id").to_string();
        let email = str_of(state, "email").to_lowercase();
        find(client, "/members", |m| {
            (!id.is_empty() && m["id"] == id.as_str())
                || (!email.is_empty() && str_of(m, "email").to_lowercase() == email)
        })
        .await
    }
}
