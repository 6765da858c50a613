//! Property tests of the wire format: every hint survives a round trip,
//! batches keep their order, and no byte string makes the decoder panic.

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

fn manifest() -> impl Strategy<Value = Manifest> {
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

fn hint() -> impl Strategy<Value = Hint> {
    prop_oneof![
        parallelism().prop_map(Hint::Parallelism),
        memory().prop_map(Hint::Memory),
        io().prop_map(Hint::Io),
        phase(false).prop_map(Hint::PhaseBegin),
        any::<u32>().prop_map(|id| Hint::PhaseEnd { id }),
        placement().prop_map(Hint::Placement),
        manifest().prop_map(Hint::Manifest),
    ]
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
