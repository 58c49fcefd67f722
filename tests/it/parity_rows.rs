//! Parity of a commit costs what the commit adds: a small pack joining a
//! large open stripe writes only the shard rows it reaches and the parity
//! files' headers, and the parity is still the stripe's.

use std::fs;
use std::os::unix::fs::MetadataExt;

use coffer::id::PackId;

use crate::scrub::stripes;
use crate::util::*;

/// The header length a parity file records in its last 4 bytes.
fn tail_len(p: &std::path::Path) -> u64 {
    let b = fs::read(p).unwrap();
    u32::from_le_bytes(b[b.len() - 4..].try_into().unwrap()) as u64 + 4
}

#[test]
fn a_small_commit_writes_only_the_parity_rows_it_reaches() {
    let t = TestRepo::with_init(&["--parity", "10+2"]);
    let big = t.path("big");
    fs::create_dir_all(&big).unwrap();
    fs::write(big.join("data"), random_bytes(1, 6 << 20)).unwrap();
    t.backup(&[big.to_str().unwrap()]);
    let (members, parity) = stripes(&t).into_values().next().unwrap();
    assert_eq!(stripes(&t).len(), 1, "one open stripe");
    assert!(members.len() < 10 && parity.len() == 2, "{members:?}");
    let shard = fs::metadata(&parity[0]).unwrap().len();
    assert!(shard > 1 << 20, "shards of {shard} bytes");
    let inodes: Vec<u64> = parity
        .iter()
        .map(|p| fs::metadata(p).unwrap().ino())
        .collect();

    let night = t.path("night");
    fs::create_dir_all(&night).unwrap();
    fs::write(night.join("n"), random_bytes(2, 150_000)).unwrap();
    let r = t.backup(&[night.to_str().unwrap()]);
    let new_bytes = r["new_pack_bytes"].as_u64().unwrap();
    let new_packs = r["new_packs"].as_u64().unwrap();
    let written = r["parity_bytes_written"].as_u64().unwrap();
    let (grown, parity) = stripes(&t).into_values().next().unwrap();
    assert_eq!(grown.len() as u64, members.len() as u64 + new_packs, "{r}");
    // Each shard: the rows the new packs reach (sectors of 4 KiB) and its
    // header, nothing of the rows beyond.
    let bound: u64 = parity
        .iter()
        .map(|p| new_bytes + new_packs * 4096 + tail_len(p))
        .sum();
    assert!(
        written > 0 && written <= bound,
        "wrote {written} parity bytes for {new_bytes} new bytes (bound {bound}, shards of {shard})"
    );
    // in place: the same files, not copies renamed over them
    for (p, ino) in parity.iter().zip(&inodes) {
        assert_eq!(fs::metadata(p).unwrap().ino(), *ino, "{}", p.display());
    }
    // and the parity is sound: a clean scrub, then two lost packs rebuilt
    let rep = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(rep[0]["report"]["damaged_blocks"], 0, "{rep}");
    let lost: Vec<(std::path::PathBuf, Vec<u8>)> = [&grown[0], grown.last().unwrap()]
        .into_iter()
        .map(|p| (p.clone(), fs::read(p).unwrap()))
        .collect();
    for (p, _) in &lost {
        fs::remove_file(p).unwrap();
    }
    let rep = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(
        rep[0]["report"]["unrepairable"].as_array().unwrap().len(),
        0,
        "{rep}"
    );
    for (p, b) in &lost {
        let now = fs::read(p).unwrap();
        assert!(now == *b, "{} rebuilt differently", p.display());
        assert_eq!(
            PackId::of(&now).to_hex(),
            p.file_name().unwrap().to_str().unwrap()
        );
    }
}
