//! Snapshot and migration requests from the control API to the main
//! thread, which alone may pause the VM and read its devices
//! (`snapshot::take` and `migration`, a layer above).
//!
//! The API names a snapshot; it never gives a path. Snapshots go into the
//! directory the operator gave perfvmm (`--snapshot-dir`), one new
//! directory each, so a client of the socket cannot write anywhere else or
//! over anything. A migration sends guest memory to where the client says,
//! so it too needs the operator's consent (`--allow-migrate`).

use std::path::{Path, PathBuf};
use std::sync::mpsc::{self, Receiver, Sender, SyncSender};
use std::time::Duration;

use serde::Serialize;

pub use crate::cli::Endpoint;
use vmm_sys_util::eventfd::EventFd;

/// The longest snapshot name.
pub const MAX_NAME_LEN: usize = 64;
/// How long the API waits for the main thread to take a snapshot.
pub const REPLY_TIMEOUT: Duration = Duration::from_secs(600);

/// What a snapshot took, as the API reports it.
#[derive(Clone, Debug, Serialize)]
pub struct SnapshotReport {
    pub dir: PathBuf,
    pub vcpus: usize,
    /// Guest memory, holes included.
    pub memory_bytes: u64,
    /// Bytes of memory written: the pages that held something.
    pub written_bytes: u64,
    /// How long the vCPUs were stopped.
    pub pause_ms: f64,
    /// The VM stopped after the snapshot (`--stop`).
    pub stopped: bool,
}

/// One snapshot for the main thread to take.
pub struct SnapshotJob {
    pub dir: PathBuf,
    pub stop: bool,
    pub reply: SyncSender<Result<SnapshotReport, String>>,
}

/// The longest downtime a migration may be given.
pub const MAX_DOWNTIME: Duration = Duration::from_secs(60);

/// What a live migration took, as the API reports it.
#[derive(Clone, Debug, Default, Serialize)]
pub struct MigrateReport {
    pub to: String,
    /// Pre-copy rounds, the first (all of memory) included.
    pub rounds: u32,
    /// Bytes of guest memory sent, all rounds.
    pub sent_bytes: u64,
    /// Bytes sent with the vCPUs stopped.
    pub final_bytes: u64,
    /// The working set the guest declared (0: none), and the bytes of the
    /// pages it was seen writing that the first round left for later.
    pub working_set_bytes: u64,
    pub deferred_bytes: u64,
    /// How long the vCPUs were stopped.
    pub downtime_ms: f64,
    pub total_ms: f64,
}

/// One live migration for the main thread to carry out.
pub struct MigrateJob {
    pub to: Endpoint,
    pub downtime: Duration,
    pub reply: SyncSender<Result<MigrateReport, String>>,
}

/// What the API asks of the main thread.
pub enum Job {
    Snapshot(SnapshotJob),
    Migrate(MigrateJob),
}

/// Why a snapshot request was not carried out.
#[derive(Debug, thiserror::Error, PartialEq)]
pub enum RequestError {
    #[error("snapshots are off: perfvmm was started without --snapshot-dir")]
    Disabled,
    #[error("migration is off: perfvmm was started without --allow-migrate")]
    MigrationDisabled,
    #[error("downtime_ms: 1 to {} ms", MAX_DOWNTIME.as_millis())]
    BadDowntime,
    #[error(
        "name: 1 to {MAX_NAME_LEN} of the letters, digits, '-', '_' and '.', not starting with '.'"
    )]
    BadName,
    #[error("the VM is shutting down")]
    Gone,
    #[error("no answer from the VM within {0:?}")]
    Timeout(Duration),
    #[error("{0}")]
    Failed(String),
}

/// The API's end: sends jobs and wakes the main thread.
pub struct SnapshotRequests {
    root: Option<PathBuf>,
    migrate: bool,
    jobs: Sender<Job>,
    wake: EventFd,
}

/// The main thread's end.
pub struct SnapshotJobs {
    pub jobs: Receiver<Job>,
    pub wake: EventFd,
}

/// A channel for snapshots into `root` (`None`: snapshots are off) and,
/// when `migrate`, live migrations.
pub fn channel(
    root: Option<PathBuf>,
    migrate: bool,
) -> std::io::Result<(SnapshotRequests, SnapshotJobs)> {
    let (tx, rx) = mpsc::channel();
    let wake = EventFd::new(libc::EFD_NONBLOCK)?;
    let requests = SnapshotRequests {
        root,
        migrate,
        jobs: tx,
        wake: wake.try_clone()?,
    };
    Ok((requests, SnapshotJobs { jobs: rx, wake }))
}

/// Whether `name` may name a snapshot: one plain path component.
pub fn valid_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= MAX_NAME_LEN
        && !name.starts_with('.')
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'))
}

impl SnapshotRequests {
    pub fn root(&self) -> Option<&Path> {
        self.root.as_deref()
    }

    /// Asks for snapshot `name` and waits for the main thread's answer.
    pub fn request(&self, name: &str, stop: bool) -> Result<SnapshotReport, RequestError> {
        let root = self.root.as_ref().ok_or(RequestError::Disabled)?;
        if !valid_name(name) {
            return Err(RequestError::BadName);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Snapshot(SnapshotJob {
            dir: root.join(name),
            stop,
            reply,
        }))?;
        wait(answer)
    }

    /// Asks for a live migration to `to` and waits until it ends: the VM
    /// then runs there, or here still if it failed.
    pub fn migrate(&self, to: Endpoint, downtime: Duration) -> Result<MigrateReport, RequestError> {
        if !self.migrate {
            return Err(RequestError::MigrationDisabled);
        }
        if downtime.is_zero() || downtime > MAX_DOWNTIME {
            return Err(RequestError::BadDowntime);
        }
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Migrate(MigrateJob {
            to,
            downtime,
            reply,
        }))?;
        wait(answer)
    }

    /// Starts a migration to `to` without waiting: its answer comes on
    /// the receiver (the policy's own moves, `[migration]`).
    pub fn start_migration(
        &self,
        to: &str,
        downtime: Duration,
    ) -> Result<Receiver<Result<MigrateReport, String>>, RequestError> {
        if !self.migrate {
            return Err(RequestError::MigrationDisabled);
        }
        let to: Endpoint = to.parse().map_err(RequestError::Failed)?;
        let (reply, answer) = mpsc::sync_channel(1);
        self.send(Job::Migrate(MigrateJob {
            to,
            downtime: downtime.clamp(Duration::from_millis(1), MAX_DOWNTIME),
            reply,
        }))?;
        Ok(answer)
    }

    /// Another end for the same main thread.
    pub fn try_clone(&self) -> std::io::Result<Self> {
        Ok(SnapshotRequests {
            root: self.root.clone(),
            migrate: self.migrate,
            jobs: self.jobs.clone(),
            wake: self.wake.try_clone()?,
        })
    }

    fn send(&self, job: Job) -> Result<(), RequestError> {
        self.jobs.send(job).map_err(|_| RequestError::Gone)?;
        self.wake.write(1).map_err(|_| RequestError::Gone)
    }
}

fn wait<T>(answer: Receiver<Result<T, String>>) -> Result<T, RequestError> {
    match answer.recv_timeout(REPLY_TIMEOUT) {
        Ok(r) => r.map_err(RequestError::Failed),
        Err(mpsc::RecvTimeoutError::Timeout) => Err(RequestError::Timeout(REPLY_TIMEOUT)),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err(RequestError::Gone),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_one_plain_component() {
        for ok in ["a", "snap-1", "x_y.z", &"n".repeat(MAX_NAME_LEN)] {
            assert!(valid_name(ok), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            ".hidden",
            "a/b",
            "../x",
            "/abs",
            "sp ace",
            "nul\0",
            "é",
            &"n".repeat(MAX_NAME_LEN + 1),
        ] {
            assert!(!valid_name(bad), "{bad:?}");
        }
    }

    #[test]
    fn requests_without_a_root_or_with_a_bad_name_never_reach_the_vm() {
        let (off, jobs) = channel(None, false).unwrap();
        assert_eq!(off.request("a", false).unwrap_err(), RequestError::Disabled);
        let (on, _jobs2) = channel(Some("/tmp".into()), false).unwrap();
        assert_eq!(
            on.request("../a", false).unwrap_err(),
            RequestError::BadName
        );
        assert!(jobs.jobs.try_recv().is_err());
    }

    #[test]
    fn the_main_threads_answer_comes_back() {
        let (req, jobs) = channel(Some("/snaps".into()), false).unwrap();
        let vm = std::thread::spawn(move || {
            let Job::Snapshot(job) = jobs.jobs.recv().unwrap() else {
                panic!("not a snapshot")
            };
            assert_eq!(job.dir, Path::new("/snaps/s1"));
            assert!(job.stop);
            job.reply.send(Err("disk full".into())).unwrap();
        });
        assert_eq!(
            req.request("s1", true).unwrap_err(),
            RequestError::Failed("disk full".into())
        );
        vm.join().unwrap();
    }

    #[test]
    fn migrations_need_consent_and_a_sane_downtime() {
        let to = || Endpoint::Unix("/m".into());
        let (off, jobs) = channel(None, false).unwrap();
        let ms = Duration::from_millis;
        assert_eq!(
            off.migrate(to(), ms(300)).unwrap_err(),
            RequestError::MigrationDisabled
        );
        let (on, jobs2) = channel(None, true).unwrap();
        for bad in [ms(0), MAX_DOWNTIME + ms(1)] {
            assert_eq!(
                on.migrate(to(), bad).unwrap_err(),
                RequestError::BadDowntime
            );
        }
        assert!(jobs.jobs.try_recv().is_err() && jobs2.jobs.try_recv().is_err());
    }
}
