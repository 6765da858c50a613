//! Arbitrary bytes as a control-API request: parsed or refused, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use perfvmm::control::api::parse_resize;
use perfvmm::control::http::read_request;

fuzz_target!(|data: &[u8]| {
    if let Ok(req) = read_request(&mut std::io::Cursor::new(data)) {
        let _ = parse_resize(&req.body);
    }
    let _ = parse_resize(data);
});
