//! The controller: applies the policy engine's decisions to the actuators
//! (vCPUs, memory) and logs each one. Decisions come from the hint path
//! (the device's [`PolicySink`](super::PolicySink), through a channel) and
//! from the controller's own periodic tick; the control API reads and
//! steers the VM through the same controller.

use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::mpsc::{Receiver, TryRecvError};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{json, Value};

use super::jsonl::JsonLines;
use super::snapshot::{MigrateReport, SnapshotRequests};
use crate::actuators::{ActuatorError, MemoryActuator, MemoryStatus, VcpuActuator};
use crate::devices::bus::lock;
use crate::policy::engine::LeftForNeed;
use crate::policy::moving::{self, Move, Trigger};
use crate::policy::{Decision, Engine, Policy, PolicyError, Resource};

/// Decisions the control API can list.
pub const RECENT_DECISIONS: usize = 128;

/// Decision counts, for metrics.
#[derive(Clone, Copy, Debug, Default)]
pub struct DecisionCounts {
    pub applied: [u64; 2],
    pub refused: [u64; 2],
}

/// A policy reload that could not be done.
#[derive(Debug, thiserror::Error)]
pub enum ReloadError {
    #[error("this VM has no --policy file; give a path in --policy-dir")]
    NoPolicyFile,
    #[error(
        "a reload reads only the --policy file perfvmm started with, or a file in --policy-dir"
    )]
    NotAllowed,
    #[error(transparent)]
    Policy(#[from] PolicyError),
}

/// Which policy files a reload may read: the one perfvmm started with, and
/// any in a directory the operator named. Paths are compared canonical, so
/// `..` and links cannot leave the directory.
#[derive(Clone, Debug, Default)]
pub struct ReloadScope {
    pub start_file: Option<PathBuf>,
    pub dir: Option<PathBuf>,
}

impl ReloadScope {
    /// The file a reload of `requested` (none: the start file) may read.
    pub fn resolve(&self, requested: Option<&std::path::Path>) -> Result<PathBuf, ReloadError> {
        let Some(requested) = requested else {
            return self.start_file.clone().ok_or(ReloadError::NoPolicyFile);
        };
        let canonical = |p: &std::path::Path| std::fs::canonicalize(p).ok();
        let wanted = canonical(requested).ok_or(ReloadError::NotAllowed)?;
        let is_start = self.start_file.as_deref().and_then(canonical) == Some(wanted.clone());
        let in_dir = self
            .dir
            .as_deref()
            .and_then(canonical)
            .is_some_and(|d| wanted.parent() == Some(d.as_path()));
        if is_start || in_dir {
            Ok(wanted)
        } else {
            Err(ReloadError::NotAllowed)
        }
    }
}

/// What a controller drives: in perfvmm the [`VcpuManager`] and the
/// [`MemoryManager`]; in tests, mocks.
///
/// [`VcpuManager`]: crate::actuators::VcpuManager
/// [`MemoryManager`]: crate::actuators::MemoryManager
pub struct Actuators {
    pub vcpus: Box<dyn VcpuActuator>,
    pub memory: Box<dyn MemoryActuator>,
}

/// Applies decisions to the VM and writes the decision log.
pub struct Controller {
    engine: Arc<Mutex<Engine>>,
    rx: Receiver<Decision>,
    vcpus: Box<dyn VcpuActuator>,
    memory: Box<dyn MemoryActuator>,
    log: JsonLines,
    recent: VecDeque<Value>,
    counts: DecisionCounts,
    policy_path: Option<PathBuf>,
    scope: ReloadScope,
    start: Instant,
    /// Grows not yet visible in the guest: (from, to, when applied), per resource.
    pending: [Option<(u64, u64, Duration)>; 2],
    /// The vCPU threads' run time at the previous tick, and when.
    last_run_time: Option<(Duration, Duration)>,
    /// A vCPU shrink the guest has not completed: (target, when applied).
    removal: Option<(u64, Duration)>,
    /// Starts the migrations the policy decides (`None` in tests).
    mover: Option<SnapshotRequests>,
    moving: Moving,
}

/// Where the controller is with moving the VM to a bigger host.
enum Moving {
    /// Nothing calls for a move.
    Idle,
    /// A reason to move (its [`Move::key`]) has held since then.
    Since(Duration, String),
    /// Decided (moved, stayed, or failed): not again while the same reason
    /// holds.
    Decided(String),
    /// A migration runs; its answer comes here. If it fails, the reason is
    /// decided and the VM did not leave: what the engine remembers of
    /// leaving for a need goes back to what it was.
    Started {
        key: String,
        answer: Receiver<Result<MigrateReport, String>>,
        left_before: Option<LeftForNeed>,
    },
}

/// A grow the guest has not taken after this long is no longer timed.
const LATENCY_GIVE_UP: Duration = Duration::from_secs(30);
/// A vCPU removal the guest has not completed by then is reported refused.
pub const REMOVAL_DEADLINE: Duration = Duration::from_secs(10);

impl Controller {
    /// A controller applying the decisions `rx` receives (from the hint
    /// path's [`PolicySink`](super::PolicySink)) and its own, from `engine`.
    pub fn new(
        engine: Arc<Mutex<Engine>>,
        rx: Receiver<Decision>,
        actuators: Actuators,
        log: JsonLines,
        scope: ReloadScope,
        start: Instant,
    ) -> Self {
        Controller {
            engine,
            rx,
            vcpus: actuators.vcpus,
            memory: actuators.memory,
            log,
            recent: VecDeque::new(),
            counts: DecisionCounts::default(),
            policy_path: scope.start_file.clone(),
            scope,
            start,
            pending: [None, None],
            last_run_time: None,
            removal: None,
            mover: None,
            moving: Moving::Idle,
        }
    }

    /// Lets the policy start migrations (`[migration] target`) through
    /// the API's channel to the main thread.
    pub fn set_mover(&mut self, mover: SnapshotRequests) {
        self.mover = Some(mover);
    }

    /// The VM's time: since it booted (a restored VM's goes on from its
    /// snapshot's), which the engine's times count in.
    pub fn uptime(&self) -> Duration {
        self.now()
    }

    fn now(&self) -> Duration {
        self.start.elapsed()
    }

    fn write(&mut self, v: Value) {
        self.log.write(&v);
        self.log.flush();
        if self.recent.len() == RECENT_DECISIONS {
            self.recent.pop_front();
        }
        self.recent.push_back(v);
    }

    fn apply(&mut self, d: Decision) {
        let result: Result<(), ActuatorError> = match d.resource {
            Resource::Vcpus => self
                .vcpus
                .resize(u32::try_from(d.to).unwrap_or(u32::MAX))
                .map_err(Into::into),
            Resource::Memory => self.memory.resize(d.to).map_err(Into::into),
        };
        let r = d.resource;
        let mut v = serde_json::to_value(&d).unwrap_or_default();
        v["applied"] = json!(result.is_ok());
        match &result {
            Ok(()) => {
                self.counts.applied[r as usize] += 1;
                self.pending[r as usize] = (d.to > d.from).then_some((d.from, d.to, self.now()));
                if r == Resource::Vcpus {
                    self.removal = (d.to < d.from).then_some((d.to, self.now()));
                }
                log::info!(
                    "policy: {} {} → {}: {}",
                    r.as_str(),
                    r.show(d.from),
                    r.show(d.to),
                    d.reason
                );
            }
            Err(e) => {
                self.counts.refused[r as usize] += 1;
                lock(&self.engine).refused(&d);
                v["error"] = json!(e.to_string());
                log::warn!(
                    "policy: {} {} → {} not applied: {e}",
                    r.as_str(),
                    r.show(d.from),
                    r.show(d.to)
                );
            }
        }
        self.write(v);
    }

    /// Applies decisions made on the hint path.
    pub fn drain(&mut self) {
        while let Ok(d) = self.rx.try_recv() {
            self.apply(d);
        }
    }

    /// Times the grows the guest has now taken; the engine sets its lead
    /// time from them.
    fn time_grows(&mut self) {
        let now = self.now();
        for r in Resource::ALL {
            let Some((from, to, at)) = self.pending[r as usize] else {
                continue;
            };
            let have = match r {
                Resource::Vcpus => u64::from(self.vcpus.in_guest()),
                Resource::Memory => self.memory.in_guest(),
            };
            let waited = now.saturating_sub(at);
            if have >= to {
                lock(&self.engine).observe_latency(r, waited, to.saturating_sub(from));
                log::debug!(
                    "policy: {} grow visible after {} ms",
                    r.as_str(),
                    waited.as_millis()
                );
            }
            if have >= to || waited > LATENCY_GIVE_UP {
                self.pending[r as usize] = None;
            }
        }
    }

    /// A vCPU removal the guest left undone past [`REMOVAL_DEADLINE`] is
    /// withdrawn and logged as refused; the allocation becomes what the
    /// guest really holds.
    fn check_removal(&mut self) {
        let Some((to, at)) = self.removal else { return };
        let have = u64::from(self.vcpus.in_guest());
        if have <= to {
            self.removal = None;
            return;
        }
        let now = self.now();
        if now.saturating_sub(at) < REMOVAL_DEADLINE {
            return;
        }
        self.removal = None;
        let d = Decision {
            t_ms: now.as_millis() as u64,
            resource: Resource::Vcpus,
            from: have,
            to,
            reason: format!(
                "the guest did not eject its vCPUs within {} s",
                REMOVAL_DEADLINE.as_secs()
            ),
            hints: Vec::new(),
            clamped: false,
            rate_limited: 0,
        };
        // Withdraw what is left of the request, so the slots match the guest.
        let _ = self.vcpus.resize(have as u32);
        lock(&self.engine).refused(&d);
        self.counts.refused[Resource::Vcpus as usize] += 1;
        log::warn!("policy: vCPUs {have} → {to} not applied: {}", d.reason);
        let mut v = serde_json::to_value(&d).unwrap_or_default();
        v["applied"] = json!(false);
        v["error"] = json!(d.reason);
        self.write(v);
    }

    /// vCPUs busy since the previous tick: the vCPU threads' run time over
    /// the wall time passed.
    fn busy_vcpus(&mut self, now: Duration) -> Option<f64> {
        let run = self.vcpus.run_time();
        let (last_run, last_at) = self.last_run_time.replace((run, now))?;
        let wall = now.saturating_sub(last_at).as_secs_f64();
        (wall > 0.0).then(|| run.saturating_sub(last_run).as_secs_f64() / wall)
    }

    /// Periodic work: guest memory statistics, resize latencies, delayed
    /// shrinks, and noting vCPUs the guest ejected.
    pub fn tick(&mut self) {
        self.time_grows();
        self.check_removal();
        let in_use = self.memory.tick();
        let now = self.now();
        let busy = self.busy_vcpus(now);
        // The guest's boot is neither representative nor safe to resize: a
        // vCPU hot-added while the kernel still boots was seen to hang it.
        // Usage counts from when the guest has loaded its memory drivers.
        let booted = {
            let m = self.memory.status();
            m.balloon_driver || m.virtio_mem_driver
        };
        let busy = busy.filter(|_| booted);
        let decisions = {
            let mut e = lock(&self.engine);
            if let Some(bytes) = in_use {
                e.observe_memory_in_use(bytes);
                e.observe_usage(now, Resource::Memory, bytes as f64);
            }
            if let Some(busy) = busy {
                e.observe_usage(now, Resource::Vcpus, busy);
            }
            e.tick(now)
        };
        for d in decisions {
            self.apply(d);
        }
        self.drain();
        let ejected = self.vcpus.take_ejected();
        for &cpu in &ejected {
            let t = self.now().as_millis() as u64;
            log::info!("vCPU {cpu} ejected by the guest and parked");
            self.write(json!({ "t_ms": t, "event": "ejected", "vcpu": cpu }));
        }
        if !ejected.is_empty() {
            self.restore_vcpus();
        }
        self.consider_moving(now);
    }

    fn migration_failed(&mut self, now: Duration, why: &str) {
        log::warn!("policy: the migration failed, the VM runs on here: {why}");
        self.write(json!({
            "t_ms": now.as_millis() as u64,
            "event": "migration_failed",
            "reason": why,
        }));
    }

    /// When a reason to run elsewhere (the guest's declared need above this
    /// host's policy, or a data set another host holds: see
    /// [`perfvmm_policy::moving::decide`]) has held for `[migration]
    /// after_ms`: moves the VM, unless the guest declared its work not
    /// relocatable or monolithic, and says so in the decision log either
    /// way. Once per reason and destination: a decision is not taken again
    /// while the same one holds, and a new one (another data set's host,
    /// work that became relocatable) waits `after_ms` of its own.
    fn consider_moving(&mut self, now: Duration) {
        if self.migration_running(now) {
            return;
        }
        let (decided, m) = {
            let e = lock(&self.engine);
            let m = e.policy().migration.clone();
            let held_back = e.data_held_back();
            (moving::decide(e.outgrown(), e.mobility(), &m, held_back), m)
        };
        let Some(decided) = decided else {
            self.moving = Moving::Idle;
            return;
        };
        let key = decided.key();
        let since = match &self.moving {
            Moving::Since(t, k) if *k == key => *t,
            Moving::Decided(k) if *k == key => return,
            _ => now,
        };
        self.moving = Moving::Since(since, key.clone());
        if now.saturating_sub(since) < Duration::from_millis(m.after_ms) {
            return;
        }
        let downtime = Duration::from_millis(m.downtime_ms);
        let (reason, answer) = match &decided.to {
            Err(_) => (decided.reason.clone(), None),
            Ok(to) => match self
                .mover
                .as_ref()
                .map(|mv| mv.start_migration(to, downtime))
            {
                Some(Ok(rx)) => (decided.reason.clone(), Some(rx)),
                Some(Err(e)) => (format!("{}; cannot move: {e}", decided.reason), None),
                None => (
                    format!("{}; cannot move: no migration channel", decided.reason),
                    None,
                ),
            },
        };
        log::info!("policy: {reason}");
        self.write(migration_event(now, &decided, &reason, answer.is_some()));
        self.moving = match answer {
            None => Moving::Decided(key),
            Some(answer) => {
                let mut e = lock(&self.engine);
                let data_here = e.mobility().data_set.as_deref().is_some_and(|d| m.holds(d));
                let left_before = match decided.trigger {
                    Trigger::Outgrown(o) => e.leaving_for_need(o, data_here),
                    Trigger::Data { .. } => e.mobility().left.clone(),
                };
                Moving::Started {
                    key,
                    answer,
                    left_before,
                }
            }
        };
    }

    /// Whether a migration is still running; one that ended in failure is
    /// logged and its reason decided.
    fn migration_running(&mut self, now: Duration) -> bool {
        let Moving::Started { answer, .. } = &self.moving else {
            return false;
        };
        let why = match answer.try_recv() {
            Err(TryRecvError::Empty) | Ok(Ok(_)) => return true,
            Ok(Err(why)) => why,
            Err(TryRecvError::Disconnected) => "the migration ended without an answer".into(),
        };
        self.migration_failed(now, &why);
        if let Moving::Started {
            key, left_before, ..
        } = std::mem::replace(&mut self.moving, Moving::Idle)
        {
            lock(&self.engine).set_left(left_before);
            self.moving = Moving::Decided(key);
        }
        true
    }

    /// A removal perfvmm withdrew can still complete: the guest may have
    /// acknowledged it, and taken the vCPU offline, before a grow withdrew
    /// it. Enables vCPUs again up to the allocation the engine holds.
    fn restore_vcpus(&mut self) {
        let want = lock(&self.engine).allocation(Resource::Vcpus);
        let want = u32::try_from(want).unwrap_or(u32::MAX);
        let have = self.vcpus.count();
        if have >= want {
            return;
        }
        let now = self.now();
        match self.vcpus.resize(want) {
            Ok(()) => {
                log::info!("vCPUs: a withdrawn removal completed; {have} → {want} again");
                self.pending[Resource::Vcpus as usize] =
                    Some((u64::from(have), u64::from(want), now));
                self.write(json!({
                    "t_ms": now.as_millis() as u64,
                    "event": "re-added",
                    "from": have,
                    "to": want,
                }));
            }
            Err(e) => log::warn!("vCPUs: cannot enable {want} again: {e}"),
        }
    }

    /// A manual resize (control API): applied at once, logged like any decision.
    pub fn manual_resize(&mut self, r: Resource, to: u64) -> Value {
        let now = self.now();
        let (decision, current) = {
            let mut e = lock(&self.engine);
            let d = e.set_allocation(now, r, to, "manual resize through the API");
            (d, e.allocation(r))
        };
        match decision {
            Some(d) => {
                self.apply(d);
                self.recent.back().cloned().unwrap_or_default()
            }
            None => json!({
                "resource": r,
                "to": current,
                "applied": true,
                "reason": "already at that size (after the policy's bounds)",
            }),
        }
    }

    /// Which files a reload may read.
    pub fn reload_scope(&self) -> &ReloadScope {
        &self.scope
    }

    /// Reads the policy file again (or `path`, within the reload scope) and
    /// puts it in force. The control API reads the file without holding the
    /// controller ([`ReloadScope::resolve`], [`Policy::load`], then
    /// [`Self::put_policy`]); this does all three, for tests and tools.
    pub fn reload_policy(&mut self, path: Option<PathBuf>) -> Result<Value, ReloadError> {
        let path = self.scope.resolve(path.as_deref())?;
        let policy = Policy::load(&path)?;
        Ok(self.put_policy(path, policy))
    }

    /// Puts `policy`, read from `path`, in force and logs it.
    pub fn put_policy(&mut self, path: PathBuf, policy: Policy) -> Value {
        lock(&self.engine).reload(policy);
        self.policy_path = Some(path.clone());
        let t = self.now().as_millis() as u64;
        let v = json!({ "t_ms": t, "event": "policy_reloaded", "path": path });
        log::info!("policy reloaded from {}", path.display());
        self.write(v.clone());
        // New bounds may change allocations at once.
        self.tick();
        v
    }

    /// Closes the decision log (saying how many lines its limit dropped).
    pub fn close_log(&mut self) {
        self.log.close();
    }

    /// Allocation, bounds, hinted demand, open phases and memory state.
    pub fn status(&self) -> Value {
        let e = lock(&self.engine);
        let lead_ms = |r| e.lead(r).as_millis() as u64;
        json!({
            "uptime_ms": self.now().as_millis() as u64,
            "allocations": e.allocations(),
            "open_phases": e.open_phases(),
            "lead_ms": { "vcpus": lead_ms(Resource::Vcpus), "memory": lead_ms(Resource::Memory) },
            "scheduled_phases": e.schedule().map(|s| s.phases().len()).unwrap_or(0),
            "memory": self.memory.status(),
            "policy_file": self.policy_path,
        })
    }

    pub fn recent_decisions(&self) -> Vec<Value> {
        self.recent.iter().cloned().collect()
    }

    pub fn counts(&self) -> DecisionCounts {
        self.counts
    }

    pub fn memory_status(&self) -> MemoryStatus {
        self.memory.status()
    }

    pub fn engine(&self) -> &Arc<Mutex<Engine>> {
        &self.engine
    }
}

/// The decision log's `migration` event for `decided`.
fn migration_event(now: Duration, decided: &Move, reason: &str, moving: bool) -> Value {
    let mut event = json!({
        "t_ms": now.as_millis() as u64,
        "event": "migration",
        "action": if moving { "move" } else { "stay" },
        "trigger": decided.trigger.as_str(),
        "reason": reason,
    });
    match &decided.trigger {
        Trigger::Outgrown(o) => {
            event["resource"] = json!(o.resource.as_str());
            event["wanted"] = json!(o.wanted);
            event["max"] = json!(o.max);
        }
        Trigger::Data { data_set, .. } => event["data_set"] = json!(data_set),
    }
    event
}

#[cfg(test)]
mod tests {
    use std::sync::mpsc::channel;

    use guest_hints::client::hint;
    use guest_hints::wire::Locality;
    use virtio_perf_device::HintSink;

    use super::*;
    use crate::actuators::{MemoryResizeError, ResizeError};
    use crate::control::{HintLog, PolicySink};
    use crate::policy::VmLimits;

    const MIB: u64 = 1 << 20;

    /// What the mock actuators were asked, shared with the test.
    #[derive(Default)]
    struct Calls {
        vcpus: Vec<u32>,
        /// vCPUs enabled: the last resize, less late ejects the test makes.
        enabled: u32,
        memory: Vec<u64>,
        ejected: Vec<u32>,
        refuse_memory: bool,
    }

    struct MockVcpus(Arc<Mutex<Calls>>);
    struct MockMemory(Arc<Mutex<Calls>>);

    impl VcpuActuator for MockVcpus {
        fn resize(&mut self, to: u32) -> Result<(), ResizeError> {
            let mut c = lock(&self.0);
            c.vcpus.push(to);
            c.enabled = to;
            Ok(())
        }
        fn take_ejected(&mut self) -> Vec<u32> {
            std::mem::take(&mut lock(&self.0).ejected)
        }
        fn count(&self) -> u32 {
            lock(&self.0).enabled
        }
        fn in_guest(&mut self) -> u32 {
            lock(&self.0).vcpus.last().copied().unwrap_or(1)
        }
        fn run_time(&self) -> Duration {
            Duration::ZERO
        }
    }

    impl MemoryActuator for MockMemory {
        fn resize(&mut self, bytes: u64) -> Result<(), MemoryResizeError> {
            let mut c = lock(&self.0);
            if c.refuse_memory {
                return Err(MemoryResizeError::NoVirtioMemDriver(bytes >> 20));
            }
            c.memory.push(bytes);
            Ok(())
        }
        fn tick(&mut self) -> Option<u64> {
            None
        }
        fn status(&self) -> MemoryStatus {
            MemoryStatus::default()
        }
    }

    struct Fixture {
        controller: Controller,
        sink: PolicySink,
        calls: Arc<Mutex<Calls>>,
        log_path: PathBuf,
    }

    impl Fixture {
        fn new(name: &str) -> Self {
            let start = Instant::now();
            let limits = VmLimits {
                boot_vcpus: 1,
                max_vcpus: 4,
                boot_memory: 512 * MIB,
                max_memory: 1024 * MIB,
            };
            let engine = Arc::new(Mutex::new(Engine::new(Policy::default(), limits)));
            let (tx, rx) = channel();
            let hint_log = Arc::new(Mutex::new(HintLog::new(None, 0, start).unwrap()));
            let sink = PolicySink::new(engine.clone(), hint_log, tx, start);
            let calls = Arc::new(Mutex::new(Calls::default()));
            let actuators = Actuators {
                vcpus: Box::new(MockVcpus(calls.clone())),
                memory: Box::new(MockMemory(calls.clone())),
            };
            let log_path = std::env::temp_dir().join(format!(
                "perfvmm-controller-{name}-{}.jsonl",
                std::process::id()
            ));
            let log = JsonLines::create("decision log", Some(&log_path), 1 << 20).unwrap();
            let scope = ReloadScope {
                start_file: None,
                dir: Some(std::env::temp_dir()),
            };
            let controller = Controller::new(engine, rx, actuators, log, scope, start);
            Fixture {
                controller,
                sink,
                calls,
                log_path,
            }
        }

        fn log_lines(&self) -> Vec<Value> {
            std::fs::read_to_string(&self.log_path)
                .unwrap()
                .lines()
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        }
    }

    impl Drop for Fixture {
        fn drop(&mut self) {
            let _ = std::fs::remove_file(&self.log_path);
        }
    }

    #[test]
    fn a_hint_decision_is_applied_and_logged() {
        let mut f = Fixture::new("apply");
        f.sink.hint(0, 1, &hint::parallelism(3, 3, 0.0));
        assert!(
            lock(&f.calls).vcpus.is_empty(),
            "applied on drain, not in the sink"
        );
        f.controller.drain();
        assert_eq!(lock(&f.calls).vcpus, vec![3]);
        let lines = f.log_lines();
        assert_eq!(lines.len(), 1);
        assert_eq!(lines[0]["to"], 3);
        assert_eq!(lines[0]["applied"], true);
        assert_eq!(f.controller.counts().applied[Resource::Vcpus as usize], 1);
        assert_eq!(f.controller.recent_decisions(), lines);
    }

    #[test]
    fn a_refused_decision_is_logged_with_its_reason_and_not_retried() {
        let mut f = Fixture::new("refuse");
        lock(&f.calls).refuse_memory = true;
        f.sink.hint(0, 1, &hint::memory(700 * MIB, 700 * MIB, 0));
        f.controller.drain();
        let lines = f.log_lines();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0]["applied"], false);
        assert!(lines[0]["error"].as_str().unwrap().contains("virtio-mem"));
        assert_eq!(f.controller.counts().refused[Resource::Memory as usize], 1);
        f.controller.tick();
        assert_eq!(f.log_lines().len(), 1, "no retry until the demand moves");
    }

    #[test]
    fn manual_resizes_and_ejections() {
        let mut f = Fixture::new("manual");
        let v = f.controller.manual_resize(Resource::Vcpus, 3);
        assert_eq!(
            (v["to"].as_u64(), v["applied"].as_bool()),
            (Some(3), Some(true))
        );
        let again = f.controller.manual_resize(Resource::Vcpus, 3);
        assert!(again["reason"].as_str().unwrap().contains("already"));
        let v = f.controller.manual_resize(Resource::Vcpus, 99);
        assert_eq!(v["to"], 4, "clamped to the VM's max");
        assert_eq!(lock(&f.calls).vcpus, vec![3, 4]);
        lock(&f.calls).ejected = vec![3];
        f.controller.tick();
        let last = f.log_lines().pop().unwrap();
        assert_eq!(
            (last["event"].as_str(), last["vcpu"].as_u64()),
            (Some("ejected"), Some(3))
        );
        // A withdrawn removal the guest completed anyway: 4 wanted, 3
        // enabled after the eject; perfvmm enables the fourth again.
        {
            let mut c = lock(&f.calls);
            c.ejected = vec![3];
            c.enabled = 3;
        }
        f.controller.tick();
        assert_eq!(lock(&f.calls).vcpus, vec![3, 4, 4]);
        let last = f.log_lines().pop().unwrap();
        assert_eq!(
            (
                last["event"].as_str(),
                last["from"].as_u64(),
                last["to"].as_u64()
            ),
            (Some("re-added"), Some(3), Some(4))
        );
    }

    #[test]
    fn reload_needs_a_readable_valid_policy() {
        let mut f = Fixture::new("reload");
        assert!(matches!(
            f.controller.reload_policy(None),
            Err(ReloadError::NoPolicyFile)
        ));
        let path = f.log_path.with_extension("toml");
        std::fs::write(&path, "[vcpus]\nmax = 0\n").unwrap();
        let e = f.controller.reload_policy(Some(path.clone())).unwrap_err();
        assert!(e.to_string().contains("vcpus.max"), "{e}");
        std::fs::write(&path, "[vcpus]\nmax = 2\n").unwrap();
        let v = f.controller.reload_policy(Some(path.clone())).unwrap();
        assert_eq!(v["event"], "policy_reloaded");
        assert_eq!(
            f.controller.status()["policy_file"],
            path.display().to_string()
        );
        std::fs::remove_file(&path).unwrap();
    }

    #[test]
    fn grows_are_timed_until_the_guest_takes_them() {
        let mut f = Fixture::new("latency");
        // The mock guest takes each grow at once: five quick measurements.
        for _ in 0..5 {
            f.controller.manual_resize(Resource::Vcpus, 3);
            f.controller.tick();
            f.controller.manual_resize(Resource::Vcpus, 1);
        }
        let e = lock(&f.controller.engine);
        assert!(
            e.lead(Resource::Vcpus) < Duration::from_millis(900),
            "measured, not the default: {:?}",
            e.lead(Resource::Vcpus)
        );
        assert_eq!(e.lead(Resource::Memory), Duration::from_millis(900));
    }

    #[test]
    fn a_removal_the_guest_never_completes_is_reported_refused() {
        let mut f = Fixture::new("removal");
        f.controller.manual_resize(Resource::Vcpus, 3);
        // The mock guest holds whatever it was last asked for; make it keep 3.
        f.controller.removal = None;
        f.controller.apply(Decision {
            t_ms: 0,
            resource: Resource::Vcpus,
            from: 3,
            to: 1,
            reason: "test".into(),
            hints: Vec::new(),
            clamped: false,
            rate_limited: 0,
        });
        lock(&f.calls).vcpus.push(3);
        f.controller.removal = Some((1, Duration::ZERO));
        f.controller.start -= REMOVAL_DEADLINE;
        f.controller.tick();
        let last = f.log_lines().pop().unwrap();
        assert_eq!(last["applied"], false, "{last}");
        assert!(last["error"].as_str().unwrap().contains("did not eject"));
        assert_eq!(lock(&f.controller.engine).allocation(Resource::Vcpus), 3);
    }

    #[test]
    fn recent_decisions_are_bounded() {
        let mut f = Fixture::new("recent");
        for i in 0..(RECENT_DECISIONS as u64 + 10) {
            f.controller.manual_resize(Resource::Vcpus, 1 + (i % 2) * 2);
        }
        assert_eq!(f.controller.recent_decisions().len(), RECENT_DECISIONS);
    }

    /// The decision log's migration events.
    fn migration_events(f: &Fixture) -> Vec<Value> {
        f.log_lines()
            .into_iter()
            .filter(|v| {
                v["event"]
                    .as_str()
                    .is_some_and(|e| e.starts_with("migration"))
            })
            .collect()
    }

    /// A controller whose migrations go to the returned jobs' channel.
    fn with_mover(name: &str) -> (Fixture, crate::control::snapshot::SnapshotJobs) {
        let mut f = Fixture::new(name);
        let (requests, jobs) = crate::control::snapshot::channel(None, true).unwrap();
        f.controller.set_mover(requests);
        (f, jobs)
    }

    /// The migration the controller started.
    fn started(
        jobs: &crate::control::snapshot::SnapshotJobs,
    ) -> crate::control::snapshot::MigrateJob {
        match jobs.jobs.try_recv() {
            Ok(crate::control::snapshot::Job::Migrate(job)) => job,
            _ => panic!("no migration started"),
        }
    }

    fn small_host(f: &mut Fixture, target: &str) {
        let mut policy = Policy::default();
        policy.vcpus.max = 2;
        policy.migration.target = target.into();
        policy.migration.after_ms = 0;
        f.controller.put_policy("small.toml".into(), policy);
    }

    #[test]
    fn a_need_above_this_host_moves_the_vm_to_the_policys_target_once() {
        let (mut f, jobs) = with_mover("move");
        small_host(&mut f, "unix:/run/big-host.sock");
        f.sink.hint(0, 1, &hint::parallelism(2, 2, 0.0));
        f.controller.drain();
        f.controller.tick();
        assert!(migration_events(&f).is_empty(), "2 vCPUs fit this host");
        f.sink.hint(0, 2, &hint::parallelism(4, 4, 0.0));
        f.controller.drain();
        f.controller.tick();
        let ev = migration_events(&f);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(ev[0]["action"], "move", "{}", ev[0]);
        assert_eq!(
            (ev[0]["wanted"].as_u64(), ev[0]["max"].as_u64()),
            (Some(4), Some(2))
        );
        let job = started(&jobs);
        assert_eq!(job.to.to_string(), "unix:/run/big-host.sock");
        assert_eq!(job.downtime, Duration::from_millis(300));
        // It failed: said once, and not tried again while the need lasts.
        job.reply
            .send(Err("the target refused the VM".into()))
            .unwrap();
        f.controller.tick();
        f.controller.tick();
        let ev = migration_events(&f);
        assert_eq!(ev.len(), 2, "{ev:?}");
        assert_eq!(ev[1]["event"], "migration_failed");
        assert!(jobs.jobs.try_recv().is_err(), "one attempt per episode");
    }

    #[test]
    fn a_guest_that_declares_its_work_not_relocatable_stays_and_the_log_says_why() {
        for (placement, why) in [
            (
                hint::placement(false, false, Locality::Any),
                "not relocatable",
            ),
            (hint::placement(true, true, Locality::Any), "monolithic"),
        ] {
            let (mut f, jobs) = with_mover("stay");
            small_host(&mut f, "unix:/run/big-host.sock");
            f.sink.hint(0, 1, &placement);
            f.sink.hint(0, 2, &hint::parallelism(4, 4, 0.0));
            f.controller.drain();
            f.controller.tick();
            let ev = migration_events(&f);
            assert_eq!(ev.len(), 1, "{ev:?}");
            assert_eq!(ev[0]["action"], "stay");
            assert!(ev[0]["reason"].as_str().unwrap().contains(why), "{}", ev[0]);
            assert!(jobs.jobs.try_recv().is_err(), "nothing moves");
        }
        // No target: the log says the need outgrew this host.
        let mut f = Fixture::new("notarget");
        small_host(&mut f, "");
        f.sink.hint(0, 1, &hint::parallelism(4, 4, 0.0));
        f.controller.drain();
        f.controller.tick();
        let ev = migration_events(&f);
        assert!(
            ev[0]["reason"]
                .as_str()
                .unwrap()
                .contains("no [migration] target"),
            "{ev:?}"
        );
    }

    /// A guest that names a data set another host holds moves there,
    /// though its needs fit this host; one that names a data set this host
    /// holds stays, and nothing is logged.
    #[test]
    fn the_compute_moves_to_the_host_that_holds_its_data() {
        let (mut f, jobs) = with_mover("data");
        let mut policy = Policy::default();
        policy.migration.after_ms = 0;
        policy.migration.local_data = vec!["census".into()];
        policy
            .migration
            .data
            .insert("genome".into(), "unix:/run/genome-host.sock".into());
        f.controller.put_policy("data.toml".into(), policy);
        f.sink.hint(0, 1, &hint::data_set("census").unwrap());
        f.controller.drain();
        f.controller.tick();
        assert!(migration_events(&f).is_empty(), "its data is here");
        f.sink.hint(0, 2, &hint::data_set("genome").unwrap());
        f.controller.drain();
        f.controller.tick();
        let ev = migration_events(&f);
        assert_eq!(ev.len(), 1, "{ev:?}");
        assert_eq!(
            (&ev[0]["action"], &ev[0]["trigger"], &ev[0]["data_set"]),
            (&json!("move"), &json!("data"), &json!("genome")),
            "{}",
            ev[0]
        );
        let job = started(&jobs);
        assert_eq!(job.to.to_string(), "unix:/run/genome-host.sock");
    }

    /// A VM that leaves the host holding its data for its need carries
    /// that, so that the next host does not send it back for its data;
    /// if the move fails, it did not leave.
    #[test]
    fn leaving_its_data_for_its_need_is_remembered_until_the_move_fails() {
        let (mut f, jobs) = with_mover("left");
        let mut policy = Policy::default();
        policy.vcpus.max = 2;
        policy.migration.target = "unix:/run/big-host.sock".into();
        policy.migration.after_ms = 0;
        policy.migration.local_data = vec!["genome".into()];
        f.controller.put_policy("a.toml".into(), policy);
        f.sink.hint(0, 1, &hint::data_set("genome").unwrap());
        f.sink.hint(0, 2, &hint::parallelism(4, 4, 0.0));
        f.controller.drain();
        f.controller.tick();
        let job = started(&jobs);
        assert!(lock(&f.controller.engine).data_held_back());
        job.reply.send(Err("refused".into())).unwrap();
        f.controller.tick();
        assert!(!lock(&f.controller.engine).data_held_back());
        assert_eq!(lock(&f.controller.engine).mobility().left, None);
    }

    /// A decision holds while its reason and destination do: work that
    /// becomes relocatable after a "stay" is moved, once.
    #[test]
    fn a_new_reason_is_decided_again() {
        let (mut f, jobs) = with_mover("redecide");
        small_host(&mut f, "unix:/run/big-host.sock");
        f.sink
            .hint(0, 1, &hint::placement(false, false, Locality::Any));
        f.sink.hint(0, 2, &hint::parallelism(4, 4, 0.0));
        f.controller.drain();
        f.controller.tick();
        f.controller.tick();
        assert_eq!(migration_events(&f).len(), 1, "stay, said once");
        f.sink
            .hint(0, 3, &hint::placement(true, false, Locality::Any));
        f.controller.drain();
        f.controller.tick();
        f.controller.tick();
        let ev = migration_events(&f);
        let actions: Vec<&str> = ev.iter().filter_map(|e| e["action"].as_str()).collect();
        assert_eq!(actions, ["stay", "move"], "{ev:?}");
        assert!(jobs.jobs.try_recv().is_ok(), "the move started");
        assert_eq!(
            lock(&f.controller.engine).mobility().left,
            None,
            "no data set here: nothing held back wherever it goes"
        );
    }
}
