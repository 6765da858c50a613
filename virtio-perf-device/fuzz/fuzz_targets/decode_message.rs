//! Any byte string through the wire decoder: never a panic, and whatever
//! decodes re-encodes to a message that decodes to the same hints.
#![no_main]

use guest_hints::wire::{decode_message, decode_record, MessageWriter};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let Ok((header, records)) = decode_message(data) else { return };
    let mut hints = Vec::new();
    for r in records {
        match r.map(decode_record) {
            Ok(Ok(Some(h))) => hints.push(h),
            Ok(Ok(None)) => {}
            _ => break,
        }
    }
    let mut w = MessageWriter::new(header.seq);
    for h in &hints {
        if w.push(h).is_err() {
            return;
        }
    }
    let again = w.finish().to_vec();
    let (_, records) = decode_message(&again).expect("re-encoded message decodes");
    let back: Vec<_> = records.map(|r| decode_record(r.unwrap()).unwrap().unwrap()).collect();
    assert_eq!(back, hints);
});
