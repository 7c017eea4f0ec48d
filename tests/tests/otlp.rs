//! Traces that survive a crash, exported for real: a host process (the
//! `traced-host` binary) exports over OTLP/HTTP with OpenTelemetry's own
//! exporter to a receiver in this test; it is killed (SIGKILL) while a
//! step hangs, and a second process resumes the saga. Every span of the
//! saga, from both processes, must form one trace under the caller's span.
//! Also Zipkin, through OpenTelemetry's Zipkin exporter.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::Duration;

use skald_tests::collector::{Collector, ReceivedSpan};

const CALLER: &str = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
const TRACE: &str = "4bf92f3577b34da6a3ce929d0e0e4736";
const CALLER_SPAN: &str = "00f067aa0ba902b7";

fn host(dir: &std::path::Path, url: &str, phase: &str) -> std::process::Child {
    Command::new(env!("CARGO_BIN_EXE_traced-host"))
        .arg(dir)
        .arg(url)
        .arg(phase)
        .arg(CALLER)
        .env("OTEL_BSP_SCHEDULE_DELAY", "50")
        .stdout(Stdio::piped())
        .spawn()
        .unwrap()
}

/// Reads the child's lines until one starts with `prefix`; returns the
/// rest of it.
fn line_starting(
    lines: &mut impl Iterator<Item = std::io::Result<String>>,
    prefix: &str,
) -> String {
    for line in lines {
        let line = line.unwrap();
        if let Some(rest) = line.strip_prefix(prefix) {
            return rest.trim().to_owned();
        }
    }
    panic!("the host ended without printing {prefix:?}");
}

fn named<'a>(spans: &'a [ReceivedSpan], name: &str) -> Vec<&'a ReceivedSpan> {
    spans.iter().filter(|s| s.name == name).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_saga_crashed_and_resumed_in_another_process_is_one_trace() {
    let collector = Collector::otlp().await;
    let dir = tempfile::tempdir().unwrap();

    // First process: the first step fails once and succeeds, the second
    // hangs; killed once the first step's spans are exported.
    let mut first = host(dir.path(), &collector.base_url(), "crash");
    let first_pid = first.id();
    let mut lines = BufReader::new(first.stdout.take().unwrap()).lines();
    let saga = line_starting(&mut lines, "started ");
    let parent_before = line_starting(&mut lines, "charge running ");
    collector
        .wait_until(
            "both attempts of reserve",
            Duration::from_secs(30),
            |spans| named(spans, "step reserve").len() == 2,
        )
        .await;
    first.kill().unwrap(); // SIGKILL
    first.wait().unwrap();
    let killed_at_ms = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis() as u64;

    // Second process: resumes the same attempt, then turns back.
    let mut second = host(dir.path(), &collector.base_url(), "resume");
    let second_pid = second.id();
    let mut lines = BufReader::new(second.stdout.take().unwrap()).lines();
    let parent_after = line_starting(&mut lines, "charge resumed ");
    assert_eq!(line_starting(&mut lines, "ended "), "Compensated");
    assert!(second.wait().unwrap().success());
    assert_eq!(
        parent_before, parent_after,
        "the resumed attempt hands on the same traceparent"
    );

    // Everything was exported at the shutdown.
    let spans = collector
        .wait_until("the saga span", Duration::from_secs(10), |spans| {
            !named(spans, "saga traced").is_empty()
        })
        .await;
    assert!(
        spans.iter().all(|s| s.trace_id == TRACE),
        "one trace: {spans:#?}"
    );

    let sagas = named(&spans, "saga traced");
    assert_eq!(sagas.len(), 1, "{spans:#?}");
    let root = sagas[0];
    assert_eq!(root.parent_span_id.as_deref(), Some(CALLER_SPAN));
    assert_eq!(root.pid, Some(second_pid));
    assert!(
        root.start_ms < killed_at_ms,
        "the saga span starts at the start"
    );
    assert_eq!(root.attribute("skald.saga.id"), saga);
    assert_eq!(root.attribute("skald.saga.definition"), "traced");
    assert_eq!(root.attribute("skald.saga.outcome"), "compensated");
    assert_eq!(root.attribute("skald.saga.key"), "order-1");
    // Counted from the state: the retry happened in the first process.
    assert_eq!(root.attribute("skald.saga.retries"), "1");

    let children: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.name != "saga traced").collect();
    for child in &children {
        assert_eq!(
            child.parent_span_id.as_deref(),
            Some(root.span_id.as_str()),
            "{child:#?}"
        );
        assert_eq!(child.attribute("skald.saga.id"), saga);
    }
    let reserve = named(&spans, "step reserve");
    let outcomes: Vec<(&str, &str, Option<u32>)> = reserve
        .iter()
        .map(|s| {
            (
                s.attribute("skald.attempt"),
                s.attribute("skald.outcome"),
                s.pid,
            )
        })
        .collect();
    assert_eq!(
        outcomes,
        [
            ("1", "retryable_error", Some(first_pid)),
            ("2", "ok", Some(first_pid))
        ]
    );
    assert_eq!(reserve[0].error.as_deref(), Some("stock service busy"));

    let charge = named(&spans, "step charge");
    assert_eq!(charge.len(), 1, "one span for the attempt across the crash");
    let charge = charge[0];
    assert_eq!(charge.pid, Some(second_pid));
    assert_eq!(charge.attribute("skald.outcome"), "ok");
    assert_eq!(charge.attribute("skald.attempt"), "1");
    assert_eq!(
        charge.attribute("skald.idempotency_key"),
        format!("{saga}/charge/execute/1")
    );
    assert_eq!(charge.events, ["resumed after a restart"]);
    assert!(
        charge.start_ms < killed_at_ms,
        "the resumed attempt's span starts when the attempt began, before the crash"
    );
    assert_eq!(
        parent_after,
        format!("00-{TRACE}-{}-01", charge.span_id),
        "the step's traceparent is its attempt span"
    );

    let ship = named(&spans, "step ship");
    assert_eq!(ship.len(), 1);
    assert_eq!(ship[0].attribute("skald.outcome"), "permanent_error");
    assert_eq!(ship[0].error.as_deref(), Some("no courier"));

    // Compensations, latest step first.
    let compensations: Vec<&ReceivedSpan> = children
        .iter()
        .copied()
        .filter(|s| s.name.starts_with("compensate "))
        .collect();
    let mut order = compensations.clone();
    order.sort_by_key(|s| (s.start_ms, s.end_ms));
    let names: Vec<&str> = order.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["compensate charge", "compensate reserve"]);
    assert!(compensations
        .iter()
        .all(|s| s.attribute("skald.compensation") == "true"));
    assert_eq!(children.len(), 6, "{children:#?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_zipkin_through_its_exporter() {
    use skald_engine::{Engine, EngineOptions, Saga, Step, StepError, Tracing};
    let collector = Collector::zipkin().await;
    let url = format!("http://{}/api/v2/spans", collector.address);
    let dir = tempfile::tempdir().unwrap();
    let saga = Saga::<u32>::new("zipped")
        .step(Step::new("a", |_| async { Ok(1) }).compensate(|_| async { Ok(()) }))
        .step(
            Step::new("b", |_| async {
                Err::<(), _>(StepError::permanent("refused"))
            })
            .pivot(),
        );
    let engine = Engine::builder(dir.path())
        .options(EngineOptions::default().partitions(1))
        .tracing(Tracing::zipkin(&url, "zipkin-test").unwrap())
        .register(saga)
        .unwrap()
        .open()
        .await
        .unwrap();
    let id = engine.start("zipped", &5).await.unwrap();
    engine.wait(id).await.unwrap();
    engine.shutdown().await.unwrap();
    let spans = collector
        .wait_until("four spans", Duration::from_secs(10), |spans| {
            spans.len() == 4
        })
        .await;
    let root = named(&spans, "saga zipped");
    assert_eq!(root.len(), 1, "{spans:#?}");
    let root = root[0];
    assert_eq!(root.parent_span_id, None, "no caller: a root span");
    assert_eq!(root.attribute("skald.saga.outcome"), "compensated");
    let mut names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    names.sort_unstable();
    assert_eq!(names, ["compensate a", "saga zipped", "step a", "step b"]);
    for span in spans.iter().filter(|s| s.name != "saga zipped") {
        assert_eq!(span.trace_id, root.trace_id);
        assert_eq!(span.parent_span_id.as_deref(), Some(root.span_id.as_str()));
    }
    let b = named(&spans, "step b")[0];
    assert_eq!(b.attribute("skald.outcome"), "permanent_error");
    assert_eq!(b.error.as_deref(), Some("refused"));
}
