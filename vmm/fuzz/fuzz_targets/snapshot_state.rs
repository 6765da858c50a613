//! Hostile snapshot state files through perfvmm's decoder: byte 0 chooses
//! raw bytes (the header and its checks) or the rest behind a valid header
//! with a matching checksum (postcard's decoding of a `VmState`, then the
//! machine checks). Nothing panics, and an accepted state describes a
//! possible machine.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use perfvmm::snapshot::{decode, FORMAT_VERSION, MAGIC};

fn with_header(payload: &[u8]) -> Vec<u8> {
    let mut out = MAGIC.to_vec();
    out.extend_from_slice(&FORMAT_VERSION.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u64).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let bytes = if mode & 1 == 0 {
        rest.to_vec()
    } else {
        with_header(rest)
    };
    if let Ok(state) = decode(Path::new("fuzz"), &bytes) {
        let s = &state.shape;
        assert!(!s.regions.is_empty() && s.max_vcpus > 0);
        assert!(s.max_memory >= s.boot_memory);
        assert!(s.regions.windows(2).all(|w| w[0].0 + w[0].1 <= w[1].0));
    }
});
