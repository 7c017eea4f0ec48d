//! A real full disk, not a simulated one: a size-limited tmpfs and a
//! loop-mounted ext4 image, mounted by the test (it needs root; where
//! mounting is impossible it says why and passes without running).
//!
//! Writing through a memory map of a file whose blocks the file system has
//! not reserved faults with SIGBUS when the disk is full, killing the host.
//! Every segment's blocks must be reserved, and ENOSPC returned, before a
//! page is touched through a map. So here the engine must fail-stop with
//! an error that says the disk is full, and after space is freed, reopen and
//! finish every saga it acknowledged.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use parking_lot::Mutex;
use skald_engine::{Engine, EngineError, EngineOptions, Saga, SagaId, SagaStatus, Step, StepError};
use skald_log::LogError;

const ENOSPC: i32 = 28;
const SEGMENT_SIZE_BYTES: u64 = 1 << 20;
const BALLAST_BYTES: usize = 3 << 20;

/// A small file system mounted for one test, unmounted when dropped.
struct SmallFs {
    mount: PathBuf,
    _scratch: tempfile::TempDir,
}

impl SmallFs {
    /// A tmpfs of `size_mib`, or why it cannot be had.
    fn tmpfs(size_mib: u64) -> Result<SmallFs, String> {
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let mount = scratch.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        let size = format!("size={size_mib}m");
        run(
            "mount",
            &["-t", "tmpfs", "-o", &size, "tmpfs", path(&mount)],
        )?;
        Ok(SmallFs {
            mount,
            _scratch: scratch,
        })
    }

    /// An ext4 file system of `size_mib` in an image file, loop-mounted.
    fn ext4(size_mib: u64) -> Result<SmallFs, String> {
        let scratch = tempfile::tempdir().map_err(|e| e.to_string())?;
        let image = scratch.path().join("disk.img");
        let file = std::fs::File::create(&image).map_err(|e| e.to_string())?;
        file.set_len(size_mib << 20).map_err(|e| e.to_string())?;
        run("mkfs.ext4", &["-q", "-F", path(&image)])?;
        let mount = scratch.path().join("mnt");
        std::fs::create_dir(&mount).map_err(|e| e.to_string())?;
        run("mount", &["-o", "loop", path(&image), path(&mount)])?;
        Ok(SmallFs {
            mount,
            _scratch: scratch,
        })
    }
}

impl Drop for SmallFs {
    fn drop(&mut self) {
        let _ = run("umount", &["-l", path(&self.mount)]);
    }
}

fn path(path: &Path) -> &str {
    path.to_str().expect("a UTF-8 temporary path")
}

fn run(program: &str, args: &[&str]) -> Result<(), String> {
    let output = Command::new(program)
        .args(args)
        .output()
        .map_err(|e| format!("{program}: {e}"))?;
    if output.status.success() {
        return Ok(());
    }
    let stderr = String::from_utf8_lossy(&output.stderr);
    Err(format!("{program} {}: {}", args.join(" "), stderr.trim()))
}

fn saga() -> Saga<u64> {
    let step = |_ctx| async { Ok::<_, StepError>(()) };
    Saga::<u64>::new("plain")
        .step(Step::new("a", step).compensate(|_ctx| async { Ok(()) }))
        .step(Step::new("b", step).pivot())
}

async fn open(dir: &Path) -> Result<Engine, EngineError> {
    let options = EngineOptions::default()
        .partitions(2)
        .segment_size_bytes(SEGMENT_SIZE_BYTES);
    Engine::builder(dir)
        .options(options)
        .register(saga())?
        .open()
        .await
}

/// Starts sagas from 16 tasks until the engine refuses; returns the
/// acknowledged ids and the first error.
async fn fill(engine: &Engine) -> (BTreeSet<SagaId>, EngineError) {
    let acknowledged = Arc::new(Mutex::new(BTreeSet::new()));
    let first_error = Arc::new(Mutex::new(None));
    let tasks: Vec<_> = (0..16u64)
        .map(|task| {
            let (engine, acknowledged) = (engine.clone(), acknowledged.clone());
            let first_error = first_error.clone();
            tokio::spawn(async move {
                for i in 0.. {
                    match engine.start("plain", &(task << 32 | i)).await {
                        Ok(id) => drop(acknowledged.lock().insert(id)),
                        Err(error) => {
                            first_error.lock().get_or_insert(error);
                            return;
                        }
                    }
                }
            })
        })
        .collect();
    for task in tasks {
        task.await.expect("a starter panicked");
    }
    let error = first_error.lock().take().expect("the disk filled up");
    let acknowledged = acknowledged.lock().clone();
    (acknowledged, error)
}

/// Whether `error` is the fail-stop of a full disk, naming a path on it.
fn says_disk_full(error: &EngineError, mount: &Path) -> bool {
    let EngineError::Log(log) = error else {
        return false;
    };
    match log.as_ref() {
        LogError::FailStopped { path, source, .. } => {
            source.raw_os_error() == Some(ENOSPC) && path.starts_with(mount)
        }
        _ => false,
    }
}

async fn fill_free_and_recover(fs: SmallFs) {
    let ballast = fs.mount.join("ballast");
    std::fs::write(&ballast, vec![0xA5u8; BALLAST_BYTES]).unwrap();
    let dir = fs.mount.join("engine");
    let engine = open(&dir)
        .await
        .expect("the engine opens on the small disk");
    let (acknowledged, error) = fill(&engine).await;
    assert!(
        !acknowledged.is_empty(),
        "some sagas fit before the disk filled"
    );
    assert!(says_disk_full(&error, &fs.mount), "{error}");
    assert!(
        error.to_string().contains("No space left on device"),
        "{error}"
    );
    let _ = engine.shutdown().await;
    drop(engine);
    // Space freed: every acknowledged saga finishes.
    std::fs::remove_file(&ballast).unwrap();
    let engine = open(&dir)
        .await
        .expect("the engine reopens once space is free");
    for id in &acknowledged {
        let view = engine
            .wait(*id)
            .await
            .unwrap_or_else(|e| panic!("{id}: {e}"));
        assert_eq!(view.status, SagaStatus::Completed, "{id}");
    }
    assert!(engine.check_consistency().await.unwrap().is_consistent());
    engine.shutdown().await.unwrap();
    println!(
        "full disk: {} sagas acknowledged before ENOSPC, all finished after space was freed",
        acknowledged.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_tmpfs_fail_stops_and_a_reopen_after_freeing_space_finishes_every_saga() {
    match SmallFs::tmpfs(8) {
        Ok(fs) => fill_free_and_recover(fs).await,
        Err(why) => println!("SKIPPED: cannot mount a tmpfs here ({why}); run as root"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_ext4_disk_fail_stops_and_a_reopen_after_freeing_space_finishes_every_saga() {
    match SmallFs::ext4(16) {
        Ok(fs) => fill_free_and_recover(fs).await,
        Err(why) => println!("SKIPPED: cannot loop-mount ext4 here ({why}); run as root"),
    }
}

/// Every partition's newest segment file, the one a reopen writes into.
fn newest_segments(dir: &Path) -> Vec<PathBuf> {
    (0..2)
        .map(|partition| {
            let partition = skald_engine::inspect::partition_dir(dir, partition);
            let mut segments: Vec<PathBuf> = std::fs::read_dir(&partition)
                .unwrap()
                .map(|entry| entry.unwrap().path())
                .filter(|path| path.extension().is_some_and(|e| e == "seg"))
                .collect();
            segments.sort();
            segments.pop().expect("a segment")
        })
        .collect()
}

/// Gives back the blocks of `path` from `from` to its end, keeping its
/// size: the file a copy by a tool that makes files sparse would leave.
fn punch_hole(path: &Path, from: u64) {
    use std::os::fd::AsRawFd;
    let file = std::fs::OpenOptions::new().write(true).open(path).unwrap();
    let length = file.metadata().unwrap().len() - from;
    let mode = libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE;
    // SAFETY: a plain syscall on a file descriptor the test owns.
    let result = unsafe { libc::fallocate(file.as_raw_fd(), mode, from as i64, length as i64) };
    assert_eq!(
        result,
        0,
        "punch a hole: {}",
        std::io::Error::last_os_error()
    );
}

/// Fills the file system under `mount` with one file, to the last block.
fn fill_disk(mount: &Path) -> PathBuf {
    use std::io::Write;
    let path = mount.join("ballast");
    let mut file = std::fs::File::create(&path).unwrap();
    let block = vec![0x5Au8; 64 << 10];
    loop {
        if let Err(error) = file.write_all(&block) {
            assert_eq!(error.raw_os_error(), Some(ENOSPC), "{error}");
            break;
        }
    }
    // What is left is less than a block; take the bytes one by one.
    while file.write_all(&[0x5A]).is_ok() {}
    path
}

/// A segment with holes (copied to this disk by a sparse copy) would fault
/// with SIGBUS on the first record written into a hole once the disk is
/// full. The reopen reserves its blocks first: a full disk is an error that
/// names the segment, and once space is freed every saga finishes.
async fn sparse_segment_on_a_full_disk(fs: SmallFs) {
    let dir = fs.mount.join("engine");
    let engine = open(&dir).await.expect("the engine opens");
    let mut acknowledged = BTreeSet::new();
    for i in 0..40u64 {
        acknowledged.insert(engine.start("plain", &i).await.unwrap());
    }
    engine.shutdown().await.unwrap();
    drop(engine);
    let segments = newest_segments(&dir);
    for segment in &segments {
        punch_hole(segment, SEGMENT_SIZE_BYTES / 2);
    }
    let ballast = fill_disk(&fs.mount);
    let error = open(&dir).await.expect_err("no block for the holes");
    let message = error.to_string();
    assert!(message.contains("No space left on device"), "{message}");
    assert!(
        segments.iter().any(|s| message.contains(path(s))),
        "names the segment: {message}"
    );
    std::fs::remove_file(&ballast).unwrap();
    let engine = open(&dir).await.expect("the engine reopens");
    for id in &acknowledged {
        let view = engine.wait(*id).await.unwrap();
        assert_eq!(view.status, SagaStatus::Completed, "{id}");
    }
    let more = engine.start("plain", &99u64).await.unwrap();
    assert_eq!(
        engine.wait(more).await.unwrap().status,
        SagaStatus::Completed
    );
    engine.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sparse_segment_on_a_full_ext4_disk_is_refused_at_reopen_not_faulted() {
    match SmallFs::ext4(16) {
        Ok(fs) => sparse_segment_on_a_full_disk(fs).await,
        Err(why) => println!("SKIPPED: cannot loop-mount ext4 here ({why}); run as root"),
    }
}
