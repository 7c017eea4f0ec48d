//! Runs the order-processing saga twice on a fresh engine: one order that
//! goes through, one whose card is declined (the inventory is released and
//! the order cancelled), then prints what each saga and service did.
//!
//! `cargo run --release -p skald-examples --bin order [-- --data DIR]`

use std::path::PathBuf;

use anyhow::Context;
use skald_engine::{Engine, EngineOptions};
use skald_examples::order::{order_saga, Faults, OrderRequest, Shop, DECLINED_CARD, ORDER_SAGA};

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let mut args = std::env::args().skip(1);
    let (dir, temporary) = match (args.next().as_deref(), args.next()) {
        (Some("--data"), Some(dir)) => (PathBuf::from(dir), false),
        (None, _) => (
            std::env::temp_dir().join(format!("skald-order-example-{}", std::process::id())),
            true,
        ),
        _ => anyhow::bail!("usage: order [--data DIR]"),
    };
    let shop = Shop::new(&[("kettle", 10), ("mug", 10)], Faults::default());
    let engine = Engine::builder(&dir)
        .options(EngineOptions::default())
        .register(order_saga(shop.clone()))?
        .open()
        .await
        .with_context(|| format!("opening the engine in {}", dir.display()))?;
    println!(
        "engine in {} ({} partitions)",
        dir.display(),
        engine.partitions()
    );

    for (order_id, card) in [(1, "4242-4242-4242-4242"), (2, DECLINED_CARD)] {
        let request = OrderRequest::sample(order_id, "ada", card);
        let id = engine.start(ORDER_SAGA, &request).await?;
        let view = engine.wait(id).await?;
        println!(
            "\norder {order_id} (card {card}): {id} ended {:?}",
            view.status
        );
        for step in &view.steps {
            let error = step
                .last_error
                .as_deref()
                .map(|e| format!("  last error: {e}"))
                .unwrap_or_default();
            println!(
                "  {:<18} {:?}, {} attempt(s){error}",
                step.id, step.phase, step.attempts
            );
        }
    }
    println!("\nservice journal:");
    for entry in shop.journal() {
        println!("  {entry}");
    }
    println!(
        "stock: kettle {}, mug {}",
        shop.stock("kettle"),
        shop.stock("mug")
    );
    engine.shutdown().await?;
    if temporary {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}
