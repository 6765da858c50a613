//! A program that embeds its declared needs in its binary at compile time.
//!
//!   cargo build -p guest-hints --example manifest_demo
//!   perfhint inspect target/debug/examples/manifest_demo
//!   readelf -n target/debug/examples/manifest_demo

use guest_hints::wire::{IoClass, Locality};
use guest_hints::{manifest, ManifestBuilder};

manifest!(ManifestBuilder::new("manifest-demo")
    .parallelism(8, 16, 0.05)
    .memory(256 << 20, 512 << 20)
    .io(IoClass::Sequential, 100 << 20)
    .placement(true, false, Locality::SharedCache)
    .phase(1, "load", 2_000)
    .phase(2, "compute", 10_000)
    .build());

fn main() {
    let _phase = guest_hints::phase("main");
    println!("perf-hint device present: {}", guest_hints::is_connected());
}
