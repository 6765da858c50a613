//! How the VM ends: the reasons, their exit codes, and the notifier through
//! which any thread (a vCPU, a device, a signal) reports the first one.

use std::sync::{Arc, Mutex};

use vmm_sys_util::eventfd::EventFd;

use crate::devices::power::{PowerEvent, PowerEventSink};

/// Why the VM stopped.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExitReason {
    /// ACPI S5 from the guest (`poweroff`).
    PowerOff,
    /// ACPI reset from the guest (`reboot`): the VM ends, like power-off.
    Reset,
    /// A vCPU triple-faulted.
    TripleFault,
    /// KVM reported an error it cannot continue from.
    InternalError(String),
    /// perfvmm received a termination signal.
    Signal(i32),
    /// A snapshot was taken with `stop`: the VM ends there.
    Snapshotted,
    /// The VM runs on at its migration target.
    Migrated,
}

impl ExitReason {
    /// The process exit status `perfvmm --help` documents.
    pub fn exit_code(&self) -> i32 {
        match self {
            ExitReason::PowerOff
            | ExitReason::Reset
            | ExitReason::Snapshotted
            | ExitReason::Migrated => 0,
            ExitReason::TripleFault | ExitReason::InternalError(_) => 3,
            ExitReason::Signal(sig) => 128 + sig,
        }
    }

    /// One line for the user.
    pub fn describe(&self) -> String {
        match self {
            ExitReason::PowerOff => "guest powered off".into(),
            ExitReason::Reset => "guest rebooted; the VM ends on reboot".into(),
            ExitReason::TripleFault => "guest crashed: triple fault (KVM_EXIT_SHUTDOWN)".into(),
            ExitReason::InternalError(what) => format!("guest crashed: KVM internal error: {what}"),
            ExitReason::Signal(sig) => format!("stopped by signal {sig}"),
            ExitReason::Snapshotted => "VM stopped after its snapshot".into(),
            ExitReason::Migrated => "VM migrated: it runs on at its target".into(),
        }
    }
}

/// Shared "first reason wins" slot plus an eventfd that wakes the event loop.
#[derive(Clone)]
pub struct ExitNotifier {
    inner: Arc<(Mutex<Option<ExitReason>>, EventFd)>,
}

impl ExitNotifier {
    pub fn new() -> std::io::Result<Self> {
        Ok(Self {
            inner: Arc::new((Mutex::new(None), EventFd::new(libc::EFD_NONBLOCK)?)),
        })
    }

    pub fn notify(&self, reason: ExitReason) {
        let mut slot = crate::devices::bus::lock(&self.inner.0);
        if slot.is_none() {
            *slot = Some(reason);
        }
        drop(slot);
        if let Err(e) = self.inner.1.write(1) {
            log::error!("cannot wake the event loop: {e}");
        }
    }

    pub fn reason(&self) -> Option<ExitReason> {
        crate::devices::bus::lock(&self.inner.0).clone()
    }

    pub fn eventfd(&self) -> &EventFd {
        &self.inner.1
    }
}

impl PowerEventSink for ExitNotifier {
    fn power_event(&self, event: PowerEvent) {
        self.notify(match event {
            PowerEvent::PowerOff => ExitReason::PowerOff,
            PowerEvent::Reset => ExitReason::Reset,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn first_reason_wins() {
        let n = ExitNotifier::new().unwrap();
        assert_eq!(n.reason(), None);
        n.power_event(PowerEvent::PowerOff);
        n.notify(ExitReason::TripleFault);
        assert_eq!(n.reason(), Some(ExitReason::PowerOff));
        assert_eq!(n.reason().unwrap().exit_code(), 0);
        assert_eq!(n.eventfd().read().unwrap(), 2);
        assert_eq!(ExitReason::TripleFault.exit_code(), 3);
        assert_eq!(ExitReason::Signal(15).exit_code(), 143);
    }
}
