//! Resolved bearer tokens, cached briefly so that a request does not cost the identity
//! provider a unit of work, and forgotten on every host the moment a session ends.
//!
//! Invariants kept here:
//! - a cached token is never older than [`TTL`]: a session that expires, or is deleted without
//!   telling the host, stops working within it;
//! - a session the identity provider ends (logout, revocation, a password change, a deleted
//!   user) is forgotten on this host before the answer that ended it leaves the host, and on
//!   every other host when its `NOTIFY` arrives (sent after the unit of work that ended it
//!   committed); a host whose listening connection was lost forgets everything, since it may
//!   have missed one;
//! - a token resolved before a session ended is not cached after it: every end bumps an epoch,
//!   and a resolution is cached only if no end happened since it started;
//! - only the token's SHA-256 is kept, never the token.
//!
//! The identity provider says a session ended with the answer header
//! [`ENDED`] (`micropay-sessions-ended: session <id>` or `user <id>`; see `wit/platform.wit`).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};
use sqlx::PgPool;
use sqlx::postgres::PgListener;
use tokio::sync::watch;

use crate::runtime::bindings::{Caller, Response};

/// How long a resolved token is trusted without asking the identity provider again.
pub const TTL: Duration = Duration::from_secs(10);

/// The answer header by which the identity provider says sessions ended.
pub const ENDED: &str = "micropay-sessions-ended";

/// The channel on the platform database by which hosts tell each other.
const CHANNEL: &str = "micropay_sessions";

/// The most tokens kept: past it the cache starts afresh.
const MAX_ENTRIES: usize = 100_000;

/// Sessions that ended.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Ended {
    /// One session.
    Session(String),
    /// Every session of a user.
    User(String),
}

impl Ended {
    /// Reads `session <id>` or `user <id>`.
    pub fn parse(text: &str) -> Option<Self> {
        let (kind, id) = text.trim().split_once(' ')?;
        let id = uuid::Uuid::parse_str(id.trim()).ok()?.to_string();
        match kind {
            "session" => Some(Self::Session(id)),
            "user" => Some(Self::User(id)),
            _ => None,
        }
    }

    fn text(&self) -> String {
        match self {
            Self::Session(id) => format!("session {id}"),
            Self::User(id) => format!("user {id}"),
        }
    }

    fn covers(&self, caller: &Caller) -> bool {
        match self {
            Self::Session(id) => caller.session_id.eq_ignore_ascii_case(id),
            Self::User(id) => caller.user_id.eq_ignore_ascii_case(id),
        }
    }

    /// What an identity provider's answer says ended, if it says so.
    pub fn in_answer(response: &Response) -> Vec<Self> {
        response
            .headers
            .iter()
            .filter(|(name, _)| name.eq_ignore_ascii_case(ENDED))
            .filter_map(|(_, value)| Self::parse(value))
            .collect()
    }
}

struct Entry {
    caller: Caller,
    resolved_at: Instant,
}

/// The cache of one host.
#[derive(Default)]
pub struct Sessions {
    entries: Mutex<HashMap<[u8; 32], Entry>>,
    /// Bumped by every end.
    epoch: AtomicU64,
    /// The platform database, to tell the other hosts.
    announce: OnceLock<PgPool>,
}

impl Sessions {
    /// The caller `token` resolved to less than [`TTL`] ago.
    pub fn get(&self, token: &str) -> Option<Caller> {
        let entries = self.entries.lock().unwrap();
        let entry = entries.get(&digest(token))?;
        (entry.resolved_at.elapsed() < TTL).then(|| entry.caller.clone())
    }

    /// The epoch to hand to [`Sessions::insert`], read before resolving a token.
    pub fn epoch(&self) -> u64 {
        self.epoch.load(Ordering::Acquire)
    }

    /// Caches what `token` resolved to, unless a session ended since `epoch`.
    pub fn insert(&self, token: &str, caller: Caller, epoch: u64) {
        let mut entries = self.entries.lock().unwrap();
        // Read under the lock that `end` takes too: an end is either seen here or removes this.
        if self.epoch.load(Ordering::Acquire) != epoch {
            return;
        }
        if entries.len() >= MAX_ENTRIES {
            entries.clear();
        }
        entries.insert(digest(token), Entry { caller, resolved_at: Instant::now() });
    }

    /// Forgets what `ended` covers on this host.
    fn forget(&self, ended: &Ended) {
        let mut entries = self.entries.lock().unwrap();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.retain(|_, entry| !ended.covers(&entry.caller));
    }

    /// Forgets everything.
    fn forget_all(&self) {
        let mut entries = self.entries.lock().unwrap();
        self.epoch.fetch_add(1, Ordering::AcqRel);
        entries.clear();
    }

    /// Sessions ended (the identity provider's unit of work that ended them committed):
    /// forgotten here, and every other host told.
    pub async fn end(&self, ended: &[Ended]) {
        for ended in ended {
            self.forget(ended);
            if let Some(pool) = self.announce.get()
                && let Err(err) = sqlx::query("SELECT pg_catalog.pg_notify($1, $2)")
                    .bind(CHANNEL)
                    .bind(ended.text())
                    .execute(pool)
                    .await
            {
                // The others' entries lapse within the TTL.
                tracing::warn!("telling the other hosts that a session ended failed: {err}");
            }
        }
    }

    /// Hears the other hosts' ends on the platform database, on a connection of `listening`
    /// held for it, until `shutdown` turns true; this host's are told through `telling`.
    pub async fn listen(&self, listening: PgPool, telling: PgPool, mut shutdown: watch::Receiver<bool>) {
        let _ = self.announce.set(telling);
        let pool = listening;
        while !*shutdown.borrow() {
            tokio::select! {
                Err(err) = self.hear(&pool) => {
                    tracing::warn!("listening for ended sessions failed, retrying: {err:#}");
                    self.forget_all();
                    tokio::select! {
                        _ = tokio::time::sleep(Duration::from_secs(1)) => {}
                        _ = shutdown.changed() => {}
                    }
                }
                _ = shutdown.changed() => {}
            }
        }
    }

    async fn hear(&self, pool: &PgPool) -> anyhow::Result<std::convert::Infallible> {
        let mut listener = PgListener::connect_with(pool).await?;
        listener.listen(CHANNEL).await?;
        // Whatever ended while nobody listened.
        self.forget_all();
        loop {
            // `None`: the connection was lost and made again, missing what was sent meanwhile.
            let Some(notification) = listener.try_recv().await? else {
                self.forget_all();
                continue;
            };
            match Ended::parse(notification.payload()) {
                Some(ended) => self.forget(&ended),
                None => self.forget_all(),
            }
        }
    }
}

fn digest(token: &str) -> [u8; 32] {
    Sha256::digest(token.as_bytes()).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    const USER: &str = "0b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";
    const SESSION: &str = "1b1c2d3e-4f50-6172-8394-a5b6c7d8e9f0";

    fn caller() -> Caller {
        Caller { user_id: USER.into(), session_id: SESSION.into() }
    }

    #[test]
    fn ends_are_read_from_the_header() {
        assert_eq!(Ended::parse(&format!("session {SESSION}")), Some(Ended::Session(SESSION.into())));
        assert_eq!(Ended::parse(&format!("user {}", USER.to_uppercase())), Some(Ended::User(USER.into())));
        assert_eq!(Ended::parse("user nobody"), None);
        assert_eq!(Ended::parse(&format!("everyone {USER}")), None);
    }

    #[test]
    fn an_end_forgets_the_session_and_refuses_a_resolution_begun_before_it() {
        let sessions = Sessions::default();
        let epoch = sessions.epoch();
        sessions.insert("token", caller(), epoch);
        assert_eq!(sessions.get("token").map(|caller| caller.session_id), Some(SESSION.to_string()));
        assert!(sessions.get("another token").is_none());
        sessions.forget(&Ended::User(USER.into()));
        assert!(sessions.get("token").is_none());
        // Resolved before the end: not cached.
        sessions.insert("token", caller(), epoch);
        assert!(sessions.get("token").is_none());
        sessions.insert("token", caller(), sessions.epoch());
        sessions.forget(&Ended::Session(SESSION.into()));
        assert!(sessions.get("token").is_none());
    }
}
