//! PostgreSQL: the embedded cluster for the default set-up, and the provisioning of one
//! database, role and pool per service.

pub mod budget;
pub mod embedded;
pub mod provision;
