//! Whether a VM should run on another host, and which: from what its guest
//! declared (its needs, whether its work may move, the data set it reads)
//! and the operator's `[migration]` section. Pure: the controller times
//! the decision (`after_ms`), logs it and starts the migration.

use crate::config::MigrationPolicy;
use crate::engine::{Mobility, Outgrown};

/// Why the VM would be better off elsewhere.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Trigger {
    /// Its declared need is above this host's policy maximum.
    Outgrown(Outgrown),
    /// It reads a data set that another host holds (`[migration.data]`).
    Data { data_set: String, holder: String },
}

impl Trigger {
    /// The trigger's name in the decision log.
    pub fn as_str(&self) -> &'static str {
        match self {
            Trigger::Outgrown(_) => "outgrown",
            Trigger::Data { .. } => "data",
        }
    }
}

/// A reason to move and what follows from it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Move {
    pub trigger: Trigger,
    /// The endpoint to migrate to, or why the VM stays.
    pub to: Result<String, String>,
    /// The whole of it in one sentence, for the decision log.
    pub reason: String,
}

impl Move {
    /// What makes two decisions the same one: their trigger's kind and
    /// where they lead (a move is decided once while its key holds).
    pub fn key(&self) -> String {
        format!("{}:{:?}", self.trigger.as_str(), self.to)
    }
}

/// Whether the VM should move, and where: `None` when nothing calls for it.
///
/// A need above this host's bounds comes first; it moves the VM to the
/// host that holds the data set it reads when the operator named one, else
/// to `target`. Otherwise a data set held by another host (and not by this
/// one, `local_data`) moves the compute to the data. Work the guest
/// declared not relocatable, or monolithic, never moves. The guest learns
/// nothing of where it went.
///
/// `held_back`: the VM came here because its need outgrew the host that
/// holds its data, and still does ([`crate::Engine::data_held_back`]); its
/// data is then no reason to move, nor a place to go (that host would
/// only send the VM back here).
pub fn decide(
    outgrown: Option<Outgrown>,
    mobility: &Mobility,
    m: &MigrationPolicy,
    held_back: bool,
) -> Option<Move> {
    let data_set = mobility.data_set.as_deref();
    let here = data_set.is_some_and(|d| m.holds(d));
    let holder = data_set
        .filter(|_| !here && !held_back)
        .and_then(|d| Some((d, m.data.get(d)?)));
    let trigger = match (outgrown, holder) {
        (Some(o), _) => Trigger::Outgrown(o),
        (None, Some((d, h))) => Trigger::Data {
            data_set: d.to_string(),
            holder: h.clone(),
        },
        (None, None) => return None,
    };
    let why = match &trigger {
        Trigger::Outgrown(o) => {
            let r = o.resource;
            format!(
                "the guest declares {}, above this host's maximum {}",
                r.show(o.wanted),
                r.show(o.max)
            )
        }
        Trigger::Data { data_set, .. } => {
            format!("the guest reads data set {data_set:?}, which another host holds")
        }
    };
    let to = if !mobility.relocatable {
        Err("the guest declared its work not relocatable: it stays".to_string())
    } else if mobility.monolithic {
        Err("the guest declared its work monolithic: it stays".to_string())
    } else if let Some((d, h)) = holder {
        Ok((
            h.clone(),
            format!("moving to {h}, which holds data set {d:?}"),
        ))
    } else if m.target.is_empty() {
        Err("no [migration] target: it stays".to_string())
    } else {
        Ok((m.target.clone(), format!("moving to {}", m.target)))
    };
    let (to, then) = match to {
        Ok((to, then)) => (Ok(to), then),
        Err(why) => (Err(why.clone()), why),
    };
    Some(Move {
        trigger,
        to,
        reason: format!("{why}; {then}"),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::engine::Resource;

    fn policy(target: &str) -> MigrationPolicy {
        let mut m = MigrationPolicy {
            target: target.into(),
            ..MigrationPolicy::default()
        };
        m.local_data = vec!["census".into()];
        m.data.insert("genome".into(), "tcp:10.0.0.7:4000".into());
        m
    }

    fn reading(data_set: Option<&str>) -> Mobility {
        Mobility {
            data_set: data_set.map(str::to_string),
            ..Mobility::default()
        }
    }

    const OUTGROWN: Outgrown = Outgrown {
        resource: Resource::Vcpus,
        wanted: 4,
        max: 2,
    };

    #[test]
    fn nothing_moves_a_vm_that_fits_and_reads_local_or_unknown_data() {
        let m = policy("unix:/run/big.sock");
        for d in [None, Some("census"), Some("unknown")] {
            assert_eq!(decide(None, &reading(d), &m, false), None, "{d:?}");
        }
    }

    #[test]
    fn an_outgrown_vm_goes_to_its_data_if_known_else_to_the_target() {
        let m = policy("unix:/run/big.sock");
        let to_target = decide(Some(OUTGROWN), &reading(Some("census")), &m, false).unwrap();
        assert_eq!(to_target.trigger, Trigger::Outgrown(OUTGROWN));
        assert_eq!(to_target.to.as_deref(), Ok("unix:/run/big.sock"));
        assert_eq!(
            to_target.reason,
            "the guest declares 4 vCPU(s), above this host's maximum 2 vCPU(s); \
             moving to unix:/run/big.sock"
        );
        let to_data = decide(Some(OUTGROWN), &reading(Some("genome")), &m, false).unwrap();
        assert_eq!(to_data.to.as_deref(), Ok("tcp:10.0.0.7:4000"));
        assert!(to_data.reason.ends_with("which holds data set \"genome\""));
        let nowhere = decide(Some(OUTGROWN), &reading(None), &policy(""), false).unwrap();
        assert_eq!(nowhere.to, Err("no [migration] target: it stays".into()));
    }

    #[test]
    fn the_compute_moves_to_the_data() {
        let d = decide(None, &reading(Some("genome")), &policy(""), false).unwrap();
        assert_eq!(
            d.trigger,
            Trigger::Data {
                data_set: "genome".into(),
                holder: "tcp:10.0.0.7:4000".into()
            }
        );
        assert_eq!(d.trigger.as_str(), "data");
        assert_eq!(d.to.as_deref(), Ok("tcp:10.0.0.7:4000"));
        assert_eq!(
            d.reason,
            "the guest reads data set \"genome\", which another host holds; \
             moving to tcp:10.0.0.7:4000, which holds data set \"genome\""
        );
    }

    /// A VM that outgrew the host holding its data, and came here for its
    /// need, is not sent back there while the need lasts: no ping-pong.
    #[test]
    fn a_vm_that_left_its_data_for_its_need_is_not_sent_back() {
        let m = policy("unix:/run/big.sock");
        assert_eq!(decide(None, &reading(Some("genome")), &m, true), None);
        let d = decide(Some(OUTGROWN), &reading(Some("genome")), &m, true).unwrap();
        assert_eq!(d.to.as_deref(), Ok("unix:/run/big.sock"), "not to the data");
    }

    #[test]
    fn work_declared_not_relocatable_or_monolithic_stays() {
        let m = policy("unix:/run/big.sock");
        let pinned = Mobility {
            relocatable: false,
            ..reading(Some("genome"))
        };
        let whole = Mobility {
            monolithic: true,
            ..reading(Some("genome"))
        };
        for (mobility, why) in [(pinned, "not relocatable"), (whole, "monolithic")] {
            for outgrown in [None, Some(OUTGROWN)] {
                let d = decide(outgrown, &mobility, &m, false).unwrap();
                assert!(d.to.as_ref().is_err_and(|e| e.contains(why)), "{d:?}");
                assert!(d.reason.ends_with("it stays"), "{d:?}");
            }
        }
    }
}
