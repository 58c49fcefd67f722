//! Scrub and repair from parity, on real files: seeded damage campaigns
//! within and beyond the parity budget.

use std::collections::{BTreeSet, HashMap};
use std::fs;
use std::path::{Path, PathBuf};

use coffer::id::PackId;

use crate::util::*;

/// A repository with several stripes: 80 files of 330 KB in 1 MiB packs.
fn setup() -> (TestRepo, PathBuf) {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..80 {
        fs::write(src.join(format!("f{i:02}")), random_bytes(i, 330_000)).unwrap();
    }
    t.backup(&[src.to_str().unwrap()]);
    (t, src)
}

/// Stripe number → (member pack paths, parity file paths).
pub(crate) fn stripes(t: &TestRepo) -> HashMap<String, (Vec<PathBuf>, Vec<PathBuf>)> {
    let mut out: HashMap<String, (Vec<PathBuf>, Vec<PathBuf>)> = HashMap::new();
    for p in walk(&t.repo.join("parity")) {
        let name = p.file_name().unwrap().to_str().unwrap().to_string();
        // parity files only, not the stripe index (members.db and its WAL)
        let (stripe, shard) = name.split_once('.').unwrap();
        if shard.parse::<usize>().is_err() {
            continue;
        }
        out.entry(stripe.to_string()).or_default().1.push(p.clone());
    }
    // members: every parity file names them; read the first one's header via the library
    for (_, (members, parity)) in out.iter_mut() {
        let bytes = fs::read(&parity[0]).unwrap();
        let n = u32::from_le_bytes(bytes[bytes.len() - 4..].try_into().unwrap()) as usize;
        let h = coffer::parity::decode_header(
            &bytes[bytes.len() - 4 - n..bytes.len() - 4],
            bytes.len() as u64,
        )
        .unwrap();
        for m in h.members {
            let hex = m.pack.to_hex();
            members.push(t.repo.join("packs").join(&hex[..2]).join(hex));
        }
    }
    out
}

fn flip(p: &Path, seed: u64) {
    let mut b = fs::read(p).unwrap();
    let r = random_bytes(seed, 16);
    for i in 0..4 {
        let at = (u32::from_le_bytes(r[i * 4..i * 4 + 4].try_into().unwrap()) as usize) % b.len();
        b[at] ^= 0x5a;
    }
    fs::write(p, b).unwrap();
}

fn zero_range(p: &Path, seed: u64) {
    let mut b = fs::read(p).unwrap();
    let start = (seed as usize * 7919) % (b.len() / 2);
    let end = start + 100_000.min(b.len() - start);
    for x in &mut b[start..end] {
        *x = 0;
    }
    fs::write(p, b).unwrap();
}

fn truncate(p: &Path) {
    let f = fs::OpenOptions::new().write(true).open(p).unwrap();
    let len = f.metadata().unwrap().len();
    f.set_len(len / 3).unwrap();
}

#[test]
fn a_clean_repository_scrubs_clean_again_and_again() {
    let (t, _) = setup();
    assert!(stripes(&t).len() >= 3, "expected several stripes");
    for _ in 0..2 {
        let r = t.run(&["--json", "scrub"]).ok().json();
        let rep = &r[0]["report"];
        assert_eq!(rep["damaged_blocks"], 0, "{r}");
        assert!(rep["blocks_checked"].as_u64().unwrap() > 100);
        assert_eq!(rep["unrepairable"].as_array().unwrap().len(), 0);
    }
}

#[test]
fn a_pack_damaged_before_its_stripe_is_computed_is_left_out_of_it() {
    let (t, _) = setup();
    let packs: BTreeSet<PathBuf> = walk(&t.repo.join("packs")).into_iter().collect();
    // Parity lost, and one pack damaged before it is computed again.
    for p in walk(&t.repo.join("parity")) {
        fs::remove_file(p).unwrap();
    }
    let bad = packs.iter().nth(3).unwrap().clone();
    flip(&bad, 7);
    let tiny = t.path("tiny");
    fs::create_dir_all(&tiny).unwrap();
    fs::write(tiny.join("a"), b"one more backup computes the parity").unwrap();
    t.backup(&[tiny.to_str().unwrap()]);
    let members: BTreeSet<PathBuf> = stripes(&t).into_values().flat_map(|(m, _)| m).collect();
    // every other pack (the new one too) is in a stripe; the damaged one is not
    assert!(!members.contains(&bad));
    for p in packs.iter().filter(|p| **p != bad) {
        assert!(members.contains(p), "{} not protected", p.display());
    }
    assert_eq!(members.len(), packs.len());
    // and a scrub names it as beyond repair
    let run = t.run(&["--json", "scrub"]);
    assert_eq!(run.code(), 5, "{}", run.stderr());
    let r = run.json();
    let bad_id = bad.file_name().unwrap().to_str().unwrap();
    let listed = r[0]["report"]["unrepairable"].to_string();
    assert!(listed.contains(bad_id), "{r}");
}

#[test]
fn damage_within_the_parity_budget_is_repaired() {
    let (t, src) = setup();
    let st = stripes(&t);
    // per stripe, at most m = 2 damaged files: a member and a parity file,
    // or two members; flips, zeroed ranges, truncation and deletion
    for (n, (members, parity)) in st.values().enumerate() {
        let seed = n as u64 + 1;
        match n % 4 {
            0 => {
                flip(&members[0], seed);
                zero_range(&parity[1], seed);
            }
            1 => {
                fs::remove_file(&members[1]).unwrap();
                truncate(&members[2 % members.len()]);
            }
            2 => {
                fs::remove_file(&members[0]).unwrap();
                fs::remove_file(&parity[0]).unwrap();
            }
            _ => {
                zero_range(&members[0], seed);
                flip(&parity[0], seed);
            }
        }
    }
    let r = t.run(&["--json", "scrub"]).ok().json();
    let rep = &r[0]["report"];
    assert!(rep["damaged_blocks"].as_u64().unwrap() > 0, "{r}");
    assert!(rep["repaired_blocks"].as_u64().unwrap() > 0, "{r}");
    assert_eq!(rep["unrepairable"].as_array().unwrap().len(), 0, "{r}");
    // every pack hashes to its name again, nothing is left to repair
    for p in t.packs() {
        assert_eq!(
            PackId::of(&fs::read(&p).unwrap()).to_hex(),
            p.file_name().unwrap().to_str().unwrap()
        );
    }
    let again = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(again[0]["report"]["damaged_blocks"], 0, "{again}");
    t.run(&["check", "--read-data"]).ok();
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    for i in 0..80 {
        let name = format!("f{i:02}");
        assert!(fs::read(restored(&out, &src).join(&name)).unwrap() == random_bytes(i, 330_000));
    }
}

#[test]
fn damage_beyond_the_budget_names_exactly_the_affected_snapshots() {
    let (t, src) = setup();
    // a second snapshot that shares nothing with the first
    let other = t.path("other");
    fs::create_dir_all(&other).unwrap();
    fs::write(other.join("g"), random_bytes(999, 300_000)).unwrap();
    t.backup(&[other.to_str().unwrap()]);
    let st = stripes(&t);
    let (members, _) = st.values().find(|(m, _)| m.len() >= 3).unwrap();
    let lost: BTreeSet<String> = members[..3]
        .iter()
        .map(|p| p.file_name().unwrap().to_str().unwrap().to_string())
        .collect();
    for p in &members[..3] {
        fs::remove_file(p).unwrap();
    }
    let r = t.run(&["--json", "scrub"]);
    assert_eq!(r.code(), 5, "{}", r.stderr());
    let v = r.json();
    let un = v[0]["report"]["unrepairable"].as_array().unwrap();
    let named: BTreeSet<String> = un
        .iter()
        .map(|u| u["pack"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(named, lost);
    // the snapshots named are exactly those whose pack lists hold a lost pack
    let mut want = BTreeSet::new();
    for f in walk(&t.repo.join("snapshots"))
        .into_iter()
        .filter(|p| p.extension().is_none())
    {
        let bytes = fs::read(&f).unwrap();
        let file = coffer::format::snapshot::decode(&bytes).unwrap();
        if file.packs.iter().any(|p| lost.contains(&p.to_hex())) {
            want.insert(f.file_name().unwrap().to_str().unwrap().to_string());
        }
    }
    for u in un {
        let got: BTreeSet<String> = u["snapshots"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| s.as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, want);
    }
    assert_eq!(want.len(), 1, "only the first snapshot is affected");
    assert!(r.stderr().contains("beyond repair"), "{}", r.stderr());
    let _ = src;
}

#[test]
fn a_restore_that_meets_a_damaged_pack_gets_the_repaired_bytes() {
    let (t, src) = setup();
    let st = stripes(&t);
    let (members, _) = st.values().next().unwrap();
    flip(&members[0], 77);
    zero_range(&members[1], 78);
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    for i in 0..80 {
        let name = format!("f{i:02}");
        assert!(fs::read(restored(&out, &src).join(&name)).unwrap() == random_bytes(i, 330_000));
    }
    // the store repaired the packs it was asked for
    for p in &members[..2] {
        assert_eq!(
            PackId::of(&fs::read(p).unwrap()).to_hex(),
            p.file_name().unwrap().to_str().unwrap()
        );
    }
}

#[test]
fn an_interrupted_scrub_carries_on_where_it_stopped() {
    let (t, _) = setup();
    // slowed to 6 MB/s (a pass takes about 5.5 s), killed after the first stripe or so
    let mut child = t
        .command()
        .args(["scrub", "--rate-mb", "6"])
        .spawn()
        .unwrap();
    std::thread::sleep(std::time::Duration::from_millis(3200));
    let _ = child.kill();
    let _ = child.wait();
    let state: serde_json::Value =
        serde_json::from_slice(&fs::read(t.repo.join("scrub.json")).unwrap()).unwrap();
    let done = state["verified"].as_object().unwrap().len();
    assert!(done >= 1, "no stripe recorded as verified: {state}");
    let r = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(
        r[0]["report"]["stripes_resumed"].as_u64().unwrap() as usize,
        done,
        "{r}"
    );
    assert_eq!(r[0]["report"]["damaged_blocks"], 0);
    // the pass completed: the next one starts from the beginning
    let r = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(r[0]["report"]["stripes_resumed"], 0, "{r}");
}

#[test]
fn parity_shape_is_set_per_repository() {
    let t = TestRepo::with_init(&["--parity", "4+1"]);
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..20 {
        fs::write(src.join(format!("f{i:02}")), random_bytes(i, 330_000)).unwrap();
    }
    t.backup(&[src.to_str().unwrap()]);
    let st = stripes(&t);
    assert!(st.len() >= 2);
    for (members, parity) in st.values() {
        assert!(members.len() <= 4, "{} members", members.len());
        assert_eq!(parity.len(), 1);
    }
    // one lost pack per stripe is within a 4+1 budget
    for (members, _) in st.values() {
        fs::remove_file(&members[0]).unwrap();
    }
    let r = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(
        r[0]["report"]["unrepairable"].as_array().unwrap().len(),
        0,
        "{r}"
    );
    t.run(&["check", "--read-data"]).ok();
    // a shape out of range is refused at init
    let bad = tempfile::tempdir().unwrap();
    let out = clean_command()
        .env("COFFER_PASSWORD", PASSWORD)
        .args([
            "--repo",
            bad.path().join("r").to_str().unwrap(),
            "init",
            "--parity",
            "0+1",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("parity"));
}
