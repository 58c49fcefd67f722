//! Parity in 4 KiB sectors: damage scattered over many shards of the same
//! 64 KiB row, each at its own sector, is repaired as independent erasures.

use std::fs;

use coffer::id::PackId;

use crate::scrub::stripes;
use crate::util::*;

#[test]
fn scattered_flips_in_more_than_m_shards_of_one_row_are_all_repaired() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}")), random_bytes(i, 330_000)).unwrap();
    }
    t.backup(&[src.to_str().unwrap()]);
    let before: Vec<(std::path::PathBuf, Vec<u8>)> = t
        .packs()
        .into_iter()
        .map(|p| {
            let b = fs::read(&p).unwrap();
            (p, b)
        })
        .collect();
    // The largest stripe: its members and parity files, as shards 0..n.
    let (members, parity) = stripes(&t)
        .into_values()
        .max_by_key(|(m, p)| m.len() + p.len())
        .unwrap();
    let m = parity.len();
    let shards: Vec<(std::path::PathBuf, u64)> = members
        .iter()
        .map(|p| (p.clone(), 0))
        .chain(parity.iter().map(|p| (p.clone(), 8)))
        .collect();
    let n = shards.len();
    assert!(n > m + 1 && n <= 16, "{n} shards");
    // ~100 single-byte flips: flip `f` hits shard `f % n` in 64 KiB row
    // `f / n`, always in that shard's own 4 KiB sector of the row, so
    // every damaged row has far more than m damaged shards.
    let mut bytes: Vec<Vec<u8>> = shards.iter().map(|(p, _)| fs::read(p).unwrap()).collect();
    let mut flipped = 0;
    let mut rows_hit = std::collections::BTreeMap::<u64, usize>::new();
    for f in 0..100u64 {
        let shard = (f % n as u64) as usize;
        let row = f / n as u64;
        let at = shards[shard].1 + row * 65536 + shard as u64 * 4096 + (f * 37) % 4096;
        if (at as usize) < bytes[shard].len() - if shard < members.len() { 0 } else { 4096 } {
            bytes[shard][at as usize] ^= 0x20;
            flipped += 1;
            *rows_hit.entry(row).or_default() += 1;
        }
    }
    assert!(flipped >= 90, "{flipped}");
    assert!(rows_hit.values().any(|c| *c > m + 1), "{rows_hit:?}");
    for ((p, _), b) in shards.iter().zip(&bytes) {
        fs::write(p, b).unwrap();
    }
    let run = t.run(&["--json", "scrub"]);
    let r = run.json();
    let rep = &r[0]["report"];
    assert_eq!(run.code(), 0, "{r}");
    assert_eq!(rep["unrepairable"].as_array().unwrap().len(), 0, "{r}");
    assert!(rep["repaired_blocks"].as_u64().unwrap() > 0, "{r}");
    // every pack byte-identical to what it was, and a second pass is clean
    for (p, b) in &before {
        assert!(fs::read(p).unwrap() == *b, "{} differs", p.display());
        assert_eq!(
            PackId::of(b).to_hex(),
            p.file_name().unwrap().to_str().unwrap()
        );
    }
    let again = t.run(&["--json", "scrub"]).ok().json();
    assert_eq!(again[0]["report"]["damaged_blocks"], 0, "{again}");
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    for i in 0..40 {
        let name = format!("f{i:02}");
        assert!(fs::read(restored(&out, &src).join(&name)).unwrap() == random_bytes(i, 330_000));
    }
}
