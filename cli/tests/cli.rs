//! The built `skald` binary, driven as a user would: each subcommand's
//! output on a log the demo wrote, verify on damaged copies, JSON that
//! parses, a running engine inspected read-only, and bad input.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::{Duration, Instant};

fn skald(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_skald"))
        .args(args)
        .current_dir(cwd)
        .output()
        .expect("run skald")
}

fn stdout(output: &Output) -> String {
    String::from_utf8(output.stdout.clone()).unwrap()
}

fn stderr(output: &Output) -> String {
    String::from_utf8(output.stderr.clone()).unwrap()
}

/// A demo run's directory: 300 orders, a fifth of them declined.
fn demo_dir() -> (tempfile::TempDir, PathBuf) {
    let work = tempfile::tempdir().unwrap();
    let output = skald(
        &[
            "demo",
            "--sagas",
            "300",
            "--fail-rate",
            "0.2",
            "--concurrency",
            "32",
        ],
        work.path(),
    );
    assert!(output.status.success(), "{}", stderr(&output));
    let text = stdout(&output);
    assert!(text.contains("no unfinished sagas"), "{text}");
    assert!(
        text.contains("300 started, 0 recovered, 300 ended"),
        "{text}"
    );
    let dir = work.path().join("skald-data");
    (work, dir)
}

fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .map(|line| serde_json::from_str(line).unwrap_or_else(|e| panic!("{e}: {line}")))
        .collect()
}

/// Every file under `dir` with its bytes, to show nothing was modified.
fn snapshot_of_files(dir: &Path) -> Vec<(PathBuf, Vec<u8>)> {
    let mut files = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(next) = stack.pop() {
        for entry in std::fs::read_dir(&next).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                stack.push(path);
            } else {
                files.push((path.clone(), std::fs::read(&path).unwrap()));
            }
        }
    }
    files.sort();
    files
}

#[test]
fn stats_dump_and_verify_describe_what_the_demo_wrote() {
    let (work, dir) = demo_dir();
    let dir_arg = dir.to_str().unwrap();
    let before = snapshot_of_files(&dir);

    let stats = skald(&["stats", dir_arg, "--json"], work.path());
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: serde_json::Value = serde_json::from_str(stdout(&stats).trim()).unwrap();
    for field in [
        "records",
        "segments",
        "bytes",
        "first_lsn",
        "last_lsn",
        "snapshot_lsn",
        "sagas",
    ] {
        assert!(stats.get(field).is_some(), "stats lacks {field}: {stats}");
    }
    let sagas = &stats["sagas"];
    for field in [
        "running",
        "compensating",
        "completed",
        "compensated",
        "failed",
        "resolved",
        "cancel_requested",
    ] {
        assert!(sagas.get(field).is_some(), "sagas lacks {field}");
    }
    let completed = sagas["completed"].as_u64().unwrap();
    let compensated = sagas["compensated"].as_u64().unwrap();
    assert_eq!(completed + compensated, 300, "{sagas}");
    assert!(
        compensated > 20 && compensated < 120,
        "about a fifth declined: {compensated}"
    );
    assert_eq!(sagas["running"], 0);
    let records = stats["records"].as_u64().unwrap();
    // The demo's shutdown snapshot covers everything.
    assert!(stats["snapshot_lsn"].as_u64().is_some());

    let text = skald(&["stats", dir_arg], work.path());
    assert!(stdout(&text).contains(&format!("{completed} completed")));

    // One line per record, JSON that parses, with every field.
    let dump = skald(&["dump", dir_arg, "--json"], work.path());
    assert!(dump.status.success(), "{}", stderr(&dump));
    let lines = json_lines(&stdout(&dump));
    assert_eq!(lines.len() as u64, records);
    for line in &lines {
        for field in ["partition", "lsn", "time", "saga", "definition", "type"] {
            assert!(line.get(field).is_some(), "{line}");
        }
        assert_eq!(line["definition"], "order");
    }
    let started = lines.iter().filter(|l| l["type"] == "Started").count();
    assert_eq!(started, 300);
    // Inputs are JSON in the log, so JSON in the dump.
    let first = lines.iter().find(|l| l["type"] == "Started").unwrap();
    assert!(first["input"]["order_id"].is_u64(), "{first}");

    // Text lines, and the filters.
    let text = stdout(&skald(&["dump", dir_arg], work.path()));
    assert_eq!(text.lines().count() as u64, records);
    assert!(text.lines().all(|l| l.contains(" order ")));
    let saga = first["saga"].as_u64().unwrap().to_string();
    let only = json_lines(&stdout(&skald(
        &["dump", dir_arg, "--saga", &saga, "--json"],
        work.path(),
    )));
    let saga_number = first["saga"].as_u64().unwrap();
    assert!(only.len() >= 6 && only.iter().all(|l| l["saga"].as_u64() == Some(saga_number)));
    let failed = json_lines(&stdout(&skald(
        &["dump", dir_arg, "--type", "stepfailed", "--json"],
        work.path(),
    )));
    assert!(failed.iter().all(|l| l["type"] == "StepFailed"));
    assert!(failed
        .iter()
        .any(|l| l["error"].as_str().unwrap().contains("declined")));
    let window = json_lines(&stdout(&skald(
        &["dump", dir_arg, "--from", "5", "--to", "9", "--json"],
        work.path(),
    )));
    assert!(!window.is_empty());
    assert!(window
        .iter()
        .all(|l| (5..=9).contains(&l["lsn"].as_u64().unwrap())));

    // Time travel: the saga at its first event, then now.
    let first_lsn = only[0]["lsn"].as_u64().unwrap().to_string();
    let then = skald(
        &[
            "dump", dir_arg, "--saga", &saga, "--at", &first_lsn, "--json",
        ],
        work.path(),
    );
    assert!(then.status.success(), "{}", stderr(&then));
    let then: serde_json::Value = serde_json::from_str(stdout(&then).trim()).unwrap();
    assert_eq!(then["status"], "Running");
    assert_eq!(then["steps"][0]["phase"], "pending");
    let now = skald(&["dump", dir_arg, "--saga", &saga, "--state"], work.path());
    let now = stdout(&now);
    assert!(
        now.contains("Completed") || now.contains("Compensated"),
        "{now}"
    );
    // The same saga found by the key it was started with.
    let key = first["key"]
        .as_str()
        .expect("demo orders have keys")
        .to_owned();
    let by_key = skald(&["dump", dir_arg, "--key", &key, "--state"], work.path());
    assert!(by_key.status.success(), "{}", stderr(&by_key));
    assert_eq!(stdout(&by_key), now, "--key {key} is --saga {saga}");
    // An id or a key that is not there is an error, not silence.
    let missing = skald(&["dump", dir_arg, "--saga", "999999"], work.path());
    assert_eq!(missing.status.code(), Some(1), "{}", stdout(&missing));
    assert!(
        stderr(&missing).contains("no saga-999999"),
        "{}",
        stderr(&missing)
    );
    let missing = skald(&["dump", dir_arg, "--key", "order-none"], work.path());
    assert_eq!(missing.status.code(), Some(1));
    assert!(
        stderr(&missing).contains("order-none"),
        "{}",
        stderr(&missing)
    );

    let verify = skald(&["verify", dir_arg], work.path());
    assert!(
        verify.status.success(),
        "{}{}",
        stdout(&verify),
        stderr(&verify)
    );
    assert!(
        stdout(&verify).starts_with("ok: 2 partition(s)"),
        "{}",
        stdout(&verify)
    );

    // None of this changed a byte.
    assert!(
        snapshot_of_files(&dir) == before,
        "a read-only command modified the directory"
    );
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for entry in std::fs::read_dir(from).unwrap() {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap();
        }
    }
}

/// CRC-32 (IEEE), as the snapshot header uses.
fn crc32_of(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 != 0 {
                (crc >> 1) ^ 0xEDB8_8320
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

fn flip(path: &Path, offset: u64) {
    let mut bytes = std::fs::read(path).unwrap();
    bytes[offset as usize] ^= 0x10;
    std::fs::write(path, bytes).unwrap();
}

#[test]
fn verify_names_the_damaged_file_and_offset_and_reports_a_torn_tail() {
    let (work, dir) = demo_dir();
    let segment = |root: &Path| root.join("partition-000").join("00000000000000000001.seg");

    // A flipped byte inside a record.
    let flipped = work.path().join("flipped");
    copy_dir(&dir, &flipped);
    flip(&segment(&flipped), 5_000);
    let verify = skald(&["verify", flipped.to_str().unwrap()], work.path());
    assert_eq!(verify.status.code(), Some(1));
    let text = stdout(&verify);
    assert!(
        text.contains("00000000000000000001.seg") && text.contains("byte offset"),
        "{text}"
    );
    assert!(text.contains("partition-000"), "{text}");

    // A flipped byte in the newest snapshot.
    let snapshot_damage = work.path().join("snapshot");
    copy_dir(&dir, &snapshot_damage);
    let snapshots = snapshot_damage.join("partition-001").join("snapshots");
    let newest = std::fs::read_dir(&snapshots)
        .unwrap()
        .map(|e| e.unwrap().path())
        .max()
        .unwrap();
    flip(&newest, 60);
    let verify = skald(&["verify", snapshot_damage.to_str().unwrap()], work.path());
    assert_eq!(verify.status.code(), Some(1));
    let text = stdout(&verify);
    assert!(
        text.contains(newest.file_name().unwrap().to_str().unwrap()),
        "{text}"
    );
    assert!(text.contains("offset"), "{text}");

    // A snapshot of another partition put in place of one of this one's.
    let misplaced = work.path().join("misplaced");
    copy_dir(&dir, &misplaced);
    let newest_in = |partition: &str| {
        std::fs::read_dir(misplaced.join(partition).join("snapshots"))
            .unwrap()
            .map(|e| e.unwrap().path())
            .max()
            .unwrap()
    };
    let (theirs, ours) = (newest_in("partition-001"), newest_in("partition-000"));
    // Our file's name and header LSN (so those checks pass), their content.
    let mut bytes = std::fs::read(&theirs).unwrap();
    let name_lsn: u64 = ours.file_stem().unwrap().to_str().unwrap().parse().unwrap();
    bytes[16..24].copy_from_slice(&name_lsn.to_le_bytes());
    let crc = crc32_of(&bytes[..36]);
    bytes[36..40].copy_from_slice(&crc.to_le_bytes());
    std::fs::write(&ours, &bytes).unwrap();
    let verify = skald(&["verify", misplaced.to_str().unwrap()], work.path());
    assert_eq!(verify.status.code(), Some(1));
    let text = stdout(&verify);
    assert!(text.contains("holds partition 1"), "{text}");

    // A torn tail: garbage after the last record of a log that did not
    // close cleanly.
    let torn = work.path().join("torn");
    copy_dir(&dir, &torn);
    std::fs::remove_file(torn.join("partition-000").join("CLEAN")).unwrap();
    let path = segment(&torn);
    let mut bytes = std::fs::read(&path).unwrap();
    let end = bytes.iter().rposition(|&b| b != 0).unwrap() + 1;
    let end = end.div_ceil(8) * 8;
    bytes[end..end + 40].fill(0x55);
    std::fs::write(&path, &bytes).unwrap();
    let before = snapshot_of_files(&torn);
    let verify = skald(&["verify", torn.to_str().unwrap()], work.path());
    assert_eq!(verify.status.code(), Some(1));
    let text = stdout(&verify);
    assert!(
        text.contains("torn tail") && text.contains(&format!("byte offset {end}")),
        "{text}"
    );
    let allowed = skald(
        &["verify", torn.to_str().unwrap(), "--allow-torn-tail"],
        work.path(),
    );
    assert!(allowed.status.success(), "{}", stdout(&allowed));
    assert!(stdout(&allowed).contains("warning: torn tail"));
    assert!(
        snapshot_of_files(&torn) == before,
        "verify repaired the tail"
    );
}

#[test]
fn a_second_demo_finishes_what_a_killed_one_left_and_inspection_works_while_it_runs() {
    let work = tempfile::tempdir().unwrap();
    let mut child = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_skald"))
            .args(["demo", "--sagas", "10000000"])
            .current_dir(work.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let dir = work.path().join("skald-data");
    // Inspect the running engine until it has done some work.
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        assert!(Instant::now() < deadline, "the demo wrote nothing");
        std::thread::sleep(Duration::from_millis(100));
        if !dir.join("ENGINE").exists() {
            continue;
        }
        let stats = skald(&["stats", dir.to_str().unwrap(), "--json"], work.path());
        if !stats.status.success() {
            continue; // the first segment may not exist yet
        }
        let stats: serde_json::Value = serde_json::from_str(stdout(&stats).trim()).unwrap();
        if stats["records"].as_u64().unwrap() > 20_000 {
            break;
        }
    }
    let dump = skald(
        &["dump", dir.to_str().unwrap(), "--type", "Completed"],
        work.path(),
    );
    assert!(
        dump.status.success(),
        "dump of a running engine: {}",
        stderr(&dump)
    );
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();

    let resumed = skald(&["demo", "--sagas", "0"], work.path());
    assert!(resumed.status.success(), "{}", stderr(&resumed));
    let text = stdout(&resumed);
    assert!(
        text.contains("recovered") && text.contains("finishing them"),
        "{text}"
    );
    let stats = skald(&["stats", dir.to_str().unwrap(), "--json"], work.path());
    let stats: serde_json::Value = serde_json::from_str(stdout(&stats).trim()).unwrap();
    assert_eq!(stats["sagas"]["running"], 0, "{stats}");
    let verify = skald(&["verify", dir.to_str().unwrap()], work.path());
    assert!(verify.status.success(), "{}", stdout(&verify));
}

#[test]
fn bench_prints_a_table_or_one_json_object() {
    let work = tempfile::tempdir().unwrap();
    let json = skald(
        &["bench", "--sagas", "300", "--concurrency", "16", "--json"],
        work.path(),
    );
    assert!(json.status.success(), "{}", stderr(&json));
    let report: serde_json::Value = serde_json::from_str(stdout(&json).trim()).unwrap();
    for field in [
        "sagas_per_sec",
        "events_per_sec",
        "p50_ms",
        "p99_ms",
        "rss_bytes",
    ] {
        assert!(
            report[field].as_f64().is_some_and(|v| v > 0.0),
            "{field}: {report}"
        );
    }
    assert_eq!(report["sagas"], 300);
    let table = skald(
        &[
            "bench",
            "--sagas",
            "100",
            "--steps",
            "2",
            "--concurrency",
            "1",
            "--durability",
            "os-only",
        ],
        work.path(),
    );
    assert!(table.status.success(), "{}", stderr(&table));
    assert!(stdout(&table).contains("throughput"));
    // The scratch directory is gone.
    assert_eq!(std::fs::read_dir(work.path()).unwrap().count(), 0);
}

#[test]
fn bad_input_gets_one_clear_line_and_a_non_zero_exit() {
    let work = tempfile::tempdir().unwrap();
    let cases: &[(&[&str], i32, &str)] = &[
        (&["dump", "missing"], 1, "missing: no such directory"),
        (&["stats", "."], 1, "not a Skald engine directory"),
        (&["verify", "--wat", "."], 2, "unexpected argument '--wat'"),
        (
            &["demo", "--fail-rate", "2"],
            1,
            "--fail-rate 2 is not within 0..=1",
        ),
        (
            &["bench", "--durability", "sometimes"],
            1,
            "--durability \"sometimes\"",
        ),
        (&["dump", ".", "--at", "5"], 2, "--saga"),
        (
            &["dump", ".", "--saga", "1", "--key", "k"],
            2,
            "cannot be used with",
        ),
        (&["frobnicate"], 2, "unrecognized subcommand"),
    ];
    for (args, code, needle) in cases {
        let output = skald(args, work.path());
        assert_eq!(
            output.status.code(),
            Some(*code),
            "{args:?}: {}",
            stderr(&output)
        );
        let text = stderr(&output);
        assert_eq!(text.lines().count(), 1, "{args:?}: one line, got {text:?}");
        assert!(text.contains(needle), "{args:?}: {text:?} lacks {needle:?}");
    }
    // A log directory instead of the engine directory says so.
    let (_keep, dir) = demo_dir();
    let output = skald(
        &["stats", dir.join("partition-000").to_str().unwrap()],
        work.path(),
    );
    assert_eq!(output.status.code(), Some(1));
    assert!(stderr(&output).contains("a log directory, not an engine directory"));
}

#[test]
fn every_subcommand_has_help_with_examples() {
    let work = tempfile::tempdir().unwrap();
    for command in ["demo", "dump", "verify", "stats", "bench"] {
        let output = skald(&[command, "--help"], work.path());
        assert!(output.status.success());
        assert!(stdout(&output).contains("Examples:"), "{command}");
    }
}

#[test]
fn dump_follow_prints_records_as_another_process_writes_them() {
    use std::io::{BufRead, BufReader};
    let (work, dir) = demo_dir();
    let mut follow = KillOnDrop(
        Command::new(env!("CARGO_BIN_EXE_skald"))
            .args([
                "dump",
                dir.to_str().unwrap(),
                "--follow",
                "--type",
                "Started",
                "--json",
            ])
            .current_dir(work.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .unwrap(),
    );
    let (lines_tx, lines_rx) = std::sync::mpsc::channel();
    let stdout = follow.stdout.take().unwrap();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            if lines_tx.send(line.unwrap()).is_err() {
                break;
            }
        }
    });
    // The 300 existing starts first.
    for _ in 0..300 {
        lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("existing records");
    }
    // Then what a second demo run starts.
    let more = skald(&["demo", "--sagas", "5"], work.path());
    assert!(more.status.success(), "{}", stderr(&more));
    let mut new = 0;
    while new < 5 {
        let line = lines_rx
            .recv_timeout(Duration::from_secs(30))
            .expect("--follow printed the new records");
        let value: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(value["type"], "Started");
        new += 1;
    }
    follow.kill().unwrap();
    follow.wait().unwrap();
}

/// A `skald` process serving on a loopback port, for the tests that talk
/// to it over HTTP.
struct Serving {
    child: KillOnDrop,
    lines: std::io::Lines<std::io::BufReader<std::process::ChildStdout>>,
    /// `host:port`, from the first line naming an `http://` address.
    address: String,
    /// The line that started with `until`, if one was asked for.
    line: String,
}

impl Serving {
    /// Runs `skald args` in `cwd` and reads its output up to the first line
    /// that starts with `until` (or, without one, to the address).
    fn start<A: AsRef<std::ffi::OsStr>>(
        args: impl IntoIterator<Item = A>,
        cwd: &Path,
        until: Option<&str>,
    ) -> Serving {
        use std::io::BufRead;
        let mut child = KillOnDrop(
            Command::new(env!("CARGO_BIN_EXE_skald"))
                .args(args)
                .current_dir(cwd)
                .stdout(Stdio::piped())
                .stderr(Stdio::null())
                .spawn()
                .unwrap(),
        );
        let mut lines = std::io::BufReader::new(child.stdout.take().unwrap()).lines();
        let mut address = None;
        let mut matched = String::new();
        for line in lines.by_ref() {
            let line = line.unwrap();
            if address.is_none() {
                address = line
                    .split_once("http://")
                    .and_then(|(_, rest)| rest.split_once('/'))
                    .map(|(address, _)| address.to_owned());
            }
            match until {
                Some(until) if line.starts_with(until) => {
                    matched = line;
                    break;
                }
                None if address.is_some() => break,
                _ => {}
            }
        }
        let address = match until {
            Some(until) => {
                assert!(matched.starts_with(until), "skald never printed {until:?}");
                address.unwrap_or_default()
            }
            None => address.expect("skald said where it serves"),
        };
        Serving {
            child,
            lines,
            address,
            line: matched,
        }
    }

    /// Ctrl-C: the process ends cleanly; returns what it printed after.
    fn interrupt(mut self) -> Vec<String> {
        let interrupt = Command::new("kill")
            .args(["-INT", &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(interrupt.success());
        let rest: Vec<String> = self.lines.map(|line| line.unwrap()).collect();
        assert!(self.child.wait().unwrap().success(), "{rest:?}");
        rest
    }
}

/// A child process killed (and reaped) when dropped: a test that fails
/// midway leaves no server running.
struct KillOnDrop(std::process::Child);

impl std::ops::Deref for KillOnDrop {
    type Target = std::process::Child;
    fn deref(&self) -> &std::process::Child {
        &self.0
    }
}

impl std::ops::DerefMut for KillOnDrop {
    fn deref_mut(&mut self) -> &mut std::process::Child {
        &mut self.0
    }
}

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `GET path` from `address`: (status line, body). The servers here answer
/// small responses with a length, not in chunks.
fn http_get(address: &str, path: &str) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let request = format!("GET {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    let status = head.lines().next().unwrap().to_owned();
    (status, body.to_owned())
}

#[test]
fn demo_serves_its_metrics_and_health_until_interrupted() {
    let work = tempfile::tempdir().unwrap();
    let args = ["demo", "--sagas", "500", "--metrics", "127.0.0.1:0"];
    let serving = Serving::start(args, work.path(), Some("orders done"));
    let address = serving.address.clone();
    let (status, metrics) = http_get(&address, "/metrics");
    assert!(status.contains("200"), "{status}");
    assert!(
        metrics.contains("skald_sagas_started_total{definition=\"order\"} 500\n"),
        "{metrics}"
    );
    let (status, body) = http_get(&address, "/api/health/ready");
    assert!(status.contains("200"), "{status}: {body}");
    let health: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(health["ready"], true, "{body}");
    let rest = serving.interrupt();
    assert!(rest.iter().any(|l| l.contains("500 started")), "{rest:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn demo_exports_a_trace_per_saga_over_otlp() {
    use skald_tests::collector::Collector;
    let collector = Collector::otlp().await;
    let work = tempfile::tempdir().unwrap();
    let endpoint = collector.base_url();
    let output = tokio::task::spawn_blocking(move || {
        let output = skald(
            &[
                "demo",
                "--sagas",
                "40",
                "--fail-rate",
                "0.25",
                "--otlp",
                &endpoint,
            ],
            work.path(),
        );
        drop(work);
        output
    })
    .await
    .unwrap();
    assert!(output.status.success(), "{}", stderr(&output));
    assert!(
        stdout(&output).contains("traces to "),
        "{}",
        stdout(&output)
    );
    // The demo shuts its engine down, which exports every span.
    let spans = collector.spans();
    let roots: Vec<_> = spans.iter().filter(|s| s.name == "saga order").collect();
    assert_eq!(roots.len(), 40, "a root span per saga");
    for root in &roots {
        assert_eq!(root.parent_span_id, None);
        let children: Vec<_> = spans
            .iter()
            .filter(|s| s.trace_id == root.trace_id && s.span_id != root.span_id)
            .collect();
        assert!(!children.is_empty());
        for child in &children {
            assert_eq!(child.parent_span_id.as_deref(), Some(root.span_id.as_str()));
        }
        let names: Vec<&str> = children.iter().map(|s| s.name.as_str()).collect();
        match root.attribute("skald.saga.outcome") {
            "completed" => assert!(names.contains(&"step confirm-order"), "{names:?}"),
            "compensated" => assert!(names.contains(&"compensate create-order"), "{names:?}"),
            other => panic!("outcome {other}"),
        }
    }
    let declined = roots
        .iter()
        .filter(|r| r.attribute("skald.saga.outcome") == "compensated")
        .count();
    assert!(declined > 0, "a quarter of the cards are declined");
}

#[test]
fn demo_refuses_a_bad_trace_endpoint_or_ratio() {
    let work = tempfile::tempdir().unwrap();
    let output = skald(
        &["demo", "--sagas", "1", "--otlp", "localhost:4318"],
        work.path(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("expected an http:// or https:// URL"),
        "{}",
        stderr(&output)
    );
    let output = skald(
        &[
            "demo",
            "--sagas",
            "1",
            "--otlp",
            "http://127.0.0.1:1",
            "--trace-sample",
            "2",
        ],
        work.path(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--trace-sample 2 is not within 0..=1"),
        "{}",
        stderr(&output)
    );
}

/// `method path` on `address` with an API key and a JSON body: (status
/// line, body).
fn http_call(
    address: &str,
    method: &str,
    path: &str,
    key: &str,
    body: Option<&str>,
) -> (String, String) {
    use std::io::{Read, Write};
    let mut stream = std::net::TcpStream::connect(address).unwrap();
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let body = body.unwrap_or("");
    let request = format!(
        "{method} {path} HTTP/1.1\r\nHost: {address}\r\nConnection: close\r\nX-Api-Key: {key}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    stream.write_all(request.as_bytes()).unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).unwrap();
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    (head.lines().next().unwrap().to_owned(), body.to_owned())
}

#[test]
fn demo_serves_the_api_with_keys_and_audits_what_it_refuses() {
    let work = tempfile::tempdir().unwrap();
    let mut entries = Vec::new();
    let mut keys = Vec::new();
    for (who, role) in [("vera", "viewer"), ("otto", "operator")] {
        let made = skald(
            &["key", "new", "--principal", who, "--role", role],
            work.path(),
        );
        assert!(made.status.success(), "{}", stderr(&made));
        let text = stdout(&made);
        let key = text
            .lines()
            .find_map(|l| l.strip_prefix("key    "))
            .unwrap()
            .to_owned();
        let entry = text
            .lines()
            .find_map(|l| l.strip_prefix("entry  "))
            .unwrap()
            .to_owned();
        keys.push(key);
        entries.push(entry);
    }
    let keys_file = work.path().join("keys.json");
    std::fs::write(&keys_file, format!("{{\"keys\": [{}]}}", entries.join(","))).unwrap();
    let keys_file = keys_file.to_str().unwrap();
    let args = [
        "demo",
        "--sagas",
        "30",
        "--serve",
        "127.0.0.1:0",
        "--keys",
        keys_file,
    ];
    let serving = Serving::start(args, work.path(), Some("orders done"));
    let address = serving.address.clone();
    let (status, body) = http_call(&address, "GET", "/api/sagas?limit=5", &keys[0], None);
    assert!(status.contains("200"), "{status}: {body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let first = page["sagas"][0]["id"].as_u64().expect("a saga");
    let cancel = r#"{"reason": "testing the viewer"}"#;
    let path = format!("/api/sagas/{first}/cancel");
    let (status, body) = http_call(&address, "POST", &path, &keys[0], Some(cancel));
    assert!(status.contains("403"), "{status}: {body}");
    let (status, body) = http_call(&address, "POST", &path, &keys[1], Some(cancel));
    assert!(status.contains("200"), "{status}: {body}");
    let (status, _) = http_call(&address, "GET", "/api/sagas", "not-a-key", None);
    assert!(status.contains("401"), "{status}");
    serving.interrupt();

    let audit = skald(&["audit", "skald-data", "--json"], work.path());
    assert!(audit.status.success(), "{}", stderr(&audit));
    let entries = json_lines(&stdout(&audit));
    let seen: Vec<(String, bool)> = entries
        .iter()
        .map(|e| {
            let entry = &e["entry"];
            (
                entry["principal"].as_str().unwrap().to_owned(),
                entry["allowed"].as_bool().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        seen,
        [("vera".to_owned(), false), ("otto".to_owned(), true)]
    );
    let text = stdout(&skald(&["audit", "skald-data"], work.path()));
    assert!(text.contains("vera (viewer)  cancel saga-"), "{text}");
    assert!(
        text.contains("DENIED (vera (role viewer) may not cancel)"),
        "{text}"
    );
}

#[test]
fn serving_an_open_address_without_keys_is_refused() {
    let work = tempfile::tempdir().unwrap();
    let output = skald(
        &["demo", "--sagas", "1", "--serve", "0.0.0.0:0"],
        work.path(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("refusing to serve 0.0.0.0:0 without API keys"),
        "{}",
        stderr(&output)
    );
    let output = skald(
        &["key", "new", "--principal", "x", "--role", "root"],
        work.path(),
    );
    assert!(!output.status.success());
    assert!(
        stderr(&output).contains("--role \"root\""),
        "{}",
        stderr(&output)
    );
}

#[test]
fn serve_opens_a_directory_for_its_dashboard() {
    let work = tempfile::tempdir().unwrap();
    let demo = skald(&["demo", "--sagas", "20"], work.path());
    assert!(demo.status.success(), "{}", stderr(&demo));
    let args = ["serve", "skald-data", "--listen", "127.0.0.1:0"];
    let serving = Serving::start(args, work.path(), None);
    let address = serving.address.clone();
    let (status, body) = http_get(&address, "/api/sagas?limit=100");
    assert!(status.contains("200"), "{status}: {body}");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(page["sagas"].as_array().unwrap().len(), 20);
    let (status, page) = http_get(&address, "/dashboard");
    assert!(
        status.contains("200") && page.contains("<title>Skald</title>"),
        "{status}"
    );
    serving.interrupt();
    let lonely = skald(&["demo", "--sagas", "1", "--read-only"], work.path());
    assert!(
        stderr(&lonely).contains("apply to --serve"),
        "{}",
        stderr(&lonely)
    );
}

#[test]
fn serve_follows_a_directory_a_live_engine_holds_read_only() {
    let work = tempfile::tempdir().unwrap();
    // The demo keeps starting orders (ten a second) while it serves.
    let args = ["demo", "--sagas", "5", "--serve", "127.0.0.1:0"];
    let live = Serving::start(args, work.path(), Some("orders done"));
    let args = ["serve", "skald-data", "--listen", "127.0.0.1:0"];
    let follower = Serving::start(args, work.path(), None);
    let address = follower.address.clone();
    let count = |address: &str| {
        let (status, body) = http_get(address, "/api/sagas?limit=1000");
        assert!(status.contains("200"), "{status}: {body}");
        let page: serde_json::Value = serde_json::from_str(&body).unwrap();
        page["sagas"].as_array().unwrap().len()
    };
    let first = count(&address);
    assert!(first >= 5, "the follower sees what was there: {first}");
    // What the live engine records shows up on the follower by itself.
    let deadline = std::time::Instant::now() + Duration::from_secs(60);
    while count(&address) < first + 5 {
        assert!(
            std::time::Instant::now() < deadline,
            "the follower saw no new saga"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let (status, body) = http_get(&address, "/api/sagas?limit=1");
    let page: serde_json::Value = serde_json::from_str(&body).unwrap();
    let id = page["sagas"][0]["id"].as_u64().unwrap();
    let (status_view, view) = http_get(&address, &format!("/api/sagas/{id}"));
    assert!(
        status.contains("200") && status_view.contains("200"),
        "{view}"
    );
    // It writes nothing: an action is refused, read-only.
    let cancel = r#"{"reason": "from the follower"}"#;
    let path = format!("/api/sagas/{id}/cancel");
    let (status, body) = http_call(&address, "POST", &path, "", Some(cancel));
    assert!(
        status.contains("403") && body.contains("read_only"),
        "{status}: {body}"
    );
    let (_, session) = http_get(&address, "/api/session");
    assert!(session.contains("\"read_only\":true"), "{session}");
    follower.interrupt();
    live.interrupt();
    // The follower left no trace: the directory verifies.
    let verify = skald(&["verify", "skald-data"], work.path());
    assert!(verify.status.success(), "{}", stderr(&verify));
}

#[test]
fn a_replica_holds_what_the_leader_acknowledged_when_it_is_killed_and_takes_over() {
    let work = tempfile::tempdir().unwrap();
    // The leader runs 100 orders in replicated:1 (none moves on before the
    // replica has it), then keeps starting orders until it is killed.
    let args = [
        "demo",
        "--sagas",
        "100",
        "--concurrency",
        "16",
        "--serve",
        "127.0.0.1:0",
        "--replicate",
        "127.0.0.1:0",
        "--replication",
        "replicated:1",
    ];
    let mut leader = Serving::start(args, work.path(), Some("replicas at "));
    let replicate = leader.line["replicas at ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let replica = Serving::start(
        ["replica", "replica-data", "--leader", &replicate],
        work.path(),
        Some("replica "),
    );
    // Every order is acknowledged only once the replica has it.
    let done = leader
        .lines
        .by_ref()
        .map(|line| line.unwrap())
        .find(|line| line.starts_with("orders done"));
    assert!(done.is_some(), "the leader finished its orders");
    // Asked at its replication address, the leader lists the replica of
    // every partition, connected, with its position.
    let asked = skald(&["replicas", "show", &replicate, "--json"], work.path());
    assert!(asked.status.success(), "{}", stderr(&asked));
    let asked: serde_json::Value = serde_json::from_str(&stdout(&asked)).unwrap();
    assert_eq!(asked["mode"], "replicated:1", "{asked}");
    let partitions = asked["partitions"].as_array().unwrap();
    assert!(!partitions.is_empty(), "{asked}");
    for partition in partitions {
        assert_eq!(partition["leads"], true, "{asked}");
        let replica = &partition["replicas"][0];
        // Its name: its directory, as it was given (a path).
        let name = replica["name"].as_str().unwrap();
        assert!(name.ends_with("replica-data"), "{asked}");
        assert_eq!(replica["connected"], true, "{asked}");
        assert!(replica["acked"].as_u64().unwrap() > 1, "{asked}");
    }
    let text = skald(&["replicas", "show", &replicate], work.path());
    assert!(
        stdout(&text).contains("replica-data: connected"),
        "{}",
        stdout(&text)
    );
    // `stats --leader`: the replica's directory against its leader, with
    // the lag of every partition, in records, and the leader's view of
    // its replicas (records and milliseconds).
    let lag = skald(
        &["stats", "replica-data", "--leader", &replicate, "--json"],
        work.path(),
    );
    assert!(lag.status.success(), "{}", stderr(&lag));
    let lag: serde_json::Value = serde_json::from_str(&stdout(&lag)).unwrap();
    let lags = lag["replication"]["partitions"].as_array().unwrap();
    assert_eq!(lags.len(), partitions.len(), "{lag}");
    for partition in lags {
        let (end, leader_end) = (
            partition["end"].as_u64().unwrap(),
            partition["leader_end"].as_u64().unwrap(),
        );
        assert_eq!(
            partition["lag_records"].as_u64(),
            Some(leader_end.saturating_sub(end)),
            "{lag}"
        );
        assert!(partition["replicas"][0]["lag_ms"].is_u64(), "{lag}");
    }
    let text = skald(
        &["stats", "replica-data", "--leader", &replicate],
        work.path(),
    );
    assert!(
        stdout(&text).contains("against the leader at"),
        "{}",
        stdout(&text)
    );
    let nobody = skald(
        &["stats", "replica-data", "--leader", "127.0.0.1:1"],
        work.path(),
    );
    assert!(!nobody.status.success());
    assert!(
        stderr(&nobody).contains("asking the leader at 127.0.0.1:1"),
        "{}",
        stderr(&nobody)
    );
    leader.child.kill().unwrap();
    leader.child.wait().unwrap();
    let positions = replica.interrupt();
    assert!(
        positions
            .iter()
            .any(|l| l.starts_with("partition 0: durable to LSN")),
        "{positions:?}"
    );

    let verify = skald(&["verify", "replica-data"], work.path());
    assert!(verify.status.success(), "{}", stderr(&verify));
    let stats = skald(&["stats", "replica-data", "--json"], work.path());
    assert!(stats.status.success(), "{}", stderr(&stats));
    let stats: serde_json::Value = serde_json::from_str(&stdout(&stats)).unwrap();
    let finished = ["completed", "compensated"]
        .iter()
        .map(|s| stats["sagas"][s].as_u64().unwrap())
        .sum::<u64>();
    assert!(
        finished >= 100,
        "the replica holds {finished} finished orders: {stats}"
    );

    // Record for record: the replica's log is the leader's, up to what the
    // replica holds (the leader may have written more before it died).
    for partition in 0..stats["partitions"].as_array().unwrap().len() {
        let path = |dir: &str| {
            work.path()
                .join(dir)
                .join(format!("partition-{partition:03}"))
        };
        let read_only = skald_log::LogOptions::default().read_only(true);
        let leader_log = skald_log::Log::open(path("skald-data"), read_only.clone()).unwrap();
        let replica_log = skald_log::Log::open(path("replica-data"), read_only).unwrap();
        let from = leader_log.first_lsn().max(replica_log.first_lsn());
        let (mut a, mut b) = (
            leader_log.read_from(from).unwrap(),
            replica_log.read_from(from).unwrap(),
        );
        let mut compared = 0;
        while let Some(record) = b.read_next().unwrap() {
            let theirs = a
                .read_next()
                .unwrap()
                .expect("the leader holds what the replica holds");
            assert_eq!((record.lsn, record.bytes), (theirs.lsn, theirs.bytes));
            compared += 1;
        }
        assert!(compared > 0, "partition {partition}: nothing to compare");
    }

    // Failover by hand: the replica leads from a newer epoch, and the old
    // leader's directory follows it, cut back to what it never had.
    let promote = skald(&["replicas", "promote", "replica-data"], work.path());
    assert!(promote.status.success(), "{}", stderr(&promote));
    assert!(
        stdout(&promote).contains("leads from epoch 1"),
        "{}",
        stdout(&promote)
    );
    let args = [
        "demo",
        "--data",
        "replica-data",
        "--sagas",
        "20",
        "--replicate",
        "127.0.0.1:0",
        "--replication",
        "replicated:1",
    ];
    let mut leader = Serving::start(args, work.path(), Some("replicas at "));
    let replicate = leader.line["replicas at ".len()..]
        .split_whitespace()
        .next()
        .unwrap()
        .to_owned();
    let old = Serving::start(
        ["replica", "skald-data", "--leader", &replicate],
        work.path(),
        Some("replica "),
    );
    let done = leader
        .lines
        .by_ref()
        .map(|line| line.unwrap())
        .find(|line| line.starts_with("orders done"));
    assert!(done.is_some(), "the promoted leader finished its orders");
    old.interrupt();
    leader.interrupt();
    for dir in ["skald-data", "replica-data"] {
        let verify = skald(&["verify", dir], work.path());
        assert!(verify.status.success(), "{dir}: {}", stderr(&verify));
        let show = skald(&["replicas", "show", dir, "--json"], work.path());
        let show: serde_json::Value = serde_json::from_str(&stdout(&show)).unwrap();
        for partition in show["partitions"].as_array().unwrap() {
            assert_eq!(partition["epoch"], 1, "{dir}: {partition}");
        }
    }
    let stats = skald(&["stats", "skald-data", "--json"], work.path());
    let stats: serde_json::Value = serde_json::from_str(&stdout(&stats)).unwrap();
    let finished = ["completed", "compensated"]
        .iter()
        .map(|s| stats["sagas"][s].as_u64().unwrap())
        .sum::<u64>();
    assert!(
        finished >= 120,
        "the old leader's directory holds {finished} finished orders"
    );
}
