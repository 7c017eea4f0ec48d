//! An etcd server for the tests (Debian's etcd-server), on free loopback
//! ports in a temporary directory.
#![allow(dead_code)]

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use skald_replicator::election::Elections;

/// An etcd server on free loopback ports, in a temporary directory;
/// killed when dropped.
pub struct Etcd {
    child: Child,
    pub endpoint: String,
    _dir: tempfile::TempDir,
}

impl Drop for Etcd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Starts etcd, or says SKIPPED without a binary (a failure under CI=true).
pub fn etcd() -> Option<Etcd> {
    let binary = ["etcd", "/usr/bin/etcd"].into_iter().find(|b| {
        Command::new(b)
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success())
    });
    let Some(binary) = binary else {
        let ci = std::env::var("CI").is_ok_and(|v| v == "true");
        assert!(!ci, "etcd is missing (scripts/test installs etcd-server)");
        eprintln!("SKIPPED: no etcd binary (Debian package etcd-server)");
        return None;
    };
    let dir = tempfile::tempdir().unwrap();
    let (client, peer) = (free_port(), free_port());
    let client_url = format!("http://127.0.0.1:{client}");
    let peer_url = format!("http://127.0.0.1:{peer}");
    let child = Command::new(binary)
        .args(["--name", "skald-test", "--data-dir"])
        .arg(dir.path())
        .args([
            "--listen-client-urls",
            &client_url,
            "--advertise-client-urls",
            &client_url,
        ])
        .args([
            "--listen-peer-urls",
            &peer_url,
            "--initial-advertise-peer-urls",
            &peer_url,
        ])
        .args(["--initial-cluster", &format!("skald-test={peer_url}")])
        // A shorter election timeout than etcd's default (1 s), so that
        // leases of 1 s are granted (the minimum is 1.5 times it).
        .args(["--election-timeout", "500", "--heartbeat-interval", "100"])
        .env("ETCD_UNSUPPORTED_ARCH", std::env::consts::ARCH)
        .stdout(Stdio::null())
        .stderr(std::fs::File::create(dir.path().join("etcd.log")).unwrap())
        .spawn()
        .unwrap();
    Some(Etcd {
        child,
        endpoint: format!("127.0.0.1:{client}"),
        _dir: dir,
    })
}

pub async fn connect(etcd: &Etcd, ttl: Duration) -> Elections {
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let endpoints = [etcd.endpoint.clone()];
        if let Ok(elections) = Elections::connect(&endpoints, "/skald-test", ttl).await {
            if elections.leader(0).await.is_ok() {
                return elections;
            }
        }
        if Instant::now() >= deadline {
            let log =
                std::fs::read_to_string(etcd._dir.path().join("etcd.log")).unwrap_or_default();
            panic!("etcd did not come up: {log}");
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
