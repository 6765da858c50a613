#![no_std]
//! guest-hints: declare what your program needs — parallelism, memory, I/O,
//! phases, placement — to a hypervisor that can act on it, without learning
//! anything about the host. Where no perf-hint device exists every call is a
//! silent no-op, so the same binary runs anywhere.

pub mod wire;
