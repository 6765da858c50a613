#![forbid(unsafe_code)]
//! The perf-hint wire format, shared by guests and the device.
//!
//! `no_std`, no allocation, no `unsafe`. All integers are little-endian and
//! fields have fixed offsets; nothing relies on alignment. A *message* is one
//! virtqueue buffer:
//!
//! ```text
//! message  = header record*
//! header   = magic:u16 ("PH" = 0x4850) version:u8 flags:u8 count:u16
//!            stream:u16 seq:u32 total_len:u32              (16 bytes)
//! record   = kind:u16 len:u16 body[len]                    (4 + len bytes)
//! ```
//!
//! `seq` numbers the message's first record; record *i* has `seq + i`, the
//! number its outcome on the event queue carries. `stream` is the guest
//! driver's, not the program's: with the device's `STREAMS` feature the
//! driver writes there the number of the open file the message came
//! through, so that each file has its own sequence numbers, phases and
//! outcomes (writers leave it 0). Readers skip records of
//! unknown kinds (their length says how far) and ignore body bytes past the
//! fields they know, so old devices work with new guests and the reverse.
//! See `docs/wire-format.md`.

/// `"PH"` read as a little-endian u16.
pub const MAGIC: u16 = 0x4850;
/// Protocol version this crate writes and reads.
pub const VERSION: u8 = 1;
/// Bytes of a message header.
pub const HEADER_LEN: usize = 16;
/// Bytes of a record header (kind and length).
pub const RECORD_HEADER_LEN: usize = 4;
/// Largest message a device must accept (also in config space).
pub const MAX_MESSAGE_LEN: usize = 4096;
/// Most records one message may carry.
pub const MAX_RECORDS: usize = 256;
/// Longest phase or application name, in bytes of UTF-8.
pub const MAX_NAME_LEN: usize = 48;
/// Serial fraction is in parts per million.
pub const PPM: u32 = 1_000_000;

/// Record kinds.
pub mod kind {
    /// [`super::Hint::Parallelism`].
    pub const PARALLELISM: u16 = 1;
    /// [`super::Hint::Memory`].
    pub const MEMORY: u16 = 2;
    /// [`super::Hint::Io`].
    pub const IO: u16 = 3;
    /// [`super::Hint::PhaseBegin`].
    pub const PHASE_BEGIN: u16 = 4;
    /// [`super::Hint::PhaseEnd`].
    pub const PHASE_END: u16 = 5;
    /// [`super::Hint::Placement`].
    pub const PLACEMENT: u16 = 6;
    /// [`super::Hint::Manifest`].
    pub const MANIFEST: u16 = 7;
    /// [`super::Hint::PhaseNeeds`].
    pub const PHASE_NEEDS: u16 = 8;
    /// [`super::Hint::DataSet`].
    pub const DATA_SET: u16 = 9;
}

/// Minimum body lengths of the version-1 kinds.
const PARALLELISM_LEN: usize = 12;
const MEMORY_LEN: usize = 24;
const IO_LEN: usize = 12;
const PHASE_BEGIN_FIXED: usize = 12;
const PHASE_END_LEN: usize = 4;
const PLACEMENT_LEN: usize = 4;
const MANIFEST_FIXED: usize = 4;
const DATA_SET_FIXED: usize = 4;
/// Body length of a `phase_needs` record.
const PHASE_NEEDS_LEN: usize = 52;

/// Why a message or record could not be decoded.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DecodeError {
    /// Shorter than a header, or longer than [`MAX_MESSAGE_LEN`].
    BadLength,
    /// The header does not start with [`MAGIC`].
    BadMagic,
    /// A major version this reader does not know.
    UnsupportedVersion,
    /// `total_len` disagrees with the buffer.
    LengthMismatch,
    /// More than [`MAX_RECORDS`] records.
    TooManyRecords,
    /// A record runs past the end of the message.
    TruncatedRecord,
    /// A known kind whose body is shorter than its fixed fields.
    ShortBody,
    /// A field value out of its range (for example a name that is not UTF-8).
    BadValue,
    /// A manifest nested inside a manifest.
    NestedManifest,
}

impl DecodeError {
    /// A short, stable name (used in logs and counters).
    pub const fn as_str(self) -> &'static str {
        match self {
            DecodeError::BadLength => "bad_length",
            DecodeError::BadMagic => "bad_magic",
            DecodeError::UnsupportedVersion => "unsupported_version",
            DecodeError::LengthMismatch => "length_mismatch",
            DecodeError::TooManyRecords => "too_many_records",
            DecodeError::TruncatedRecord => "truncated_record",
            DecodeError::ShortBody => "short_body",
            DecodeError::BadValue => "bad_value",
            DecodeError::NestedManifest => "nested_manifest",
        }
    }
}

/// Why an encoder refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EncodeError {
    /// The output buffer or [`MAX_MESSAGE_LEN`] is too small.
    NoSpace,
    /// The message already holds [`MAX_RECORDS`] records.
    TooManyRecords,
    /// A name longer than [`MAX_NAME_LEN`] bytes.
    NameTooLong,
}

/// A one-byte wire enum: its values, names (as logged and parsed) and
/// `ALL`/`from_u8`/`as_str`/`parse`, written once for every such enum.
macro_rules! wire_enum {
    (
        $(#[$meta:meta])*
        pub enum $name:ident {
            $($(#[$vmeta:meta])* $variant:ident = $value:literal => $text:literal,)+
        }
    ) => {
        $(#[$meta])*
        #[cfg_attr(feature = "serde", derive(serde::Serialize), serde(rename_all = "snake_case"))]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        #[repr(u8)]
        pub enum $name {
            $($(#[$vmeta])* $variant = $value,)+
        }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The value with wire encoding `v`, if there is one.
            pub const fn from_u8(v: u8) -> Option<Self> {
                match v {
                    $($value => Some($name::$variant),)+
                    _ => None,
                }
            }

            /// The value's name, as logged and as [`Self::parse`] reads it.
            pub const fn as_str(self) -> &'static str {
                match self {
                    $($name::$variant => $text,)+
                }
            }

            /// The value named `s` (as `as_str` writes it), ignoring ASCII case.
            pub fn parse(s: &str) -> Option<Self> {
                Self::ALL.iter().copied().find(|v| v.as_str().eq_ignore_ascii_case(s))
            }
        }
    };
}

wire_enum! {
    /// I/O classes.
    pub enum IoClass {
        /// Little or no I/O.
        None = 0 => "none",
        /// Occasional I/O.
        Light = 1 => "light",
        /// Streaming reads or writes.
        Sequential = 2 => "sequential",
        /// Scattered, random-access I/O.
        Random = 3 => "random",
        /// Mostly network traffic.
        Network = 4 => "network",
    }
}

wire_enum! {
    /// Data locality preference for placement.
    pub enum Locality {
        /// No preference.
        Any = 0 => "any",
        /// Threads share data: keep them on one cache domain.
        SharedCache = 1 => "shared_cache",
        /// Memory-bound: keep vCPUs and memory on one NUMA node.
        SameNode = 2 => "same_node",
    }
}

/// A UTF-8 name of at most [`MAX_NAME_LEN`] bytes, stored inline.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct Name {
    bytes: [u8; MAX_NAME_LEN],
    len: u8,
}

impl Name {
    /// The empty name.
    pub const EMPTY: Name = Name {
        bytes: [0; MAX_NAME_LEN],
        len: 0,
    };

    /// `s`, or [`EncodeError::NameTooLong`] when it is longer than [`MAX_NAME_LEN`] bytes.
    pub fn new(s: &str) -> Result<Self, EncodeError> {
        match Self::from_bytes(s.as_bytes()) {
            Some(n) => Ok(n),
            None => Err(EncodeError::NameTooLong),
        }
    }

    /// For constants: fails to compile when `s` is longer than [`MAX_NAME_LEN`].
    pub const fn from_static(s: &'static str) -> Self {
        match Self::from_bytes(s.as_bytes()) {
            Some(n) => n,
            None => panic!("perf-hint name longer than MAX_NAME_LEN bytes"),
        }
    }

    /// Truncates at a character boundary instead of failing.
    pub fn truncated(s: &str) -> Self {
        let mut end = s.len().min(MAX_NAME_LEN);
        while !s.is_char_boundary(end) {
            end -= 1;
        }
        Self::from_bytes(&s.as_bytes()[..end]).unwrap_or(Self::EMPTY)
    }

    const fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() > MAX_NAME_LEN || core::str::from_utf8(b).is_err() {
            return None;
        }
        let mut bytes = [0; MAX_NAME_LEN];
        let mut i = 0;
        while i < b.len() {
            bytes[i] = b[i];
            i += 1;
        }
        Some(Name {
            bytes,
            len: b.len() as u8,
        })
    }

    /// Whether the name has no bytes.
    pub const fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The name as text.
    pub fn as_str(&self) -> &str {
        // Only valid UTF-8 is ever stored.
        core::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }
}

#[cfg(feature = "serde")]
impl serde::Serialize for Name {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.as_str())
    }
}

impl core::fmt::Debug for Name {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::Debug::fmt(self.as_str(), f)
    }
}

/// How much parallelism the work has now.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Parallelism {
    /// Independent tasks ready to run now.
    pub runnable_tasks: u32,
    /// The most threads that still help (0: no limit known).
    pub max_useful: u32,
    /// Serial fraction of the work, in parts per million (Amdahl's `s`).
    pub serial_ppm: u32,
}

/// Memory the work needs.
#[cfg_attr(feature = "serde", derive(serde::Serialize, serde::Deserialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Memory {
    /// Memory the work touches repeatedly, in bytes.
    pub working_set_bytes: u64,
    /// The most memory the work may use, in bytes.
    pub peak_bytes: u64,
    /// Expected growth, bytes per second (0: steady).
    pub growth_bytes_per_sec: u64,
}

/// The I/O the work does.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Io {
    /// What kind of I/O.
    pub class: IoClass,
    /// Its rate in bytes per second.
    pub bytes_per_sec: u64,
}

/// The start of a named program phase (or, in a manifest, its declaration).
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PhaseBegin {
    /// Identifies the phase; its [`Hint::PhaseEnd`] carries the same id.
    pub id: u32,
    /// Expected duration in milliseconds (0: unknown).
    pub expected_ms: u32,
    /// The phase's name.
    pub name: Name,
    /// Set for phases declared in a manifest rather than begun.
    pub declared_only: bool,
}

/// Where the work may run.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Placement {
    /// The work may move between hosts or NUMA nodes.
    pub relocatable: bool,
    /// The work cannot be split across machines.
    pub monolithic: bool,
    /// Which data locality the work prefers.
    pub locality: Locality,
}

/// What one phase of a program needs, measured beforehand (by `perfhint
/// profile`) rather than announced as it begins: one entry of a manifest's
/// [`Manifest::schedule`], or a standalone hint.
///
/// A valid value (see [`PhaseNeeds::is_valid`]) has `parallelism_p50_milli
/// <= parallelism_p95_milli`, `working_set_bytes <= peak_bytes` unless
/// `peak_bytes` is 0 (unknown), and `start_ms + duration_ms` within a u32.
/// The encoder writes [`PhaseNeeds::normalized`], so whatever it writes
/// decodes.
///
/// ```
/// use guest_hints::wire::{IoClass, PhaseNeeds};
/// const LOAD: PhaseNeeds = PhaseNeeds::new(1, 0, 1_500)
///     .parallelism(1.0, 1.2, 1)
///     .memory(64 << 20, 80 << 20)
///     .io(IoClass::Sequential, 200 << 20);
/// assert_eq!(LOAD.parallelism_p95_milli, 1_200);
/// assert!(LOAD.is_valid());
/// ```
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct PhaseNeeds {
    /// Identifies the phase within its schedule.
    pub id: u32,
    /// Expected start, in milliseconds from the program's start.
    pub start_ms: u32,
    /// Expected duration in milliseconds.
    pub duration_ms: u32,
    /// Median effective parallelism (CPU time / wall time), ×1000.
    pub parallelism_p50_milli: u32,
    /// 95th percentile of the effective parallelism, ×1000.
    pub parallelism_p95_milli: u32,
    /// The most threads that were ever running at once (0: unknown).
    pub max_useful: u32,
    /// Memory the phase touches repeatedly, in bytes.
    pub working_set_bytes: u64,
    /// The most memory the phase uses, in bytes (0: unknown).
    pub peak_bytes: u64,
    /// The phase's kind of I/O.
    pub io_class: IoClass,
    /// The phase's I/O rate in bytes per second.
    pub io_bytes_per_sec: u64,
}

impl PhaseNeeds {
    /// Phase `id`, expected `start_ms` after the program's start for
    /// `duration_ms`, needing nothing else yet (add it with the other
    /// methods).
    pub const fn new(id: u32, start_ms: u32, duration_ms: u32) -> Self {
        PhaseNeeds {
            id,
            start_ms,
            duration_ms,
            parallelism_p50_milli: 0,
            parallelism_p95_milli: 0,
            max_useful: 0,
            working_set_bytes: 0,
            peak_bytes: 0,
            io_class: IoClass::None,
            io_bytes_per_sec: 0,
        }
    }

    /// Effective parallelism, median and 95th percentile (in threads, for
    /// example 3.5; negative and NaN count as 0), and the most threads that
    /// help (0: unknown).
    pub const fn parallelism(self, p50: f64, p95: f64, max_useful: u32) -> Self {
        // `as` saturates and maps NaN to 0.
        self.parallelism_milli((p50 * 1000.0) as u32, (p95 * 1000.0) as u32, max_useful)
    }

    /// [`Self::parallelism`] in thousandths of a thread.
    pub const fn parallelism_milli(
        mut self,
        p50_milli: u32,
        p95_milli: u32,
        max_useful: u32,
    ) -> Self {
        self.parallelism_p50_milli = p50_milli;
        self.parallelism_p95_milli = p95_milli;
        self.max_useful = max_useful;
        self
    }

    /// Working set and peak memory, in bytes.
    pub const fn memory(mut self, working_set_bytes: u64, peak_bytes: u64) -> Self {
        self.working_set_bytes = working_set_bytes;
        self.peak_bytes = peak_bytes;
        self
    }

    /// The kind of I/O and its rate in bytes per second.
    pub const fn io(mut self, class: IoClass, bytes_per_sec: u64) -> Self {
        self.io_class = class;
        self.io_bytes_per_sec = bytes_per_sec;
        self
    }

    /// Expected end, in milliseconds from the program's start.
    pub const fn end_ms(&self) -> u64 {
        self.start_ms as u64 + self.duration_ms as u64
    }

    /// Whether the decoder accepts it: p50 ≤ p95, working set ≤ peak (when
    /// the peak is known), and the end within a u32 of milliseconds.
    pub const fn is_valid(&self) -> bool {
        self.parallelism_p50_milli <= self.parallelism_p95_milli
            && (self.peak_bytes == 0 || self.working_set_bytes <= self.peak_bytes)
            && self.end_ms() <= u32::MAX as u64
    }

    /// The nearest valid value: p95 raised to p50, the peak raised to the
    /// working set, the duration cut to end within a u32. A valid value is
    /// returned unchanged.
    pub const fn normalized(mut self) -> Self {
        if self.parallelism_p95_milli < self.parallelism_p50_milli {
            self.parallelism_p95_milli = self.parallelism_p50_milli;
        }
        if self.peak_bytes != 0 && self.working_set_bytes > self.peak_bytes {
            self.peak_bytes = self.working_set_bytes;
        }
        if self.end_ms() > u32::MAX as u64 {
            self.duration_ms = u32::MAX - self.start_ms;
        }
        self
    }
}

/// Phases a manifest can declare.
pub const MAX_MANIFEST_PHASES: usize = 8;

/// Entries in a manifest's [`Manifest::schedule`].
pub const MAX_SCHEDULE_PHASES: usize = 16;

/// Serializes only the slots in use, so that a manifest shows its phases,
/// not its capacity.
#[cfg(feature = "serde")]
fn serialize_present<S, T, const N: usize>(slots: &[Option<T>; N], s: S) -> Result<S::Ok, S::Error>
where
    S: serde::Serializer,
    T: serde::Serialize,
{
    s.collect_seq(slots.iter().flatten())
}

/// An application's declared needs, embedded at compile time.
#[cfg_attr(feature = "serde", derive(serde::Serialize))]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Manifest {
    /// The application's name.
    pub app: Name,
    /// Its typical parallelism, if declared.
    pub parallelism: Option<Parallelism>,
    /// Its memory needs, if declared.
    pub memory: Option<Memory>,
    /// Its I/O, if declared.
    pub io: Option<Io>,
    /// Its placement needs, if declared.
    pub placement: Option<Placement>,
    /// The phases it declares (`declared_only` set), in order; unused slots are `None`.
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_present"))]
    pub phases: [Option<PhaseBegin>; MAX_MANIFEST_PHASES],
    /// What each phase of a typical run needs and when, in order of
    /// `start_ms` (derived from a profile by `perfhint embed`); unused slots
    /// are `None`, and follow the used ones.
    #[cfg_attr(feature = "serde", serde(serialize_with = "serialize_present"))]
    pub schedule: [Option<PhaseNeeds>; MAX_SCHEDULE_PHASES],
}

impl Manifest {
    /// A manifest for `app` that declares nothing.
    pub const fn empty(app: Name) -> Self {
        Manifest {
            app,
            parallelism: None,
            memory: None,
            io: None,
            placement: None,
            phases: [None; MAX_MANIFEST_PHASES],
            schedule: [None; MAX_SCHEDULE_PHASES],
        }
    }
}

/// One decoded hint.
///
/// `Copy` and allocation-free so that it works in `no_std` guests; the
/// manifest variant is large, but manifests are rare (once per program).
#[allow(clippy::large_enum_variant)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Hint {
    /// How much parallelism the work has now.
    Parallelism(Parallelism),
    /// The memory the work needs.
    Memory(Memory),
    /// The I/O the work does.
    Io(Io),
    /// A phase begins.
    PhaseBegin(PhaseBegin),
    /// A phase ends.
    PhaseEnd {
        /// The id its [`Hint::PhaseBegin`] carried.
        id: u32,
    },
    /// Where the work may run.
    Placement(Placement),
    /// The application's declared needs (see [`crate::manifest!`]).
    Manifest(Manifest),
    /// What one phase needs and when (usually inside a manifest's schedule).
    PhaseNeeds(PhaseNeeds),
    /// The data set the work reads most, by a name the operator also uses
    /// (never empty): a hypervisor may run the work where that data is.
    DataSet(Name),
}

impl Hint {
    /// The record kind this hint is encoded as.
    pub const fn kind(&self) -> u16 {
        match self {
            Hint::Parallelism(_) => kind::PARALLELISM,
            Hint::Memory(_) => kind::MEMORY,
            Hint::Io(_) => kind::IO,
            Hint::PhaseBegin(_) => kind::PHASE_BEGIN,
            Hint::PhaseEnd { .. } => kind::PHASE_END,
            Hint::Placement(_) => kind::PLACEMENT,
            Hint::Manifest(_) => kind::MANIFEST,
            Hint::PhaseNeeds(_) => kind::PHASE_NEEDS,
            Hint::DataSet(_) => kind::DATA_SET,
        }
    }

    /// The kind's name, as logged (`parallelism`, `phase_begin`, ...).
    pub const fn kind_name(&self) -> &'static str {
        match self {
            Hint::Parallelism(_) => "parallelism",
            Hint::Memory(_) => "memory",
            Hint::Io(_) => "io",
            Hint::PhaseBegin(_) => "phase_begin",
            Hint::PhaseEnd { .. } => "phase_end",
            Hint::Placement(_) => "placement",
            Hint::Manifest(_) => "manifest",
            Hint::PhaseNeeds(_) => "phase_needs",
            Hint::DataSet(_) => "data_set",
        }
    }
}

// ---------------------------------------------------------------- reading

fn u16_at(b: &[u8], off: usize) -> u16 {
    u16::from_le_bytes([b[off], b[off + 1]])
}

fn u32_at(b: &[u8], off: usize) -> u32 {
    u32::from_le_bytes([b[off], b[off + 1], b[off + 2], b[off + 3]])
}

fn u64_at(b: &[u8], off: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[off..off + 8]);
    u64::from_le_bytes(a)
}

/// A message's header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// Protocol version ([`VERSION`]).
    pub version: u8,
    /// [`header_flags`]; bits not defined there are written as 0 and
    /// ignored when read.
    pub flags: u8,
    /// Records in the message.
    pub count: u16,
    /// The guest driver's stream (its open file) the message came through;
    /// 0 when the driver does not number them.
    pub stream: u16,
    /// Sequence number of the first record.
    pub seq: u32,
    /// Length of the whole message, header included.
    pub total_len: u32,
}

/// Checks a message's header against the buffer it came in.
pub fn decode_header(msg: &[u8]) -> Result<Header, DecodeError> {
    if msg.len() < HEADER_LEN || msg.len() > MAX_MESSAGE_LEN {
        return Err(DecodeError::BadLength);
    }
    if u16_at(msg, 0) != MAGIC {
        return Err(DecodeError::BadMagic);
    }
    let h = Header {
        version: msg[2],
        flags: msg[3],
        count: u16_at(msg, 4),
        stream: u16_at(msg, 6),
        seq: u32_at(msg, 8),
        total_len: u32_at(msg, 12),
    };
    if h.version != VERSION {
        return Err(DecodeError::UnsupportedVersion);
    }
    if h.total_len as usize != msg.len() {
        return Err(DecodeError::LengthMismatch);
    }
    if h.count as usize > MAX_RECORDS {
        return Err(DecodeError::TooManyRecords);
    }
    Ok(h)
}

/// A record as found in a message: its kind and body.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RawRecord<'a> {
    /// The record kind (see [`kind`]).
    pub kind: u16,
    /// The record's body, without its header.
    pub body: &'a [u8],
}

/// Iterates over the records of a message (or of a manifest's body),
/// stopping at the first framing error.
#[derive(Clone, Debug)]
pub struct Records<'a> {
    rest: &'a [u8],
    remaining: u16,
}

impl<'a> Iterator for Records<'a> {
    type Item = Result<RawRecord<'a>, DecodeError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.remaining == 0 {
            return None;
        }
        self.remaining -= 1;
        if self.rest.len() < RECORD_HEADER_LEN {
            self.remaining = 0;
            return Some(Err(DecodeError::TruncatedRecord));
        }
        let kind = u16_at(self.rest, 0);
        let len = u16_at(self.rest, 2) as usize;
        let end = RECORD_HEADER_LEN + len;
        if end > self.rest.len() {
            self.remaining = 0;
            return Some(Err(DecodeError::TruncatedRecord));
        }
        let body = &self.rest[RECORD_HEADER_LEN..end];
        self.rest = &self.rest[end..];
        Some(Ok(RawRecord { kind, body }))
    }
}

/// Validates a message's header and returns it with an iterator over its records.
pub fn decode_message(msg: &[u8]) -> Result<(Header, Records<'_>), DecodeError> {
    let h = decode_header(msg)?;
    Ok((
        h,
        Records {
            rest: &msg[HEADER_LEN..],
            remaining: h.count,
        },
    ))
}

fn need(body: &[u8], len: usize) -> Result<(), DecodeError> {
    if body.len() < len {
        Err(DecodeError::ShortBody)
    } else {
        Ok(())
    }
}

fn decode_parallelism(b: &[u8]) -> Result<Parallelism, DecodeError> {
    need(b, PARALLELISM_LEN)?;
    let p = Parallelism {
        runnable_tasks: u32_at(b, 0),
        max_useful: u32_at(b, 4),
        serial_ppm: u32_at(b, 8),
    };
    if p.serial_ppm > PPM {
        return Err(DecodeError::BadValue);
    }
    Ok(p)
}

fn decode_memory(b: &[u8]) -> Result<Memory, DecodeError> {
    need(b, MEMORY_LEN)?;
    Ok(Memory {
        working_set_bytes: u64_at(b, 0),
        peak_bytes: u64_at(b, 8),
        growth_bytes_per_sec: u64_at(b, 16),
    })
}

fn decode_io(b: &[u8]) -> Result<Io, DecodeError> {
    need(b, IO_LEN)?;
    let class = IoClass::from_u8(b[0]).ok_or(DecodeError::BadValue)?;
    Ok(Io {
        class,
        bytes_per_sec: u64_at(b, 4),
    })
}

fn decode_name(b: &[u8]) -> Result<Name, DecodeError> {
    Name::from_bytes(b).ok_or(DecodeError::BadValue)
}

fn decode_phase_begin(b: &[u8]) -> Result<PhaseBegin, DecodeError> {
    need(b, PHASE_BEGIN_FIXED)?;
    let name_len = u16_at(b, 8) as usize;
    let flags = b[10];
    let name_bytes = b
        .get(PHASE_BEGIN_FIXED..PHASE_BEGIN_FIXED + name_len)
        .ok_or(DecodeError::ShortBody)?;
    Ok(PhaseBegin {
        id: u32_at(b, 0),
        expected_ms: u32_at(b, 4),
        name: decode_name(name_bytes)?,
        declared_only: flags & 1 != 0,
    })
}

fn decode_placement(b: &[u8]) -> Result<Placement, DecodeError> {
    need(b, PLACEMENT_LEN)?;
    if b[0] > 1 || b[1] > 1 {
        return Err(DecodeError::BadValue);
    }
    Ok(Placement {
        relocatable: b[0] == 1,
        monolithic: b[1] == 1,
        locality: Locality::from_u8(b[2]).ok_or(DecodeError::BadValue)?,
    })
}

fn decode_data_set(b: &[u8]) -> Result<Name, DecodeError> {
    need(b, DATA_SET_FIXED)?;
    let len = u16_at(b, 0) as usize;
    let name = b
        .get(DATA_SET_FIXED..DATA_SET_FIXED + len)
        .ok_or(DecodeError::ShortBody)
        .and_then(decode_name)?;
    if name.is_empty() {
        return Err(DecodeError::BadValue);
    }
    Ok(name)
}

fn decode_phase_needs(b: &[u8]) -> Result<PhaseNeeds, DecodeError> {
    need(b, PHASE_NEEDS_LEN)?;
    // Bytes 41..44 are reserved: written as 0, ignored when read.
    let p = PhaseNeeds {
        id: u32_at(b, 0),
        start_ms: u32_at(b, 4),
        duration_ms: u32_at(b, 8),
        parallelism_p50_milli: u32_at(b, 12),
        parallelism_p95_milli: u32_at(b, 16),
        max_useful: u32_at(b, 20),
        working_set_bytes: u64_at(b, 24),
        peak_bytes: u64_at(b, 32),
        io_class: IoClass::from_u8(b[40]).ok_or(DecodeError::BadValue)?,
        io_bytes_per_sec: u64_at(b, 44),
    };
    if !p.is_valid() {
        return Err(DecodeError::BadValue);
    }
    Ok(p)
}

fn decode_manifest(b: &[u8]) -> Result<Manifest, DecodeError> {
    need(b, MANIFEST_FIXED)?;
    let name_len = u16_at(b, 0) as usize;
    let count = u16_at(b, 2);
    let name = decode_name(
        b.get(MANIFEST_FIXED..MANIFEST_FIXED + name_len)
            .ok_or(DecodeError::ShortBody)?,
    )?;
    let mut m = Manifest::empty(name);
    let mut phases = 0;
    let mut schedule = 0;
    let records = Records {
        rest: &b[MANIFEST_FIXED + name_len..],
        remaining: count,
    };
    for rec in records {
        let rec = rec?;
        if rec.kind == kind::DATA_SET {
            // Not a manifest's record: skipped unread, as a reader that
            // predates it skips it, so it cannot spoil the manifest.
            continue;
        }
        match decode_record(rec)? {
            Some(Hint::Parallelism(p)) => m.parallelism = Some(p),
            Some(Hint::Memory(x)) => m.memory = Some(x),
            Some(Hint::Io(x)) => m.io = Some(x),
            Some(Hint::Placement(x)) => m.placement = Some(x),
            Some(Hint::PhaseBegin(p)) if phases < MAX_MANIFEST_PHASES => {
                // A phase in a manifest is a declaration, whatever its flag says.
                m.phases[phases] = Some(PhaseBegin {
                    declared_only: true,
                    ..p
                });
                phases += 1;
            }
            Some(Hint::PhaseNeeds(p)) if schedule < MAX_SCHEDULE_PHASES => {
                m.schedule[schedule] = Some(p);
                schedule += 1;
            }
            Some(Hint::Manifest(_)) => return Err(DecodeError::NestedManifest),
            // Extra phases and schedule entries, phase ends and unknown
            // kinds are skipped.
            _ => {}
        }
    }
    Ok(m)
}

/// Decodes one record; `Ok(None)` for a kind this reader does not know.
pub fn decode_record(rec: RawRecord<'_>) -> Result<Option<Hint>, DecodeError> {
    let b = rec.body;
    Ok(Some(match rec.kind {
        kind::PARALLELISM => Hint::Parallelism(decode_parallelism(b)?),
        kind::MEMORY => Hint::Memory(decode_memory(b)?),
        kind::IO => Hint::Io(decode_io(b)?),
        kind::PHASE_BEGIN => Hint::PhaseBegin(decode_phase_begin(b)?),
        kind::PHASE_END => {
            need(b, PHASE_END_LEN)?;
            Hint::PhaseEnd { id: u32_at(b, 0) }
        }
        kind::PLACEMENT => Hint::Placement(decode_placement(b)?),
        kind::MANIFEST => Hint::Manifest(decode_manifest(b)?),
        kind::PHASE_NEEDS => Hint::PhaseNeeds(decode_phase_needs(b)?),
        kind::DATA_SET => Hint::DataSet(decode_data_set(b)?),
        _ => return Ok(None),
    }))
}

// ---------------------------------------------------------------- writing
//
// The encoder is `const fn` so that the manifest macro can build an ELF note
// at compile time with the very same code that encodes hints at run time.

/// A fixed-capacity output buffer usable in `const` contexts. Writes past
/// the end are dropped and remembered in `overflow`.
#[derive(Clone, Copy)]
pub struct Buf<const N: usize> {
    /// Storage; the first `len` bytes are written.
    pub bytes: [u8; N],
    /// Bytes written.
    pub len: usize,
    /// Whether some write did not fit.
    pub overflow: bool,
}

impl<const N: usize> Default for Buf<N> {
    fn default() -> Self {
        Self::new()
    }
}

impl<const N: usize> Buf<N> {
    /// An empty buffer.
    pub const fn new() -> Self {
        Buf {
            bytes: [0; N],
            len: 0,
            overflow: false,
        }
    }

    const fn put(&mut self, b: u8) {
        if self.len < N {
            self.bytes[self.len] = b;
            self.len += 1;
        } else {
            self.overflow = true;
        }
    }

    const fn put_slice(&mut self, s: &[u8]) {
        let mut i = 0;
        while i < s.len() {
            self.put(s[i]);
            i += 1;
        }
    }

    const fn put_u16(&mut self, v: u16) {
        let b = v.to_le_bytes();
        self.put_slice(&b);
    }

    const fn put_u32(&mut self, v: u32) {
        let b = v.to_le_bytes();
        self.put_slice(&b);
    }

    const fn put_u64(&mut self, v: u64) {
        let b = v.to_le_bytes();
        self.put_slice(&b);
    }

    const fn set_u16(&mut self, at: usize, v: u16) {
        let b = v.to_le_bytes();
        if at + 2 <= N {
            self.bytes[at] = b[0];
            self.bytes[at + 1] = b[1];
        }
    }

    /// The bytes written.
    pub fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

const fn name_bytes(n: &Name) -> &[u8] {
    n.bytes.split_at(n.len as usize).0
}

const fn min_u32(a: u32, b: u32) -> u32 {
    if a < b {
        a
    } else {
        b
    }
}

/// Appends one record (header and body) for `hint`.
pub const fn write_record<const N: usize>(out: &mut Buf<N>, hint: &Hint) {
    let start = out.len;
    out.put_u16(hint.kind());
    out.put_u16(0); // body length, patched below
    match hint {
        Hint::Parallelism(p) => {
            out.put_u32(p.runnable_tasks);
            out.put_u32(p.max_useful);
            out.put_u32(min_u32(p.serial_ppm, PPM));
        }
        Hint::Memory(m) => {
            out.put_u64(m.working_set_bytes);
            out.put_u64(m.peak_bytes);
            out.put_u64(m.growth_bytes_per_sec);
        }
        Hint::Io(io) => {
            out.put_slice(&[io.class as u8, 0, 0, 0]);
            out.put_u64(io.bytes_per_sec);
        }
        Hint::PhaseBegin(p) => {
            out.put_u32(p.id);
            out.put_u32(p.expected_ms);
            out.put_u16(p.name.len as u16);
            out.put_slice(&[p.declared_only as u8, 0]);
            out.put_slice(name_bytes(&p.name));
        }
        Hint::PhaseEnd { id } => out.put_u32(*id),
        Hint::Placement(p) => {
            out.put_slice(&[p.relocatable as u8, p.monolithic as u8, p.locality as u8, 0]);
        }
        Hint::DataSet(name) => {
            out.put_u16(name.len as u16);
            out.put_slice(&[0, 0]);
            out.put_slice(name_bytes(name));
        }
        Hint::Manifest(m) => {
            out.put_u16(m.app.len as u16);
            let count_at = out.len;
            out.put_u16(0);
            out.put_slice(name_bytes(&m.app));
            let mut count = 0u16;
            if let Some(p) = m.parallelism {
                write_record(out, &Hint::Parallelism(p));
                count += 1;
            }
            if let Some(x) = m.memory {
                write_record(out, &Hint::Memory(x));
                count += 1;
            }
            if let Some(x) = m.io {
                write_record(out, &Hint::Io(x));
                count += 1;
            }
            if let Some(x) = m.placement {
                write_record(out, &Hint::Placement(x));
                count += 1;
            }
            let mut i = 0;
            while i < MAX_MANIFEST_PHASES {
                if let Some(mut p) = m.phases[i] {
                    p.declared_only = true;
                    write_record(out, &Hint::PhaseBegin(p));
                    count += 1;
                }
                i += 1;
            }
            // After every version-1 record, so that a reader that does not
            // know kind 8 skips these and decodes the rest as before.
            let mut i = 0;
            while i < MAX_SCHEDULE_PHASES {
                if let Some(p) = m.schedule[i] {
                    write_record(out, &Hint::PhaseNeeds(p));
                    count += 1;
                }
                i += 1;
            }
            out.set_u16(count_at, count);
        }
        Hint::PhaseNeeds(p) => {
            let p = p.normalized();
            out.put_u32(p.id);
            out.put_u32(p.start_ms);
            out.put_u32(p.duration_ms);
            out.put_u32(p.parallelism_p50_milli);
            out.put_u32(p.parallelism_p95_milli);
            out.put_u32(p.max_useful);
            out.put_u64(p.working_set_bytes);
            out.put_u64(p.peak_bytes);
            out.put_slice(&[p.io_class as u8, 0, 0, 0]);
            out.put_u64(p.io_bytes_per_sec);
        }
    }
    // When the buffer filled up, even the record header may be missing (and
    // `overflow` is set): never underflow.
    let body = out.len.saturating_sub(start + RECORD_HEADER_LEN);
    if body > u16::MAX as usize {
        out.overflow = true;
    }
    out.set_u16(start + 2, body as u16);
}

/// Writes a message header at the start of `out` (whose first
/// [`HEADER_LEN`] bytes were reserved).
pub const fn write_header<const N: usize>(out: &mut Buf<N>, count: u16, seq: u32) {
    let total = out.len as u32;
    let mut h = Buf::<HEADER_LEN>::new();
    h.put_u16(MAGIC);
    h.put_slice(&[VERSION, 0]);
    h.put_u16(count);
    h.put_u16(0);
    h.put_u32(seq);
    h.put_u32(total);
    let mut i = 0;
    while i < HEADER_LEN && i < N {
        out.bytes[i] = h.bytes[i];
        i += 1;
    }
}

/// Builds messages of up to [`MAX_MESSAGE_LEN`] bytes, one record at a time.
pub struct MessageWriter {
    buf: Buf<MAX_MESSAGE_LEN>,
    count: u16,
    seq: u32,
}

impl MessageWriter {
    /// Starts a message whose first record will have sequence number `seq`.
    pub const fn new(seq: u32) -> Self {
        let mut buf = Buf::new();
        buf.len = HEADER_LEN;
        MessageWriter { buf, count: 0, seq }
    }

    /// Appends a hint; the message is unchanged if it does not fit.
    pub fn push(&mut self, hint: &Hint) -> Result<(), EncodeError> {
        if self.count as usize >= MAX_RECORDS {
            return Err(EncodeError::TooManyRecords);
        }
        let before = self.buf.len;
        write_record(&mut self.buf, hint);
        if self.buf.overflow {
            self.buf.len = before;
            self.buf.overflow = false;
            return Err(EncodeError::NoSpace);
        }
        self.count += 1;
        Ok(())
    }

    /// Records pushed so far.
    pub fn count(&self) -> u16 {
        self.count
    }

    /// Whether no record has been pushed.
    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Writes the header and returns the finished message.
    pub fn finish(&mut self) -> &[u8] {
        write_header(&mut self.buf, self.count, self.seq);
        self.buf.as_slice()
    }
}

/// Encodes a single hint as a whole message.
pub fn encode_message(hint: &Hint, seq: u32) -> Result<MessageWriter, EncodeError> {
    let mut w = MessageWriter::new(seq);
    w.push(hint)?;
    Ok(w)
}

/// Encodes one message holding one record at compile time (see the
/// `manifest!` macro); `N` must be at least [`message_len`].
pub const fn const_message<const N: usize>(hint: &Hint) -> Buf<N> {
    let mut b = Buf::<N>::new();
    b.len = HEADER_LEN;
    write_record(&mut b, hint);
    write_header(&mut b, 1, 0);
    b
}

/// The length of the one-record message [`const_message`] builds.
pub const fn message_len(hint: &Hint) -> usize {
    const_message::<MAX_MESSAGE_LEN>(hint).len
}

// ---------------------------------------------------------------- outcomes

wire_enum! {
    /// What the host did with one record, as reported on the event queue. It
    /// never says anything about the host's capacity.
    pub enum Outcome {
        /// Accepted as sent.
        Accepted = 0 => "accepted",
        /// Accepted with values brought within the host's policy.
        Clamped = 1 => "clamped",
        /// Not acted on: the guest sent hints faster than the host's rate limit.
        RateLimited = 2 => "rate_limited",
        /// Malformed or refused.
        Rejected = 3 => "rejected",
    }
}

/// One event-queue entry: `seq:u32 outcome:u8 reserved:u8 stream:u16`.
pub const OUTCOME_LEN: usize = 8;

/// Offset of the message header's `stream`, which the guest driver writes.
pub const STREAM_OFFSET: usize = 6;

/// Offset of the message header's `flags`.
pub const FLAGS_OFFSET: usize = 3;

/// Bits of the message header's `flags`.
pub mod header_flags {
    /// The stream is closed: the guest driver sends this, with no records,
    /// when a file is released (the program may have died inside a phase);
    /// its open phases end. The driver clears this bit in what programs
    /// write, and the device honours it only with the `STREAMS` feature.
    pub const STREAM_CLOSED: u8 = 1;
}

/// The header-only message the guest driver sends when `stream` closes.
pub fn stream_closed_message(stream: u16) -> [u8; HEADER_LEN] {
    let mut m = [0u8; HEADER_LEN];
    m[..2].copy_from_slice(&MAGIC.to_le_bytes());
    m[2] = VERSION;
    m[FLAGS_OFFSET] = header_flags::STREAM_CLOSED;
    m[STREAM_OFFSET..STREAM_OFFSET + 2].copy_from_slice(&stream.to_le_bytes());
    m[12..16].copy_from_slice(&(HEADER_LEN as u32).to_le_bytes());
    m
}

/// The event-queue entry saying what happened to record `seq` of `stream`.
pub fn encode_outcome(stream: u16, seq: u32, outcome: Outcome) -> [u8; OUTCOME_LEN] {
    let s = seq.to_le_bytes();
    let t = stream.to_le_bytes();
    [s[0], s[1], s[2], s[3], outcome as u8, 0, t[0], t[1]]
}

/// Reads an event-queue entry as (stream, seq, outcome); `None` when it is
/// short or its outcome unknown.
pub fn decode_outcome(b: &[u8]) -> Option<(u16, u32, Outcome)> {
    if b.len() < OUTCOME_LEN {
        return None;
    }
    Some((u16_at(b, 6), u32_at(b, 0), Outcome::from_u8(b[4])?))
}
