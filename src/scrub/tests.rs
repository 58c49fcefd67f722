//! Parity and scrub on real directories.

use super::*;
use std::fs::OpenOptions;

fn pack(s: &LocalStore, bytes: &[u8]) -> (PackId, u64) {
    let id = PackId::of(bytes);
    let mut u = s.upload_pack().unwrap();
    u.write_all(bytes).unwrap();
    u.commit(id).unwrap();
    (id, bytes.len() as u64)
}

/// A store with parity `k+m` and `n` packs of distinct content.
fn store_with(
    k: usize,
    m: usize,
    n: usize,
    tag: &str,
) -> (tempfile::TempDir, LocalStore, Vec<(PackId, u64)>) {
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::create(d.path())
        .unwrap()
        .with_parity(ParityConfig { k, m });
    let packs = (0..n)
        .map(|i| pack(&s, format!("{tag} {i} ").repeat(3000).as_bytes()))
        .collect();
    (d, s, packs)
}

/// Damages a parity file's header in place, keeping its inode, length
/// and mtime (what the stripe index compares).
fn rot_header(p: &std::path::Path) {
    let md = fs::metadata(p).unwrap();
    let f = OpenOptions::new().write(true).open(p).unwrap();
    f.write_all_at(&[0x55; 8], md.len() - 8).unwrap();
    f.set_modified(md.modified().unwrap()).unwrap();
}

/// Every stripe's members, in stripe order.
fn members(s: &LocalStore) -> Vec<Vec<PackId>> {
    let mut out = Vec::new();
    for_each_stripe(s, &mut |st| {
        out.push(st.header.members.iter().map(|m| m.pack).collect());
        Ok(())
    })
    .unwrap();
    out
}

#[test]
fn parity_during_a_backup_fills_stripes_once_and_leaves_nothing_to_protect() {
    let d = tempfile::tempdir().unwrap();
    let cfg = ParityConfig { k: 3, m: 1 };
    let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
    // An open stripe from an earlier run.
    let old = pack(&s, b"a pack of an earlier run");
    protect(&s, cfg).unwrap();
    let mut p = Protector::start(LocalStore::open_dir(d.path()).unwrap(), cfg).unwrap();
    let tx = p.sender().unwrap();
    assert!(p.sender().is_none(), "one sender only");
    // Another writer's protect takes one of the packs first.
    let taken = pack(&s, b"a pack another protect takes first");
    protect(&s, cfg).unwrap();
    let fresh: Vec<(PackId, u64)> = (0..6)
        .map(|i| {
            pack(
                &s,
                format!("fresh pack {i} ").repeat(5000 * (i + 1)).as_bytes(),
            )
        })
        .collect();
    tx.send(taken).unwrap();
    for f in &fresh {
        tx.send(*f).unwrap();
    }
    drop(tx);
    let rep = p.finish().unwrap();
    assert_eq!(rep.packs_protected, 6, "{rep:?}");
    assert!(rep.damaged.is_empty());
    let id = |p: &(PackId, u64)| p.0;
    assert_eq!(
        members(&s),
        vec![
            // the open stripe is filled first, then new ones start
            vec![id(&old), id(&taken), id(&fresh[0])],
            fresh[1..4].iter().map(id).collect::<Vec<_>>(),
            fresh[4..].iter().map(id).collect::<Vec<_>>(),
        ]
    );
    let again = protect(&s, cfg).unwrap();
    assert_eq!((again.packs_protected, again.stripes_written), (0, 0));
    // and the parity it wrote repairs a lost member
    fs::remove_file(s.pack_path(&fresh[2].0)).unwrap();
    assert!(repair_pack(&s, &fresh[2].0).unwrap());
    assert_eq!(s.pack_size(&fresh[2].0).unwrap(), Some(fresh[2].1));
}

#[test]
fn protect_reads_only_the_stripes_that_changed_and_survives_a_lost_index() {
    let (d, s, packs) = store_with(3, 1, 7, "pack");
    let cfg = s.parity();
    let rep = protect(&s, cfg).unwrap();
    assert_eq!((rep.packs_protected, rep.stripes_written), (7, 3));
    // Stripe 0's header made unreadable in place, its length and mtime
    // kept: protect trusts the index and does not read it again (the
    // scrub is what reads every byte).
    rot_header(&parity_path(&s, 0, 0));
    let rep = protect(&s, cfg).unwrap();
    assert_eq!((rep.packs_protected, rep.stripes_written), (0, 0));
    // Stripe 1's files gone: the index notices, its members are
    // protected again, in a new stripe.
    fs::remove_file(parity_path(&s, 1, 0)).unwrap();
    let rep = protect(&s, cfg).unwrap();
    assert_eq!(
        (rep.packs_protected, rep.stripes_written),
        (3, 2),
        "{rep:?}"
    );
    let in_stripes = members(&s).into_iter().flatten();
    assert_eq!(in_stripes.filter(|p| *p == packs[4].0).count(), 1);
    // A damaged index is rebuilt from the headers; stripe 0, unreadable
    // now, gives its members to the open stripe and a new one.
    fs::write(
        d.path().join("parity").join(stripe_index::INDEX_FILE),
        b"not sqlite",
    )
    .unwrap();
    let rep = protect(&s, cfg).unwrap();
    assert_eq!(
        (rep.packs_protected, rep.stripes_written),
        (3, 2),
        "{rep:?}"
    );
    let again = protect(&s, cfg).unwrap();
    assert_eq!((again.packs_protected, again.stripes_written), (0, 0));
    // Every pack is in exactly one readable stripe.
    let mut all: Vec<PackId> = members(&s).into_iter().flatten().collect();
    all.sort();
    let mut want: Vec<PackId> = packs.iter().map(|p| p.0).collect();
    want.sort();
    assert_eq!(all, want);
}

#[test]
fn stripes_of_layout_1_are_still_checked_and_repaired() {
    let d = tempfile::tempdir().unwrap();
    let cfg = ParityConfig { k: 3, m: 1 };
    let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
    let packs: Vec<(PackId, u64)> = (0..3)
        .map(|i| {
            let text = format!("layout one {i} ").repeat(20_000 * (i + 1));
            pack(&s, text.as_bytes())
        })
        .collect();
    protect(&s, cfg).unwrap();
    // The stripe rewritten as layout 1 wrote it: the same shard, and
    // the sum of each block alone.
    let sums_v1 = |bytes: &[u8]| -> ByteBuf {
        let s = bytes
            .chunks(PARITY_BLOCK)
            .flat_map(|b| parity::block_sum(1, 0, b));
        ByteBuf::from(s.collect::<Vec<u8>>())
    };
    let path = parity_path(&s, 0, 0);
    let mut h = read_header(&path).unwrap();
    assert_eq!(h.version, STRIPE_VERSION);
    h.version = 1;
    for m in &mut h.members {
        m.sums = sums_v1(&fs::read(s.pack_path(&m.pack)).unwrap());
    }
    let file = fs::read(&path).unwrap();
    let end = 8 + h.rows as usize * PARITY_BLOCK;
    h.sums = sums_v1(&file[8..end]);
    let mut out = file[..end].to_vec();
    out.extend_from_slice(&parity::encode_tail(&h));
    fs::write(&path, out).unwrap();
    let rep = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
    assert_eq!(
        (rep.damaged_blocks, rep.stripes_unreadable),
        (0, 0),
        "{rep:?}"
    );
    // A flipped byte in a member of several blocks is found and
    // repaired from the layout 1 parity.
    let victim = s.pack_path(&packs[2].0);
    let mut bytes = fs::read(&victim).unwrap();
    bytes[100_000] ^= 1;
    fs::remove_file(&victim).unwrap();
    fs::write(&victim, &bytes).unwrap();
    let rep = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
    assert_eq!((rep.damaged_blocks, rep.repaired_blocks), (1, 1), "{rep:?}");
    assert!(rep.unrepairable.is_empty(), "{rep:?}");
    assert_eq!(PackId::of(&fs::read(&victim).unwrap()), packs[2].0);
    assert_eq!(
        read_header(&path).unwrap().version,
        1,
        "sound parity is kept"
    );
}

#[test]
fn a_scrub_finds_headers_rotted_in_place_and_their_packs_get_new_parity() {
    let (_d, s, packs) = store_with(3, 1, 3, "rot");
    let cfg = s.parity();
    let mut packs: Vec<PackId> = packs.into_iter().map(|p| p.0).collect();
    protect(&s, cfg).unwrap();
    // The only parity file's header rots; inode, length and mtime stay.
    rot_header(&parity_path(&s, 0, 0));
    assert_eq!(protect(&s, cfg).unwrap().packs_protected, 0, "trusted");
    let rep = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
    assert_eq!(rep.stripes_unreadable, 1, "{rep:?}");
    assert!(rep.unrepairable.is_empty(), "{rep:?}");
    assert_eq!(rep.unprotected_checked, 3);
    // the scrub's protect gave them a readable stripe again
    let mut all: Vec<PackId> = members(&s).into_iter().flatten().collect();
    all.sort();
    packs.sort();
    assert_eq!(all, packs);
    let again = protect(&s, cfg).unwrap();
    assert_eq!((again.packs_protected, again.stripes_written), (0, 0));
}

#[test]
fn parity_during_a_backup_never_waits_for_a_scrub_and_stops_when_abandoned() {
    let (d, s, packs) = store_with(2, 1, 4, "busy");
    let cfg = s.parity();
    // A scrub holds the lock: the thread leaves the packs for later.
    let held = s.lock_named("parity.lock", true).unwrap();
    let mut p = Protector::start(LocalStore::open_dir(d.path()).unwrap(), cfg).unwrap();
    let tx = p.sender().unwrap();
    for x in &packs[..2] {
        tx.send(*x).unwrap();
    }
    drop(tx);
    assert_eq!(p.finish().unwrap().packs_protected, 0);
    drop(held);
    assert!(members(&s).is_empty());
    // Abandoned (a failed backup): the thread has stopped when abandon
    // returns, though the backup still holds its sender, and nothing
    // more is written.
    let mut p = Protector::start(LocalStore::open_dir(d.path()).unwrap(), cfg).unwrap();
    let tx = p.sender().unwrap();
    p.abandon();
    for x in &packs[2..] {
        assert!(tx.send(*x).is_err(), "no one listens any more");
    }
    drop(tx);
    assert!(members(&s).is_empty());
    // The next protect covers them all.
    assert_eq!(protect(&s, cfg).unwrap().packs_protected, 4);
}
