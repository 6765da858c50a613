//! Resize latency models and the seeded RNG their draws use.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::Resource;

/// The largest latency a model may hold, in milliseconds.
pub const MAX_LATENCY_MS: u64 = 600_000;
/// The most latencies a model may hold per list.
pub const MAX_LATENCIES: usize = 100_000;

/// A small deterministic RNG (xorshift64*): the same seed gives the same
/// draws on every machine.
#[derive(Clone, Debug)]
pub struct Rng(u64);

impl Rng {
    pub fn new(seed: u64) -> Self {
        // Xorshift needs a non-zero state; mix the seed so that nearby
        // seeds start far apart.
        let s = seed
            .wrapping_add(0x9e37_79b9_7f4a_7c15)
            .wrapping_mul(0xbf58_476d_1ce4_e5b9);
        Rng(if s == 0 { 0x2545_f491_4f6c_dd1d } else { s })
    }

    pub fn next_u64(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        self.0 = x;
        x.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    /// A whole number in `0..n` (`n` > 0), uniformly.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }
}

/// Resize latencies, decision → visible in the guest, per resource: an
/// empirical distribution drawn from uniformly.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct LatencyModel {
    pub name: String,
    /// vCPU hot-add: decision → the new CPU online in the guest.
    pub vcpus_ms: Vec<u64>,
    /// Memory grow: decision → the guest's `MemTotal` up by the amount.
    pub memory_ms: Vec<u64>,
    /// Shrinks, when measured separately; else the grow lists apply.
    pub vcpus_shrink_ms: Option<Vec<u64>>,
    pub memory_shrink_ms: Option<Vec<u64>>,
}

/// What a latency file must be.
const EXPECTED: &str = "expected an object {\"vcpus_ms\":[..],\"memory_ms\":[..]}";

/// A latency file as written: lists of milliseconds.
#[derive(Deserialize)]
#[serde(
    deny_unknown_fields,
    expecting = "an object {\"vcpus_ms\":[..],\"memory_ms\":[..]}"
)]
struct LatencyFile {
    vcpus_ms: Option<Vec<f64>>,
    memory_ms: Option<Vec<f64>>,
    vcpus_shrink_ms: Option<Vec<f64>>,
    memory_shrink_ms: Option<Vec<f64>>,
}

/// One list of a latency file, checked and rounded to whole milliseconds.
fn latencies(key: &str, items: Vec<f64>) -> Result<Vec<u64>, LatencyError> {
    let bad = |m: String| LatencyError::Invalid(m);
    if items.is_empty() || items.len() > MAX_LATENCIES {
        return Err(bad(format!(
            "{key}: expected 1 to {MAX_LATENCIES} latencies, got {}",
            items.len()
        )));
    }
    items
        .iter()
        .map(|&ms| {
            (0.0..=MAX_LATENCY_MS as f64)
                .contains(&ms)
                .then(|| ms.round() as u64)
                .ok_or_else(|| {
                    bad(format!(
                        "{key}: {ms} is not a latency from 0 to {MAX_LATENCY_MS} ms"
                    ))
                })
        })
        .collect()
}

/// A latency file that cannot be used.
#[derive(Clone, Debug, PartialEq, thiserror::Error)]
pub enum LatencyError {
    #[error("not JSON: {0}")]
    Json(String),
    #[error("{0}")]
    Invalid(String),
}

impl LatencyModel {
    /// The nested harness (QEMU TCG L1 with nested SVM): one entry per
    /// round of `resize-bench` runs 4 and 5 in `docs/benchmarks.md` (the
    /// runs with the guest's current 50 ms CPU onliner), each run's slowest
    /// round its published max and its other rounds its published p50.
    /// vCPUs: p50 310 ms, max 910 ms; memory: p50 270 ms, max 330 ms.
    pub fn nested() -> Self {
        LatencyModel {
            name: "nested".into(),
            // Run 4 (4 rounds): p50 260, max 910; run 5 (5 rounds): p50 310, max 740.
            vcpus_ms: vec![260, 260, 260, 910, 310, 310, 310, 310, 740],
            // Run 4: p50 270, max 320; run 5: p50 150, max 330.
            memory_ms: vec![270, 270, 270, 320, 150, 150, 150, 150, 330],
            vcpus_shrink_ms: None,
            memory_shrink_ms: None,
        }
    }

    /// Hardware KVM: no published guest-visible figure was found; an
    /// estimate from its parts (see `docs/simulator.md`). vCPUs: the
    /// guest's ACPI scan and CPU bring-up (about 10 ms) plus the wait for
    /// the guest's 50 ms onliner poll (0–50 ms); memory: virtio-mem plug
    /// requests and the kernel onlining a 128 MiB block (5–40 ms).
    pub fn hardware() -> Self {
        LatencyModel {
            name: "hardware".into(),
            vcpus_ms: vec![10, 15, 20, 25, 30, 35, 40, 45, 50, 55, 60],
            memory_ms: vec![5, 10, 10, 15, 15, 20, 20, 25, 30, 40],
            vcpus_shrink_ms: None,
            memory_shrink_ms: None,
        }
    }

    /// `nested` or `hardware`.
    pub fn builtin(name: &str) -> Option<Self> {
        match name {
            "nested" => Some(Self::nested()),
            "hardware" => Some(Self::hardware()),
            _ => None,
        }
    }

    /// A user's model: `{"vcpus_ms":[..],"memory_ms":[..]}`, optionally with
    /// `vcpus_shrink_ms` and `memory_shrink_ms`.
    pub fn from_json(name: &str, text: &str) -> Result<Self, LatencyError> {
        if text.trim_start().starts_with('[') {
            // serde's derived structs would read an array of the fields.
            return Err(LatencyError::Invalid(EXPECTED.into()));
        }
        let f: LatencyFile = serde_json::from_str(text).map_err(|e| {
            if e.is_data() {
                LatencyError::Invalid(e.to_string())
            } else {
                LatencyError::Json(e.to_string())
            }
        })?;
        let need = |key: &str, l: Option<Vec<f64>>| {
            l.ok_or_else(|| LatencyError::Invalid(format!("{key}: missing")))
        };
        Ok(LatencyModel {
            name: name.to_string(),
            vcpus_ms: latencies("vcpus_ms", need("vcpus_ms", f.vcpus_ms)?)?,
            memory_ms: latencies("memory_ms", need("memory_ms", f.memory_ms)?)?,
            vcpus_shrink_ms: f
                .vcpus_shrink_ms
                .map(|l| latencies("vcpus_shrink_ms", l))
                .transpose()?,
            memory_shrink_ms: f
                .memory_shrink_ms
                .map(|l| latencies("memory_shrink_ms", l))
                .transpose()?,
        })
    }

    pub(super) fn list(&self, r: Resource, grow: bool) -> &[u64] {
        match (r, grow) {
            (Resource::Vcpus, false) => self.vcpus_shrink_ms.as_deref().unwrap_or(&self.vcpus_ms),
            (Resource::Memory, false) => {
                self.memory_shrink_ms.as_deref().unwrap_or(&self.memory_ms)
            }
            (Resource::Vcpus, true) => &self.vcpus_ms,
            (Resource::Memory, true) => &self.memory_ms,
        }
    }

    /// One latency for a resize of `r` (a grow or a shrink).
    pub fn draw(&self, r: Resource, grow: bool, rng: &mut Rng) -> Duration {
        let l = self.list(r, grow);
        let ms = if l.is_empty() {
            0
        } else {
            l[rng.below(l.len())]
        };
        Duration::from_millis(ms)
    }

    /// The median and the largest latency of `r`'s grows, in ms.
    pub fn p50_max(&self, r: Resource) -> (u64, u64) {
        let mut v = self.list(r, true).to_vec();
        v.sort_unstable();
        let p50 = v.get(v.len().saturating_sub(1) / 2).copied().unwrap_or(0);
        (p50, v.last().copied().unwrap_or(0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_deterministic_and_uniform_enough() {
        let a: Vec<u64> = {
            let mut r = Rng::new(42);
            (0..5).map(|_| r.next_u64()).collect()
        };
        let mut r = Rng::new(42);
        assert_eq!(a, (0..5).map(|_| r.next_u64()).collect::<Vec<_>>());
        assert_ne!(a[0], Rng::new(43).next_u64());
        let mut zero = Rng::new(0);
        assert_ne!(zero.next_u64(), zero.next_u64(), "seed 0 works");
        let mut counts = [0u32; 7];
        let mut r = Rng::new(7);
        for _ in 0..70_000 {
            counts[r.below(7)] += 1;
        }
        assert!(
            counts.iter().all(|&c| (9_000..11_000).contains(&c)),
            "{counts:?}"
        );
    }

    #[test]
    fn latency_models() {
        let n = LatencyModel::nested();
        // The figures docs/simulator.md states.
        assert_eq!(n.p50_max(Resource::Vcpus), (310, 910));
        assert_eq!(n.p50_max(Resource::Memory), (270, 330));
        let h = LatencyModel::hardware();
        assert_eq!(h.p50_max(Resource::Vcpus), (35, 60));
        assert_eq!(h.p50_max(Resource::Memory), (15, 40));
        assert_eq!(LatencyModel::builtin("hardware"), Some(h));
        assert_eq!(LatencyModel::builtin("fast"), None);
        let mut a = Rng::new(3);
        let mut b = Rng::new(3);
        for _ in 0..20 {
            assert_eq!(
                n.draw(Resource::Vcpus, true, &mut a),
                n.draw(Resource::Vcpus, true, &mut b)
            );
        }
        let m = LatencyModel::from_json(
            "mine",
            r#"{"vcpus_ms":[100, 200.4],"memory_ms":[50],"memory_shrink_ms":[3000]}"#,
        )
        .unwrap();
        assert_eq!(
            (m.vcpus_ms.clone(), m.memory_ms.clone()),
            (vec![100, 200], vec![50])
        );
        assert_eq!(m.list(Resource::Memory, false), &[3000]);
        assert_eq!(
            m.list(Resource::Vcpus, false),
            &[100, 200],
            "grows stand in for shrinks"
        );
        for (text, needle) in [
            ("[1]", "expected an object"),
            ("{\"vcpus_ms\":[1]}", "memory_ms: missing"),
            ("{\"vcpus_ms\":[],\"memory_ms\":[1]}", "1 to"),
            ("{\"vcpus_ms\":[-1],\"memory_ms\":[1]}", "not a latency"),
            (
                "{\"vcpus_ms\":[1],\"memory_ms\":[1],\"cpu_ms\":[1]}",
                "unknown field `cpu_ms`, expected one of `vcpus_ms`, `memory_ms`",
            ),
            ("{\"vcpus_ms\":[1],", "not JSON"),
        ] {
            let e = LatencyModel::from_json("f", text).unwrap_err().to_string();
            assert!(e.contains(needle), "{text}: {e}");
        }
    }
}
