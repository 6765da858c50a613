//! A virtio-mmio transport's state, for snapshots and live migration: the
//! registers the driver set and the queues it configured. The device's own
//! state is its model's business; the transport hands it the queues again
//! on restore ([`VirtioDevice::activate`]).
//!
//! A state comes from a file or a socket, so it is as untrusted as the
//! guest: [`MmioTransport::restore`] checks it against the device before
//! taking any of it.

use serde::{Deserialize, Serialize};
use virtio_queue::{Queue, QueueState, QueueT};

use crate::device::{status, VirtioDevice};
use crate::transport::MmioTransport;

/// One virtqueue: where its rings are and how far each side has gone.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct QueueSnapshot {
    pub max_size: u16,
    pub size: u16,
    pub ready: bool,
    pub desc_table: u64,
    pub avail_ring: u64,
    pub used_ring: u64,
    pub next_avail: u16,
    pub next_used: u16,
    pub event_idx_enabled: bool,
}

impl From<&Queue> for QueueSnapshot {
    fn from(q: &Queue) -> Self {
        let s = q.state();
        QueueSnapshot {
            max_size: s.max_size,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
        }
    }
}

impl From<QueueSnapshot> for QueueState {
    fn from(s: QueueSnapshot) -> Self {
        QueueState {
            max_size: s.max_size,
            next_avail: s.next_avail,
            next_used: s.next_used,
            event_idx_enabled: s.event_idx_enabled,
            size: s.size,
            ready: s.ready,
            desc_table: s.desc_table,
            avail_ring: s.avail_ring,
            used_ring: s.used_ring,
        }
    }
}

/// The transport's registers and queues.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct TransportState {
    pub device_features_sel: u32,
    pub driver_features_sel: u32,
    pub acked_features: u64,
    pub queue_sel: u32,
    pub queues: Vec<QueueSnapshot>,
    pub interrupt_status: u32,
    pub status: u32,
    pub activated: bool,
    pub config_generation: u32,
}

/// Why a transport state was refused.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum RestoreError {
    #[error("the state has {found} queues, the device has {expected}")]
    QueueCount { found: usize, expected: usize },
    #[error("queue {index}: {why}")]
    Queue { index: usize, why: String },
    #[error("features {0:#x} were never offered by the device")]
    Features(u64),
    #[error("status {0:#x} is not one a driver can reach")]
    Status(u32),
    #[error("the state says active, but the driver never set DRIVER_OK")]
    NotDriverOk,
    /// The device model's own state is inconsistent.
    #[error("{0}")]
    Device(String),
}

impl<D: VirtioDevice> MmioTransport<D> {
    /// The transport's state; an active device's queues come from the device.
    pub fn save(&self) -> TransportState {
        let queues = if self.activated {
            self.device.queues()
        } else {
            &self.queues
        };
        TransportState {
            device_features_sel: self.device_features_sel,
            driver_features_sel: self.driver_features_sel,
            acked_features: self.acked_features,
            queue_sel: self.queue_sel,
            queues: queues.iter().map(QueueSnapshot::from).collect(),
            interrupt_status: self.interrupt_status,
            status: self.status,
            activated: self.activated,
            config_generation: self.config_generation,
        }
    }

    /// Takes `state` after checking it against the device; an active device
    /// is activated again with the saved queues. Nothing is changed when the
    /// state is refused. The caller restores the device's own state next,
    /// then calls [`MmioTransport::notify_all`] for work the driver posted
    /// before the snapshot, and [`MmioTransport::raise_pending`] once the
    /// vCPUs' state is back.
    pub fn restore(&mut self, state: &TransportState) -> Result<(), RestoreError> {
        let queues = self.checked_queues(state)?;
        if state.acked_features & !self.device.features() != 0 {
            return Err(RestoreError::Features(state.acked_features));
        }
        let known = status::ACKNOWLEDGE
            | status::DRIVER
            | status::FEATURES_OK
            | status::DRIVER_OK
            | status::DEVICE_NEEDS_RESET
            | status::FAILED;
        if state.status & !known != 0 {
            return Err(RestoreError::Status(state.status));
        }
        if state.activated && state.status & status::DRIVER_OK == 0 {
            return Err(RestoreError::NotDriverOk);
        }
        if state.activated {
            let mem = self.mem.as_ref();
            if let Some(i) = queues.iter().position(|q| q.ready() && !q.is_valid(mem)) {
                return Err(RestoreError::Queue {
                    index: i,
                    why: "its rings are not in guest memory".into(),
                });
            }
        }
        self.device.reset();
        self.device_features_sel = state.device_features_sel;
        self.driver_features_sel = state.driver_features_sel;
        self.acked_features = state.acked_features;
        self.queue_sel = state.queue_sel;
        self.interrupt_status = state.interrupt_status;
        self.status = state.status;
        self.config_generation = state.config_generation;
        self.activated = state.activated;
        if state.activated {
            self.device
                .activate(self.mem.clone(), state.acked_features, queues);
            self.queues = Vec::new();
        } else {
            self.queues = queues;
        }
        Ok(())
    }

    /// The saved queues as queues, each checked by `virtio-queue` and
    /// against the size the device offers.
    fn checked_queues(&self, state: &TransportState) -> Result<Vec<Queue>, RestoreError> {
        let sizes = self.device.queue_max_sizes();
        if state.queues.len() != sizes.len() {
            return Err(RestoreError::QueueCount {
                found: state.queues.len(),
                expected: sizes.len(),
            });
        }
        state
            .queues
            .iter()
            .zip(sizes)
            .enumerate()
            .map(|(index, (q, &max))| {
                if q.max_size != max {
                    return Err(RestoreError::Queue {
                        index,
                        why: format!("size limit {} where the device offers {max}", q.max_size),
                    });
                }
                Queue::try_from(QueueState::from(*q)).map_err(|e| RestoreError::Queue {
                    index,
                    why: e.to_string(),
                })
            })
            .collect()
    }
}
