//! Skald's messaging: saga events out through a real broker.
//!
//! - [`publisher`]: tails each partition's log from a durable checkpoint
//!   and publishes its saga events, in log order, at least once, with the
//!   message id `<partition>:<LSN>` (the broker drops a re-publish).
//! - [`broker`]: the small trait a broker implements; [`nats`]: NATS with
//!   JetStream.
//! - [`event`]: how an event looks on the broker (subject, headers, JSON).
//!
//! The broker is never the source of truth: the engine's log is.

#![warn(missing_docs)]

pub mod broker;
pub mod checkpoint;
pub mod event;
mod metrics;
pub mod nats;
mod partition;
pub mod publisher;
