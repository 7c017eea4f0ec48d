//! The order-processing saga end to end on a real engine.

use std::sync::Arc;

use skald_engine::{BreakerSettings, Engine, EngineOptions, SagaStatus};
use skald_examples::order::{
    order_saga, Faults, Item, OrderRequest, OrderStatus, Shop, DECLINED_CARD, ORDER_SAGA,
};

fn order(order_id: u64, card: &str, quantity: u32) -> OrderRequest {
    OrderRequest {
        order_id,
        customer: format!("customer-{order_id}"),
        items: vec![
            Item {
                sku: "kettle".into(),
                quantity,
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

async fn engine(dir: &tempfile::TempDir, shop: &Arc<Shop>) -> Engine {
    // A breaker that 30% failures do not open: these tests are about the
    // saga, not about failing fast.
    let breaker = BreakerSettings {
        failures_to_open: 1_000,
        ..BreakerSettings::default()
    };
    Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(2).breaker(breaker))
        .register(order_saga(shop.clone()))
        .unwrap()
        .open()
        .await
        .unwrap()
}

#[tokio::test]
async fn a_paid_order_is_confirmed() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::new(&[("kettle", 10), ("mug", 10)], Faults::default());
    let engine = engine(&dir, &shop).await;
    let id = engine
        .start(ORDER_SAGA, &order(1, "4242-4242-4242-4242", 1))
        .await
        .unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Completed);
    assert_eq!(
        shop.journal(),
        [
            "create-order 1",
            "reserve-inventory 1",
            "charge-payment 1",
            "confirm-order 1"
        ]
    );
    assert_eq!(shop.order_status(1), Some(OrderStatus::Confirmed));
    assert_eq!(shop.charged(1), Some(4_990));
    assert_eq!((shop.stock("kettle"), shop.stock("mug")), (9, 8));
    assert_eq!(view.output::<u64>("confirm-order").unwrap().unwrap(), 4_990);
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_declined_payment_releases_the_inventory_and_cancels_the_order() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::new(&[("kettle", 10), ("mug", 10)], Faults::default());
    let engine = engine(&dir, &shop).await;
    let id = engine
        .start(ORDER_SAGA, &order(2, DECLINED_CARD, 1))
        .await
        .unwrap();
    let view = engine.wait(id).await.unwrap();
    assert_eq!(view.status, SagaStatus::Compensated);
    assert_eq!(
        shop.journal(),
        [
            "create-order 2",
            "reserve-inventory 2",
            "decline-payment 2",
            "release-inventory 2",
            "cancel-order 2"
        ]
    );
    assert_eq!(shop.order_status(2), Some(OrderStatus::Cancelled));
    assert_eq!(shop.charged(2), None);
    assert_eq!((shop.stock("kettle"), shop.stock("mug")), (10, 10));
    let payment = &view.steps[2];
    assert_eq!(payment.attempts, 1, "a decline is not retried");
    assert!(payment.last_error.as_deref().unwrap().contains("declined"));
    engine.shutdown().await.unwrap();
}

#[tokio::test]
async fn an_out_of_stock_order_is_cancelled() {
    let dir = tempfile::tempdir().unwrap();
    let shop = Shop::new(&[("kettle", 1), ("mug", 10)], Faults::default());
    let engine = engine(&dir, &shop).await;
    let id = engine
        .start(ORDER_SAGA, &order(3, "4242-4242-4242-4242", 5))
        .await
        .unwrap();
    assert_eq!(
        engine.wait(id).await.unwrap().status,
        SagaStatus::Compensated
    );
    assert_eq!(shop.journal(), ["create-order 3", "cancel-order 3"]);
    assert_eq!(shop.stock("kettle"), 1);
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn many_concurrent_orders_with_a_flaky_payment_provider_keep_the_books_straight() {
    let dir = tempfile::tempdir().unwrap();
    let faults = Faults {
        payment_flakiness: 0.3,
        ..Faults::default()
    };
    let shop = Shop::new(&[("kettle", 1_000), ("mug", 1_000)], faults);
    let engine = engine(&dir, &shop).await;
    let mut sagas = Vec::new();
    for order_id in 0..200u64 {
        let card = if order_id % 5 == 0 {
            DECLINED_CARD
        } else {
            "4242-4242-4242-4242"
        };
        let engine = engine.clone();
        sagas.push(tokio::spawn(async move {
            let id = engine
                .start(ORDER_SAGA, &order(order_id, card, 1))
                .await
                .unwrap();
            (order_id, engine.wait(id).await.unwrap())
        }));
    }
    let mut confirmed = 0;
    for saga in sagas {
        let (order_id, view) = saga.await.unwrap();
        if order_id % 5 == 0 {
            assert_eq!(view.status, SagaStatus::Compensated, "order {order_id}");
            assert_eq!(shop.order_status(order_id), Some(OrderStatus::Cancelled));
        } else {
            // Flaky payments are retried; 4 attempts at 30% flakiness can
            // still all fail, which aborts the order cleanly.
            match view.status {
                SagaStatus::Completed => {
                    confirmed += 1;
                    assert_eq!(shop.order_status(order_id), Some(OrderStatus::Confirmed));
                }
                SagaStatus::Compensated => {
                    assert_eq!(shop.order_status(order_id), Some(OrderStatus::Cancelled));
                }
                other => panic!("order {order_id} ended {other:?}"),
            }
        }
    }
    // Stock moved exactly for the confirmed orders.
    assert_eq!(shop.stock("kettle"), 1_000 - confirmed);
    assert_eq!(shop.stock("mug"), 1_000 - 2 * confirmed);
    assert!(
        confirmed >= 140,
        "{confirmed} of 160 payable orders confirmed"
    );
    engine.shutdown().await.unwrap();
}
