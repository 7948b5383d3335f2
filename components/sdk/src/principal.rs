//! Who a request acts for, on the endpoints open to users and administrators alike.

use crate::AdminRole;
use crate::http::ApiError;
use crate::service::micropay::platform::principal;

/// A user session or an admin API key (whatever its role).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Principal {
    /// A user session: the user's id.
    User(String),
    /// An admin API key: may act on every user's resources.
    Admin,
}

impl Principal {
    /// The principal of the current invocation, or 401 for an anonymous request. On a service
    /// call it is still the original caller, whose rights the answer depends on.
    pub fn current() -> Result<Self, ApiError> {
        if principal::administrator().is_some() {
            return Ok(Self::Admin);
        }
        principal::current()
            .map(|caller| Self::User(caller.user_id))
            .ok_or_else(|| ApiError::unauthenticated("a bearer token or an admin API key is required"))
    }

    /// Whether this principal may act on what `owner` (a user id) owns: the owner or an
    /// administrator.
    pub fn may_act_for(&self, owner: &str) -> bool {
        match self {
            Self::Admin => true,
            Self::User(user_id) => user_id.eq_ignore_ascii_case(owner),
        }
    }
}

/// Refuses (403) an administrator whose role is not among `allowed` for `action` (in words:
/// "moving money as an administrator"): `platform_only` when only the platform's key may,
/// `role_not_allowed` naming the roles that may otherwise. Made first in a handler, before
/// anything is read or written.
pub fn require_admin_role(role: AdminRole, allowed: &[AdminRole], action: &str) -> Result<(), ApiError> {
    if allowed.contains(&role) {
        return Ok(());
    }
    if allowed == [AdminRole::Platform] {
        return Err(ApiError::forbidden("platform_only", format!("{action} takes a platform admin key")));
    }
    let names: Vec<&str> = allowed.iter().map(|role| role_name(*role)).collect();
    Err(ApiError::forbidden("role_not_allowed", format!("{action} takes an admin key of role {}", names.join(" or "))))
}

/// The id of the admin API key the request was made with, when it was made with one (see
/// `administrator-key` in `wit/platform.wit`).
pub fn administrator_key() -> Option<String> {
    principal::administrator_key()
}

/// A role as `micropay admin-key create --role` names it.
pub fn role_name(role: AdminRole) -> &'static str {
    match role {
        AdminRole::Ops => "ops",
        AdminRole::Risk => "risk",
        AdminRole::Platform => "platform",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_role_not_allowed_is_refused_by_name() {
        assert!(require_admin_role(AdminRole::Risk, &[AdminRole::Risk, AdminRole::Platform], "closing").is_ok());
        let refused = require_admin_role(AdminRole::Ops, &[AdminRole::Platform], "moving money").unwrap_err();
        assert_eq!((refused.status, refused.code.as_str()), (403, "platform_only"));
        let refused =
            require_admin_role(AdminRole::Ops, &[AdminRole::Risk, AdminRole::Platform], "closing").unwrap_err();
        assert_eq!((refused.status, refused.code.as_str()), (403, "role_not_allowed"));
        assert!(refused.message.contains("risk or platform"), "{}", refused.message);
    }

    #[test]
    fn an_owner_or_an_administrator_may_act() {
        const ALICE: &str = "6f1c2a9e-5b1d-4c55-9a43-0d8f3e1b7a21";
        assert!(Principal::User(ALICE.to_string()).may_act_for(&ALICE.to_uppercase()));
        assert!(!Principal::User(ALICE.to_string()).may_act_for("00000000-0000-0000-0000-000000000000"));
        assert!(Principal::Admin.may_act_for(ALICE));
    }
}
