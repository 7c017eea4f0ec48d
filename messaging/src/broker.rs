//! The broker, behind a small trait: what the publisher needs of one.
//!
//! NATS JetStream ([`crate::nats::NatsBroker`]) is the one shipped. Another
//! broker needs (ARCHITECTURE.md): a durable stream that acknowledges each
//! message once stored, in the order sent on one connection, and drops a
//! message whose id it already holds (JetStream's duplicate window; Kafka's
//! idempotent producer keyed by partition and LSN; RabbitMQ has no such
//! window, so its consumers deduplicate by the id alone).

use std::future::Future;
use std::pin::Pin;

/// A boxed future.
pub type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// A message to publish.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OutMessage {
    /// Where it goes (`skald.events.<definition>.<type>` for events).
    pub subject: String,
    /// Its id: a broker that has a message of this id already drops it
    /// (`<partition>:<LSN>` for events).
    pub id: String,
    /// Headers, in order.
    pub headers: Vec<(String, String)>,
    /// The body.
    pub payload: bytes::Bytes,
}

/// The broker's acknowledgement: it holds the message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Ack {
    /// Its position in the broker's stream.
    pub sequence: u64,
    /// The broker had a message of this id already (and kept that one).
    pub duplicate: bool,
}

/// An acknowledgement still to come, for a message sent.
pub struct PendingAck(pub BoxFuture<'static, Result<Ack, BrokerError>>);

/// The broker failed or refused.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// Connecting, or setting up a stream, failed.
    #[error("connecting to the broker at {url}: {error}")]
    Connect {
        /// Where.
        url: String,
        /// Why.
        error: String,
    },
    /// A message was not sent.
    #[error("sending {id} to {subject}: {error}")]
    Send {
        /// The message's subject.
        subject: String,
        /// Its id.
        id: String,
        /// Why.
        error: String,
    },
    /// A message sent was not acknowledged.
    #[error("no acknowledgement of {id}: {error}")]
    Ack {
        /// Its id.
        id: String,
        /// Why.
        error: String,
    },
}

/// A broker the publisher sends to.
pub trait Broker: Send + Sync + 'static {
    /// Sends `message`. Resolves once sent (in the order of the calls, on
    /// one connection) to its acknowledgement still to come: so that many
    /// can be in flight, and the acknowledgements awaited in order.
    fn send(&self, message: OutMessage) -> BoxFuture<'_, Result<PendingAck, BrokerError>>;
}
