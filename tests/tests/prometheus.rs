//! A real Prometheus server scrapes a running engine, and the test reads
//! the values back through Prometheus's HTTP query API.
//!
//! The engine runs here, its registry served at `/metrics` by axum on a
//! loopback port; `prometheus` (the Debian package, which `scripts/test`
//! installs) is started on another loopback port with a one-second scrape
//! interval. Without a `prometheus` binary the test says so and passes,
//! except under CI (`CI=true`), where it fails.

use std::io::{Read, Write};
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use prometheus_client::registry::Registry;
use skald_engine::{Engine, Saga, Step, StepContext, StepError};

const SAGAS: u64 = 30;
/// Sagas whose second step fails for good (every third).
const DECLINED: u64 = SAGAS / 3;
/// How long Prometheus gets to scrape what the test waits for.
const PATIENCE: Duration = Duration::from_secs(90);

fn payment() -> Saga<u64> {
    Saga::<u64>::new("payment")
        .step(
            Step::new("hold", |_ctx| async { Ok::<_, StepError>(()) })
                .compensate(|_ctx| async { Ok(()) }),
        )
        .step(
            Step::new("capture", |ctx: StepContext<u64>| async move {
                match *ctx.input() % 3 {
                    0 => Err(StepError::permanent("card declined")),
                    _ => Ok(()),
                }
            })
            .pivot(),
        )
}

/// A free loopback port (bound, read, released).
fn free_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

/// Serves `registry` at `/metrics` on a loopback port; returns the address.
async fn serve(registry: Arc<Mutex<Registry>>) -> SocketAddr {
    let app = axum::Router::new().route(
        "/metrics",
        axum::routing::get(move || {
            let registry = registry.clone();
            async move {
                let text = skald_engine::metrics::render(&registry.lock());
                (
                    [(
                        "content-type",
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    text,
                )
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    address
}

/// Prometheus, killed when dropped.
struct Prometheus {
    child: Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Starts Prometheus scraping `target` every second, or says why not.
fn start_prometheus(target: SocketAddr) -> Result<Prometheus, String> {
    let binary = ["prometheus", "/usr/bin/prometheus"]
        .into_iter()
        .find(|b| Command::new(b).arg("--version").output().is_ok())
        .ok_or("no prometheus binary (apt-get install prometheus)")?;
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let config = dir.path().join("prometheus.yml");
    let yaml = format!(
        "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
         scrape_configs:\n  - job_name: skald\n    static_configs:\n      - targets: ['{target}']\n"
    );
    std::fs::write(&config, yaml).map_err(|e| e.to_string())?;
    let port = free_port();
    let child = Command::new(binary)
        .arg(format!("--config.file={}", config.display()))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(log_file(dir.path())?)
        .spawn()
        .map_err(|e| format!("{binary}: {e}"))?;
    Ok(Prometheus {
        child,
        port,
        _dir: dir,
    })
}

fn log_file(dir: &Path) -> Result<std::fs::File, String> {
    std::fs::File::create(dir.join("prometheus.log")).map_err(|e| e.to_string())
}

/// `GET path` on a loopback port: the response body, if the status is 200.
fn http_get(port: u16, path: &str) -> Option<String> {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let (head, body) = response.split_once("\r\n\r\n")?;
    if !head.starts_with("HTTP/1.1 200") {
        return None;
    }
    if !head
        .to_ascii_lowercase()
        .contains("transfer-encoding: chunked")
    {
        return Some(body.to_owned());
    }
    // Chunked: each chunk is its hexadecimal size, CRLF, the bytes, CRLF.
    let (mut rest, mut whole) = (body, String::new());
    loop {
        let (size, after) = rest.split_once("\r\n")?;
        let size = usize::from_str_radix(size.trim(), 16).ok()?;
        if size == 0 {
            return Some(whole);
        }
        whole.push_str(after.get(..size)?);
        rest = after.get(size + 2..)?;
    }
}

/// The value of an instant `query`, summed over its series, once
/// Prometheus has one.
fn query(prometheus: &Prometheus, query: &str) -> Option<f64> {
    let encoded: String = query
        .bytes()
        .map(|b| match b {
            b'a'..=b'z' | b'A'..=b'Z' | b'0'..=b'9' | b'_' => (b as char).to_string(),
            other => format!("%{other:02X}"),
        })
        .collect();
    let body = http_get(prometheus.port, &format!("/api/v1/query?query={encoded}"))?;
    let value: serde_json::Value = serde_json::from_str(&body).ok()?;
    let series = value["data"]["result"].as_array()?;
    if series.is_empty() {
        return None;
    }
    let values = series
        .iter()
        .map(|s| s["value"][1].as_str()?.parse::<f64>().ok());
    values.sum()
}

/// Waits until `query` equals `expected` in Prometheus; the last value seen
/// otherwise.
fn wait_for(prometheus: &Prometheus, expr: &str, expected: f64) -> Result<(), Option<f64>> {
    let began = Instant::now();
    let mut last = None;
    while began.elapsed() < PATIENCE {
        last = query(prometheus, expr);
        if last == Some(expected) {
            return Ok(());
        }
        std::thread::sleep(Duration::from_millis(250));
    }
    Err(last)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_the_engine() {
    let dir = tempfile::tempdir().unwrap();
    let mut registry = Registry::default();
    let engine = Engine::builder(dir.path())
        .metrics(&mut registry)
        .register(payment())
        .unwrap()
        .open()
        .await
        .unwrap();
    for n in 1..=SAGAS {
        let id = engine.start("payment", &n).await.unwrap();
        engine.wait(id).await.unwrap();
    }
    let address = serve(Arc::new(Mutex::new(registry))).await;
    let prometheus = match start_prometheus(address) {
        Ok(prometheus) => prometheus,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("CI needs a real Prometheus here: {why}")
        }
        Err(why) => return println!("SKIPPED: {why}"),
    };
    let checks = [
        ("skald_sagas_started_total", SAGAS as f64),
        (
            r#"skald_sagas_ended_total{outcome="completed"}"#,
            (SAGAS - DECLINED) as f64,
        ),
        (
            r#"skald_sagas_ended_total{outcome="compensated"}"#,
            DECLINED as f64,
        ),
        (
            r#"skald_saga_failures_total{reason="permanent_error"}"#,
            DECLINED as f64,
        ),
        (
            r#"skald_step_attempts_total{step="capture",outcome="permanent_error"}"#,
            DECLINED as f64,
        ),
        (
            r#"skald_compensations_total{step="hold",outcome="ok"}"#,
            DECLINED as f64,
        ),
        ("skald_sagas_in_flight", 0.0),
        (r#"up{job="skald"}"#, 1.0),
    ];
    let checked = tokio::task::spawn_blocking(move || {
        let wrong: Vec<String> = checks
            .iter()
            .filter_map(|&(expr, expected)| {
                let seen = wait_for(&prometheus, expr, expected).err()?;
                Some(format!(
                    "{expr}: expected {expected}, Prometheus has {seen:?}"
                ))
            })
            .collect();
        wrong
    })
    .await
    .unwrap();
    assert!(checked.is_empty(), "{checked:#?}");
    engine.shutdown().await.unwrap();
}
