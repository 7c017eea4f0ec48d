//! `kill -9` of a real process: a child appends with the default durability
//! and prints every acknowledged LSN; the parent kills it at a random
//! moment, reopens the log and checks every acknowledged record.
//!
//! Rounds: `SKALD_KILL_ROUNDS` (CI sets a bounded number). The child is
//! this same test binary, re-run with `SKALD_KILL_CHILD_DIR` set.

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use skald_log::{Log, LogOptions};

const SEGMENT_SIZE_BYTES: u64 = 256 * 1024;
const CHILD_WRITERS: usize = 4;

fn payload(writer: usize, index: u64) -> Vec<u8> {
    let mut bytes = format!("writer {writer} index {index} ").into_bytes();
    bytes.resize(64 + (index as usize * 13) % 700, b'0' + writer as u8);
    bytes
}

fn options() -> LogOptions {
    LogOptions::default().segment_size_bytes(SEGMENT_SIZE_BYTES)
}

/// The child: appends forever from several threads, printing
/// `ack <lsn> <writer> <index>` after each acknowledged append.
#[test]
#[ignore = "child process of kill9_loses_no_acknowledged_record; not a test on its own"]
fn kill9_child() {
    let Ok(dir) = std::env::var("SKALD_KILL_CHILD_DIR") else {
        return;
    };
    let log = Arc::new(Log::open(&dir, options()).expect("child opens the log"));
    let threads: Vec<_> = (0..CHILD_WRITERS)
        .map(|writer| {
            let log = log.clone();
            std::thread::spawn(move || {
                let start: u64 = rand::random::<u32>() as u64;
                for index in start.. {
                    let lsn = log.append(&payload(writer, index)).expect("append");
                    println!("ack {lsn} {writer} {index}");
                }
            })
        })
        .collect();
    for thread in threads {
        thread.join().unwrap();
    }
}

#[test]
fn kill9_loses_no_acknowledged_record() {
    let rounds: u64 = std::env::var("SKALD_KILL_ROUNDS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(5);
    let seed: u64 = rand::random();
    println!("kill -9 test seed {seed}, {rounds} rounds");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let dir = tempfile::tempdir().unwrap();
    let mut acknowledged = std::collections::BTreeMap::new();
    for round in 0..rounds {
        let mut child = Command::new(std::env::current_exe().unwrap())
            .args([
                "--exact",
                "kill9_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("SKALD_KILL_CHILD_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        let stdout = child.stdout.take().unwrap();
        let lines = std::thread::spawn(move || {
            BufReader::new(stdout)
                .lines()
                .map_while(Result::ok)
                .collect::<Vec<String>>()
        });
        let deadline = Duration::from_millis(rng.random_range(50..400));
        let started = Instant::now();
        while started.elapsed() < deadline {
            std::thread::sleep(Duration::from_millis(5));
        }
        child.kill().unwrap(); // SIGKILL
        child.wait().unwrap();
        for line in lines.join().unwrap() {
            let fields: Vec<&str> = line.split_whitespace().collect();
            if let ["ack", lsn, writer, index] = fields[..] {
                let (writer, index): (usize, u64) =
                    (writer.parse().unwrap(), index.parse().unwrap());
                acknowledged.insert(lsn.parse::<u64>().unwrap(), payload(writer, index));
            }
        }
        let log = Log::open(dir.path(), options())
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: reopen failed: {e}"));
        let mut reader = log.read_from(log.first_lsn()).unwrap();
        let mut found = 0;
        while let Some(record) = reader
            .read_next()
            .unwrap_or_else(|e| panic!("seed {seed} round {round}: {e}"))
        {
            if let Some(expected) = acknowledged.get(&record.lsn) {
                assert_eq!(
                    record.payload,
                    &expected[..],
                    "seed {seed}: LSN {} changed",
                    record.lsn
                );
                found += 1;
            }
        }
        assert_eq!(
            found,
            acknowledged.len(),
            "seed {seed} round {round}: acknowledged records missing (log ends at {})",
            log.next_lsn()
        );
    }
    assert!(
        !acknowledged.is_empty(),
        "the child never acknowledged anything"
    );
}
