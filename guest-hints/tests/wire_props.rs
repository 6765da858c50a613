//! Property tests of the wire format: every hint survives a round trip,
//! batches keep their order, no byte string makes the decoder panic, and
//! manifests without a schedule are what version-1 writers wrote.

use guest_hints::client::hint;
use guest_hints::wire::*;
use proptest::prelude::*;

fn name() -> impl Strategy<Value = Name> {
    "[a-zA-Z0-9_ é-]{0,16}".prop_map(|s| Name::truncated(&s))
}

fn parallelism() -> impl Strategy<Value = Parallelism> {
    (any::<u32>(), any::<u32>(), 0..=PPM).prop_map(|(runnable_tasks, max_useful, serial_ppm)| {
        Parallelism {
            runnable_tasks,
            max_useful,
            serial_ppm,
        }
    })
}

fn memory() -> impl Strategy<Value = Memory> {
    (any::<u64>(), any::<u64>(), any::<u64>()).prop_map(|(w, p, g)| Memory {
        working_set_bytes: w,
        peak_bytes: p,
        growth_bytes_per_sec: g,
    })
}

fn io() -> impl Strategy<Value = Io> {
    (0usize..IoClass::ALL.len(), any::<u64>()).prop_map(|(c, r)| Io {
        class: IoClass::ALL[c],
        bytes_per_sec: r,
    })
}

fn placement() -> impl Strategy<Value = Placement> {
    (any::<bool>(), any::<bool>(), 0u8..3).prop_map(|(r, m, l)| Placement {
        relocatable: r,
        monolithic: m,
        locality: Locality::from_u8(l).unwrap(),
    })
}

fn phase(declared_only: bool) -> impl Strategy<Value = PhaseBegin> {
    (any::<u32>(), any::<u32>(), name()).prop_map(move |(id, expected_ms, name)| PhaseBegin {
        id,
        expected_ms,
        name,
        declared_only,
    })
}

/// Any `PhaseNeeds`, valid or not.
fn any_phase_needs() -> impl Strategy<Value = PhaseNeeds> {
    (
        (any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u32>(), any::<u32>(), any::<u32>()),
        (any::<u64>(), any::<u64>()),
        io(),
    )
        .prop_map(|((id, start, dur), (p50, p95, max), (ws, peak), io)| {
            PhaseNeeds::new(id, start, dur)
                .parallelism_milli(p50, p95, max)
                .memory(ws, peak)
                .io(io.class, io.bytes_per_sec)
        })
}

/// A valid `PhaseNeeds` (the decoder accepts it as it is).
fn phase_needs() -> impl Strategy<Value = PhaseNeeds> {
    any_phase_needs().prop_map(PhaseNeeds::normalized)
}

fn manifest_without_schedule() -> impl Strategy<Value = Manifest> {
    (
        name(),
        proptest::option::of(parallelism()),
        proptest::option::of(memory()),
        proptest::option::of(io()),
        proptest::option::of(placement()),
        proptest::collection::vec(phase(true), 0..=MAX_MANIFEST_PHASES),
    )
        .prop_map(|(app, parallelism, memory, io, placement, ph)| {
            let mut m = Manifest::empty(app);
            m.parallelism = parallelism;
            m.memory = memory;
            m.io = io;
            m.placement = placement;
            for (i, p) in ph.into_iter().enumerate() {
                m.phases[i] = Some(p);
            }
            m
        })
}

fn manifest() -> impl Strategy<Value = Manifest> {
    (
        manifest_without_schedule(),
        proptest::collection::vec(phase_needs(), 0..=MAX_SCHEDULE_PHASES),
    )
        .prop_map(|(mut m, schedule)| {
            for (i, p) in schedule.into_iter().enumerate() {
                m.schedule[i] = Some(p);
            }
            m
        })
}

fn hint() -> impl Strategy<Value = Hint> {
    prop_oneof![
        parallelism().prop_map(Hint::Parallelism),
        memory().prop_map(Hint::Memory),
        io().prop_map(Hint::Io),
        phase(false).prop_map(Hint::PhaseBegin),
        any::<u32>().prop_map(|id| Hint::PhaseEnd { id }),
        placement().prop_map(Hint::Placement),
        manifest().prop_map(Hint::Manifest),
        phase_needs().prop_map(Hint::PhaseNeeds),
        "[a-z0-9_.-]{1,48}".prop_map(|s| Hint::DataSet(Name::new(&s).unwrap())),
    ]
}

/// A manifest record as a version-1 writer lays it out (docs/wire-format.md),
/// written independently of the crate's encoder.
fn v1_manifest_record(m: &Manifest) -> Vec<u8> {
    fn record(out: &mut Vec<u8>, kind: u16, body: &[u8]) {
        out.extend_from_slice(&kind.to_le_bytes());
        out.extend_from_slice(&(body.len() as u16).to_le_bytes());
        out.extend_from_slice(body);
    }
    let mut records = Vec::new();
    let mut count = 0u16;
    if let Some(p) = m.parallelism {
        let mut b = Vec::new();
        for v in [p.runnable_tasks, p.max_useful, p.serial_ppm] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        record(&mut records, 1, &b);
        count += 1;
    }
    if let Some(x) = m.memory {
        let mut b = Vec::new();
        for v in [x.working_set_bytes, x.peak_bytes, x.growth_bytes_per_sec] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        record(&mut records, 2, &b);
        count += 1;
    }
    if let Some(x) = m.io {
        let mut b = vec![x.class as u8, 0, 0, 0];
        b.extend_from_slice(&x.bytes_per_sec.to_le_bytes());
        record(&mut records, 3, &b);
        count += 1;
    }
    if let Some(x) = m.placement {
        let b = [x.relocatable as u8, x.monolithic as u8, x.locality as u8, 0];
        record(&mut records, 6, &b);
        count += 1;
    }
    for p in m.phases.iter().flatten() {
        let mut b = Vec::new();
        b.extend_from_slice(&p.id.to_le_bytes());
        b.extend_from_slice(&p.expected_ms.to_le_bytes());
        b.extend_from_slice(&(p.name.as_str().len() as u16).to_le_bytes());
        b.extend_from_slice(&[1, 0]);
        b.extend_from_slice(p.name.as_str().as_bytes());
        record(&mut records, 4, &b);
        count += 1;
    }
    let mut body = Vec::new();
    body.extend_from_slice(&(m.app.as_str().len() as u16).to_le_bytes());
    body.extend_from_slice(&count.to_le_bytes());
    body.extend_from_slice(m.app.as_str().as_bytes());
    body.extend_from_slice(&records);
    let mut out = Vec::new();
    record(&mut out, 7, &body);
    out
}

/// Renames every `phase_needs` record inside an encoded manifest message to
/// a kind no reader knows: what a reader that predates kind 8 sees.
fn hide_phase_needs(msg: &mut [u8]) {
    // message header, manifest record header, then the manifest's fixed fields
    let body = HEADER_LEN + RECORD_HEADER_LEN;
    let app_len = u16::from_le_bytes([msg[body], msg[body + 1]]) as usize;
    let mut at = body + 4 + app_len;
    while at + RECORD_HEADER_LEN <= msg.len() {
        let kind = u16::from_le_bytes([msg[at], msg[at + 1]]);
        let len = u16::from_le_bytes([msg[at + 2], msg[at + 3]]) as usize;
        if kind == kind::PHASE_NEEDS {
            msg[at..at + 2].copy_from_slice(&0x7fffu16.to_le_bytes());
        }
        at += RECORD_HEADER_LEN + len;
    }
}

fn decode_all(msg: &[u8]) -> Result<(Header, Vec<Hint>), DecodeError> {
    let (h, records) = decode_message(msg)?;
    let mut out = Vec::new();
    for r in records {
        if let Some(hint) = decode_record(r?)? {
            out.push(hint);
        }
    }
    Ok((h, out))
}

proptest! {
    #[test]
    fn one_hint_round_trips(h in hint(), seq in any::<u32>()) {
        let mut w = encode_message(&h, seq).unwrap();
        let (header, hints) = decode_all(w.finish()).unwrap();
        prop_assert_eq!(header.seq, seq);
        prop_assert_eq!(hints, vec![h]);
    }

    #[test]
    fn batches_keep_order(hs in proptest::collection::vec(hint(), 1..40)) {
        let mut w = MessageWriter::new(7);
        let mut sent = Vec::new();
        for h in &hs {
            if w.push(h).is_ok() {
                sent.push(*h);
            }
        }
        let (header, hints) = decode_all(w.finish()).unwrap();
        prop_assert_eq!(header.count as usize, sent.len());
        prop_assert_eq!(hints, sent);
    }

    #[test]
    fn any_phase_needs_decodes_as_normalized(p in any_phase_needs()) {
        let mut w = encode_message(&Hint::PhaseNeeds(p), 0).unwrap();
        let (_, hints) = decode_all(w.finish()).unwrap();
        prop_assert_eq!(hints, vec![Hint::PhaseNeeds(p.normalized())]);
        prop_assert!(p.normalized().is_valid());
        if p.is_valid() {
            prop_assert_eq!(p.normalized(), p);
        }
    }

    #[test]
    fn phase_needs_body_is_52_bytes_at_fixed_offsets(p in phase_needs()) {
        let mut w = encode_message(&Hint::PhaseNeeds(p), 0).unwrap();
        let msg = w.finish();
        prop_assert_eq!(msg.len(), HEADER_LEN + RECORD_HEADER_LEN + 52);
        let b = &msg[HEADER_LEN + RECORD_HEADER_LEN..];
        let u32_at = |o: usize| u32::from_le_bytes(b[o..o + 4].try_into().unwrap());
        let u64_at = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap());
        prop_assert_eq!(u32_at(0), p.id);
        prop_assert_eq!(u32_at(4), p.start_ms);
        prop_assert_eq!(u32_at(8), p.duration_ms);
        prop_assert_eq!(u32_at(12), p.parallelism_p50_milli);
        prop_assert_eq!(u32_at(16), p.parallelism_p95_milli);
        prop_assert_eq!(u32_at(20), p.max_useful);
        prop_assert_eq!(u64_at(24), p.working_set_bytes);
        prop_assert_eq!(u64_at(32), p.peak_bytes);
        prop_assert_eq!(b[40], p.io_class as u8);
        prop_assert_eq!(&b[41..44], &[0u8, 0, 0][..]);
        prop_assert_eq!(u64_at(44), p.io_bytes_per_sec);
    }

    #[test]
    fn truncated_phase_needs_is_short(p in phase_needs(), cut in 0usize..52) {
        // The record claims a shorter body: malformed, not misread.
        let mut w = encode_message(&Hint::PhaseNeeds(p), 0).unwrap();
        let mut msg = w.finish()[..HEADER_LEN + RECORD_HEADER_LEN + cut].to_vec();
        msg[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&(cut as u16).to_le_bytes());
        let total = msg.len() as u32;
        msg[12..16].copy_from_slice(&total.to_le_bytes());
        prop_assert_eq!(decode_all(&msg).unwrap_err(), DecodeError::ShortBody);
    }

    #[test]
    fn truncated_messages_are_errors(h in hint(), cut in any::<usize>()) {
        // A message cut short anywhere, its header patched to agree: an
        // error (or fewer records), never a panic or a different hint.
        let mut w = encode_message(&h, 3).unwrap();
        let full = w.finish().to_vec();
        let cut = HEADER_LEN + cut % (full.len() - HEADER_LEN);
        let mut msg = full[..cut].to_vec();
        let total = msg.len() as u32;
        msg[12..16].copy_from_slice(&total.to_le_bytes());
        if let Ok((_, hints)) = decode_all(&msg) {
            prop_assert!(hints.is_empty());
        }
    }

    #[test]
    fn manifests_without_a_schedule_are_version_1_bytes(m in manifest_without_schedule()) {
        let mut w = encode_message(&Hint::Manifest(m), 0).unwrap();
        let msg = w.finish();
        prop_assert_eq!(&msg[HEADER_LEN..], &v1_manifest_record(&m)[..]);
        // And version-1 bytes decode to the same manifest, schedule empty.
        let (_, hints) = decode_all(msg).unwrap();
        prop_assert_eq!(hints, vec![Hint::Manifest(m)]);
    }

    #[test]
    fn old_readers_skip_the_schedule(m in manifest()) {
        // A reader that does not know kind 8 decodes the rest unchanged.
        let mut w = encode_message(&Hint::Manifest(m), 0).unwrap();
        let mut msg = w.finish().to_vec();
        hide_phase_needs(&mut msg);
        let (_, hints) = decode_all(&msg).unwrap();
        let mut old = m;
        old.schedule = [None; MAX_SCHEDULE_PHASES];
        prop_assert_eq!(hints, vec![Hint::Manifest(old)]);
    }

    #[test]
    fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..600)) {
        let _ = decode_all(&bytes);
    }

    #[test]
    fn corrupted_messages_never_panic(h in hint(), flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let mut w = encode_message(&h, 1).unwrap();
        let mut msg = w.finish().to_vec();
        for (i, b) in flips {
            let i = i % msg.len();
            msg[i] ^= b;
        }
        let _ = decode_all(&msg);
    }
}

#[test]
fn unknown_kinds_are_skipped_and_extra_fields_ignored() {
    // A newer guest: an unknown kind, and a parallelism record with 4 more bytes.
    let mut msg = vec![0u8; HEADER_LEN];
    msg.extend_from_slice(&99u16.to_le_bytes());
    msg.extend_from_slice(&3u16.to_le_bytes());
    msg.extend_from_slice(&[1, 2, 3]);
    msg.extend_from_slice(&kind::PARALLELISM.to_le_bytes());
    msg.extend_from_slice(&16u16.to_le_bytes());
    for v in [8u32, 16, 1000, 0xdead] {
        msg.extend_from_slice(&v.to_le_bytes());
    }
    let total = msg.len() as u32;
    msg[0..2].copy_from_slice(&MAGIC.to_le_bytes());
    msg[2] = VERSION;
    msg[4..6].copy_from_slice(&2u16.to_le_bytes());
    msg[12..16].copy_from_slice(&total.to_le_bytes());
    let (_, hints) = decode_all(&msg).unwrap();
    assert_eq!(
        hints,
        vec![Hint::Parallelism(Parallelism {
            runnable_tasks: 8,
            max_useful: 16,
            serial_ppm: 1000
        })]
    );
}

#[test]
fn malformed_messages_are_named() {
    let mut w = encode_message(&Hint::PhaseEnd { id: 1 }, 0).unwrap();
    let good = w.finish().to_vec();
    assert_eq!(decode_header(&good[..8]), Err(DecodeError::BadLength));
    let mut bad = good.clone();
    bad[0] = 0;
    assert_eq!(decode_header(&bad), Err(DecodeError::BadMagic));
    let mut bad = good.clone();
    bad[2] = 9;
    assert_eq!(decode_header(&bad), Err(DecodeError::UnsupportedVersion));
    let mut longer = good.clone();
    longer.push(0);
    assert_eq!(decode_header(&longer), Err(DecodeError::LengthMismatch));
    let mut bad = good.clone();
    bad[4] = 2; // claims two records, holds one
    assert_eq!(decode_all(&bad).unwrap_err(), DecodeError::TruncatedRecord);
    assert_eq!(
        decode_header(&vec![0u8; MAX_MESSAGE_LEN + 1]),
        Err(DecodeError::BadLength)
    );
}

/// Kind 9 as docs/wire-format.md lays it out: a name of 1 to 48 bytes of
/// UTF-8, whole; anything else is malformed.
#[test]
fn a_data_set_is_a_whole_nonempty_name() {
    let raw = |len: u16, name: &[u8]| {
        let mut b = len.to_le_bytes().to_vec();
        b.extend_from_slice(&[0, 0]);
        b.extend_from_slice(name);
        decode_record(RawRecord {
            kind: kind::DATA_SET,
            body: &b,
        })
    };
    let genome = Hint::DataSet(Name::new("genome-2026").unwrap());
    assert_eq!(raw(11, b"genome-2026"), Ok(Some(genome)));
    assert_eq!(raw(11, b"genome-2026 and more"), Ok(Some(genome)));
    assert_eq!(raw(0, b""), Err(DecodeError::BadValue), "empty");
    assert_eq!(raw(12, b"genome-2026"), Err(DecodeError::ShortBody));
    assert_eq!(
        raw(2, &[0xc3, 0x28]),
        Err(DecodeError::BadValue),
        "not UTF-8"
    );
    assert_eq!(raw(49, &[b'a'; 49]), Err(DecodeError::BadValue), "too long");
    assert_eq!(
        decode_record(RawRecord {
            kind: kind::DATA_SET,
            body: &[1, 0],
        }),
        Err(DecodeError::ShortBody)
    );
    // Inside a manifest it is skipped unread, even malformed.
    let mut m = Manifest::empty(Name::new("app").unwrap());
    m.memory = Some(Memory {
        working_set_bytes: 1,
        peak_bytes: 2,
        growth_bytes_per_sec: 0,
    });
    let mut body = v1_manifest_record(&m)[4..].to_vec();
    body[2] += 1; // one more record
    body.extend_from_slice(&kind::DATA_SET.to_le_bytes());
    body.extend_from_slice(&4u16.to_le_bytes());
    body.extend_from_slice(&[0, 0, 0, 0]); // an empty name
    assert_eq!(
        decode_record(RawRecord {
            kind: kind::MANIFEST,
            body: &body,
        }),
        Ok(Some(Hint::Manifest(m)))
    );
    assert!(hint::data_set("").is_none());
    assert!(hint::data_set(&"a".repeat(49)).is_none());
    assert_eq!(hint::data_set("genome-2026"), Some(genome));
}

#[test]
fn phase_needs_out_of_range_is_rejected() {
    let good = PhaseNeeds::new(1, 100, 200)
        .parallelism(2.0, 3.0, 4)
        .memory(10, 20)
        .io(IoClass::Random, 5);
    let encode_raw = |p: PhaseNeeds, class: u8| {
        // The encoder normalizes, so write the body by hand.
        let mut b = Vec::new();
        for v in [
            p.id,
            p.start_ms,
            p.duration_ms,
            p.parallelism_p50_milli,
            p.parallelism_p95_milli,
            p.max_useful,
        ] {
            b.extend_from_slice(&v.to_le_bytes());
        }
        b.extend_from_slice(&p.working_set_bytes.to_le_bytes());
        b.extend_from_slice(&p.peak_bytes.to_le_bytes());
        b.extend_from_slice(&[class, 0, 0, 0]);
        b.extend_from_slice(&p.io_bytes_per_sec.to_le_bytes());
        decode_record(RawRecord {
            kind: kind::PHASE_NEEDS,
            body: &b,
        })
    };
    assert_eq!(encode_raw(good, 3), Ok(Some(Hint::PhaseNeeds(good))));
    assert_eq!(encode_raw(good, 9), Err(DecodeError::BadValue));
    let p95_below_p50 = good.parallelism_milli(3000, 2000, 4);
    assert_eq!(encode_raw(p95_below_p50, 3), Err(DecodeError::BadValue));
    let ws_above_peak = good.memory(30, 20);
    assert_eq!(encode_raw(ws_above_peak, 3), Err(DecodeError::BadValue));
    // An unknown peak (0) allows any working set.
    let peak_unknown = good.memory(30, 0);
    assert_eq!(
        encode_raw(peak_unknown, 3),
        Ok(Some(Hint::PhaseNeeds(peak_unknown)))
    );
    let past_u32 = PhaseNeeds::new(1, u32::MAX - 5, 10);
    assert_eq!(encode_raw(past_u32, 0), Err(DecodeError::BadValue));
    assert_eq!(past_u32.normalized().duration_ms, 5);
}

#[test]
fn a_manifest_keeps_sixteen_schedule_entries_and_skips_more() {
    // A writer (a newer one, say) that puts 20 entries in a manifest.
    let mut m = Manifest::empty(Name::new("many").unwrap());
    for i in 0..MAX_SCHEDULE_PHASES as u32 {
        m.schedule[i as usize] = Some(PhaseNeeds::new(i, i * 10, 10));
    }
    let mut w = encode_message(&Hint::Manifest(m), 0).unwrap();
    let mut msg = w.finish().to_vec();
    let extra = PhaseNeeds::new(99, 1000, 10);
    let mut rec = MessageWriter::new(0);
    rec.push(&Hint::PhaseNeeds(extra)).unwrap();
    let extra_bytes = rec.finish()[HEADER_LEN..].to_vec();
    for _ in 0..4 {
        msg.extend_from_slice(&extra_bytes);
    }
    // Patch the manifest's record length and count, and the message length.
    let body_len = (msg.len() - HEADER_LEN - RECORD_HEADER_LEN) as u16;
    msg[HEADER_LEN + 2..HEADER_LEN + 4].copy_from_slice(&body_len.to_le_bytes());
    let count_at = HEADER_LEN + RECORD_HEADER_LEN + 2;
    let count = u16::from_le_bytes([msg[count_at], msg[count_at + 1]]) + 4;
    msg[count_at..count_at + 2].copy_from_slice(&count.to_le_bytes());
    let total = msg.len() as u32;
    msg[12..16].copy_from_slice(&total.to_le_bytes());
    let (_, hints) = decode_all(&msg).unwrap();
    assert_eq!(hints, vec![Hint::Manifest(m)]);
}

#[test]
fn the_largest_manifest_fits_a_message() {
    let name = Name::new(&"n".repeat(MAX_NAME_LEN)).unwrap();
    let mut m = Manifest::empty(name);
    m.parallelism = Some(Parallelism {
        runnable_tasks: 1,
        max_useful: 1,
        serial_ppm: 0,
    });
    m.memory = Some(Memory {
        working_set_bytes: 1,
        peak_bytes: 1,
        growth_bytes_per_sec: 0,
    });
    m.io = Some(Io {
        class: IoClass::Light,
        bytes_per_sec: 1,
    });
    m.placement = Some(Placement {
        relocatable: true,
        monolithic: true,
        locality: Locality::SameNode,
    });
    for (i, slot) in m.phases.iter_mut().enumerate() {
        *slot = Some(PhaseBegin {
            id: i as u32,
            expected_ms: 1,
            name,
            declared_only: true,
        });
    }
    for (i, slot) in m.schedule.iter_mut().enumerate() {
        *slot = Some(PhaseNeeds::new(i as u32, 0, 1));
    }
    let mut w = encode_message(&Hint::Manifest(m), 0).unwrap();
    assert!(w.finish().len() <= MAX_MESSAGE_LEN);
}

#[test]
fn a_record_that_does_not_fit_is_refused_not_a_panic() {
    // Once the buffer is full not even a record header fits.
    let h = Hint::PhaseNeeds(PhaseNeeds::new(1, 0, 10));
    for n in [0usize, 2, 4, 10] {
        let mut b = Buf::<16>::new();
        b.len = 16 - n.min(16);
        write_record(&mut b, &h);
        assert!(b.overflow);
    }
    let mut w = MessageWriter::new(0);
    while w.push(&h).is_ok() {}
    assert_eq!(w.push(&h), Err(EncodeError::NoSpace));
}

#[test]
fn full_message_refuses_more() {
    let mut w = MessageWriter::new(0);
    let h = Hint::Memory(Memory {
        working_set_bytes: 1,
        peak_bytes: 2,
        growth_bytes_per_sec: 3,
    });
    let mut n = 0;
    while w.push(&h).is_ok() {
        n += 1;
    }
    assert_eq!(n, (MAX_MESSAGE_LEN - HEADER_LEN) / (RECORD_HEADER_LEN + 24));
    assert!(w.finish().len() <= MAX_MESSAGE_LEN);
}
