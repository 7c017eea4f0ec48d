//! A host process for the trace tests (`tests/tests/otlp.rs`):
//! opens an engine on a directory with spans exported over OTLP and runs
//! one saga whose second step hangs until the process is killed.
//!
//! `traced-host DIR OTLP_URL crash TRACEPARENT`: starts the saga under
//! the caller's context, prints `charge running <traceparent>` once the
//! hanging step runs, and waits to be killed.
//! `traced-host DIR OTLP_URL resume`: reopens, lets the recovered saga
//! finish (the step answers this time, the next fails for good, both done
//! steps are compensated), prints `charge resumed <traceparent>` and
//! `ended <status>`, and shuts down (exporting every span).

use std::io::Write;
use std::time::Duration;

use skald_engine::{
    Backoff, Engine, EngineOptions, RetryPolicy, Saga, StartOptions, Step, StepError, TraceParent,
    Tracing,
};

fn say(line: &str) {
    let mut out = std::io::stdout().lock();
    writeln!(out, "{line}").unwrap();
    out.flush().unwrap();
}

fn saga(resuming: bool) -> Saga<u64> {
    let retry = RetryPolicy {
        backoff: Backoff::Fixed {
            delay: Duration::from_millis(10),
        },
        attempts_max: 3,
        delay_max: Duration::from_secs(1),
        jitter: 0.0,
    };
    Saga::new("traced")
        .step(
            Step::new("reserve", |cx: skald_engine::StepContext<u64>| async move {
                match cx.attempt() {
                    1 => Err(StepError::retryable("stock service busy")),
                    _ => Ok(()),
                }
            })
            .compensate(|_| async { Ok(()) }),
        )
        .step(
            Step::new(
                "charge",
                move |cx: skald_engine::StepContext<u64>| async move {
                    let parent = cx.traceparent().unwrap_or_default();
                    if !resuming {
                        say(&format!("charge running {parent}"));
                        std::future::pending::<()>().await;
                    }
                    say(&format!("charge resumed {parent}"));
                    Ok(())
                },
            )
            .compensate(|_| async { Ok(()) })
            .timeout(Duration::from_secs(600)),
        )
        .step(
            Step::new("ship", |_| async {
                Err::<(), _>(StepError::permanent("no courier"))
            })
            .pivot(),
        )
        .retry(retry)
}

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().collect();
    let (dir, url, phase) = (&args[1], &args[2], args[3].as_str());
    let resuming = phase == "resume";
    let tracing = Tracing::otlp(url, "traced-host").unwrap();
    let engine = Engine::builder(dir)
        .options(EngineOptions::default().partitions(1))
        .tracing(tracing)
        .register(saga(resuming))
        .unwrap()
        .open()
        .await
        .unwrap();
    if !resuming {
        let parent: TraceParent = args[4].parse().unwrap();
        let options = StartOptions::default().key("order-1").trace_parent(parent);
        let id = engine.start_with("traced", &1u64, options).await.unwrap();
        say(&format!("started {id}"));
        std::future::pending::<()>().await;
    }
    let id = engine.recovered_sagas()[0];
    let view = engine.wait(id).await.unwrap();
    say(&format!("ended {:?}", view.status));
    engine.shutdown().await.unwrap();
}
