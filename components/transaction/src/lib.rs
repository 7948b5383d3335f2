//! The transaction service: the double-entry ledger.
