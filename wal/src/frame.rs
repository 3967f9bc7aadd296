//! Record framing: `len:u32 | crc32:u32 | format:u8 | lsn:u64 | body`, little-endian.
//!
//! `len` counts everything after the checksum (format byte, LSN, body). The CRC covers the
//! `len` field too, so a damaged length is caught as well as damaged contents. The format byte
//! names the body's encoding (postcard today), so it can change without rewriting old records.
//! The LSN sits outside the body so that bodies are encoded and checksummed before the append
//! lock is taken; under the lock only the 13-byte prefix is hashed and the CRCs are combined.
//!
//! Invariant: `decode` never returns a frame that `encode_into` did not produce from the same
//! bytes: a cut frame is `Truncated`, any other damage `Corrupt` (up to CRC32's collision odds).

/// Bytes before the body: length, checksum, format byte and LSN.
pub const HEADER_LEN: usize = 4 + 4 + 1 + 8;
/// The only body encoding so far: postcard.
pub const FORMAT_POSTCARD_V1: u8 = 1;

/// A body encoded and checksummed ahead of the append lock.
#[derive(Clone)]
pub struct PreparedBody {
    pub(crate) bytes: Vec<u8>,
    crc: crc32fast::Hasher,
}

impl PreparedBody {
    pub fn new(bytes: Vec<u8>) -> PreparedBody {
        let mut crc = crc32fast::Hasher::new();
        crc.update(&bytes);
        PreparedBody { bytes, crc }
    }

    /// Size of the whole frame this body becomes.
    pub fn frame_len(&self) -> usize {
        HEADER_LEN + self.bytes.len()
    }
}

/// What `decode` found at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Decoded<'a> {
    /// A whole, intact frame.
    Frame {
        format: u8,
        lsn: u64,
        body: &'a [u8],
        frame_len: usize,
    },
    /// The buffer ends before the frame does (a torn write at the end of the log, or EOF).
    Truncated,
    /// The frame is damaged; `reason` says how.
    Corrupt { reason: &'static str },
}

/// Appends one frame for `lsn` holding `body` to `out`.
pub fn encode_into(out: &mut Vec<u8>, format: u8, lsn: u64, body: &PreparedBody) {
    let len = u32::try_from(HEADER_LEN - 8 + body.bytes.len())
        .expect("body length is bounded by max_record_bytes, far below u32::MAX");
    let len_bytes = len.to_le_bytes();
    let lsn_bytes = lsn.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(&[format]);
    crc.update(&lsn_bytes);
    crc.combine(&body.crc);
    out.extend_from_slice(&len_bytes);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.push(format);
    out.extend_from_slice(&lsn_bytes);
    out.extend_from_slice(&body.bytes);
}

/// Decodes the frame at the start of `buf`, refusing bodies above `max_body` bytes.
pub fn decode(buf: &[u8], max_body: usize) -> Decoded<'_> {
    if buf.len() < 8 {
        return Decoded::Truncated;
    }
    let len_bytes: [u8; 4] = buf[0..4].try_into().expect("slice of 4");
    let len = u32::from_le_bytes(len_bytes) as usize;
    if len < HEADER_LEN - 8 {
        return Decoded::Corrupt {
            reason: "length below the header size",
        };
    }
    if len > max_body + HEADER_LEN - 8 {
        return Decoded::Corrupt {
            reason: "length over the record limit",
        };
    }
    let frame_len = 8 + len;
    if buf.len() < frame_len {
        return Decoded::Truncated;
    }
    let stored_crc = u32::from_le_bytes(buf[4..8].try_into().expect("slice of 4"));
    let rest = &buf[8..frame_len];
    let mut crc = crc32fast::Hasher::new();
    crc.update(&len_bytes);
    crc.update(rest);
    if crc.finalize() != stored_crc {
        return Decoded::Corrupt { reason: "crc mismatch" };
    }
    Decoded::Frame {
        format: rest[0],
        lsn: u64::from_le_bytes(rest[1..9].try_into().expect("slice of 8")),
        body: &rest[9..],
        frame_len,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAX: usize = 1 << 20;

    fn framed(lsn: u64, body: &[u8]) -> Vec<u8> {
        let mut out = Vec::new();
        encode_into(&mut out, FORMAT_POSTCARD_V1, lsn, &PreparedBody::new(body.to_vec()));
        out
    }

    proptest! {
        #[test]
        fn frame_round_trips(lsn in any::<u64>(), body in proptest::collection::vec(any::<u8>(), 0..4096)) {
            let buf = framed(lsn, &body);
            prop_assert_eq!(
                decode(&buf, MAX),
                Decoded::Frame { format: FORMAT_POSTCARD_V1, lsn, body: &body[..], frame_len: buf.len() }
            );
        }

        #[test]
        fn frame_cut_at_any_byte_never_decodes(
            lsn in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
        ) {
            let buf = framed(lsn, &body);
            for cut in 0..buf.len() {
                let got = decode(&buf[..cut], MAX);
                prop_assert!(!matches!(got, Decoded::Frame { .. }), "cut at {} decoded", cut);
            }
        }

        #[test]
        fn any_single_flipped_bit_is_detected(
            lsn in any::<u64>(),
            body in proptest::collection::vec(any::<u8>(), 0..512),
            bit in any::<proptest::sample::Index>(),
        ) {
            let mut buf = framed(lsn, &body);
            let bit = bit.index(buf.len() * 8);
            buf[bit / 8] ^= 1 << (bit % 8);
            let got = decode(&buf, MAX);
            prop_assert!(!matches!(got, Decoded::Frame { .. }), "flip of bit {} decoded as {:?}", bit, got);
        }
    }

    #[test]
    fn oversized_length_is_corrupt_not_a_huge_allocation() {
        let mut buf = framed(7, b"abc");
        buf[0..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(
            decode(&buf, MAX),
            Decoded::Corrupt {
                reason: "length over the record limit"
            }
        );
    }

    #[test]
    fn zeroed_bytes_are_corrupt() {
        assert!(matches!(decode(&[0u8; 64], MAX), Decoded::Corrupt { .. }));
    }
}
