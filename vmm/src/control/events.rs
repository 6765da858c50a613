//! The control half of the main thread's event loop: the perf-hint queue
//! notification (hints in, decisions applied at once) and the policy tick
//! (delayed shrinks, memory statistics, batched outcomes, log flushes).

use std::sync::{Arc, Mutex};
use std::time::Duration;

use event_manager::{EventOps, Events, MutEventSubscriber};
use virtio_mmio::MmioTransport;
use virtio_perf_device::{PerfHintDevice, EVENTQ};
use vmm_sys_util::epoll::EventSet;
use vmm_sys_util::eventfd::EventFd;
use vmm_sys_util::timerfd::TimerFd;

use super::{Controller, HintLog, PolicySink};
use crate::devices::bus::lock;

/// The perf-hint device behind its transport, as perfvmm builds it.
pub type PerfHintTransport = MmioTransport<PerfHintDevice<PolicySink>>;

/// How often delayed policy decisions (shrinks) are re-evaluated.
pub const POLICY_TICK: Duration = Duration::from_millis(200);

/// The guest kicked `hintq` or `eventq`: run the device, then apply what
/// the policy decided.
pub struct HintQueueHandler {
    notify: EventFd,
    transport: Arc<Mutex<PerfHintTransport>>,
    controller: Arc<Mutex<Controller>>,
    log: Arc<Mutex<HintLog>>,
}

impl HintQueueHandler {
    pub fn new(
        notify: EventFd,
        transport: Arc<Mutex<PerfHintTransport>>,
        controller: Arc<Mutex<Controller>>,
        log: Arc<Mutex<HintLog>>,
    ) -> Self {
        HintQueueHandler {
            notify,
            transport,
            controller,
            log,
        }
    }
}

impl MutEventSubscriber for HintQueueHandler {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // The count only says "kicked at least once"; every queue is run.
        let _ = self.notify.read();
        let more = {
            let mut t = lock(&self.transport);
            t.notify_all();
            t.has_more_work()
        };
        lock(&self.log).flush();
        lock(&self.controller).drain();
        if more {
            // The guest posted more than one wake's budget: come back once
            // the loop has served its other events (the tick, signals, exits).
            let _ = self.notify.write(1);
        }
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.notify, EventSet::IN)) {
            log::error!("cannot watch the perf-hint queues: {e:?}");
        }
    }
}

/// Every [`POLICY_TICK`]: the controller's periodic work, and outcomes
/// short of a batch sent to the guest.
pub struct PolicyTick {
    timer: TimerFd,
    transport: Arc<Mutex<PerfHintTransport>>,
    controller: Arc<Mutex<Controller>>,
    log: Arc<Mutex<HintLog>>,
}

impl PolicyTick {
    pub fn new(
        transport: Arc<Mutex<PerfHintTransport>>,
        controller: Arc<Mutex<Controller>>,
        log: Arc<Mutex<HintLog>>,
    ) -> std::io::Result<Self> {
        let mut timer = TimerFd::new()?;
        timer.reset(POLICY_TICK, Some(POLICY_TICK))?;
        Ok(PolicyTick {
            timer,
            transport,
            controller,
            log,
        })
    }
}

impl MutEventSubscriber for PolicyTick {
    fn process(&mut self, _events: Events, _ops: &mut EventOps) {
        // Expirations missed while busy do not matter: one tick does it all.
        let _ = self.timer.wait();
        lock(&self.controller).tick();
        lock(&self.transport).notify(EVENTQ);
        lock(&self.log).flush();
    }

    fn init(&mut self, ops: &mut EventOps) {
        if let Err(e) = ops.add(Events::new(&self.timer, EventSet::IN)) {
            log::error!("cannot watch the policy timer: {e:?}");
        }
    }
}
