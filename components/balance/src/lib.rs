//! The balance service: event-sourced balances and holds on funds.
