//! Policy: the operator's rules (`config`) and the engine that applies them
//! to hints (`engine`).

pub mod config;
pub mod controller;
pub mod engine;

pub use config::Policy;
pub use engine::{Decision, Engine, Resource, VmLimits};
