#![forbid(unsafe_code)]
//! A `const` builder for [`Manifest`]s, for use with [`crate::manifest!`].

use crate::wire::{
    Io, IoClass, Locality, Manifest, Memory, Name, Parallelism, PhaseBegin, PhaseNeeds, Placement,
    MAX_MANIFEST_PHASES, MAX_SCHEDULE_PHASES, PPM,
};

/// Builds a [`Manifest`] in a `const` context.
pub struct ManifestBuilder {
    m: Manifest,
    phases: usize,
    schedule: usize,
}

impl ManifestBuilder {
    /// `app` must be at most [`crate::wire::MAX_NAME_LEN`] bytes (checked at compile time).
    pub const fn new(app: &'static str) -> Self {
        ManifestBuilder {
            m: Manifest::empty(Name::from_static(app)),
            phases: 0,
            schedule: 0,
        }
    }

    /// Typical runnable tasks, the most threads that help, and the serial fraction (0.0..=1.0).
    pub const fn parallelism(mut self, tasks: u32, max_useful: u32, serial_fraction: f64) -> Self {
        let ppm = if serial_fraction <= 0.0 {
            0
        } else if serial_fraction >= 1.0 {
            PPM
        } else {
            (serial_fraction * PPM as f64) as u32
        };
        self.m.parallelism = Some(Parallelism {
            runnable_tasks: tasks,
            max_useful,
            serial_ppm: ppm,
        });
        self
    }

    /// Like [`Self::parallelism`], with the serial fraction in parts per
    /// million (clamped to [`PPM`]), as generated code writes it.
    pub const fn parallelism_ppm(mut self, tasks: u32, max_useful: u32, serial_ppm: u32) -> Self {
        self.m.parallelism = Some(Parallelism {
            runnable_tasks: tasks,
            max_useful,
            serial_ppm: if serial_ppm > PPM { PPM } else { serial_ppm },
        });
        self
    }

    /// Working set, peak memory and growth per second, in bytes.
    pub const fn memory_growth(
        mut self,
        working_set_bytes: u64,
        peak_bytes: u64,
        growth_bytes_per_sec: u64,
    ) -> Self {
        self.m.memory = Some(Memory {
            working_set_bytes,
            peak_bytes,
            growth_bytes_per_sec,
        });
        self
    }

    /// Working set and peak memory, in bytes.
    pub const fn memory(mut self, working_set_bytes: u64, peak_bytes: u64) -> Self {
        self.m.memory = Some(Memory {
            working_set_bytes,
            peak_bytes,
            growth_bytes_per_sec: 0,
        });
        self
    }

    /// The kind of I/O and its rate in bytes per second.
    pub const fn io(mut self, class: IoClass, bytes_per_sec: u64) -> Self {
        self.m.io = Some(Io {
            class,
            bytes_per_sec,
        });
        self
    }

    /// Whether the work may move, whether it can be split, and its locality.
    pub const fn placement(
        mut self,
        relocatable: bool,
        monolithic: bool,
        locality: Locality,
    ) -> Self {
        self.m.placement = Some(Placement {
            relocatable,
            monolithic,
            locality,
        });
        self
    }

    /// Declares a phase; at most [`MAX_MANIFEST_PHASES`] (checked at compile time).
    pub const fn phase(mut self, id: u32, name: &'static str, expected_ms: u32) -> Self {
        if self.phases >= MAX_MANIFEST_PHASES {
            panic!("too many phases in a perf-hint manifest");
        }
        self.m.phases[self.phases] = Some(PhaseBegin {
            id,
            expected_ms,
            name: Name::from_static(name),
            declared_only: true,
        });
        self.phases += 1;
        self
    }

    /// Adds the next entry of the schedule: what a phase needs and when
    /// (see [`PhaseNeeds`]); at most [`MAX_SCHEDULE_PHASES`], in order of
    /// start (checked at compile time).
    ///
    /// ```
    /// use guest_hints::{manifest, wire::PhaseNeeds, ManifestBuilder};
    /// manifest!(ManifestBuilder::new("solver")
    ///     .needs(PhaseNeeds::new(1, 0, 800).parallelism(1.0, 1.0, 1))
    ///     .needs(PhaseNeeds::new(2, 800, 5_000).parallelism(7.6, 8.0, 8).memory(2 << 30, 3 << 30))
    ///     .build());
    /// ```
    pub const fn needs(mut self, needs: PhaseNeeds) -> Self {
        if self.schedule >= MAX_SCHEDULE_PHASES {
            panic!("too many schedule entries in a perf-hint manifest");
        }
        if self.schedule > 0 {
            if let Some(prev) = self.m.schedule[self.schedule - 1] {
                if needs.start_ms < prev.start_ms {
                    panic!("perf-hint schedule entries must be in order of start");
                }
            }
        }
        self.m.schedule[self.schedule] = Some(needs);
        self.schedule += 1;
        self
    }

    /// The finished manifest.
    pub const fn build(self) -> Manifest {
        self.m
    }
}
