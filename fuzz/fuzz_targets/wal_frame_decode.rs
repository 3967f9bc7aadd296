//! `frame::decode` on arbitrary bytes: it must never panic, and any frame it accepts must be
//! exactly what `frame::encode_into` writes for the same format, LSN and body (the framing
//! invariant in `wal/src/frame.rs`: nothing decodes that the encoder did not produce).
//!
//! Input: the first byte picks the body limit (`byte * 64`, so 0..=16320, exercising the
//! "length over the record limit" branch), the rest is the buffer.
#![no_main]

use coreq_wal::frame::{self, Decoded, PreparedBody};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Some((&limit, buf)) = data.split_first() else {
        return;
    };
    let max_body = usize::from(limit) * 64;
    let Decoded::Frame {
        format,
        lsn,
        body,
        frame_len,
    } = frame::decode(buf, max_body)
    else {
        return;
    };

    assert!(
        frame_len <= buf.len(),
        "frame_len {frame_len} exceeds the buffer ({} bytes)",
        buf.len()
    );
    assert_eq!(
        frame_len,
        frame::HEADER_LEN + body.len(),
        "frame_len disagrees with the body"
    );
    assert!(
        body.len() <= max_body,
        "body of {} bytes accepted over the limit {max_body}",
        body.len()
    );

    let mut again = Vec::with_capacity(frame_len);
    frame::encode_into(&mut again, format, lsn, &PreparedBody::new(body.to_vec()));
    assert_eq!(
        again.as_slice(),
        &buf[..frame_len],
        "re-encoding does not reproduce the consumed bytes"
    );
});
