//! perfvmm's policy: the operator's rules ([`config`], the `--policy` TOML
//! file) and the [`Engine`] that applies them to the guest's hints.
//!
//! This crate is the pure middle of the hint path: it knows nothing of
//! devices, KVM, threads or clocks. The engine takes hints and the time as
//! arguments and returns outcomes and [`Decision`]s; perfvmm's controller
//! applies them. The one piece of I/O is [`Policy::load`], which reads a
//! policy file. The trace simulator ([`simulate`]) runs the very same
//! engine over a recorded trace.

#![forbid(unsafe_code)]

pub mod config;
pub mod endpoint;
pub mod engine;
pub mod moving;
pub mod schedule;
pub mod simulate;

pub use config::{Policy, PolicyError};
pub use engine::{
    Decision, Engine, EngineState, Mobility, Outgrown, Resource, ScheduledNeeds, VmLimits,
};
pub use moving::{Move, Trigger};
