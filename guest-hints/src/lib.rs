#![cfg_attr(not(feature = "std"), no_std)]
#![warn(missing_docs)]
//! guest-hints: declare what your program needs — parallelism, memory, I/O,
//! phases, placement — to a hypervisor that can act on it, without learning
//! anything about the host. Where no perf-hint device exists every call is a
//! silent no-op, so the same binary runs anywhere.
//!
//! ```no_run
//! use guest_hints as hints;
//! hints::parallelism(8);
//! {
//!     let _p = hints::Phase::new("compute").parallelism(16).begin();
//!     // ... the phase's work; it ends when `_p` is dropped
//! }
//! hints::working_set(512 << 20);
//! ```
//!
//! Layers: [`wire`] (the message format, shared with the device), [`client`]
//! (numbering and batching over any [`client::Transport`]), [`mmio`] (a
//! bare-metal virtio-mmio driver for `no_std` guests), [`resources`] (what
//! the guest can see of its CPUs and memory) — all `no_std`; and with the
//! `std` feature, the `/dev/perfhint` transport, a process-wide client
//! (including `Phase::begin_and_wait`) and the hint trace (`trace`,
//! `PERFHINT_TRACE`). The C ABI is the `perfhint-capi` crate (`guest-hints/capi`), the
//! `perfhint` command-line tool the `perfhint` crate (`guest-hints/cli`).
//!
//! Features: `std` (default) for the `/dev/perfhint` transport, the
//! process-wide client and the hint trace; `serde` for `serde::Serialize`
//! on the wire types; `build` for reading profiles (`profile`) and turning
//! them into a manifest from a `build.rs` (`build`). Without `std` the crate
//! is `no_std` and allocates nothing.

pub mod client;
pub mod manifest;
pub mod mmio;
pub mod note;
pub mod resources;
pub mod size;
pub mod wire;

pub use manifest::ManifestBuilder;

#[cfg(feature = "std")]
mod global;
#[cfg(feature = "std")]
pub mod linux;
#[cfg(feature = "std")]
pub mod trace;

#[cfg(feature = "build")]
pub mod build;
#[cfg(feature = "build")]
pub mod profile;

#[cfg(feature = "std")]
pub use global::*;

/// The README's examples, compiled and run as doctests so that they stay true.
#[cfg(all(doctest, feature = "std"))]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;
