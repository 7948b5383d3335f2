//! Idempotency keys, with the semantics of the IETF httpapi draft as Stripe applies them. A
//! request that moves money carries an `Idempotency-Key`; the first answer given to a key is
//! kept for a day and is the answer to every repeat of that request.
//!
//! Invariant: **one key, one effect.** Kept by:
//! 1. [`claim`] takes the key's transaction-level advisory lock (`try`, never waiting) before
//!    anything else: a repeat arriving while the first request runs gets 409
//!    `idempotency_conflict` at once, and the lock is held until the first one's unit of work
//!    ends, so no two requests with one key ever run at the same time;
//! 2. holding it, [`claim`] reads the key's stored answer, in a statement of its own (a
//!    statement's snapshot is taken when it starts: one that took the lock and read in one
//!    go could miss the answer of a request that committed, and let the lock go, in between): a repeat of the same request (same
//!    method, path and body: the fingerprint) gets it replayed with `Idempotent-Replayed:
//!    true`; another request under the key gets 422 `idempotency_key_reused`;
//! 3. the first request stores its answer ([`Claim::keep`]) in its own unit of work, with the
//!    payment it wrote: both commit or neither does. An answer refused before anything was
//!    done (a malformed body, a payee that does not exist) is not kept, as Stripe does: the
//!    client may correct it and send it again under the same key. An answer refused by the
//!    authorization (funds, limits, a frozen account) is kept, with its failed payment.

use micropay_sdk::{ApiError, Context, Db, Response};

use crate::domain::{self, Actor};
use crate::sql;

/// The header a replayed answer carries.
const REPLAYED: &str = "idempotent-replayed";

/// The header that says an answer describes work under way, naming the resource to follow
/// (see the host's `gateway::wait`).
pub const AWAIT: &str = "micropay-await";

/// A key this request holds: the first request with it, or one after an answer that was not
/// kept.
pub struct Claim {
    scope: String,
    key: String,
    fingerprint: String,
}

/// What [`claim`] found.
pub enum Claimed {
    /// The request runs; it keeps its answer with [`Claim::keep`].
    First(Claim),
    /// The first answer to this request.
    Replay(Response),
}

/// Claims the request's `Idempotency-Key` for `actor` (keys are scoped to the caller): 400
/// when it is missing or malformed, 409 while a request with it runs, 422 when it was used for
/// another request, the first answer when this request was answered before.
pub fn claim(ctx: &mut Context, actor: &Actor) -> Result<Claimed, ApiError> {
    let key = domain::idempotency_key(ctx.header("idempotency-key"))?;
    let fingerprint = domain::fingerprint(ctx.method(), ctx.path(), ctx.body());
    let scope = actor.key_scope();
    let db = ctx.db()?;
    if !sql::try_lock_key(db, &scope, &key)? {
        return Err(ApiError::conflict(
            "idempotency_conflict",
            "a request with this Idempotency-Key is still being processed; retry later",
        ));
    }
    let Some(stored) = sql::find_key(db, &scope, &key)? else {
        return Ok(Claimed::First(Claim { scope, key, fingerprint }));
    };
    if stored.text("fingerprint") != fingerprint {
        return Err(ApiError::new(
            422,
            "idempotency_key_reused",
            "this Idempotency-Key was used for another request; use a new key for a new request",
        ));
    }
    let status = u16::try_from(stored.int("response_status"))
        .map_err(|_| ApiError::internal("a stored answer has an impossible status"))?;
    let mut headers = vec![("content-type".into(), "application/json".into()), (REPLAYED.into(), "true".into())];
    // A replayed success may describe a payment still under way: a client may wait for it.
    if let (true, Some(payment_id)) = ((200..300).contains(&status), stored.opt_text("payment_id")) {
        headers.push((AWAIT.into(), format!("/payments/{payment_id}")));
    }
    Ok(Claimed::Replay(Response { status, headers, body: stored.text("response_body").into_bytes() }))
}

impl Claim {
    /// The key as the client sent it.
    pub fn key(&self) -> &str {
        &self.key
    }

    /// Keeps `response` as the key's answer, with the payment it is about, in this unit of
    /// work. An error answer kept this way is committed although it is an error: its failed
    /// payment is what a repeat must find.
    pub fn keep(&self, db: &Db, payment_id: &str, response: &Response) -> Result<(), ApiError> {
        let body = String::from_utf8_lossy(&response.body);
        sql::insert_key(
            db,
            &sql::StoredAnswer {
                scope: &self.scope,
                key: &self.key,
                fingerprint: &self.fingerprint,
                payment_id: Some(payment_id),
                status: response.status,
                body: &body,
            },
        )?;
        if response.status >= 400 {
            db.commit_on_error();
        }
        Ok(())
    }
}
