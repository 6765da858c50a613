#![forbid(unsafe_code)]
//! The compile-time manifest: an ELF note in section `.note.perfhint`, owner
//! `perfhint`, type [`NT_PERFHINT_MANIFEST`], whose descriptor is one wire
//! message holding one manifest record. Being an allocated note section, it
//! survives `strip`.

use crate::wire::{self, Hint, Manifest};

/// The note's owner (name) field, NUL included.
pub const NOTE_OWNER: &[u8; 9] = b"perfhint\0";
/// The note type of a perf-hint manifest.
pub const NT_PERFHINT_MANIFEST: u32 = 0x5048_0001;
/// The note type `perfhint embed` gives a manifest it replaced but could not
/// remove (an allocated section too small for the new one): readers skip it.
pub const NT_PERFHINT_SUPERSEDED: u32 = 0x5048_0002;
/// Section the note lives in.
pub const NOTE_SECTION: &str = ".note.perfhint";

const fn align4(n: usize) -> usize {
    (n + 3) & !3
}

/// Total note size for a manifest: header, padded owner, padded message.
pub const fn note_len(m: &Manifest) -> usize {
    12 + align4(NOTE_OWNER.len()) + align4(wire::message_len(&Hint::Manifest(*m)))
}

/// An ELF note, 4-byte aligned as the ELF spec requires.
#[repr(C, align(4))]
pub struct Note<const N: usize> {
    /// The note as it appears in the section: header, owner, descriptor.
    pub bytes: [u8; N],
}

impl<const N: usize> Note<N> {
    /// The note for `m`; `N` must be [`note_len`]`(m)`.
    pub const fn new(m: &Manifest) -> Self {
        let msg = wire::const_message::<{ wire::MAX_MESSAGE_LEN }>(&Hint::Manifest(*m));
        let mut bytes = [0u8; N];
        let hdr = [
            (NOTE_OWNER.len() as u32).to_le_bytes(),
            (msg.len as u32).to_le_bytes(),
            NT_PERFHINT_MANIFEST.to_le_bytes(),
        ];
        let mut i = 0;
        while i < 12 {
            bytes[i] = hdr[i / 4][i % 4];
            i += 1;
        }
        let mut j = 0;
        while j < NOTE_OWNER.len() {
            bytes[12 + j] = NOTE_OWNER[j];
            j += 1;
        }
        let desc = 12 + align4(NOTE_OWNER.len());
        let mut k = 0;
        while k < msg.len && desc + k < N {
            bytes[desc + k] = msg.bytes[k];
            k += 1;
        }
        Note { bytes }
    }
}

/// The note for `m` (as [`Note::new`] builds it), at run time.
#[cfg(feature = "std")]
pub fn note_bytes(m: &Manifest) -> Vec<u8> {
    let note: Note<{ 12 + 12 + wire::MAX_MESSAGE_LEN }> = Note::new(m);
    note.bytes[..note_len(m)].to_vec()
}

/// Embeds the application's declared needs in its binary as an ELF note.
///
/// ```
/// use guest_hints::{manifest, ManifestBuilder, wire::IoClass};
/// manifest!(ManifestBuilder::new("my-app")
///     .parallelism(8, 16, 0.05)
///     .memory(256 << 20, 512 << 20)
///     .io(IoClass::Sequential, 100 << 20)
///     .phase(1, "load", 2_000)
///     .build());
/// ```
#[macro_export]
macro_rules! manifest {
    ($manifest:expr) => {
        const _: () = {
            const MANIFEST: $crate::wire::Manifest = $manifest;
            #[used]
            #[link_section = ".note.perfhint"]
            static PERFHINT_NOTE: $crate::note::Note<{ $crate::note::note_len(&MANIFEST) }> =
                $crate::note::Note::new(&MANIFEST);
        };
    };
}

/// Finds perf-hint manifests in the notes of an ELF file's bytes.
pub fn find_in_elf(elf: &[u8]) -> Result<Option<Manifest>, &'static str> {
    let rd16 = |o: usize| elf.get(o..o + 2).map(|b| u16::from_le_bytes([b[0], b[1]]));
    let rd32 = |o: usize| {
        elf.get(o..o + 4)
            .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]))
    };
    let rd64 = |o: usize| {
        elf.get(o..o + 8).map(|b| {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            u64::from_le_bytes(a)
        })
    };
    if elf.get(0..4) != Some(b"\x7fELF") {
        return Err("not an ELF file");
    }
    if elf.get(5) != Some(&1) {
        return Err("big-endian ELF is not supported");
    }
    let is64 = match elf.get(4) {
        Some(2) => true,
        Some(1) => false,
        _ => return Err("unknown ELF class"),
    };
    let word = |o: usize| {
        if is64 {
            rd64(o)
        } else {
            rd32(o).map(u64::from)
        }
    };
    // Section headers: (offset, size) of every SHT_NOTE section.
    let (shoff, shentsize, shnum) = if is64 {
        (rd64(0x28), rd16(0x3a), rd16(0x3c))
    } else {
        (rd32(0x20).map(u64::from), rd16(0x2e), rd16(0x30))
    };
    let (phoff, phentsize, phnum) = if is64 {
        (rd64(0x20), rd16(0x36), rd16(0x38))
    } else {
        (rd32(0x1c).map(u64::from), rd16(0x2a), rd16(0x2c))
    };
    let mut regions = [(0u64, 0u64); 64];
    let mut n = 0;
    if let (Some(off), Some(es), Some(num)) = (shoff, shentsize, shnum) {
        for i in 0..num as u64 {
            let h = (off + i * u64::from(es)) as usize;
            if rd32(h + 4) == Some(7) && n < regions.len() {
                let (o, s) = if is64 {
                    (word(h + 0x18), word(h + 0x20))
                } else {
                    (word(h + 0x10), word(h + 0x14))
                };
                if let (Some(o), Some(s)) = (o, s) {
                    regions[n] = (o, s);
                    n += 1;
                }
            }
        }
    }
    if n == 0 {
        // No section headers (fully stripped): fall back to PT_NOTE segments.
        if let (Some(off), Some(es), Some(num)) = (phoff, phentsize, phnum) {
            for i in 0..num as u64 {
                let h = (off + i * u64::from(es)) as usize;
                if rd32(h) == Some(4) && n < regions.len() {
                    let (o, s) = if is64 {
                        (word(h + 0x08), word(h + 0x20))
                    } else {
                        (word(h + 0x04), word(h + 0x10))
                    };
                    if let (Some(o), Some(s)) = (o, s) {
                        regions[n] = (o, s);
                        n += 1;
                    }
                }
            }
        }
    }
    for &(off, size) in &regions[..n] {
        let Some(notes) = elf.get(off as usize..(off.saturating_add(size)) as usize) else {
            continue;
        };
        if let Some(m) = find_in_notes(notes) {
            return Ok(Some(m));
        }
    }
    Ok(None)
}

/// Walks a note area for the first perf-hint manifest.
pub fn find_in_notes(mut notes: &[u8]) -> Option<Manifest> {
    while notes.len() >= 12 {
        let namesz = u32::from_le_bytes([notes[0], notes[1], notes[2], notes[3]]) as usize;
        let descsz = u32::from_le_bytes([notes[4], notes[5], notes[6], notes[7]]) as usize;
        let ty = u32::from_le_bytes([notes[8], notes[9], notes[10], notes[11]]);
        let name_end = 12usize.checked_add(align4(namesz))?;
        let desc_end = name_end.checked_add(align4(descsz))?;
        let name = notes.get(12..12 + namesz)?;
        let desc = notes.get(name_end..name_end + descsz)?;
        if name == NOTE_OWNER && ty == NT_PERFHINT_MANIFEST {
            if let Ok((_, mut records)) = wire::decode_message(desc) {
                if let Some(Ok(Some(Hint::Manifest(m)))) =
                    records.next().map(|r| r.and_then(wire::decode_record))
                {
                    return Some(m);
                }
            }
        }
        notes = notes.get(desc_end..)?;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ManifestBuilder;

    const M: Manifest = ManifestBuilder::new("unit")
        .parallelism(4, 8, 0.5)
        .phase(1, "a", 10)
        .build();

    #[test]
    fn note_round_trips() {
        let note: Note<{ note_len(&M) }> = Note::new(&M);
        assert_eq!(note.bytes.len() % 4, 0);
        assert_eq!(find_in_notes(&note.bytes), Some(M));
        // Garbage and truncation find nothing and do not panic.
        assert_eq!(find_in_notes(&note.bytes[..20]), None);
        assert_eq!(find_in_notes(&[0xff; 40]), None);
        assert!(find_in_elf(b"nope").is_err());
    }

    #[cfg(feature = "std")]
    #[test]
    fn note_bytes_at_run_time_are_the_const_note() {
        let note: Note<{ note_len(&M) }> = Note::new(&M);
        assert_eq!(note_bytes(&M), note.bytes.to_vec());
    }
}
