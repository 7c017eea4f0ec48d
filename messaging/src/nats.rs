//! NATS with JetStream as the broker.

use std::time::Duration;

use async_nats::jetstream;

use crate::broker::{Ack, BoxFuture, Broker, BrokerError, OutMessage, PendingAck};

/// Acknowledgements awaited at once on one connection, at most: the
/// engine's most partitions times the publisher's default in flight.
pub const ACKS_IN_FLIGHT_MAX: usize = skald_engine::PARTITIONS_MAX * 4096;

/// The stream the events go to, and what it keeps.
#[derive(Debug, Clone)]
pub struct StreamSetup {
    /// The stream's name (`SKALD_EVENTS`).
    pub name: String,
    /// The subjects it takes (`skald.events.>`).
    pub subjects: Vec<String>,
    /// How long it remembers a message id to drop a duplicate (2 minutes,
    /// JetStream's default). A publisher that restarts re-sends at most
    /// what it had in flight and since its last checkpoint, well within.
    pub duplicate_window: Duration,
    /// How long it keeps a message (`None`: until removed by hand).
    pub max_age: Option<Duration>,
}

impl Default for StreamSetup {
    fn default() -> Self {
        StreamSetup {
            name: "SKALD_EVENTS".into(),
            subjects: vec!["skald.events.>".into()],
            duplicate_window: Duration::from_secs(120),
            max_age: None,
        }
    }
}

/// A connection to a NATS server with JetStream, and the stream set up.
#[derive(Clone)]
pub struct NatsBroker {
    context: jetstream::Context,
    url: String,
}

impl NatsBroker {
    /// Connects to the NATS server at `url` (`nats://host:port`) and
    /// creates the stream `setup` describes if it does not exist (an
    /// existing one is used as it is).
    pub async fn connect(url: &str, setup: &StreamSetup) -> Result<NatsBroker, BrokerError> {
        let failed = |error: String| BrokerError::Connect {
            url: url.to_owned(),
            error,
        };
        let client = async_nats::ConnectOptions::new()
            .retry_on_initial_connect()
            .connection_timeout(Duration::from_secs(5))
            .connect(url)
            .await
            .map_err(|e| failed(e.to_string()))?;
        // Enough acknowledgement permits for every partition's events in
        // flight at once: the client waits for a permit inside `send`,
        // where a publisher does not await its acknowledgements.
        let context = jetstream::ContextBuilder::new()
            .max_ack_inflight(ACKS_IN_FLIGHT_MAX)
            .build(client);
        let config = jetstream::stream::Config {
            name: setup.name.clone(),
            subjects: setup.subjects.clone(),
            duplicate_window: setup.duplicate_window,
            max_age: setup.max_age.unwrap_or_default(),
            storage: jetstream::stream::StorageType::File,
            ..Default::default()
        };
        context
            .get_or_create_stream(config)
            .await
            .map_err(|e| failed(format!("the stream {}: {e}", setup.name)))?;
        Ok(NatsBroker {
            context,
            url: url.to_owned(),
        })
    }

    /// The JetStream context (to read the stream, set up consumers).
    pub fn context(&self) -> &jetstream::Context {
        &self.context
    }

    /// Where it connected.
    pub fn url(&self) -> &str {
        &self.url
    }
}

impl Broker for NatsBroker {
    fn send(&self, message: OutMessage) -> BoxFuture<'_, Result<PendingAck, BrokerError>> {
        Box::pin(async move {
            let mut headers = async_nats::HeaderMap::new();
            for (name, value) in &message.headers {
                headers.insert(name.as_str(), value.as_str());
            }
            // The headers first: `headers` replaces the map, the id is one.
            let publish = jetstream::message::PublishMessage::build()
                .headers(headers)
                .message_id(&message.id)
                .payload(message.payload);
            let pending = self
                .context
                .send_publish(message.subject.clone(), publish)
                .await
                .map_err(|e| BrokerError::Send {
                    subject: message.subject.clone(),
                    id: message.id.clone(),
                    error: e.to_string(),
                })?;
            let id = message.id;
            Ok(PendingAck(Box::pin(async move {
                let ack = pending.await.map_err(|e| BrokerError::Ack {
                    id,
                    error: e.to_string(),
                })?;
                Ok(Ack {
                    sequence: ack.sequence,
                    duplicate: ack.duplicate,
                })
            })))
        })
    }
}
