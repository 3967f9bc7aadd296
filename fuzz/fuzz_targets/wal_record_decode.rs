//! The WAL's record bodies: `postcard::from_bytes::<Change>` on arbitrary bytes must never
//! panic (nor allocate without bound), and whatever it accepts must survive a round trip:
//! encode → decode gives the same value, and encoding that again gives the same bytes.
//! (The input itself need not come back byte for byte: postcard ignores trailing bytes.)
#![no_main]

use coreq_storage::Change;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok(change) = postcard::from_bytes::<Change>(data) else {
        return;
    };
    let encoded = postcard::to_stdvec(&change).expect("a decoded Change encodes");
    let decoded: Change = postcard::from_bytes(&encoded).expect("an encoded Change decodes");
    assert_eq!(decoded, change, "round trip changed the record");
    let reencoded = postcard::to_stdvec(&decoded).expect("a decoded Change encodes");
    assert_eq!(reencoded, encoded, "encoding is not stable");
    assert!(
        encoded.len() <= data.len(),
        "canonical encoding longer than the input it came from"
    );
});
