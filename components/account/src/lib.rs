//! The account service: accounts, their limits and the system accounts.
