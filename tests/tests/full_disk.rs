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
