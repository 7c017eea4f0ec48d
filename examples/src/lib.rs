//! Runnable sagas from Skald's plan, with simulated services, shared by the
//! `order` example binary, the `skald demo` command and the tests.
//!
//! - [`order`]: order processing: create the order, reserve inventory,
//!   charge the payment (the pivot), confirm the order.

pub mod order;
