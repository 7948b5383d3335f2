//! The NATS JetStream bus (`MICROPAY_NATS_URL`): several hosts share one stream and one
//! durable consumer per subscriber and partition.
//!
//! Invariants kept here:
//! - each event is published with its id as `Nats-Msg-Id`, so JetStream drops a copy relayed
//!   again within the stream's duplicate window (and the subscriber's inbox drops any later);
//! - a batch is acknowledged by the server before the relay marks it relayed;
//! - the partition is part of the subject, and each durable consumer reads one partition, so a
//!   key's events reach its subscriber in publication order (a feed merges the consumers of
//!   the partitions a host delivers, each one's messages in order).

use std::pin::Pin;
use std::time::Duration;

use anyhow::Context as _;
use async_nats::HeaderMap;
use async_nats::jetstream::{self, consumer, stream};
use futures_util::StreamExt;
use futures_util::stream::SelectAll;

use super::{BATCH, Envelope, RETENTION_DAYS};

/// How long a feed waits for new events before answering an empty batch.
const WAIT: Duration = Duration::from_millis(250);

/// Once an event arrived, how long a feed gathers more into the same batch: messages arrive
/// one by one, and a batch shares one commit, so a few milliseconds buy far fewer commits.
const GATHER: Duration = Duration::from_millis(5);

/// How long JetStream remembers message ids to drop copies.
const DUPLICATE_WINDOW: Duration = Duration::from_secs(10 * 60);

/// How long events stay in the stream.
const RETENTION: Duration = Duration::from_secs(RETENTION_DAYS * 24 * 3600);

/// How long a delivered event may stay unacknowledged before JetStream offers it again (to
/// another host, if this one lost its partition or died).
const ACK_WAIT: Duration = Duration::from_secs(30);

pub struct JetStreamBus {
    context: jetstream::Context,
    stream: stream::Stream,
    /// Subjects are `{subjects}.{partition}.{topic}`.
    subjects: String,
    /// Prepended to consumer names.
    prefix: String,
}

impl JetStreamBus {
    /// Connects and creates (if missing) the installation's stream, named after `prefix`.
    pub async fn connect(url: &str, prefix: &str) -> anyhow::Result<Self> {
        let client = async_nats::ConnectOptions::new()
            .name("micropay")
            .connect(url)
            .await
            .with_context(|| format!("connecting to NATS at {url}"))?;
        let context = jetstream::new(client);
        let name = format!("{}MICROPAY_EVENTS", prefix.to_ascii_uppercase());
        let subjects = format!("{prefix}micropay.events");
        let stream = context
            .get_or_create_stream(stream::Config {
                name: name.clone(),
                subjects: vec![format!("{subjects}.>")],
                storage: stream::StorageType::File,
                num_replicas: 1,
                max_age: RETENTION,
                duplicate_window: DUPLICATE_WINDOW,
                ..Default::default()
            })
            .await
            .map_err(|err| anyhow::anyhow!("creating the JetStream stream {name} (is JetStream enabled?): {err}"))?;
        Ok(Self { context, stream, subjects, prefix: prefix.to_string() })
    }

    pub async fn publish(&self, events: &[Envelope]) -> anyhow::Result<()> {
        let mut acks = Vec::with_capacity(events.len());
        for event in events {
            let mut headers = HeaderMap::new();
            headers.insert("Nats-Msg-Id", event.id.to_string().as_str());
            let subject = format!("{}.{}.{}", self.subjects, event.partition(), event.topic);
            let payload = serde_json::to_vec(event)?;
            acks.push(self.context.publish_with_headers(subject, headers, payload.into()).await?);
        }
        for ack in acks {
            ack.await.map_err(|err| anyhow::anyhow!("JetStream did not store an event: {err}"))?;
        }
        Ok(())
    }

    /// `subscriber`'s durable consumers of `partitions`, their messages merged into one feed.
    pub async fn feed(&self, subscriber: &str, partitions: &[u16]) -> anyhow::Result<Feed> {
        let mut streams = Vec::with_capacity(partitions.len());
        for partition in partitions {
            let name = format!("{}{subscriber}_p{partition}", self.prefix);
            let consumer: consumer::PullConsumer = self
                .stream
                .get_or_create_consumer(
                    &name,
                    consumer::pull::Config {
                        durable_name: Some(name.clone()),
                        filter_subject: format!("{}.{partition}.>", self.subjects),
                        deliver_policy: consumer::DeliverPolicy::All,
                        ack_policy: consumer::AckPolicy::Explicit,
                        ack_wait: ACK_WAIT,
                        max_ack_pending: BATCH as i64 * 4,
                        ..Default::default()
                    },
                )
                .await
                .map_err(|err| anyhow::anyhow!("creating the consumer {name}: {err}"))?;
            let messages = consumer
                .stream()
                .max_messages_per_batch(BATCH)
                .messages()
                .await
                .map_err(|err| anyhow::anyhow!("pulling from {name}: {err}"))?;
            streams.push(Box::pin(messages));
        }
        Ok(Feed { messages: futures_util::stream::select_all(streams), unacknowledged: Vec::new() })
    }
}

/// Durable consumers' messages, merged: each consumer's (each partition's) stay in order.
pub struct Feed {
    messages: SelectAll<Pin<Box<consumer::pull::Stream>>>,
    /// The messages of the last batch, acknowledged together.
    unacknowledged: Vec<jetstream::Message>,
}

impl Feed {
    pub async fn next_batch(&mut self) -> anyhow::Result<Vec<Envelope>> {
        let Ok(first) = tokio::time::timeout(WAIT, self.messages.next()).await else { return Ok(Vec::new()) };
        let mut chunk = vec![first.context("the JetStream consumer closed")?];
        let gathered = tokio::time::Instant::now() + GATHER;
        while chunk.len() < BATCH {
            match tokio::time::timeout_at(gathered, self.messages.next()).await {
                Ok(Some(message)) => chunk.push(message),
                _ => break,
            }
        }
        let mut batch = Vec::with_capacity(chunk.len());
        for message in chunk {
            let message = message.map_err(|err| anyhow::anyhow!("pulling from JetStream: {err}"))?;
            match serde_json::from_slice::<Envelope>(&message.payload) {
                Ok(envelope) => batch.push(envelope),
                Err(err) => {
                    tracing::error!(subject = %message.subject, "dropping a bus message that is not an event: {err}")
                }
            }
            self.unacknowledged.push(message);
        }
        Ok(batch)
    }

    pub async fn acknowledge(&mut self) -> anyhow::Result<()> {
        for message in self.unacknowledged.drain(..) {
            message.ack().await.map_err(|err| anyhow::anyhow!("acknowledging to JetStream: {err}"))?;
        }
        Ok(())
    }
}
