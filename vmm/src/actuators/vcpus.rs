//! Creates vCPUs and resizes the running VM through ACPI CPU hotplug.
//!
//! Growing enables the lowest free vCPU slots: a slot never used gets a new
//! KVM vCPU and thread; a slot used before (its vCPU ejected and parked,
//! since KVM cannot destroy a vCPU) is simply re-enabled, and the guest's
//! INIT/SIPI wakes the parked vCPU. Shrinking asks the guest to eject the
//! highest slots; vCPU 0 is never removed.
//!
//! A parked vCPU does not stay in `KVM_RUN`, where the guest could restart
//! it: once the guest ejects it, its [`Gate`] closes and its thread is
//! kicked out of `KVM_RUN` with a signal (re-sent every policy tick until
//! the thread waits at the gate), and the gate opens only when perfvmm
//! enables the slot again.

use std::sync::{Arc, Mutex, OnceLock};
use std::thread::{self, JoinHandle};
use std::time::Duration;

use kvm_bindings::CpuId;
use kvm_ioctls::VmFd;
use vm_memory::GuestAddress;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};

use crate::devices::bus::lock;
use crate::devices::cpu_hotplug::{CpuSlot, CpuStates};
use crate::vcpu::{Gate, Vcpu, VcpuContext, VcpuError, VcpuState};

#[derive(Debug, thiserror::Error)]
pub enum ResizeError {
    #[error(transparent)]
    Vcpu(#[from] VcpuError),
    #[error("KVM_CREATE_VCPU for vCPU {0}: {1}")]
    Create(u32, kvm_ioctls::Error),
    #[error("cannot start a vCPU thread: {0}")]
    Thread(std::io::Error),
    #[error("cannot raise the GED interrupt: {0}")]
    Interrupt(std::io::Error),
    #[error("cannot install the vCPU kick signal's handler: {0}")]
    KickSignal(String),
    #[error("the snapshot holds vCPU {0} twice or beyond the VM's maximum")]
    BadSnapshot(u32),
}

/// Does nothing: the signal's only purpose is to make `KVM_RUN` return.
extern "C" fn on_kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// The signal that kicks a vCPU thread out of `KVM_RUN`, its handler
/// installed once per process.
fn kick_signal() -> Result<libc::c_int, ResizeError> {
    static INSTALLED: OnceLock<Result<libc::c_int, String>> = OnceLock::new();
    INSTALLED
        .get_or_init(|| {
            let sig = SIGRTMIN();
            register_signal_handler(sig, on_kick)
                .map(|()| sig)
                .map_err(|e| e.to_string())
        })
        .clone()
        .map_err(ResizeError::KickSignal)
}

pub struct VcpuManager {
    vm: Arc<VmFd>,
    supported: CpuId,
    max: u32,
    ctx: VcpuContext,
    created: Vec<bool>,
    states: Arc<Mutex<CpuStates>>,
    ged: EventFd,
    /// Called with the vCPU index when a vCPU thread starts (pinning).
    on_start: Arc<dyn Fn(u32) + Send + Sync>,
    /// Kernel thread id of each vCPU's thread, by vCPU index, and the
    /// thread's run time just before it first entered KVM_RUN.
    threads: Arc<Mutex<Vec<Option<VcpuThread>>>>,
    /// Per slot: whether the guest has started the vCPU since it was last
    /// enabled, or the thread's run time when it was enabled (a vCPU waiting
    /// for the guest's INIT/SIPI does not run; one the guest started does).
    started: Vec<Started>,
    /// The vCPUs' gates and threads, shared with snapshots.
    set: Arc<VcpuSet>,
}

/// Per slot, the gate its vCPU passes before each `KVM_RUN` and its thread,
/// kept (not detached) so that a kick can never reach a thread id reused by
/// another thread. The vCPU actuator parks vCPUs with them; a snapshot
/// pauses them all.
pub struct VcpuSet {
    gates: Vec<Arc<Gate>>,
    handles: Mutex<Vec<Option<JoinHandle<()>>>>,
    kick: libc::c_int,
}

/// Why the vCPUs' states could not be saved.
#[derive(Debug, thiserror::Error)]
pub enum SaveError {
    #[error("vCPU {0} did not stop within {1:?}")]
    Timeout(u32, Duration),
    #[error("{0}")]
    Vcpu(String),
}

impl VcpuSet {
    /// Kicks the thread of slot `i` out of `KVM_RUN`.
    fn kick(&self, i: usize) {
        if let Some(Some(h)) = lock(&self.handles).get(i) {
            if let Err(e) = h.kill(self.kick) {
                log::warn!("cannot kick vCPU {i}'s thread: {e}");
            }
        }
    }

    fn has_thread(&self, i: usize) -> bool {
        lock(&self.handles).get(i).is_some_and(Option::is_some)
    }

    /// Stops every vCPU outside `KVM_RUN` and has its thread save its state;
    /// the vCPUs stay stopped until [`VcpuSet::resume`]. A vCPU that does
    /// not answer within `wait` is an error, and every vCPU runs again.
    pub fn pause_and_save(&self, wait: Duration) -> Result<Vec<VcpuState>, SaveError> {
        let live: Vec<usize> = (0..self.gates.len())
            .filter(|&i| self.has_thread(i))
            .collect();
        let parked: Vec<bool> = live.iter().map(|&i| self.gates[i].request_save()).collect();
        let mut states = Vec::with_capacity(live.len());
        for (&i, &was_parked) in live.iter().zip(&parked) {
            match self.saved_state(i, wait) {
                Ok(state) => states.push(VcpuState {
                    parked: was_parked,
                    ..*state
                }),
                Err(e) => {
                    for (&i, _) in live.iter().zip(&parked).filter(|(_, p)| !**p) {
                        self.gates[i].open();
                    }
                    return Err(e);
                }
            }
        }
        Ok(states)
    }

    /// The state vCPU `i` saves once kicked out of `KVM_RUN`.
    fn saved_state(&self, i: usize, wait: Duration) -> Result<Box<VcpuState>, SaveError> {
        let deadline = std::time::Instant::now() + wait;
        loop {
            // A kick that lands just before the thread enters KVM_RUN is
            // lost; the next one is not.
            self.kick(i);
            if let Some(r) = self.gates[i].saved(Duration::from_millis(5)) {
                return r.map_err(SaveError::Vcpu);
            }
            if std::time::Instant::now() > deadline {
                return Err(SaveError::Timeout(i as u32, wait));
            }
        }
    }

    /// Lets the vCPUs stopped by [`VcpuSet::pause_and_save`], given as
    /// `(index, parked before)`, run again, except those parked before.
    pub fn resume(&self, stopped: &[(u32, bool)]) {
        for &(index, _) in stopped.iter().filter(|s| !s.1) {
            if let Some(g) = self.gates.get(index as usize) {
                g.open();
            }
        }
    }

    /// Closes the gates of vCPUs not yet running, `(index, parked)`: they
    /// wait there until [`VcpuSet::resume`].
    pub fn hold(&self, vcpus: &[(u32, bool)]) {
        for &(index, _) in vcpus {
            if let Some(g) = self.gates.get(index as usize) {
                g.close();
            }
        }
    }
}

/// A vCPU thread's kernel id, and its run time as it first entered KVM_RUN.
type VcpuThread = (libc::pid_t, Duration);

/// Whether the guest has started a vCPU since it was enabled.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Started {
    Yes,
    /// Not yet seen running: its thread's run time when it was enabled
    /// (`None` until the thread reports its id).
    WaitingSince(Option<Duration>),
}

/// Run time a vCPU must gain before it counts as started by the guest:
/// more than entering KVM_RUN costs, less than a guest CPU's bring-up.
const STARTED_RUN_TIME: Duration = Duration::from_millis(1);

impl VcpuManager {
    pub fn new(
        vm: Arc<VmFd>,
        supported: CpuId,
        max: u32,
        ctx: VcpuContext,
        states: Arc<Mutex<CpuStates>>,
        ged: EventFd,
        on_start: Arc<dyn Fn(u32) + Send + Sync>,
    ) -> Result<Self, ResizeError> {
        Ok(Self {
            vm,
            supported,
            max,
            ctx,
            created: vec![false; max as usize],
            states,
            ged,
            on_start,
            threads: Arc::new(Mutex::new(vec![None; max as usize])),
            started: vec![Started::Yes; max as usize],
            set: Arc::new(VcpuSet {
                gates: (0..max).map(|_| Arc::new(Gate::default())).collect(),
                handles: Mutex::new((0..max).map(|_| None).collect()),
                kick: kick_signal()?,
            }),
        })
    }

    /// The vCPUs' gates and threads, for snapshots.
    pub fn set(&self) -> Arc<VcpuSet> {
        self.set.clone()
    }

    /// Creates the vCPUs a snapshot saved, each with its state (not yet
    /// running); a vCPU parked then stays parked when its thread starts.
    pub fn restore(&mut self, states: &[VcpuState]) -> Result<Vec<Vcpu>, ResizeError> {
        let mut vcpus = Vec::with_capacity(states.len());
        for s in states {
            if s.index >= self.max || self.created[s.index as usize] {
                return Err(ResizeError::BadSnapshot(s.index));
            }
            let fd = self
                .vm
                .create_vcpu(u64::from(s.index))
                .map_err(|e| ResizeError::Create(s.index, e))?;
            let gate = self.set.gates[s.index as usize].clone();
            let vcpu = Vcpu::new(fd, s.index, self.ctx.clone(), gate.clone());
            vcpu.configure_cpuid(&self.supported, self.max)?;
            vcpu.restore_state(s)?;
            if s.parked {
                gate.close();
            }
            self.created[s.index as usize] = true;
            vcpus.push(vcpu);
        }
        Ok(vcpus)
    }

    fn create(&mut self, index: u32, entry: Option<GuestAddress>) -> Result<Vcpu, ResizeError> {
        let fd = self
            .vm
            .create_vcpu(u64::from(index))
            .map_err(|e| ResizeError::Create(index, e))?;
        let gate = self.set.gates[index as usize].clone();
        let vcpu = Vcpu::new(fd, index, self.ctx.clone(), gate);
        vcpu.configure(&self.supported, self.max, entry)?;
        self.created[index as usize] = true;
        Ok(vcpu)
    }

    /// Creates the boot vCPUs (not yet running).
    pub fn create_boot(
        &mut self,
        boot: u32,
        entry: GuestAddress,
    ) -> Result<Vec<Vcpu>, ResizeError> {
        (0..boot)
            .map(|i| self.create(i, (i == 0).then_some(entry)))
            .collect()
    }

    pub fn spawn(&mut self, vcpu: Vcpu) -> Result<(), ResizeError> {
        let on_start = self.on_start.clone();
        let threads = self.threads.clone();
        let index = vcpu.index() as usize;
        let handle = thread::Builder::new()
            .name(format!("vcpu{}", vcpu.index()))
            .spawn(move || {
                // SAFETY: gettid(2) has no arguments and cannot fail.
                let tid = unsafe { libc::gettid() };
                on_start(vcpu.index());
                let ran = schedstat_run_time(tid).unwrap_or_default();
                if let Some(t) = lock(&threads).get_mut(vcpu.index() as usize) {
                    *t = Some((tid, ran));
                }
                vcpu.run()
            })
            .map_err(ResizeError::Thread)?;
        if let Some(h) = lock(&self.set.handles).get_mut(index) {
            *h = Some(handle);
        }
        Ok(())
    }

    /// vCPUs enabled and not being removed.
    pub fn count(&self) -> u32 {
        lock(&self.states).enabled_count()
    }

    /// Asks the guest to go to `to` vCPUs (1..=max).
    pub fn resize(&mut self, to: u32) -> Result<(), ResizeError> {
        let added = {
            // One update of all slots, so the guest's scan never sees half of it.
            let mut st = lock(&self.states);
            plan_resize(&mut st.slots, to.clamp(1, self.max))
        };
        for i in added {
            let baseline = self.thread_run_time(i);
            if let Some(s) = self.started.get_mut(i as usize) {
                *s = Started::WaitingSince(baseline);
            }
            // A slot used before has a parked vCPU: its gate opens, and the
            // guest's INIT/SIPI then wakes it.
            if self.created[i as usize] {
                self.set.gates[i as usize].open();
            } else {
                let vcpu = self.create(i, None)?;
                self.spawn(vcpu)?;
            }
        }
        self.ged.write(1).map_err(ResizeError::Interrupt)
    }

    /// vCPUs the guest runs: enabled, and started by the guest since they
    /// were enabled (their thread has run), pending removals included until
    /// ejected. This is what a grow's latency is timed against.
    pub fn running_in_guest(&mut self) -> u32 {
        let enabled: Vec<bool> = lock(&self.states).slots.iter().map(|s| s.enabled).collect();
        let mut n = 0;
        for (i, on) in enabled.into_iter().enumerate() {
            if on && self.has_started(i as u32) {
                n += 1;
            }
        }
        n
    }

    /// Whether slot `i`'s vCPU has run since it was enabled (remembered).
    fn has_started(&mut self, i: u32) -> bool {
        let Some(&state) = self.started.get(i as usize) else {
            return false;
        };
        let now = self.thread_run_time(i);
        let started = match (state, now) {
            (Started::Yes, _) => true,
            (Started::WaitingSince(None), Some(t)) => {
                // A new thread: its run time as it entered KVM_RUN is the baseline.
                let base = self.thread_start_time(i).unwrap_or(t);
                self.started[i as usize] = Started::WaitingSince(Some(base));
                t.saturating_sub(base) > STARTED_RUN_TIME
            }
            (Started::WaitingSince(Some(base)), Some(t)) => {
                t.saturating_sub(base) > STARTED_RUN_TIME
            }
            (Started::WaitingSince(_), None) => false,
        };
        if started {
            self.started[i as usize] = Started::Yes;
        }
        started
    }

    /// Run time of vCPU `i`'s thread now.
    fn thread_run_time(&self, i: u32) -> Option<Duration> {
        let (tid, _) = (*lock(&self.threads).get(i as usize)?)?;
        schedstat_run_time(tid)
    }

    /// Run time of vCPU `i`'s thread as it first entered KVM_RUN.
    fn thread_start_time(&self, i: u32) -> Option<Duration> {
        Some((*lock(&self.threads).get(i as usize)?)?.1)
    }

    /// Time the vCPU threads have spent running (in the guest or in
    /// perfvmm's exit handling; a halted vCPU does not run).
    pub fn run_time(&self) -> Duration {
        (0..self.max).filter_map(|i| self.thread_run_time(i)).sum()
    }

    /// vCPUs the guest ejected since the last call, which are parked: the
    /// gate of each closes (unless perfvmm has enabled its slot again
    /// since), and every vCPU whose gate is closed but which has not reached
    /// it yet is kicked out of `KVM_RUN` (again: a kick that lands just
    /// before the thread enters `KVM_RUN` is lost, the next is not).
    pub fn take_ejected(&self) -> Vec<u32> {
        let ejected = {
            let mut st = lock(&self.states);
            let ejected = std::mem::take(&mut st.ejected);
            for &i in &ejected {
                let enabled = st.slots.get(i as usize).is_some_and(|s| s.enabled);
                if let (false, Some(g)) = (enabled, self.set.gates.get(i as usize)) {
                    g.close();
                }
            }
            ejected
        };
        for (i, gate) in self.set.gates.iter().enumerate() {
            if gate.is_closed() && !gate.holds() {
                self.set.kick(i);
            }
        }
        ejected
    }

    /// vCPUs parked: their threads wait outside `KVM_RUN`.
    pub fn parked(&self) -> u32 {
        self.set.gates.iter().filter(|g| g.holds()).count() as u32
    }
}

/// A thread's run time, from `/proc/self/task/TID/schedstat`.
fn schedstat_run_time(tid: libc::pid_t) -> Option<Duration> {
    let text = std::fs::read_to_string(format!("/proc/self/task/{tid}/schedstat")).ok()?;
    let ns = text.split_whitespace().next()?.parse::<u64>().ok()?;
    Some(Duration::from_nanos(ns))
}

/// Marks the hotplug slots for a VM of `to` vCPUs and returns the slots
/// newly enabled. Grows by withdrawing pending removals first, then
/// enabling the lowest free slots; shrinks by asking for the highest slots
/// to be removed. Slot 0 is never removed.
pub fn plan_resize(slots: &mut [CpuSlot], to: u32) -> Vec<u32> {
    let mut count = slots
        .iter()
        .filter(|s| s.enabled && !s.remove_requested)
        .count() as u32;
    let mut added = Vec::new();
    for (i, slot) in slots.iter_mut().enumerate() {
        if count >= to {
            break;
        }
        if slot.enabled && slot.remove_requested {
            // A pending removal is simply withdrawn.
            slot.removing = false;
            slot.remove_requested = false;
            count += 1;
        } else if !slot.enabled {
            slot.enabled = true;
            slot.inserting = true;
            count += 1;
            added.push(i as u32);
        }
    }
    for slot in slots.iter_mut().skip(1).rev() {
        if count <= to {
            break;
        }
        if slot.enabled && !slot.remove_requested {
            slot.removing = true;
            slot.remove_requested = true;
            slot.inserting = false;
            count -= 1;
        }
    }
    added
}

#[cfg(test)]
mod tests {
    use super::*;

    fn slots(enabled: &[bool]) -> Vec<CpuSlot> {
        enabled
            .iter()
            .map(|&enabled| CpuSlot {
                enabled,
                ..Default::default()
            })
            .collect()
    }

    fn online(s: &[CpuSlot]) -> Vec<bool> {
        s.iter().map(|s| s.enabled && !s.remove_requested).collect()
    }

    #[test]
    fn grows_into_the_lowest_free_slots() {
        let mut s = slots(&[true, false, true, false]);
        assert_eq!(plan_resize(&mut s, 3), vec![1]);
        assert!(s[1].inserting && !s[3].enabled);
        assert_eq!(online(&s), [true, true, true, false]);
    }

    #[test]
    fn shrinks_from_the_top_and_never_removes_slot_0() {
        let mut s = slots(&[true, true, true, true]);
        assert!(plan_resize(&mut s, 2).is_empty());
        assert!(s[3].removing && s[2].removing && !s[1].removing);
        assert!(plan_resize(&mut s, 0).is_empty());
        assert_eq!(online(&s), [true, false, false, false]);
        assert!(!s[0].removing, "vCPU 0 stays");
    }

    #[test]
    fn a_pending_removal_is_withdrawn_before_a_slot_is_added() {
        let mut s = slots(&[true, true, false, false]);
        plan_resize(&mut s, 1);
        assert!(s[1].removing);
        assert!(plan_resize(&mut s, 2).is_empty(), "no new slot");
        assert!(!s[1].removing);
        assert_eq!(online(&s), [true, true, false, false]);
    }

    #[test]
    fn an_insert_not_yet_seen_is_cancelled_by_a_shrink() {
        let mut s = slots(&[true, false]);
        assert_eq!(plan_resize(&mut s, 2), vec![1]);
        plan_resize(&mut s, 1);
        assert!(s[1].removing && !s[1].inserting);
    }
}
