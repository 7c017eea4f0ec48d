//! Runnable sagas from Skald's plan, with simulated services, shared by the
//! `order` example binary, the `skald demo` command and the tests.
//!
//! - [`order`]: order processing: create the order, reserve inventory,
//!   charge the payment (the pivot), confirm the order.
//! - [`mod@bench`]: the engine benchmark (no-op sagas at a concurrency, and the
//!   memory of parked sagas), run by benches/ and `skald bench`.

pub mod bench;
pub mod order;
pub mod publish;
