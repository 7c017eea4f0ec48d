//! For tools that read an engine directory without running it (the `skald`
//! CLI, tests, benchmarks): where things are, how snapshots are encoded,
//! and the same recovery and fold the engine runs at open, so that a tool
//! rebuilds state exactly as the engine does.
//!
//! A host embedding the engine does not need this module.

pub use crate::dir::{
    bump_log_generation, create_engine_dir, log_generation, partition_count, partition_dir,
    GENERATION_FILE,
};
pub use crate::engine::partition_of_key;
pub use crate::recovery::{
    decode_checked, decode_snapshot, encode_partition, encode_snapshot, fold_log, recover,
    snapshot_dir, Folded, PartitionSnapshot, PayloadError, Recovered, SNAPSHOT_DIR,
    SNAPSHOT_PAYLOAD_VERSION, SNAPSHOT_PAYLOAD_VERSION_1, SNAPSHOT_PAYLOAD_VERSION_2,
};
/// The pure model beneath the engine: states, the fold, `decide`, the
/// codec.
pub use skald_model as model;
