//! ELF files: a binary's GNU build-id, and writing a manifest note into an
//! existing binary. Reading and rewriting go through the `object` crate.
//!
//! `embed` puts the note in section `.note.perfhint` (`SHT_NOTE`):
//!
//! * when the binary has that section and the new note fits in it, the
//!   section's bytes are overwritten in place (the rest of the section
//!   becomes an empty padding note) and nothing else in the file moves;
//! * when the section is there but too small and not allocated (one an
//!   earlier `embed` added), its contents are replaced;
//! * when it is allocated (compiled in by `manifest!`) but too small, its
//!   note is marked superseded (type [`NT_PERFHINT_SUPERSEDED`], which
//!   readers skip), it is renamed `.note.perfhint.old`, and a new section
//!   is added;
//! * when there is none, a new, non-allocated section is added after the
//!   others' contents.
//!
//! An added section is not in any segment (no `PT_NOTE`): readers find it
//! through the section headers, which `strip` keeps.

use guest_hints::note::{self, NOTE_OWNER, NOTE_SECTION, NT_PERFHINT_SUPERSEDED};
use guest_hints::wire::Manifest;
use object::build::elf::{Builder, SectionData};
use object::read::{Object, ObjectSection};
use object::{elf, SectionKind};

/// The section an allocated note too small for a new manifest is renamed to.
pub const OLD_SECTION: &str = ".note.perfhint.old";

/// The binary's GNU build-id in lower-case hex; an error when `data` is not
/// an ELF file.
pub fn build_id(data: &[u8]) -> Result<Option<String>, String> {
    let file = parse(data)?;
    let id = file
        .build_id()
        .map_err(|e| format!("unreadable ELF notes ({e})"))?;
    Ok(id.map(|b| b.iter().map(|x| format!("{x:02x}")).collect()))
}

fn parse(data: &[u8]) -> Result<object::File<'_>, String> {
    if data.get(..4) != Some(b"\x7fELF") {
        return Err("not an ELF file".to_string());
    }
    object::File::parse(data).map_err(|e| format!("not a readable ELF file ({e})"))
}

/// A note with no name and `len - 12` bytes of zeros: padding that every
/// note reader walks over. `len` is a multiple of 4, at least 12.
fn padding_note(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[4..8].copy_from_slice(&((len - 12) as u32).to_le_bytes());
    v
}

/// A note of `len` bytes (a multiple of 4, at least 24) that readers skip:
/// owner `perfhint`, type [`NT_PERFHINT_SUPERSEDED`], zeros.
fn superseded_note(len: usize) -> Vec<u8> {
    let mut v = vec![0u8; len];
    v[0..4].copy_from_slice(&(NOTE_OWNER.len() as u32).to_le_bytes());
    v[4..8].copy_from_slice(&((len - 24) as u32).to_le_bytes());
    v[8..12].copy_from_slice(&NT_PERFHINT_SUPERSEDED.to_le_bytes());
    v[12..12 + NOTE_OWNER.len()].copy_from_slice(NOTE_OWNER);
    v
}

/// How [`embed`] placed the note.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Placed {
    /// Overwrote the existing section's bytes.
    InPlace,
    /// Replaced the contents of a section an earlier embed added.
    Replaced,
    /// Added a new section (superseding a compiled-in one if there was one).
    Added,
}

/// `data` with `m` as its manifest note, and how it was placed. The result
/// is checked: it reads back as `m`, with the same build-id.
pub fn embed(data: &[u8], m: &Manifest) -> Result<(Vec<u8>, Placed), String> {
    let file = parse(data)?;
    let id_before = file.build_id().ok().flatten().map(<[u8]>::to_vec);
    let new = note::note_bytes(m);
    let existing: Vec<_> = file
        .sections()
        .filter(|s| s.name_bytes().ok() == Some(NOTE_SECTION.as_bytes()))
        .filter(|s| s.kind() == SectionKind::Note)
        .filter_map(|s| {
            let (off, size) = s.file_range()?;
            let alloc = match s.flags() {
                object::SectionFlags::Elf { sh_flags, .. } => sh_flags.contains(elf::SHF_ALLOC),
                _ => false,
            };
            Some((off as usize, size as usize, alloc))
        })
        .collect();
    // The section readers would take: the first.
    let fits = existing.first().and_then(|&(off, size, _)| {
        let spare = size.checked_sub(new.len())?;
        (spare == 0 || spare >= 12).then_some((off, size, spare))
    });
    let (out, placed) = if let Some((off, size, spare)) = fits {
        let mut out = data.to_vec();
        let area = out
            .get_mut(off..off + size)
            .ok_or("the .note.perfhint section lies outside the file")?;
        area[..new.len()].copy_from_slice(&new);
        if spare > 0 {
            area[new.len()..].copy_from_slice(&padding_note(spare));
        }
        (out, Placed::InPlace)
    } else {
        rebuild(data, &new)?
    };
    // Check what was written before anyone relies on it.
    let back =
        note::find_in_elf(&out).map_err(|e| format!("the result does not read back ({e})"))?;
    let expected = note::find_in_notes(&new);
    if back.is_none() || back != expected {
        return Err("the result does not read back as the manifest written".to_string());
    }
    let id_after = parse(&out)?.build_id().ok().flatten().map(<[u8]>::to_vec);
    if id_after != id_before {
        return Err("the result lost the binary's build-id".to_string());
    }
    if placed != Placed::InPlace {
        same_loaded_image(data, &out)?;
    }
    Ok((out, placed))
}

/// Rewrites the file with `object`'s ELF builder to give the note a
/// section of its own (see the module's documentation). Every other
/// section keeps its bytes: the builder only lays out the section headers,
/// the section names and the new note.
fn rebuild(data: &[u8], new: &[u8]) -> Result<(Vec<u8>, Placed), String> {
    let mut b = Builder::read(data).map_err(|e| format!("cannot rewrite this ELF file ({e})"))?;
    // The builder would re-encode symbol, string, version, hash, dynamic and
    // relocation sections from what it parsed; give it their bytes instead.
    for s in b.sections.iter_mut() {
        let raw = !matches!(
            s.data,
            SectionData::Data(_)
                | SectionData::Note(_)
                | SectionData::UninitializedData(_)
                | SectionData::SectionString
        );
        if raw {
            let bytes = usize::try_from(s.sh_offset)
                .ok()
                .zip(usize::try_from(s.sh_size).ok())
                .and_then(|(o, n)| data.get(o..o.checked_add(n)?))
                .ok_or_else(|| format!("section {} lies outside the file", s.name))?;
            s.data = SectionData::Data(bytes.into());
        }
    }
    for sym in b.symbols.iter_mut() {
        sym.delete = true;
    }
    for sym in b.dynamic_symbols.iter_mut() {
        sym.delete = true;
    }
    b.version_base = None;
    let mut placed = None;
    for s in b.sections.iter_mut() {
        if s.name.as_slice() != NOTE_SECTION.as_bytes() || s.sh_type != elf::SHT_NOTE {
            continue;
        }
        if s.is_alloc() {
            // Its place in memory is fixed: keep the bytes' size, drop the manifest.
            let len = match &s.data {
                SectionData::Note(d) | SectionData::Data(d) => d.len(),
                _ => 0,
            };
            s.data = SectionData::Note(
                if len >= 24 {
                    superseded_note(len)
                } else {
                    vec![0u8; len]
                }
                .into(),
            );
            s.name = OLD_SECTION.as_bytes().to_vec().into();
        } else if placed.is_none() {
            s.data = SectionData::Note(new.to_vec().into());
            s.sh_addralign = s.sh_addralign.max(4);
            placed = Some(Placed::Replaced);
        } else {
            s.delete = true;
        }
    }
    if placed.is_none() {
        let s = b.sections.add();
        s.name = NOTE_SECTION.as_bytes().to_vec().into();
        s.sh_type = elf::SHT_NOTE;
        s.sh_addralign = 4;
        s.data = SectionData::Note(new.to_vec().into());
        placed = Some(Placed::Added);
    }
    let mut out = Vec::with_capacity(data.len() + new.len() + 256);
    b.write(&mut out)
        .map_err(|e| format!("cannot rewrite this ELF file ({e})"))?;
    Ok((out, placed.unwrap_or(Placed::Added)))
}

/// Checks that what the program loads is unchanged: the same program
/// headers, and the same bytes in every segment but those of the ELF file
/// header (which says where the section headers now are) and of a
/// superseded `.note.perfhint` section.
fn same_loaded_image(before: &[u8], after: &[u8]) -> Result<(), String> {
    use object::read::ObjectSegment;
    let (a, b) = (parse(before)?, parse(after)?);
    let old_note = b
        .sections()
        .find(|s| s.name_bytes().ok() == Some(OLD_SECTION.as_bytes()))
        .and_then(|s| s.file_range());
    let sa: Vec<_> = a
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range()))
        .collect();
    let sb: Vec<_> = b
        .segments()
        .map(|s| (s.address(), s.size(), s.file_range()))
        .collect();
    if sa != sb {
        return Err("the result's program headers differ".to_string());
    }
    let header_len: u64 = if a.is_64() { 64 } else { 52 };
    let skip = old_note.unwrap_or((0, 0));
    for &(_, _, (off, size)) in &sa {
        let start = off.max(header_len);
        let end = off.saturating_add(size);
        // The segment's bytes, less the superseded note's.
        let pieces = [
            (start, end.min(skip.0)),
            (start.max(skip.0.saturating_add(skip.1)), end),
        ];
        for (from, to) in pieces {
            if from >= to {
                continue;
            }
            let range = usize::try_from(from).ok()..usize::try_from(to).ok();
            let (Some(f), Some(t)) = (range.start, range.end) else {
                return Err("a segment lies outside the address space".to_string());
            };
            if before.get(f..t) != after.get(f..t) {
                return Err(format!(
                    "the result changes loaded bytes between file offsets {f:#x} and {t:#x}"
                ));
            }
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn padding_and_superseded_notes_are_skipped() {
        let m = Manifest::empty(guest_hints::wire::Name::truncated("x"));
        let mut area = note::note_bytes(&m);
        area.extend(padding_note(16));
        assert_eq!(note::find_in_notes(&area), Some(m));
        let mut area = superseded_note(40);
        area.extend(note::note_bytes(&m));
        assert_eq!(note::find_in_notes(&area), Some(m));
        assert_eq!(note::find_in_notes(&superseded_note(40)), None);
    }

    #[test]
    fn embedding_keeps_what_is_loaded_and_reads_back() {
        let exe = std::fs::read("/proc/self/exe").unwrap();
        let m = guest_hints::profile::derive_manifest(
            &guest_hints::profile::Profile::from_json(
                r#"{"format":"perfhint-profile","version":1,"command":["t"],"binary":null,
                    "build_id":null,"wall_ms":10,"interval_ms":10,"runs":1,
                    "cpu_time_source":"ticks","working_set_source":"rss","io_source":"chars",
                    "phases":[{"id":1,"name":"a","source":"explicit","start_ms":0,
                    "duration_ms":10,"parallelism_p50":1.0,"parallelism_p95":1.0,
                    "max_useful":1,"working_set_bytes":1,"peak_bytes":2,
                    "io_bytes_per_sec":0,"io_class":"none","samples":1}]}"#,
            )
            .unwrap(),
            "t",
        );
        let (out, placed) = embed(&exe, &m).unwrap();
        assert_eq!(placed, Placed::Added);
        assert_eq!(
            note::find_in_elf(&out).unwrap(),
            note::find_in_notes(&note::note_bytes(&m))
        );
        same_loaded_image(&exe, &out).unwrap();
        // Once embedded, a note of the same size goes in place.
        let (again, placed) = embed(&out, &m).unwrap();
        assert_eq!(placed, Placed::InPlace);
        assert_eq!(again, out);
        // A change to anything loaded is caught.
        let mut bad = out.clone();
        bad[0x200] ^= 1;
        assert!(same_loaded_image(&exe, &bad).is_err());
    }

    #[test]
    fn not_elf() {
        assert_eq!(build_id(b"#!/bin/sh\n"), Err("not an ELF file".to_string()));
        assert!(build_id(b"\x7fELF garbage").is_err());
        let m = Manifest::empty(guest_hints::wire::Name::truncated("x"));
        assert!(embed(b"hello", &m).is_err());
    }
}
