//! Administration: API keys with roles for the operations of ops, the risk team and the
//! platform team, and the `/admin/...` routes they unlock.

pub mod client;
pub mod fraud_rules;
pub mod keys;
pub mod routes;
