//! Engine values as log payloads: one version byte, then the encoding that
//! version names.
//!
//! Version 1 is bincode 2.0.1 (standard configuration: little-endian,
//! variable-length integers) over serde. bincode is unmaintained
//! (RUSTSEC-2025-0141), so it is pinned and used nowhere but here: moving to
//! another codec means a new version byte written by `encode` and one more
//! arm in `decode`, while every payload already in a log stays readable.

use std::sync::Arc;

use serde::de::DeserializeOwned;
use serde::Serialize;

pub use crate::error::{CodecError, MalformedPayload};

/// The version byte of payloads encoded with bincode 2 (standard config).
pub const CODEC_VERSION_BINCODE2: u8 = 1;

/// The most a decoded value may claim, in bytes. A corrupt length prefix
/// could otherwise ask for terabytes before the input runs out (found by
/// fuzzing); no event or snapshot chunk comes near this.
pub const DECODE_LIMIT_BYTES: usize = 1 << 30;

fn config() -> bincode::config::Configuration {
    bincode::config::standard()
}

fn decode_config() -> bincode::config::Configuration<
    bincode::config::LittleEndian,
    bincode::config::Varint,
    bincode::config::Limit<DECODE_LIMIT_BYTES>,
> {
    bincode::config::standard().with_limit::<DECODE_LIMIT_BYTES>()
}

/// Encodes `value` with the current codec version.
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = vec![CODEC_VERSION_BINCODE2];
    // Encoding into a Vec only fails for types serde cannot represent in
    // bincode (maps with non-string keys are fine; `serialize_any`-style
    // self-describing values are not): a programming error, not bad input.
    bincode::serde::encode_into_std_write(value, &mut bytes, config())
        .expect("engine values are bincode-encodable");
    bytes
}

/// Decodes a payload written by [`encode`] (of any version this build knows).
pub fn decode<T: DeserializeOwned>(bytes: &[u8]) -> Result<T, CodecError> {
    let (&version, body) = bytes.split_first().ok_or(CodecError::Empty)?;
    match version {
        CODEC_VERSION_BINCODE2 => {
            let (value, used) = bincode::serde::decode_from_slice(body, decode_config())
                .map_err(|error| CodecError::Malformed(MalformedPayload(Arc::new(error))))?;
            if used != body.len() {
                return Err(CodecError::TrailingBytes(body.len() - used));
            }
            Ok(value)
        }
        other => Err(CodecError::UnknownVersion(other)),
    }
}

/// The body of `value`'s encoding: what [`encode`] writes after its
/// version byte. A value kept encoded (a finished saga in its retention
/// window) is kept this way, so that [`encode_bodies`] can put it in a
/// sequence without encoding it again.
pub fn encode_body<T: Serialize>(value: &T) -> Vec<u8> {
    let mut bytes = Vec::new();
    encode_body_into(value, &mut bytes);
    bytes
}

/// [`encode_body`], appended to `bytes`.
pub fn encode_body_into<T: Serialize>(value: &T, bytes: &mut Vec<u8>) {
    bincode::serde::encode_into_std_write(value, bytes, config())
        .expect("engine values are bincode-encodable");
}

/// Decodes a body written by [`encode_body`] with this build's codec.
pub fn decode_body<T: DeserializeOwned>(body: &[u8]) -> Result<T, CodecError> {
    let (value, used) = bincode::serde::decode_from_slice(body, decode_config())
        .map_err(|error| CodecError::Malformed(MalformedPayload(Arc::new(error))))?;
    if used != body.len() {
        return Err(CodecError::TrailingBytes(body.len() - used));
    }
    Ok(value)
}

/// The encoding of a sequence of values given by their bodies (from
/// [`encode_body`]): the same bytes as [`encode`] of the slice of values.
pub fn encode_bodies<'a>(bodies: impl ExactSizeIterator<Item = &'a [u8]>) -> Vec<u8> {
    let mut bytes = vec![CODEC_VERSION_BINCODE2];
    // A sequence is its length (as a u64, in the configured integer
    // encoding), then its elements.
    bincode::serde::encode_into_std_write(bodies.len() as u64, &mut bytes, config())
        .expect("a length encodes");
    for body in bodies {
        bytes.extend_from_slice(body);
    }
    bytes
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use serde::Deserialize;

    #[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
    enum Sample {
        Started {
            saga: u64,
            name: String,
            input: Vec<u8>,
        },
        Failed {
            step: u32,
            attempt: u32,
            error: String,
            permanent: bool,
        },
        Nothing,
    }

    fn sample() -> impl Strategy<Value = Sample> {
        prop_oneof![
            (
                any::<u64>(),
                ".{0,20}",
                prop::collection::vec(any::<u8>(), 0..64)
            )
                .prop_map(|(saga, name, input)| Sample::Started { saga, name, input }),
            (any::<u32>(), any::<u32>(), ".{0,20}", any::<bool>()).prop_map(
                |(step, attempt, error, permanent)| Sample::Failed {
                    step,
                    attempt,
                    error,
                    permanent
                }
            ),
            Just(Sample::Nothing),
        ]
    }

    proptest! {
        #[test]
        fn values_round_trip(value in sample()) {
            let bytes = encode(&value);
            prop_assert_eq!(bytes[0], CODEC_VERSION_BINCODE2);
            prop_assert_eq!(decode::<Sample>(&bytes), Ok(value));
        }

        #[test]
        fn arbitrary_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = decode::<Sample>(&bytes);
        }
    }

    proptest! {
        #[test]
        fn a_sequence_of_bodies_is_the_encoding_of_the_sequence(
            values in prop::collection::vec(sample(), 0..4),
            copies in prop::sample::select(vec![1usize, 2, 250, 251, 300, 65_536]),
        ) {
            let values: Vec<Sample> =
                values.iter().cycle().take(values.len() * copies).cloned().collect();
            let bodies: Vec<Vec<u8>> = values.iter().map(encode_body).collect();
            let joined = encode_bodies(bodies.iter().map(Vec::as_slice));
            prop_assert_eq!(&joined, &encode(&values));
            for (body, value) in bodies.iter().zip(&values) {
                prop_assert_eq!(&decode_body::<Sample>(body).unwrap(), value);
            }
        }
    }

    #[test]
    fn bad_payloads_are_named_errors() {
        assert_eq!(decode::<Sample>(&[]), Err(CodecError::Empty));
        assert_eq!(
            decode::<Sample>(&[9, 0]),
            Err(CodecError::UnknownVersion(9))
        );
        let mut bytes = encode(&Sample::Nothing);
        bytes.push(0);
        assert_eq!(decode::<Sample>(&bytes), Err(CodecError::TrailingBytes(1)));
        assert!(matches!(
            decode::<Sample>(&[CODEC_VERSION_BINCODE2, 200]),
            Err(CodecError::Malformed(_))
        ));
    }
}
