//! The replication protocol, version 1 (FORMAT.md, "Replication"): frames
//! over one TCP connection per partition, a replica asking, its leader
//! shipping.
//!
//! Every frame is a little-endian `u32` length (of what follows), a type
//! byte and its body. A replica opens with `Hello`; the leader answers
//! `Welcome` or `Refused`, then sends `Records` (whole batches, as its
//! segments hold them) while the replica answers each with an `Ack` of
//! what it holds durable.

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The protocol version this build speaks.
pub const PROTOCOL_VERSION: u16 = 1;
/// The first bytes of every `Hello`.
pub const MAGIC: [u8; 8] = *b"SKALDREP";
/// A frame from a leader larger than this is refused: a shipment is at
/// most 1 MiB of whole batches, or one larger batch, and a batch fits half
/// a segment (segments are at most 4 GiB).
pub const FRAME_BYTES_MAX: u32 = (2 << 30) + (64 << 10);
/// A frame from a replica (a hello, an ack) larger than this is refused:
/// nothing is allocated for a peer not yet known.
pub const REPLICA_FRAME_BYTES_MAX: u32 = 64 << 10;

/// Why a leader refused a replica (`Refused`'s code).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RefusalCode {
    /// It speaks another protocol version.
    Version = 1,
    /// No such partition.
    Partition = 2,
    /// The records it asks from are no longer in the leader's log (the
    /// leader's snapshots covered them): it needs a snapshot first.
    Truncated = 3,
    /// It asks from past the leader's end: it holds records the leader
    /// does not.
    Ahead = 4,
    /// The leader is shutting down.
    ShuttingDown = 5,
    /// The replica's last record is not the leader's record at that LSN:
    /// their histories differ.
    Diverged = 6,
    /// The replica has seen a newer epoch than the leader's: this leader
    /// was deposed, and the replica follows it no more.
    Stale = 7,
    /// This host does not lead that partition now (another host does, or
    /// an election is under way): ask the partition's leader.
    NotLeader = 8,
}

impl RefusalCode {
    fn from_u16(code: u16) -> Option<RefusalCode> {
        Some(match code {
            1 => RefusalCode::Version,
            2 => RefusalCode::Partition,
            3 => RefusalCode::Truncated,
            4 => RefusalCode::Ahead,
            5 => RefusalCode::ShuttingDown,
            6 => RefusalCode::Diverged,
            7 => RefusalCode::Stale,
            8 => RefusalCode::NotLeader,
            _ => return None,
        })
    }
}

/// One frame.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// Replica → leader: which partition, from which LSN, who asks.
    Hello {
        /// Its protocol version.
        version: u16,
        /// The partition it follows.
        partition: u16,
        /// The LSN it wants first: its durable end (0: only asking for the
        /// partition count, in the `Welcome`).
        from_lsn: u64,
        /// The first LSN its log holds (equal to `from_lsn`: it holds no
        /// record).
        first_lsn: u64,
        /// The checksum of its record at `from_lsn - 1` (0 for an empty
        /// log): the leader's record there must have the same.
        last_crc: u32,
        /// The epoch its last record was written in (0 for an empty log).
        last_epoch: u64,
        /// The newest epoch its log has begun (it follows no leader of an
        /// older one).
        seen_epoch: u64,
        /// Its name (stable across its restarts).
        name: String,
    },
    /// Leader → replica: accepted; the leader's partition count and log.
    Welcome {
        /// The protocol version spoken.
        version: u16,
        /// The leader's partition count.
        partitions: u16,
        /// The oldest LSN its log holds.
        first_lsn: u64,
        /// Its visible end.
        next_lsn: u64,
        /// Its epoch.
        epoch: u64,
    },
    /// Leader → replica: refused, and why.
    Refused {
        /// Why, for a program.
        code: RefusalCode,
        /// Why, for a person.
        message: String,
    },
    /// Leader → replica: whole batches from `first_lsn`, and the leader's
    /// visible end when they were sent.
    Records {
        /// The first record's LSN.
        first_lsn: u64,
        /// How many records.
        count: u32,
        /// The leader's visible end when sent (for the replica's lag).
        leader_end: u64,
        /// The epoch every one of these records was written in.
        epoch: u64,
        /// The records as the leader's segment holds them.
        bytes: Vec<u8>,
    },
    /// Replica → leader: every record below `durable_end` is durable here.
    Ack {
        /// The replica's durable end.
        durable_end: u64,
    },
    /// Leader → replica, instead of `Welcome`, then close: the replica
    /// needs the leader's newest snapshot (the records it asks for were
    /// removed, or where its epoch ended was).
    Snapshot {
        /// The snapshot covers every record below this LSN.
        lsn: u64,
        /// The epoch of the leader's records at that point.
        epoch: u64,
        /// The CRC-32 of `payload` (as the log's records use).
        crc: u32,
        /// The snapshot's payload.
        payload: Vec<u8>,
    },
    /// Anyone → leader, instead of a hello: what are your partitions and
    /// replicas (`skald replicas show ADDR`)?
    StatusAsk {
        /// The asker's protocol version.
        version: u16,
    },
    /// Operator → a host, instead of a hello: move the leadership of
    /// `partition` to the host named `to` (`skald replicas transfer`).
    /// Answered by a [`Frame::Status`] whose JSON says the new leader, or
    /// why not.
    TransferAsk {
        /// The asker's protocol version.
        version: u16,
        /// The partition.
        partition: u16,
        /// The host to lead it.
        to: String,
    },
    /// Leader → asker, then close: a JSON object (UTF-8) with each
    /// partition's role, epoch and end, and each replica's position and
    /// lag (FORMAT.md).
    Status {
        /// The JSON text.
        json: String,
    },
    /// Leader → replica, then close: the replica's records from `lsn` on
    /// were written by a deposed leader and this one never had them: cut
    /// them off (`Log::truncate_suffix`) and ask again.
    Truncate {
        /// The first LSN to cut.
        lsn: u64,
    },
}

/// A frame that does not decode, or a connection that failed.
#[derive(Debug, thiserror::Error)]
pub enum WireError {
    /// The connection failed.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// A frame's length is over the limit for its sender.
    #[error("a frame of {0} bytes, over the limit")]
    TooLarge(u32),
    /// A frame that does not decode.
    #[error("malformed frame: {0}")]
    Malformed(&'static str),
}

const HELLO: u8 = 1;
const WELCOME: u8 = 2;
const REFUSED: u8 = 3;
const RECORDS: u8 = 4;
const ACK: u8 = 5;
const TRUNCATE: u8 = 6;
const SNAPSHOT: u8 = 7;
const STATUS_ASK: u8 = 8;
const STATUS: u8 = 9;
const TRANSFER_ASK: u8 = 10;

impl Frame {
    /// The frame's bytes, length prefix included.
    pub fn encode(&self) -> Vec<u8> {
        let mut body = Vec::new();
        match self {
            Frame::Hello { .. } => self.encode_hello(&mut body),
            Frame::Welcome {
                version,
                partitions,
                first_lsn,
                next_lsn,
                epoch,
            } => {
                body.push(WELCOME);
                body.extend_from_slice(&version.to_le_bytes());
                body.extend_from_slice(&partitions.to_le_bytes());
                body.extend_from_slice(&first_lsn.to_le_bytes());
                body.extend_from_slice(&next_lsn.to_le_bytes());
                body.extend_from_slice(&epoch.to_le_bytes());
            }
            Frame::Refused { code, message } => {
                body.push(REFUSED);
                body.extend_from_slice(&(*code as u16).to_le_bytes());
                put_text(&mut body, message);
            }
            Frame::Records {
                first_lsn,
                count,
                leader_end,
                epoch,
                bytes,
            } => {
                body.push(RECORDS);
                body.extend_from_slice(&first_lsn.to_le_bytes());
                body.extend_from_slice(&count.to_le_bytes());
                body.extend_from_slice(&leader_end.to_le_bytes());
                body.extend_from_slice(&epoch.to_le_bytes());
                body.extend_from_slice(bytes);
            }
            Frame::Ack { durable_end } => {
                body.push(ACK);
                body.extend_from_slice(&durable_end.to_le_bytes());
            }
            Frame::Truncate { lsn } => {
                body.push(TRUNCATE);
                body.extend_from_slice(&lsn.to_le_bytes());
            }
            Frame::StatusAsk { version } => {
                body.push(STATUS_ASK);
                body.extend_from_slice(&MAGIC);
                body.extend_from_slice(&version.to_le_bytes());
            }
            Frame::TransferAsk {
                version,
                partition,
                to,
            } => {
                body.push(TRANSFER_ASK);
                body.extend_from_slice(&MAGIC);
                body.extend_from_slice(&version.to_le_bytes());
                body.extend_from_slice(&partition.to_le_bytes());
                put_text(&mut body, to);
            }
            Frame::Status { json } => {
                body.push(STATUS);
                body.extend_from_slice(json.as_bytes());
            }
            Frame::Snapshot {
                lsn,
                epoch,
                crc,
                payload,
            } => {
                body.push(SNAPSHOT);
                body.extend_from_slice(&lsn.to_le_bytes());
                body.extend_from_slice(&epoch.to_le_bytes());
                body.extend_from_slice(&crc.to_le_bytes());
                body.extend_from_slice(payload);
            }
        }
        let mut frame = (body.len() as u32).to_le_bytes().to_vec();
        frame.extend_from_slice(&body);
        frame
    }

    fn encode_hello(&self, body: &mut Vec<u8>) {
        let Frame::Hello {
            version,
            partition,
            from_lsn,
            first_lsn,
            last_crc,
            last_epoch,
            seen_epoch,
            name,
        } = self
        else {
            unreachable!("only a hello")
        };
        body.push(HELLO);
        body.extend_from_slice(&MAGIC);
        body.extend_from_slice(&version.to_le_bytes());
        body.extend_from_slice(&partition.to_le_bytes());
        for field in [from_lsn, first_lsn] {
            body.extend_from_slice(&field.to_le_bytes());
        }
        body.extend_from_slice(&last_crc.to_le_bytes());
        for field in [last_epoch, seen_epoch] {
            body.extend_from_slice(&field.to_le_bytes());
        }
        put_text(body, name);
    }

    /// Decodes a frame's body (after its length).
    pub fn decode(body: &[u8]) -> Result<Frame, WireError> {
        let mut input = Input(body);
        let frame = match input.u8()? {
            HELLO => {
                if input.take(8)? != MAGIC {
                    return Err(WireError::Malformed("not a Skald replica's hello"));
                }
                Frame::Hello {
                    version: input.u16()?,
                    partition: input.u16()?,
                    from_lsn: input.u64()?,
                    first_lsn: input.u64()?,
                    last_crc: input.u32()?,
                    last_epoch: input.u64()?,
                    seen_epoch: input.u64()?,
                    name: input.text()?,
                }
            }
            WELCOME => Frame::Welcome {
                version: input.u16()?,
                partitions: input.u16()?,
                first_lsn: input.u64()?,
                next_lsn: input.u64()?,
                epoch: input.u64()?,
            },
            REFUSED => Frame::Refused {
                code: RefusalCode::from_u16(input.u16()?)
                    .ok_or(WireError::Malformed("unknown refusal code"))?,
                message: input.text()?,
            },
            RECORDS => Frame::Records {
                first_lsn: input.u64()?,
                count: input.u32()?,
                leader_end: input.u64()?,
                epoch: input.u64()?,
                bytes: input.rest().to_vec(),
            },
            ACK => Frame::Ack {
                durable_end: input.u64()?,
            },
            TRUNCATE => Frame::Truncate { lsn: input.u64()? },
            STATUS_ASK => {
                if input.take(8)? != MAGIC {
                    return Err(WireError::Malformed("not a Skald status request"));
                }
                Frame::StatusAsk {
                    version: input.u16()?,
                }
            }
            TRANSFER_ASK => {
                if input.take(8)? != MAGIC {
                    return Err(WireError::Malformed("not a Skald transfer request"));
                }
                Frame::TransferAsk {
                    version: input.u16()?,
                    partition: input.u16()?,
                    to: input.text()?,
                }
            }
            STATUS => Frame::Status {
                json: String::from_utf8(input.rest().to_vec())
                    .map_err(|_| WireError::Malformed("a status that is not UTF-8"))?,
            },
            SNAPSHOT => Frame::Snapshot {
                lsn: input.u64()?,
                epoch: input.u64()?,
                crc: input.u32()?,
                payload: input.rest().to_vec(),
            },
            _ => return Err(WireError::Malformed("unknown frame type")),
        };
        if !input.0.is_empty() {
            return Err(WireError::Malformed("bytes after the frame's fields"));
        }
        Ok(frame)
    }
}

fn put_text(body: &mut Vec<u8>, text: &str) {
    // Cut at a character boundary within what a u16 length holds.
    let mut end = text.len().min(u16::MAX as usize);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let bytes = &text.as_bytes()[..end];
    body.extend_from_slice(&(bytes.len() as u16).to_le_bytes());
    body.extend_from_slice(bytes);
}

struct Input<'a>(&'a [u8]);

impl<'a> Input<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], WireError> {
        if self.0.len() < n {
            return Err(WireError::Malformed("frame ends early"));
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Ok(head)
    }
    fn u8(&mut self) -> Result<u8, WireError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, WireError> {
        Ok(u16::from_le_bytes(
            self.take(2)?.try_into().expect("2 bytes"),
        ))
    }
    fn u32(&mut self) -> Result<u32, WireError> {
        Ok(u32::from_le_bytes(
            self.take(4)?.try_into().expect("4 bytes"),
        ))
    }
    fn u64(&mut self) -> Result<u64, WireError> {
        Ok(u64::from_le_bytes(
            self.take(8)?.try_into().expect("8 bytes"),
        ))
    }
    fn text(&mut self) -> Result<String, WireError> {
        let length = self.u16()? as usize;
        String::from_utf8(self.take(length)?.to_vec())
            .map_err(|_| WireError::Malformed("text is not UTF-8"))
    }
    fn rest(&mut self) -> &'a [u8] {
        std::mem::take(&mut self.0)
    }
}

/// Reads one frame of at most `max` bytes; `None` at a clean end of the
/// connection (between frames).
pub async fn read_frame<R: AsyncRead + Unpin>(
    reader: &mut R,
    max: u32,
) -> Result<Option<Frame>, WireError> {
    let mut length = [0u8; 4];
    let mut filled = 0;
    while filled < length.len() {
        match reader.read(&mut length[filled..]).await? {
            0 if filled == 0 => return Ok(None),
            0 => return Err(WireError::Malformed("the connection ended inside a frame")),
            read => filled += read,
        }
    }
    let length = u32::from_le_bytes(length);
    if length > max {
        return Err(WireError::TooLarge(length));
    }
    let mut body = vec![0u8; length as usize];
    reader.read_exact(&mut body).await?;
    Frame::decode(&body).map(Some)
}

/// Writes one frame.
pub async fn write_frame<W: AsyncWrite + Unpin>(
    writer: &mut W,
    frame: &Frame,
) -> Result<(), WireError> {
    writer.write_all(&frame.encode()).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_frame_decodes_to_itself_and_damage_is_refused() {
        let frames = [
            Frame::Hello {
                version: 1,
                partition: 3,
                from_lsn: 42,
                first_lsn: 7,
                last_crc: 0xDEAD_BEEF,
                last_epoch: 3,
                seen_epoch: 4,
                name: "réplica-b".into(),
            },
            Frame::Welcome {
                version: 1,
                partitions: 8,
                first_lsn: 1,
                next_lsn: 99,
                epoch: 3,
            },
            Frame::Refused {
                code: RefusalCode::Truncated,
                message: "from 5; first is 900".into(),
            },
            Frame::Records {
                first_lsn: 7,
                count: 2,
                leader_end: 9,
                epoch: 3,
                bytes: vec![1, 2, 3],
            },
            Frame::Ack { durable_end: 9 },
            Frame::Truncate { lsn: 12 },
            Frame::StatusAsk { version: 1 },
            Frame::TransferAsk {
                version: 1,
                partition: 2,
                to: "host-b".into(),
            },
            Frame::Status {
                json: "{\"partitions\":[]}".into(),
            },
            Frame::Snapshot {
                lsn: 40,
                epoch: 2,
                crc: 9,
                payload: vec![5; 10],
            },
        ];
        for frame in frames {
            let bytes = frame.encode();
            let length = u32::from_le_bytes(bytes[..4].try_into().unwrap()) as usize;
            assert_eq!(length, bytes.len() - 4);
            assert_eq!(Frame::decode(&bytes[4..]).unwrap(), frame);
            // Cut short: refused, never a panic (Records takes any tail).
            if !matches!(
                frame,
                Frame::Records { .. } | Frame::Snapshot { .. } | Frame::Status { .. }
            ) {
                assert!(
                    Frame::decode(&bytes[4..bytes.len() - 1]).is_err(),
                    "{frame:?}"
                );
            }
        }
        assert!(Frame::decode(&[99]).is_err());
        let mut hello = Frame::Hello {
            version: 1,
            partition: 0,
            from_lsn: 1,
            first_lsn: 1,
            last_crc: 0,
            last_epoch: 0,
            seen_epoch: 0,
            name: String::new(),
        }
        .encode();
        hello[5] = b'X';
        assert!(matches!(
            Frame::decode(&hello[4..]),
            Err(WireError::Malformed(_))
        ));
        // A name cut at the u16 limit stays UTF-8.
        let long = "é".repeat(40_000);
        let mut body = Vec::new();
        put_text(&mut body, &long);
        let length = u16::from_le_bytes([body[0], body[1]]) as usize;
        assert!(std::str::from_utf8(&body[2..2 + length]).is_ok());
    }

    #[tokio::test]
    async fn a_connection_ending_inside_a_frame_is_an_error_not_an_end() {
        let frame = Frame::Ack { durable_end: 5 }.encode();
        let mut cut: &[u8] = &frame[..2];
        assert!(read_frame(&mut cut, 1024).await.is_err());
        let mut empty: &[u8] = &[];
        assert!(read_frame(&mut empty, 1024).await.unwrap().is_none());
        let mut whole: &[u8] = &frame;
        assert!(read_frame(&mut whole, 4).await.is_err(), "over the limit");
    }
}
