//! The control stage of the hint path: the perf-hint device's sink (engine
//! outcome, hint log, decisions), the controller that applies decisions to
//! the actuators, the event-loop handlers that drive both, and the control
//! API through which an operator reads and steers the VM.

pub mod api;
pub mod api_server;
pub mod controller;
pub mod events;
pub mod hint_log;
pub mod http;
pub mod jsonl;
pub mod metrics;
pub mod sink;
pub mod snapshot;

pub use controller::{Actuators, Controller, ReloadError, ReloadScope};
pub use events::{HintQueueHandler, PerfHintTransport, PolicyTick};
pub use hint_log::HintLog;
pub use jsonl::JsonLines;
pub use sink::PolicySink;
