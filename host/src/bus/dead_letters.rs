//! Dead letters: events a subscriber failed to handle in every attempt, kept in the
//! subscriber's own database (administrator-owned `micropay_platform.dead_letters`) with the
//! last error, until an operator replays them (`micropay events replay <id>`, or
//! `POST /admin/events/dead-letters/{id}/replay`) after a fix.
//!
//! A replay is one more attempt, made at once by the host that receives it; it goes through the
//! inbox like any delivery, so an event handled meanwhile has no second effect. A replayed
//! event comes after its key's later events: it was set aside so that they could flow.

use std::sync::Arc;

use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;

use super::delivery::{Subscription, deliver_together};
use super::{Envelope, EnvelopeRow};
use crate::metrics::DeliveryOutcome;
use crate::runtime::invoke::Dispatcher;

/// Sets `event` aside for its subscriber. Recording it again (a redelivery that failed again)
/// keeps one row with the latest error.
pub async fn record(pool: &PgPool, event: &Envelope, attempts: u32, last_error: &str) -> anyhow::Result<()> {
    sqlx::query(
        "INSERT INTO micropay_platform.dead_letters \
             (event_id, topic, source, subject, data, trace_id, occurred_at, attempts, last_error) \
         VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9) \
         ON CONFLICT (event_id) DO UPDATE SET attempts = dead_letters.attempts + EXCLUDED.attempts, \
             last_error = EXCLUDED.last_error, failed_at = pg_catalog.now()",
    )
    .bind(event.id)
    .bind(&event.topic)
    .bind(&event.source)
    .bind(&event.subject)
    .bind(sqlx::types::Json(&*event.data))
    .bind(&event.trace_id)
    .bind(event.time)
    .bind(attempts as i32)
    .bind(last_error)
    .execute(pool)
    .await?;
    Ok(())
}

/// A dead letter as listed.
#[derive(Debug, Serialize, sqlx::FromRow)]
pub struct DeadLetter {
    #[sqlx(skip)]
    pub subscriber: String,
    pub event_id: uuid::Uuid,
    pub topic: String,
    pub source: String,
    pub subject: String,
    pub occurred_at: DateTime<Utc>,
    pub attempts: i32,
    pub last_error: String,
    pub failed_at: DateTime<Utc>,
}

/// Every subscriber's dead letters, oldest failure first.
pub async fn list(subscriptions: &[Subscription]) -> anyhow::Result<Vec<DeadLetter>> {
    let mut all = Vec::new();
    for subscription in subscriptions {
        let letters: Vec<DeadLetter> = sqlx::query_as(
            "SELECT event_id, topic, source, subject, occurred_at, attempts, last_error, failed_at \
             FROM micropay_platform.dead_letters ORDER BY failed_at",
        )
        .fetch_all(&subscription.pool)
        .await?;
        all.extend(
            letters.into_iter().map(|letter| DeadLetter { subscriber: subscription.name.to_string(), ..letter }),
        );
    }
    all.sort_by_key(|letter| letter.failed_at);
    Ok(all)
}

/// A dead letter with its event, to replay it.
#[derive(sqlx::FromRow)]
struct ReplayRow {
    attempts: i32,
    #[sqlx(flatten)]
    event: EnvelopeRow,
}

/// How the replay of a dead letter to one subscriber went.
#[derive(Debug, Serialize)]
pub struct Replay {
    pub subscriber: String,
    /// `handled`, `already_handled` (both remove the dead letter) or `failed`.
    pub outcome: &'static str,
    /// The error of a failed replay (the dead letter stays, with this error).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

/// Replays dead letter `event_id` to every subscriber that holds it. Empty when none does.
pub async fn replay(
    subscriptions: &[Subscription],
    dispatcher: &Arc<Dispatcher>,
    event_id: uuid::Uuid,
) -> anyhow::Result<Vec<Replay>> {
    let mut replays = Vec::new();
    for subscription in subscriptions {
        let row: Option<ReplayRow> = sqlx::query_as(
            "SELECT event_id, topic, source, subject, data, trace_id, occurred_at, attempts \
             FROM micropay_platform.dead_letters WHERE event_id = $1",
        )
        .bind(event_id)
        .fetch_optional(&subscription.pool)
        .await?;
        let Some(ReplayRow { attempts, event }) = row else { continue };
        let event = Envelope::from(event);
        let subscriber = subscription.name.to_string();
        let Some(service) = dispatcher.registry.get(&subscription.name) else {
            replays.push(Replay { subscriber, outcome: "failed", error: Some("the subscriber is not served".into()) });
            continue;
        };
        let replay = match deliver_together(dispatcher, &service, &[&event], attempts as u32 + 1).await {
            Ok(outcomes) => {
                sqlx::query("DELETE FROM micropay_platform.dead_letters WHERE event_id = $1")
                    .bind(event_id)
                    .execute(&subscription.pool)
                    .await?;
                let handled = outcomes.first() == Some(&DeliveryOutcome::Handled);
                let outcome = if handled { "handled" } else { "already_handled" };
                Replay { subscriber, outcome, error: None }
            }
            Err(error) => {
                record(&subscription.pool, &event, 1, &error).await?;
                Replay { subscriber, outcome: "failed", error: Some(error) }
            }
        };
        tracing::info!(subscriber = %replay.subscriber, %event_id, outcome = replay.outcome, "dead letter replayed");
        replays.push(replay);
    }
    Ok(replays)
}
