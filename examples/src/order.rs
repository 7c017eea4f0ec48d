//! Order processing, the saga of the plan:
//!
//! 1. `create-order` (compensatable: cancel the order),
//! 2. `reserve-inventory` (compensatable: release the reservation),
//! 3. `charge-payment` (the pivot: once the card is charged the order goes
//!    through),
//! 4. `confirm-order` (retriable: retried until it succeeds).
//!
//! A declined card is a permanent failure of the pivot: the saga releases
//! the inventory and cancels the order, latest first. An out-of-stock item
//! fails the reservation for good: the order is cancelled.
//!
//! The services are simulated in memory by [`Shop`]. Like real services
//! they apply each call at most once per idempotency key (a step that ran
//! when the host crashed runs again with the same key), and they keep a
//! journal of every effect so that tests can check what happened.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use skald_engine::{Backoff, RetryPolicy, Saga, Step, StepContext, StepError};

/// The definition id of the order saga.
pub const ORDER_SAGA: &str = "order";

/// A card number the payment service always declines (the convention of
/// payment test cards).
pub const DECLINED_CARD: &str = "4000-0000-0000-0002";

/// One line of an order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Item {
    /// Stock keeping unit.
    pub sku: String,
    /// Units.
    pub quantity: u32,
}

/// The saga's input.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct OrderRequest {
    /// The shop's order number.
    pub order_id: u64,
    /// Who orders.
    pub customer: String,
    /// What.
    pub items: Vec<Item>,
    /// The card to charge.
    pub card: String,
    /// How much, in cents.
    pub amount_cents: u64,
}

impl OrderRequest {
    /// A sample order: one kettle and two mugs for 49.90, paid with `card`.
    pub fn sample(
        order_id: u64,
        customer: impl Into<String>,
        card: impl Into<String>,
    ) -> OrderRequest {
        OrderRequest {
            order_id,
            customer: customer.into(),
            items: vec![
                Item {
                    sku: "kettle".into(),
                    quantity: 1,
                },
                Item {
                    sku: "mug".into(),
                    quantity: 2,
                },
            ],
            card: card.into(),
            amount_cents: 4_990,
        }
    }
}

/// Where an order stands in the order service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub enum OrderStatus {
    /// Created, not yet paid.
    Created,
    /// Paid and confirmed.
    Confirmed,
    /// Cancelled by compensation.
    Cancelled,
}

/// How the simulated services misbehave.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Faults {
    /// Fraction of payment calls that fail with a retryable error (the
    /// payment provider timing out).
    pub payment_flakiness: f64,
    /// Latency of every service call.
    pub latency: Duration,
}

impl Default for Faults {
    /// No faults, no latency.
    fn default() -> Faults {
        Faults {
            payment_flakiness: 0.0,
            latency: Duration::ZERO,
        }
    }
}

#[derive(Default)]
struct ShopState {
    orders: HashMap<u64, OrderStatus>,
    stock: HashMap<String, i64>,
    reservations: HashMap<u64, Vec<Item>>,
    charges: HashMap<u64, u64>,
    /// Idempotency keys already applied, with the result returned.
    applied: HashMap<String, Result<u64, String>>,
    journal: Vec<String>,
    calls: u64,
}

/// The simulated order, inventory and payment services.
pub struct Shop {
    state: Mutex<ShopState>,
    faults: Faults,
}

impl Shop {
    /// A shop with `stock` units of each listed SKU.
    pub fn new(stock: &[(&str, i64)], faults: Faults) -> Arc<Shop> {
        let state = ShopState {
            stock: stock.iter().map(|(s, n)| (s.to_string(), *n)).collect(),
            ..ShopState::default()
        };
        Arc::new(Shop {
            state: Mutex::new(state),
            faults,
        })
    }

    /// Every effect the services applied, in order ("reserve-inventory 7").
    pub fn journal(&self) -> Vec<String> {
        self.state.lock().journal.clone()
    }

    /// The order's status in the order service.
    pub fn order_status(&self, order_id: u64) -> Option<OrderStatus> {
        self.state.lock().orders.get(&order_id).copied()
    }

    /// Units of `sku` in stock (reserved units are not).
    pub fn stock(&self, sku: &str) -> i64 {
        self.state.lock().stock.get(sku).copied().unwrap_or(0)
    }

    /// Cents charged for the order.
    pub fn charged(&self, order_id: u64) -> Option<u64> {
        self.state.lock().charges.get(&order_id).copied()
    }

    /// Applies `effect` once per idempotency key: a repeated call returns
    /// the first call's result and changes nothing.
    async fn call(
        &self,
        key: String,
        effect: impl FnOnce(&mut ShopState) -> Result<u64, String>,
    ) -> Result<u64, String> {
        if !self.faults.latency.is_zero() {
            tokio::time::sleep(self.faults.latency).await;
        }
        let mut state = self.state.lock();
        state.calls += 1;
        if let Some(result) = state.applied.get(&key) {
            return result.clone();
        }
        let result = effect(&mut state);
        state.applied.insert(key, result.clone());
        result
    }

    fn flaky(&self, key: &str) -> bool {
        // Deterministic per key, so a run can be reproduced.
        let draw = (fault_hash(key) as f64) / (u32::MAX as f64);
        draw < self.faults.payment_flakiness
    }
}

fn fault_hash(text: &str) -> u32 {
    // FNV-1a, then murmur3's finaliser so that keys differing only in
    // their last byte (attempt numbers) draw independently: a small, stable
    // hash for fault draws.
    let mut h = text.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    h ^= h >> 16;
    h = h.wrapping_mul(0x85eb_ca6b);
    h ^= h >> 13;
    h = h.wrapping_mul(0xc2b2_ae35);
    h ^ (h >> 16)
}

/// The order saga over `shop`'s services.
pub fn order_saga(shop: Arc<Shop>) -> Saga<OrderRequest> {
    let retry = RetryPolicy {
        backoff: Backoff::Exponential {
            initial: Duration::from_millis(20),
            multiplier: 2.0,
        },
        attempts_max: 4,
        delay_max: Duration::from_secs(1),
        jitter: 0.5,
    };
    Saga::new(ORDER_SAGA)
        .name("order processing")
        .step(
            Step::new("create-order", handler(&shop, create_order))
                .compensate(handler(&shop, cancel_order))
                .service("orders")
                .timeout(Duration::from_secs(5)),
        )
        .step(
            Step::new("reserve-inventory", handler(&shop, reserve_inventory))
                .compensate(handler(&shop, release_inventory))
                .service("inventory")
                .timeout(Duration::from_secs(5)),
        )
        .step(
            Step::new("charge-payment", handler(&shop, charge_payment))
                .pivot()
                .service("payments")
                .timeout(Duration::from_secs(10)),
        )
        .step(
            Step::new("confirm-order", handler(&shop, confirm_order))
                .retriable()
                .service("orders")
                .timeout(Duration::from_secs(5)),
        )
        .retry(retry)
        .timeout(Duration::from_secs(300))
}

type Call<T> = Pin<Box<dyn Future<Output = Result<T, StepError>> + Send>>;
type Effect<T> = fn(Arc<Shop>, StepContext<OrderRequest>) -> Call<T>;

/// Binds a step function to the shop.
fn handler<T: 'static>(
    shop: &Arc<Shop>,
    effect: Effect<T>,
) -> impl Fn(StepContext<OrderRequest>) -> Call<T> + Send + Sync + 'static {
    let shop = shop.clone();
    move |ctx| effect(shop.clone(), ctx)
}

/// A service error as a step error: `permanent` ones skip retries.
fn failed(message: String, permanent: bool) -> StepError {
    if permanent {
        StepError::permanent(message)
    } else {
        StepError::retryable(message)
    }
}

fn create_order(shop: Arc<Shop>, ctx: StepContext<OrderRequest>) -> Call<u64> {
    Box::pin(async move {
        let id = ctx.input().order_id;
        let result = shop.call(ctx.idempotency_key(), |state| {
            state.orders.insert(id, OrderStatus::Created);
            state.journal.push(format!("create-order {id}"));
            Ok(id)
        });
        result.await.map_err(|e| failed(e, false))
    })
}

fn cancel_order(shop: Arc<Shop>, ctx: StepContext<OrderRequest>) -> Call<()> {
    Box::pin(async move {
        let id = ctx.input().order_id;
        let result = shop.call(ctx.idempotency_key(), |state| {
            state.orders.insert(id, OrderStatus::Cancelled);
            state.journal.push(format!("cancel-order {id}"));
            Ok(id)
        });
        result.await.map(|_| ()).map_err(|e| failed(e, false))
    })
}

fn reserve_inventory(shop: Arc<Shop>, ctx: StepContext<OrderRequest>) -> Call<u64> {
    Box::pin(async move {
        let order = ctx.input().clone();
        let result = shop.call(ctx.idempotency_key(), move |state| {
            for item in &order.items {
                let available = state.stock.get(&item.sku).copied().unwrap_or(0);
                if available < i64::from(item.quantity) {
                    return Err(format!(
                        "out of stock: {} (want {}, have {available})",
                        item.sku, item.quantity
                    ));
                }
            }
            for item in &order.items {
                *state.stock.entry(item.sku.clone()).or_default() -= i64::from(item.quantity);
            }
            state
                .reservations
                .insert(order.order_id, order.items.clone());
            state
                .journal
                .push(format!("reserve-inventory {}", order.order_id));
            Ok(order.items.len() as u64)
        });
        // Out of stock does not fix itself by retrying.
        result.await.map_err(|e| failed(e, true))
    })
}

fn release_inventory(shop: Arc<Shop>, ctx: StepContext<OrderRequest>) -> Call<()> {
    Box::pin(async move {
        let id = ctx.input().order_id;
        let result = shop.call(ctx.idempotency_key(), move |state| {
            for item in state.reservations.remove(&id).unwrap_or_default() {
                *state.stock.entry(item.sku).or_default() += i64::from(item.quantity);
            }
            state.journal.push(format!("release-inventory {id}"));
            Ok(id)
        });
        result.await.map(|_| ()).map_err(|e| failed(e, false))
    })
}

fn charge_payment(shop: Arc<Shop>, ctx: StepContext<OrderRequest>) -> Call<u64> {
    Box::pin(async move {
        let order = ctx.input().clone();
        let key = ctx.idempotency_key();
        if shop.flaky(&key) {
            return Err(StepError::retryable("payment provider timed out"));
        }
        if order.card == DECLINED_CARD {
            // A decline is an answer, not an outage: no retry.
            let id = order.order_id;
            shop.call(key, move |state| {
                state.journal.push(format!("decline-payment {id}"));
                Ok(id)
            })
            .await
            .map_err(|e| failed(e, true))?;
            return Err(StepError::permanent(format!(
                "card declined for order {id}"
            )));
        }
        let result = shop.call(key, move |state| {
            state.charges.insert(order.order_id, order.amount_cents);
            state
                .journal
                .push(format!("charge-payment {}", order.order_id));
            Ok(order.amount_cents)
        });
        result.await.map_err(|e| failed(e, false))
    })
}

fn confirm_order(shop: Arc<Shop>, ctx: StepContext<OrderRequest>) -> Call<u64> {
    Box::pin(async move {
        let id = ctx.input().order_id;
        let charged: u64 = ctx.output("charge-payment")?;
        let result = shop.call(ctx.idempotency_key(), move |state| {
            state.orders.insert(id, OrderStatus::Confirmed);
            state.journal.push(format!("confirm-order {id}"));
            Ok(charged)
        });
        result.await.map_err(|e| failed(e, false))
    })
}
