//! Shipping one partition's log to one replica: whole batches as the
//! leader's segments hold them, never mixing epochs in a frame, a
//! heartbeat on an idle connection, every write bounded in time.

use std::sync::atomic::{AtomicU64, Ordering};

use skald_log::format::RECORD_FLAG_BATCH_CONTINUES;

use crate::leader::{HEARTBEAT, SHIPMENT_BYTES_MAX, SILENCE_MAX};
use crate::wire::{write_frame, Frame, WireError};

/// Aborts a task when dropped (the ack reader of a connection that ended).
pub(crate) struct AbortOnDrop(pub(crate) tokio::task::JoinHandle<Result<(), WireError>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Whole batches waiting to go (or the batch being read), all of one
/// epoch.
struct Shipment {
    bytes: Vec<u8>,
    count: u32,
    epoch: u64,
    first_lsn: u64,
}

/// Ships whole batches from `tailer` until the log closes or the replica's
/// side (`acks`) ends; a frame never mixes epochs; an idle connection gets
/// a heartbeat.
pub(crate) async fn ship_records(
    tailer: &mut skald_log::Tailer,
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    mut acks: AbortOnDrop,
    shipped: &AtomicU64,
) -> Result<(), WireError> {
    let mut pending = Shipment {
        bytes: Vec::new(),
        count: 0,
        epoch: 0,
        first_lsn: tailer.next_lsn(),
    };
    // The batch being read, and its epoch.
    let mut batch = Shipment {
        bytes: Vec::new(),
        count: 0,
        epoch: 0,
        first_lsn: 0,
    };
    loop {
        let ended = tokio::select! {
            record = tailer.next() => {
                let record = match record {
                    Ok(record) => record,
                    Err(skald_log::LogError::Closed) => return Ok(()),
                    Err(error) => return Err(std::io::Error::other(error).into()),
                };
                batch.bytes.extend_from_slice(record.bytes);
                batch.count += 1;
                batch.epoch = record.epoch;
                let flags = u16::from_le_bytes([record.bytes[20], record.bytes[21]]);
                flags & RECORD_FLAG_BATCH_CONTINUES == 0
            }
            () = tokio::time::sleep(HEARTBEAT), if batch.count == 0 => {
                let beat = Frame::Records {
                    first_lsn: pending.first_lsn,
                    count: 0,
                    leader_end: tailer.visible_lsn(),
                    epoch: pending.epoch,
                    bytes: Vec::new(),
                };
                write_within(writer, &beat).await?;
                continue;
            }
            ended = &mut acks.0 => {
                return match ended {
                    Ok(result) => result,
                    Err(_) => Err(WireError::Malformed("the ack reader stopped")),
                };
            }
        };
        if !ended {
            continue;
        }
        // A batch of another epoch, or one that would take the shipment
        // over its size, goes in the next frame.
        let other_epoch = pending.count > 0 && pending.epoch != batch.epoch;
        if other_epoch
            || (pending.count > 0 && pending.bytes.len() + batch.bytes.len() > SHIPMENT_BYTES_MAX)
        {
            send(writer, tailer, &mut pending, shipped).await?;
        }
        pending.bytes.append(&mut batch.bytes);
        pending.count += std::mem::take(&mut batch.count);
        pending.epoch = batch.epoch;
        if pending.bytes.len() >= SHIPMENT_BYTES_MAX || !tailer.has_next() {
            send(writer, tailer, &mut pending, shipped).await?;
        }
    }
}

/// Sends the pending batches; the next shipment starts after them.
async fn send(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    tailer: &skald_log::Tailer,
    pending: &mut Shipment,
    shipped: &AtomicU64,
) -> Result<(), WireError> {
    let end = pending.first_lsn + u64::from(pending.count);
    // Acks up to here are believable from now on.
    shipped.store(end, Ordering::Release);
    let frame = Frame::Records {
        first_lsn: pending.first_lsn,
        count: std::mem::take(&mut pending.count),
        leader_end: tailer.visible_lsn(),
        epoch: pending.epoch,
        bytes: std::mem::take(&mut pending.bytes),
    };
    pending.first_lsn = end;
    write_within(writer, &frame).await
}

/// Writes a frame, or gives up after [`SILENCE_MAX`]: a replica that
/// takes nothing for that long (its link gone, its socket full) ends the
/// connection, which lets go of the log.
async fn write_within(
    writer: &mut tokio::net::tcp::OwnedWriteHalf,
    frame: &Frame,
) -> Result<(), WireError> {
    match tokio::time::timeout(SILENCE_MAX, write_frame(writer, frame)).await {
        Ok(written) => written,
        Err(_) => Err(WireError::Malformed(
            "the replica took nothing for too long",
        )),
    }
}
