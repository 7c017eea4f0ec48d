//! A NATS server with JetStream for the tests (Debian's nats-server), on a
//! free loopback port, its store in a temporary directory; it can be
//! killed (`kill -9`) and started again on the same port and store.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A nats-server with JetStream; killed when dropped.
pub struct Nats {
    child: Option<Child>,
    binary: String,
    port: u16,
    pub url: String,
    dir: tempfile::TempDir,
}

impl Drop for Nats {
    fn drop(&mut self) {
        self.kill();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts nats-server, or says SKIPPED without a binary (a failure under
/// CI=true).
pub fn nats() -> Option<Nats> {
    let binary = [
        "nats-server",
        "/usr/bin/nats-server",
        "/usr/sbin/nats-server",
    ]
    .into_iter()
    .find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(binary) = binary else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(
            !ci,
            "nats-server is missing (scripts/test installs nats-server)"
        );
        eprintln!("SKIPPED: no nats-server binary (Debian package nats-server)");
        return None;
    };
    let port = free_port();
    let mut nats = Nats {
        child: None,
        binary: binary.to_owned(),
        port,
        url: format!("nats://127.0.0.1:{port}"),
        dir: tempfile::tempdir().unwrap(),
    };
    nats.start();
    Some(nats)
}

impl Nats {
    /// Starts the server (again), and waits until it takes connections.
    pub fn start(&mut self) {
        assert!(self.child.is_none(), "already running");
        let store = self.dir.path().join("store");
        let child = Command::new(&self.binary)
            .args([
                "-js",
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-sd",
            ])
            .arg(&store)
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(self.dir.path().join("nats.log")).unwrap())
            .spawn()
            .unwrap();
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(30);
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "nats-server did not come up: {}",
                std::fs::read_to_string(self.dir.path().join("nats.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Kills the server (`kill -9`).
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}
