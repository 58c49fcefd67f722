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
    // The thread recorded what it wrote: the index is up to date, so the
    // protect after the commit reads no stripe header again.
    let mut idx = StripeIndex::open(&parity_dir(&s)).unwrap();
    let reread = idx
        .refresh(&stripe_files(&s).unwrap(), &mut |id, f| {
            load_stripe(id, f).map(|st| known(&st))
        })
        .unwrap();
    assert_eq!(reread, 0);
    drop(idx);
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

/// Writes stripe `id` over `packs` as layouts 1 and 2 did (the old code
/// path: the GF(2^16) code on rows of 64 KiB), with that layout's sums.
fn write_legacy(s: &LocalStore, id: u64, packs: &[(PackId, u64)], m: usize, version: u32) {
    let datas: Vec<Vec<u8>> = packs
        .iter()
        .map(|(p, _)| fs::read(s.pack_path(p)).unwrap())
        .collect();
    let rows = datas
        .iter()
        .map(|d| parity::blocks(d.len() as u64))
        .max()
        .unwrap();
    let sums = |b: &[u8]| -> ByteBuf {
        let s = b
            .chunks(PARITY_BLOCK)
            .enumerate()
            .flat_map(|(r, c)| parity::block_sum(version, r as u64, c));
        ByteBuf::from(s.collect::<Vec<u8>>())
    };
    let mut shards = vec![Vec::new(); m];
    let b = PARITY_BLOCK;
    for row in 0..rows as usize {
        let refs: Vec<&[u8]> = datas
            .iter()
            .map(|d| &d[(row * b).min(d.len())..((row + 1) * b).min(d.len())])
            .collect();
        for (s, p) in shards
            .iter_mut()
            .zip(parity::legacy::encode_row(&refs, m).unwrap())
        {
            s.extend(p);
        }
    }
    let members: Vec<Member> = packs
        .iter()
        .zip(&datas)
        .map(|((p, z), d)| Member {
            pack: *p,
            size: *z,
            sums: sums(d),
        })
        .collect();
    fs::create_dir_all(parity_dir(s)).unwrap();
    for (j, sh) in shards.iter().enumerate() {
        let h = StripeHeader {
            version,
            stripe: id,
            m: m as u32,
            block: PARITY_BLOCK as u32,
            rows,
            members: members.clone(),
            index: j as u32,
            sums: sums(sh),
        };
        let mut out = MAGIC_PARITY.to_vec();
        out.extend_from_slice(sh);
        out.extend_from_slice(&parity::encode_tail(&h));
        fs::write(parity_path(s, id, j), out).unwrap();
    }
}

#[test]
fn stripes_of_layouts_1_and_2_are_still_checked_repaired_and_converted_when_they_grow() {
    for version in [1, 2] {
        let d = tempfile::tempdir().unwrap();
        let cfg = ParityConfig { k: 3, m: 1 };
        let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
        let text = |i: usize| format!("layout {version} {i} ").repeat(20_000 * (i + 1));
        let mut packs: Vec<(PackId, u64)> = (0..2).map(|i| pack(&s, text(i).as_bytes())).collect();
        write_legacy(&s, 0, &packs, 1, version);
        let path = parity_path(&s, 0, 0);
        let opts = ScrubOptions::default();
        let rep = scrub(&s, cfg, &opts).unwrap();
        assert_eq!(
            (rep.damaged_blocks, rep.stripes_unreadable),
            (0, 0),
            "{rep:?}"
        );
        // A flipped byte in a member of several blocks is found and
        // repaired from the old layout's parity, which is kept.
        let victim = s.pack_path(&packs[1].0);
        let mut bytes = fs::read(&victim).unwrap();
        bytes[100_000] ^= 1;
        fs::remove_file(&victim).unwrap();
        fs::write(&victim, &bytes).unwrap();
        let rep = scrub(&s, cfg, &opts).unwrap();
        assert_eq!((rep.damaged_blocks, rep.repaired_blocks), (1, 1), "{rep:?}");
        assert!(rep.unrepairable.is_empty(), "{rep:?}");
        assert_eq!(PackId::of(&fs::read(&victim).unwrap()), packs[1].0);
        assert_eq!(
            read_header(&path).unwrap().version,
            version,
            "sound parity is kept"
        );
        packs.push(pack(&s, text(2).as_bytes()));
        // A new member converts the stripe: computed whole, as layout 3.
        let rep = protect(&s, cfg).unwrap();
        assert_eq!(rep.packs_protected, 1, "{rep:?}");
        let total: u64 = packs.iter().map(|p| p.1).sum();
        assert!(rep.parity_bytes_read >= total, "{rep:?}");
        let h = read_header(&path).unwrap();
        assert_eq!((h.version, h.members.len()), (STRIPE_VERSION, 3));
        fs::remove_file(s.pack_path(&packs[0].0)).unwrap();
        assert!(repair_pack(&s, &packs[0].0).unwrap());
        assert_eq!(s.pack_size(&packs[0].0).unwrap(), Some(packs[0].1));
    }
}

#[test]
fn a_new_member_costs_its_own_bytes_and_the_shards_and_gives_the_shards_of_a_whole_encode() {
    let d = tempfile::tempdir().unwrap();
    let cfg = ParityConfig { k: 10, m: 2 };
    let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
    let big = |i: usize, n: usize| {
        let mut x = blake3::Hasher::new_keyed(&[i as u8; 32]).finalize_xof();
        let mut v = vec![0u8; n];
        x.fill(&mut v);
        v
    };
    let mut all = Vec::new();
    for i in 0..5 {
        all.push(pack(&s, &big(i, 700_000 + i * 1_001)));
    }
    protect(&s, cfg).unwrap();
    // Smaller than the shards, then longer than every member (the shards
    // grow), then one of a single sector.
    for (i, n) in [(5, 123_457), (6, 1_500_003), (7, 3000)] {
        let files_len: u64 = (0..cfg.m)
            .map(|j| fs::metadata(parity_path(&s, 0, j)).unwrap().len())
            .sum();
        let new = pack(&s, &big(i, n));
        all.push(new);
        let rep = protect(&s, cfg).unwrap();
        assert_eq!(
            (rep.packs_protected, rep.stripes_written),
            (1, 1),
            "{rep:?}"
        );
        assert!(rep.parity_bytes_read >= new.1, "{rep:?}");
        // Read twice: checked before anything is written, then changed.
        assert!(
            rep.parity_bytes_read <= 2 * (new.1 + files_len),
            "read {} for a pack of {} and parity files of {files_len}",
            rep.parity_bytes_read,
            new.1
        );
        // the same bytes as the stripe computed whole, in its member order
        let h = read_header(&parity_path(&s, 0, 0)).unwrap();
        let order: Vec<(PackId, u64)> = h.members.iter().map(|m| (m.pack, m.size)).collect();
        assert_eq!(order.last(), Some(&new), "a new member is appended");
        let grown: Vec<Vec<u8>> = (0..cfg.m)
            .map(|j| fs::read(parity_path(&s, 0, j)).unwrap())
            .collect();
        let mut n = Io::default();
        let whole = write_stripe(&s, 0, &order, 0, cfg.m, &mut n).unwrap();
        assert_eq!(whole, Wrote::Done(vec![]));
        assert!(n.read >= all.iter().map(|p| p.1).sum::<u64>());
        for (j, g) in grown.iter().enumerate() {
            assert!(
                fs::read(parity_path(&s, 0, j)).unwrap() == *g,
                "shard {j} after {i}"
            );
        }
    }
    // A damaged shard is not grown (its damage would get fresh sums): the
    // stripe is computed whole instead, and the result repairs two members.
    let p1 = parity_path(&s, 0, 1);
    let mut b = fs::read(&p1).unwrap();
    b[8 + 10] ^= 1;
    fs::write(&p1, b).unwrap();
    let last = pack(&s, &big(8, 50_000));
    let rep = protect(&s, cfg).unwrap();
    let total: u64 = all.iter().map(|p| p.1).sum::<u64>() + last.1;
    assert!(rep.parity_bytes_read >= total, "{rep:?}");
    all.push(last);
    for p in &all[..2] {
        fs::remove_file(s.pack_path(&p.0)).unwrap();
    }
    assert!(repair_pack(&s, &all[0].0).unwrap());
    for p in &all {
        assert_eq!(s.pack_size(&p.0).unwrap(), Some(p.1));
    }
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

/// Pseudo-random bytes, distinct per `seed`.
fn noise(seed: usize, n: usize) -> Vec<u8> {
    let mut x = blake3::Hasher::new_keyed(&[seed as u8; 32]).finalize_xof();
    let mut v = vec![0u8; n];
    x.fill(&mut v);
    v
}

/// Parity shards of `members` computed from scratch, `rows` sectors long.
fn encoded(s: &LocalStore, members: &[Member], m: usize, rows: u64) -> Vec<Vec<u8>> {
    let mut shards = vec![Vec::new(); m];
    for (i, mb) in members.iter().enumerate() {
        let b = fs::read(s.pack_path(&mb.pack)).unwrap();
        crate::parity::cauchy::add_member(i, &b, &mut shards);
    }
    for sh in &mut shards {
        sh.resize(rows as usize * crate::parity::SECTOR, 0);
    }
    shards
}

/// Every row of stripe 0's parity that its file's sums vouch for is the
/// parity of the members that file names, and every member sum is its
/// pack's. Returns the rows found not matching their sums.
fn vouched_rows_are_true(s: &LocalStore, m: usize) -> u64 {
    let sector = crate::parity::SECTOR;
    let mut damaged = 0;
    for j in 0..m {
        let p = parity_path(s, 0, j);
        // unreadable: the file counts as missing
        let Ok(h) = read_header(&p) else { continue };
        for mb in &h.members {
            let b = fs::read(s.pack_path(&mb.pack)).unwrap();
            let sums: Vec<u8> = b
                .chunks(sector)
                .enumerate()
                .flat_map(|(r, x)| parity::block_sum(STRIPE_VERSION, r as u64, x))
                .collect();
            assert_eq!(&sums[..], &mb.sums[..], "member sums of {}", p.display());
        }
        let want = encoded(s, &h.members, m, h.rows);
        let bytes = fs::read(&p).unwrap();
        for r in 0..h.rows as usize {
            let row = &bytes[8 + r * sector..8 + (r + 1) * sector];
            if parity::block_sum(STRIPE_VERSION, r as u64, row)[..] == h.sums[r * 32..r * 32 + 32] {
                assert!(
                    row == &want[j][r * sector..(r + 1) * sector],
                    "row {r} of {}",
                    p.display()
                );
            } else {
                damaged += 1;
            }
        }
    }
    damaged
}

#[test]
fn a_kill_anywhere_in_an_in_place_update_leaves_no_row_vouched_for_wrongly() {
    let cfg = ParityConfig { k: 10, m: 2 };
    // A stripe of three members, then a fourth added in place.
    let setup = || {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
        let olds: Vec<(PackId, u64)> = (0..3)
            .map(|i| pack(&s, &noise(i, 600_000 + i * 777)))
            .collect();
        protect(&s, cfg).unwrap();
        let new = pack(&s, &noise(9, 150_001));
        (d, s, olds, new)
    };
    let (_d, s, _, _) = setup();
    let whole = protect(&s, cfg).unwrap();
    let total = whole.parity_bytes_written as usize;
    let files: usize = (0..cfg.m)
        .map(|j| fs::metadata(parity_path(&s, 0, j)).unwrap().len() as usize)
        .sum();
    assert!(
        total < files / 2,
        "in place: {total} bytes written, files of {files}"
    );
    let mut cuts: Vec<usize> = (0..24).map(|i| i * total / 24).collect();
    // at the edges of each write: the first and last row, the headers
    cuts.extend([1, 4096, 65_536, 65_537, total / 2 - 1, total / 2, total - 1]);
    let mut torn = 0;
    for cut in cuts {
        let (_d, s, olds, new) = setup();
        super::grow::crash::after(Some(cut));
        let r = protect(&s, cfg);
        super::grow::crash::after(None);
        assert!(r.is_err(), "cut at {cut} of {total}");
        torn += vouched_rows_are_true(&s, cfg.m);
        // A repair in this state rebuilds a lost member right or not at all.
        let victim = s.pack_path(&olds[0].0);
        let before = fs::read(&victim).unwrap();
        fs::remove_file(&victim).unwrap();
        if repair_pack(&s, &olds[0].0).unwrap() {
            assert!(fs::read(&victim).unwrap() == before, "cut at {cut}");
        } else {
            fs::write(&victim, &before).unwrap();
        }
        // The next protect makes the stripe whole and sound again.
        protect(&s, cfg).unwrap();
        assert_eq!(vouched_rows_are_true(&s, cfg.m), 0, "cut at {cut}");
        let h = read_header(&parity_path(&s, 0, 1)).unwrap();
        let mut names: Vec<PackId> = h.members.iter().map(|m| m.pack).collect();
        assert_eq!(
            names.pop(),
            Some(new.0),
            "cut at {cut}: the new member last"
        );
        let mut want: Vec<PackId> = olds.iter().map(|p| p.0).collect();
        names.sort();
        want.sort();
        assert_eq!(names, want, "cut at {cut}");
        for p in [&olds[1], &new] {
            fs::remove_file(s.pack_path(&p.0)).unwrap();
        }
        assert!(repair_pack(&s, &new.0).unwrap(), "cut at {cut}");
        assert_eq!(s.pack_size(&olds[1].0).unwrap(), Some(olds[1].1));
    }
    assert!(torn > 0, "some cut left rows failing their sums");
}

#[test]
fn a_new_pack_found_damaged_after_its_rows_were_written_is_left_out_and_the_stripe_stays_sound() {
    let cfg = ParityConfig { k: 10, m: 2 };
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
    let olds: Vec<(PackId, u64)> = (0..2).map(|i| pack(&s, &noise(i, 400_000))).collect();
    protect(&s, cfg).unwrap();
    // Its last byte rots: only its hash, known once every row is
    // written in place, tells.
    let bad = pack(&s, &noise(5, 200_000));
    let path = s.pack_path(&bad.0);
    let mut b = fs::read(&path).unwrap();
    *b.last_mut().unwrap() ^= 1;
    fs::remove_file(&path).unwrap();
    fs::write(&path, b).unwrap();
    let rep = protect(&s, cfg).unwrap();
    assert_eq!((rep.packs_protected, &rep.damaged[..]), (0, &[bad.0][..]));
    assert_eq!(
        vouched_rows_are_true(&s, cfg.m),
        0,
        "rows written back whole"
    );
    let mut names = members(&s).concat();
    names.sort();
    let mut want: Vec<PackId> = olds.iter().map(|p| p.0).collect();
    want.sort();
    assert_eq!(names, want);
    for p in &olds {
        fs::remove_file(s.pack_path(&p.0)).unwrap();
    }
    assert!(repair_pack(&s, &olds[0].0).unwrap());
    assert_eq!(s.pack_size(&olds[1].0).unwrap(), Some(olds[1].1));
}

/// Flips one byte of a pack in place (a new inode, as a rot would not,
/// but the pack reads differently all the same).
fn rot_pack(s: &LocalStore, p: &PackId, at: usize) {
    let path = s.pack_path(p);
    let mut b = fs::read(&path).unwrap();
    b[at] ^= 1;
    fs::remove_file(&path).unwrap();
    fs::write(&path, b).unwrap();
}

/// Rows of stripe 0's shards that do not match their file's sums.
fn rows_failing_their_sums(s: &LocalStore, m: usize) -> usize {
    let sector = crate::parity::SECTOR;
    (0..m)
        .map(|j| {
            let p = parity_path(s, 0, j);
            let h = read_header(&p).unwrap();
            let bytes = fs::read(&p).unwrap();
            (0..h.rows as usize)
                .filter(|r| {
                    let row = &bytes[8 + r * sector..8 + (r + 1) * sector];
                    parity::block_sum(STRIPE_VERSION, *r as u64, row)[..]
                        != h.sums[r * 32..r * 32 + 32]
                })
                .count()
        })
        .sum()
}

#[test]
fn a_grow_given_up_mid_way_leaves_the_parity_that_rebuilds_a_damaged_old_member() {
    let cfg = ParityConfig { k: 10, m: 2 };
    let d = tempfile::tempdir().unwrap();
    let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
    let olds: Vec<(PackId, u64)> = (0..2).map(|i| pack(&s, &noise(i, 400_000))).collect();
    protect(&s, cfg).unwrap();
    // An old member rots in its first row: the stripe's parity is what
    // rebuilds it. A new pack rots at its end: its hash fails only once
    // its rows would have been added.
    rot_pack(&s, &olds[0].0, 10);
    let bad = pack(&s, &noise(5, 200_000));
    rot_pack(&s, &bad.0, 199_999);
    let rep = protect(&s, cfg).unwrap();
    assert!(rep.damaged.contains(&olds[0].0), "{rep:?}");
    assert!(rep.damaged.contains(&bad.0), "{rep:?}");
    // The stripe was kept as it was: every shard row still matches its sum.
    assert_eq!(
        rows_failing_their_sums(&s, cfg.m),
        0,
        "rows changed in place"
    );
    assert!(repair_pack(&s, &olds[0].0).unwrap(), "old member rebuilt");
    assert_eq!(
        PackId::of(&fs::read(s.pack_path(&olds[0].0)).unwrap()),
        olds[0].0
    );
}

#[test]
fn a_kill_while_a_larger_new_pack_grows_the_shards_over_their_headers_leaves_no_dead_stripe() {
    let cfg = ParityConfig { k: 10, m: 2 };
    // Three members, then one longer than all: the shards grow over
    // their old headers.
    let setup = || {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
        let olds: Vec<(PackId, u64)> = (0..3).map(|i| pack(&s, &noise(i, 300_000))).collect();
        protect(&s, cfg).unwrap();
        let new = pack(&s, &noise(9, 700_001));
        (d, s, olds, new)
    };
    let (_d, s, _, _) = setup();
    let total = protect(&s, cfg).unwrap().parity_bytes_written as usize;
    for cut in (1..16).map(|i| i * total / 16) {
        let (_d, s, olds, new) = setup();
        super::grow::crash::after(Some(cut));
        // Killed when grown in place; a write whole is not cut.
        let _ = protect(&s, cfg);
        super::grow::crash::after(None);
        vouched_rows_are_true(&s, cfg.m);
        let rep = protect(&s, cfg).unwrap();
        // Every pack in a stripe whose parity is sound, and no stripe
        // left whose files no header describes.
        let mut names = members(&s).concat();
        names.sort();
        let mut want: Vec<PackId> = olds.iter().chain([&new]).map(|p| p.0).collect();
        want.sort();
        assert_eq!(names, want, "cut at {cut} of {total}: {rep:?}");
        let stripes = stripe_files(&s).unwrap();
        assert_eq!(
            stripes.len(),
            members(&s).len(),
            "cut at {cut}: stripes {:?}",
            stripes.keys()
        );
        let scrubbed = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
        assert_eq!(scrubbed.stripes_unreadable, 0, "cut at {cut}: {scrubbed:?}");
    }
}
