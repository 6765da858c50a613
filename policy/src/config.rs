//! The policy file (`--policy FILE`, TOML): how hints become allocations.
//! Reference: `docs/policy.md`. Every key has a default; unknown keys are
//! errors, reported with their line.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::endpoint::Endpoint;

/// What to do with a hint that asks for more than the policy allows.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Untrusted {
    /// Bring the request within bounds and act on it (outcome `clamped`).
    Clamp,
    /// Do not act on it (outcome `rejected`).
    Ignore,
}

/// What sizes a resource that no hint and no schedule speaks for (modes
/// `hints` and `schedule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Unhinted {
    /// Observed usage, as the `reactive` mode sizes it (`[reactive]`).
    Usage,
    /// Nothing: the allocation holds until a hint moves it.
    Hold,
}

/// How vCPU threads are pinned to host CPUs.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PinStrategy {
    /// No pinning.
    None,
    /// vCPU i on the i-th host CPU of the set: neighbours share caches.
    Compact,
    /// vCPUs spread evenly over the set.
    Spread,
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct VcpuPolicy {
    /// Never fewer vCPUs than this.
    pub min: u32,
    /// Never more than this (also capped by `--cpus max=`).
    pub max: u32,
    /// vCPUs added on top of the hinted parallelism.
    pub headroom: u32,
}

impl Default for VcpuPolicy {
    fn default() -> Self {
        VcpuPolicy {
            min: 1,
            max: 255,
            headroom: 0,
        }
    }
}

/// A size in bytes, written as on the command line ("512M", "2G").
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Size(pub u64);

impl Serialize for Size {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let b = self.0;
        let text = match b {
            0 => "0M".to_string(),
            _ if b.is_multiple_of(1 << 40) => format!("{}T", b >> 40),
            _ if b.is_multiple_of(1 << 30) => format!("{}G", b >> 30),
            _ if b.is_multiple_of(1 << 20) => format!("{}M", b >> 20),
            _ => format!("{}K", b.div_ceil(1 << 10)),
        };
        s.serialize_str(&text)
    }
}

impl<'de> Deserialize<'de> for Size {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let text = String::deserialize(d)?;
        guest_hints::size::parse_size(&text)
            .map(Size)
            .map_err(|e| serde::de::Error::custom(e.to_string()))
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MemoryPolicy {
    /// Never less guest memory than this.
    pub min: Size,
    /// Never more than this (also capped by `--memory max=`).
    pub max: Size,
    /// Memory the guest's kernel and services need besides the hinted work:
    /// added to the larger of the hinted working set and peak.
    pub reserve: Size,
}

impl Default for MemoryPolicy {
    fn default() -> Self {
        MemoryPolicy {
            min: Size(128 << 20),
            max: Size(1 << 40),
            reserve: Size(192 << 20),
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TimingPolicy {
    /// A lower demand must hold this long before the allocation shrinks.
    pub shrink_after_ms: u64,
    /// Least time between a change and a following shrink.
    pub cooldown_ms: u64,
    /// How far ahead of a scheduled phase its resources are provisioned,
    /// per vCPU added (or per memory resize), until perfvmm has measured
    /// how long its own resizes take (then the 95th percentile of the
    /// recent ones).
    pub lead_ms: u64,
    /// Added to the measured lead time: the policy tick that makes the
    /// decision and the guest's own onlining of what it is given.
    pub lead_margin_ms: u64,
}

impl Default for TimingPolicy {
    fn default() -> Self {
        TimingPolicy {
            shrink_after_ms: 2_000,
            cooldown_ms: 500,
            lead_ms: 900,
            lead_margin_ms: 250,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HintPolicy {
    /// Hints per second a guest may send on average...
    pub rate_per_sec: u32,
    /// ...and in a burst.
    pub burst: u32,
    pub untrusted: Untrusted,
    /// What sizes vCPUs while no hint or schedule speaks for them.
    pub unhinted_vcpus: Unhinted,
    /// What sizes memory while no hint or schedule speaks for it.
    pub unhinted_memory: Unhinted,
}

impl Default for HintPolicy {
    fn default() -> Self {
        HintPolicy {
            rate_per_sec: 200,
            burst: 400,
            untrusted: Untrusted::Clamp,
            // A VM is not resized unless something asks (docs/policy.md
            // says when "usage" pays, and when it does not).
            unhinted_vcpus: Unhinted::Hold,
            unhinted_memory: Unhinted::Hold,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct PlacementPolicy {
    /// Host CPUs the vCPUs may use, as a list such as "0-3,6" (empty: all).
    pub host_cpus: String,
    pub strategy: PinStrategy,
    /// Host NUMA node guest memory is bound to (absent: no binding).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub numa_node: Option<u32>,
}

impl Default for PlacementPolicy {
    fn default() -> Self {
        PlacementPolicy {
            host_cpus: String::new(),
            strategy: PinStrategy::None,
            numa_node: None,
        }
    }
}

/// How allocations are decided.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// The boot size, never changed (manual resizes through the API aside).
    Static,
    /// No hints: usage observed from the host side (vCPU threads' run time,
    /// the balloon's statistics) over a moving window, a percentile and a
    /// margin, as Kubernetes' VPA and Borg's Autopilot size from usage.
    Reactive,
    /// The guest's hints, as they arrive.
    Hints,
    /// Hints, and the program's profile-derived schedule where its
    /// manifest has one: each phase provisioned a lead time ahead.
    #[default]
    Schedule,
}

impl Mode {
    pub fn as_str(self) -> &'static str {
        match self {
            Mode::Static => "static",
            Mode::Reactive => "reactive",
            Mode::Hints => "hints",
            Mode::Schedule => "schedule",
        }
    }
}

/// The `reactive` mode's parameters.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ReactivePolicy {
    /// Usage samples older than this are forgotten.
    pub window_ms: u64,
    /// The share of samples the allocation must cover (0 < p <= 1).
    pub percentile: f64,
    /// Added on top of that percentile, as a fraction of it.
    pub margin: f64,
}

impl Default for ReactivePolicy {
    /// Tuned on resize-bench's training set (sort, autopar, pipeline; not
    /// the workloads it is compared on) by `tune-reactive`, with the nested
    /// latency model (docs/benchmarks.md).
    fn default() -> Self {
        ReactivePolicy {
            window_ms: 2_000,
            percentile: 0.95,
            margin: 0.1,
        }
    }
}

/// The whole policy.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Policy {
    /// How allocations are decided.
    pub mode: Mode,
    pub vcpus: VcpuPolicy,
    pub memory: MemoryPolicy,
    pub timing: TimingPolicy,
    pub hints: HintPolicy,
    pub placement: PlacementPolicy,
    pub reactive: ReactivePolicy,
    pub migration: MigrationPolicy,
}

/// When the guest's declared needs outgrow this host's bounds: where the
/// VM moves (docs/policy.md, docs/migration.md).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct MigrationPolicy {
    /// A `perfvmm --incoming` waiting for this VM ("unix:PATH" or
    /// "tcp:IP:PORT"); empty: the decision log says the need outgrew this
    /// host, and the VM stays.
    pub target: String,
    /// How long the declared need must stay above this host's bounds
    /// before the VM moves.
    pub after_ms: u64,
    /// The pause the guest may notice.
    pub downtime_ms: u64,
    /// Data sets this host holds: a guest reading one of them stays.
    pub local_data: Vec<String>,
    /// Which `perfvmm --incoming` holds which data set (name → endpoint):
    /// a relocatable guest reading one of them moves there.
    pub data: BTreeMap<String, String>,
    /// Send the pages a guest that declared a working set is seen writing
    /// after the first round (docs/migration.md: measured, it did not pay
    /// in the nested harness, so it is off unless asked for).
    pub order_by_working_set: bool,
}

impl Default for MigrationPolicy {
    fn default() -> Self {
        MigrationPolicy {
            target: String::new(),
            after_ms: 2_000,
            downtime_ms: 300,
            local_data: Vec::new(),
            data: BTreeMap::new(),
            order_by_working_set: false,
        }
    }
}

/// The most data sets `[migration]` may name (`local_data` and `data` each).
pub const MAX_DATA_SETS: usize = 1024;

/// Whether `s` is an endpoint perfvmm can migrate to: what `ctl migrate`
/// and `--incoming` accept.
fn is_endpoint(s: &str) -> bool {
    s.parse::<Endpoint>().is_ok()
}

/// Whether `s` can name a data set: what a guest's hint can carry.
fn is_data_set(s: &str) -> bool {
    guest_hints::client::hint::data_set(s).is_some()
}

impl MigrationPolicy {
    /// Whether this host holds `data_set` (`local_data`).
    pub fn holds(&self, data_set: &str) -> bool {
        self.local_data.iter().any(|l| l == data_set)
    }

    fn check(&self) -> Result<(), String> {
        const ENDPOINT: &str = "\"unix:PATH\" or \"tcp:IP:PORT\"";
        if !self.target.is_empty() && !is_endpoint(&self.target) {
            return Err(format!("migration.target: {ENDPOINT}"));
        }
        if self.downtime_ms == 0 || self.downtime_ms > 60_000 {
            return Err("migration.downtime_ms: 1 to 60000".into());
        }
        if self.local_data.len() > MAX_DATA_SETS || self.data.len() > MAX_DATA_SETS {
            return Err(format!(
                "migration: at most {MAX_DATA_SETS} data sets in local_data and in data"
            ));
        }
        let names = self.local_data.iter().chain(self.data.keys());
        if let Some(bad) = names.into_iter().find(|n| !is_data_set(n)) {
            return Err(format!(
                "migration: data set {bad:?}: a name of 1 to {} bytes",
                guest_hints::wire::MAX_NAME_LEN
            ));
        }
        if let Some((name, to)) = self.data.iter().find(|(_, to)| !is_endpoint(to)) {
            return Err(format!("migration.data.{name}: {to:?} is not {ENDPOINT}"));
        }
        if let Some(both) = self.local_data.iter().find(|n| self.data.contains_key(*n)) {
            return Err(format!(
                "migration: data set {both:?} is both in local_data and in data"
            ));
        }
        Ok(())
    }
}

/// The largest policy file [`Policy::load`] reads.
pub const MAX_POLICY_BYTES: u64 = 1 << 20;

/// A policy file that could not be used.
#[derive(Debug, thiserror::Error)]
pub enum PolicyError {
    #[error("cannot read policy {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
    #[error("policy {path} is not a regular file of at most {MAX_POLICY_BYTES} bytes")]
    NotAPolicyFile { path: String },
    #[error("{path}: {message}")]
    Invalid { path: String, message: String },
}

impl Policy {
    /// Reads, parses and checks the policy file at `path`.
    pub fn load(path: &std::path::Path) -> Result<Policy, PolicyError> {
        use std::io::Read;
        use std::os::unix::fs::OpenOptionsExt;
        /// `O_NONBLOCK` on Linux (x86 and arm alike); std has no name for it.
        const O_NONBLOCK: i32 = 0o4000;
        let name = path.display().to_string();
        let read_err = |source| PolicyError::Read {
            path: name.clone(),
            source,
        };
        // Non-blocking, so that a FIFO cannot hold the caller; a regular
        // file reads the same either way.
        let file = std::fs::OpenOptions::new()
            .read(true)
            .custom_flags(O_NONBLOCK)
            .open(path)
            .map_err(read_err)?;
        let meta = file.metadata().map_err(read_err)?;
        if !meta.is_file() || meta.len() > MAX_POLICY_BYTES {
            return Err(PolicyError::NotAPolicyFile { path: name });
        }
        let mut text = String::new();
        file.take(MAX_POLICY_BYTES + 1)
            .read_to_string(&mut text)
            .map_err(read_err)?;
        Policy::from_toml(&name, &text)
    }

    /// Parses and checks a policy; errors name the key, line and reason.
    pub fn from_toml(path: &str, text: &str) -> Result<Policy, PolicyError> {
        let err = |message: String| PolicyError::Invalid {
            path: path.to_string(),
            message,
        };
        let p: Policy = toml::from_str(text).map_err(|e| {
            let line = e
                .span()
                .map(|s| text[..s.start.min(text.len())].matches('\n').count() + 1);
            let msg = e.message().trim().to_string();
            match line {
                Some(l) => err(format!("line {l}: {msg}")),
                None => err(msg),
            }
        })?;
        p.check().map_err(err)?;
        Ok(p)
    }

    /// Checks relations between keys.
    pub fn check(&self) -> Result<(), String> {
        if self.vcpus.min == 0 {
            return Err("vcpus.min: a VM needs at least 1 vCPU".into());
        }
        if self.vcpus.max < self.vcpus.min {
            return Err(format!(
                "vcpus.max ({}) is below vcpus.min ({})",
                self.vcpus.max, self.vcpus.min
            ));
        }
        if self.memory.max < self.memory.min {
            return Err(format!(
                "memory.max ({}) is below memory.min ({})",
                self.memory.max.0, self.memory.min.0
            ));
        }
        let r = &self.reactive;
        if !(r.percentile > 0.0 && r.percentile <= 1.0) {
            return Err("reactive.percentile must be above 0 and at most 1".into());
        }
        if !(0.0..=10.0).contains(&r.margin) || r.window_ms == 0 {
            return Err("reactive.margin must be 0 to 10 and reactive.window_ms at least 1".into());
        }
        if self.hints.rate_per_sec == 0 || self.hints.burst == 0 {
            return Err("hints.rate_per_sec and hints.burst must be at least 1".into());
        }
        if self
            .placement
            .numa_node
            .is_some_and(|n| n >= MAX_NUMA_NODES)
        {
            return Err(format!(
                "placement.numa_node: nodes are numbered below {MAX_NUMA_NODES}"
            ));
        }
        parse_cpu_list(&self.placement.host_cpus)
            .map_err(|e| format!("placement.host_cpus: {e}"))?;
        self.migration.check()
    }

    /// The built-in policy, as TOML.
    pub fn default_toml() -> String {
        let body = toml::to_string_pretty(&Policy::default())
            .unwrap_or_else(|e| format!("# cannot print the default policy: {e}\n"));
        format!(
            "# perfvmm's built-in policy (see docs/policy.md).\n\
             # vcpus.max is also capped by --cpus max=, memory.max by --memory max=\n\
             # (by the boot size without max=). placement.numa_node is unset.\n{body}"
        )
    }
}

/// NUMA node numbers perfvmm can bind to.
pub const MAX_NUMA_NODES: u32 = 64;

/// Parses "0-3,6" into CPU numbers.
pub fn parse_cpu_list(s: &str) -> Result<Vec<usize>, String> {
    let mut cpus = Vec::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (a, b) = match part.split_once('-') {
            Some((a, b)) => (a.trim(), b.trim()),
            None => (part, part),
        };
        let a: usize = a
            .parse()
            .map_err(|_| format!("'{part}' is not a CPU or range"))?;
        let b: usize = b
            .parse()
            .map_err(|_| format!("'{part}' is not a CPU or range"))?;
        if b < a || b > 4095 {
            return Err(format!("'{part}' is not a valid range"));
        }
        cpus.extend(a..=b);
    }
    cpus.sort_unstable();
    cpus.dedup();
    Ok(cpus)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_round_trips() {
        let text = Policy::default_toml();
        assert!(
            text.contains("[vcpus]") && text.contains("shrink_after_ms = 2000"),
            "{text}"
        );
        assert_eq!(
            Policy::from_toml("default", &text).unwrap(),
            Policy::default()
        );
    }

    #[test]
    fn sizes_and_sections() {
        let p = Policy::from_toml(
            "p",
            "[vcpus]\nmin = 1\nmax = 4\n[placement]\nhost_cpus = \"0-1,3\"\nstrategy = \"spread\"\n",
        )
        .unwrap();
        assert_eq!(p.vcpus.max, 4);
        assert_eq!(
            parse_cpu_list(&p.placement.host_cpus).unwrap(),
            vec![0, 1, 3]
        );
        let p = Policy::from_toml("p", "[memory]\nreserve = \"64M\"\nmax = \"2G\"\n").unwrap();
        assert_eq!(
            (p.memory.reserve, p.memory.max),
            (Size(64 << 20), Size(2 << 30))
        );
    }

    #[test]
    fn errors_name_key_line_and_reason() {
        let e = Policy::from_toml("p.toml", "[vcpus]\nmin = 1\nmaxx = 4\n")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("p.toml") && e.contains("line 3") && e.contains("maxx"),
            "{e}"
        );
        let e = Policy::from_toml("p.toml", "[memory]\nmin = \"1G\"\nmax = \"12XB\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("line 3") && e.contains("12XB"), "{e}");
        let e = Policy::from_toml("p.toml", "[memory]\nmin = \"1G\"\nmax = \"512M\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("memory.max"), "{e}");
        let e = Policy::from_toml("p.toml", "[vcpus]\nmin = 4\nmax = 2\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("vcpus.max"), "{e}");
        let e = Policy::from_toml("p.toml", "[placement]\nhost_cpus = \"3-1\"\n")
            .unwrap_err()
            .to_string();
        assert!(e.contains("host_cpus"), "{e}");
        assert!(Policy::from_toml("p.toml", "[hints]\nuntrusted = \"maybe\"\n").is_err());
    }

    #[test]
    fn data_sets_name_what_a_hint_can_carry_and_hosts_perfvmm_can_reach() {
        let good = "[migration]\nlocal_data = [\"census\"]\n\
                    [migration.data]\ngenome = \"tcp:10.0.0.7:4000\"\n";
        let p = Policy::from_toml("p.toml", good).unwrap();
        assert_eq!(p.migration.data["genome"], "tcp:10.0.0.7:4000");
        assert_eq!(p.migration.local_data, ["census"]);
        let long = "x".repeat(49);
        for (bad, says) in [
            (
                "[migration.data]\ngenome = \"10.0.0.7:4000\"\n",
                "migration.data.genome",
            ),
            ("[migration]\nlocal_data = [\"\"]\n", "1 to 48 bytes"),
            (
                &format!("[migration.data]\n{long} = \"unix:/x\"\n"),
                "1 to 48 bytes",
            ),
            (
                "[migration]\nlocal_data = [\"g\"]\n[migration.data]\ng = \"unix:/x\"\n",
                "both",
            ),
        ] {
            let e = Policy::from_toml("p.toml", bad).unwrap_err().to_string();
            assert!(e.contains(says), "{bad}: {e}");
        }
    }

    #[test]
    fn load_refuses_what_is_not_a_small_regular_file_without_blocking() {
        let dir = std::env::temp_dir().join(format!("perfvmm-policy-load-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("fifo");
        let made = std::process::Command::new("mkfifo")
            .arg(&fifo)
            .status()
            .unwrap();
        assert!(made.success());
        let start = std::time::Instant::now();
        assert!(matches!(
            Policy::load(&fifo),
            Err(PolicyError::NotAPolicyFile { .. })
        ));
        assert!(
            start.elapsed() < std::time::Duration::from_secs(1),
            "no blocking"
        );
        assert!(matches!(
            Policy::load(std::path::Path::new("/dev/zero")),
            Err(PolicyError::NotAPolicyFile { .. })
        ));
        let big = dir.join("big.toml");
        std::fs::write(&big, vec![b'#'; MAX_POLICY_BYTES as usize + 1]).unwrap();
        assert!(matches!(
            Policy::load(&big),
            Err(PolicyError::NotAPolicyFile { .. })
        ));
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
