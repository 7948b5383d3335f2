//! Who a request acts for, on the endpoints open to users and administrators alike.

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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_owner_or_an_administrator_may_act() {
        const ALICE: &str = "6f1c2a9e-5b1d-4c55-9a43-0d8f3e1b7a21";
        assert!(Principal::User(ALICE.to_string()).may_act_for(&ALICE.to_uppercase()));
        assert!(!Principal::User(ALICE.to_string()).may_act_for("00000000-0000-0000-0000-000000000000"));
        assert!(Principal::Admin.may_act_for(ALICE));
    }
}
