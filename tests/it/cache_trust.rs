//! The local cache is never trusted over the repository: a cache that SQLite
//! finds damaged is moved aside and rebuilt, a planted key file costs no KDF
//! above the ceiling, and a cache whose rows are wrong but well-formed cannot
//! make a snapshot omit a pack it uses. See: issue 18, items 2, 3 and 5.

use std::fs;
use std::path::{Path, PathBuf};

use crate::util::*;

/// The cache database of `t`'s repository.
fn cache_db(t: &TestRepo) -> PathBuf {
    walk(&t.cache)
        .into_iter()
        .find(|p| p.file_name().is_some_and(|n| n == "cache.db"))
        .expect("a cache database")
}

/// A tree of many small files and a few larger ones, so the cache spans
/// many pages and a truncation loses some.
fn tree(t: &TestRepo) -> PathBuf {
    let src = t.path("src");
    fs::create_dir_all(src.join("sub")).unwrap();
    for i in 0..300u64 {
        fs::write(src.join("sub").join(format!("f{i}")), random_bytes(i, 700)).unwrap();
    }
    fs::write(src.join("big"), random_bytes(1000, 900_000)).unwrap();
    fs::write(src.join("text"), text_bytes(1001, 400_000)).unwrap();
    src
}

#[derive(Debug, Clone, Copy)]
enum Damage {
    RandomBytes,
    BrokenHeader,
    Truncated,
}

fn damage(db: &Path, how: Damage) {
    let len = fs::metadata(db).unwrap().len() as usize;
    assert!(
        len >= 16 * 4096,
        "the cache is too small to truncate: {len}"
    );
    match how {
        Damage::RandomBytes => fs::write(db, random_bytes(77, len)).unwrap(),
        Damage::BrokenHeader => {
            let mut b = fs::read(db).unwrap();
            b[..100].copy_from_slice(&random_bytes(78, 100));
            fs::write(db, b).unwrap();
        }
        Damage::Truncated => fs::OpenOptions::new()
            .write(true)
            .open(db)
            .unwrap()
            .set_len((len / 2) as u64)
            .unwrap(),
    }
}

/// The one line that says the cache was moved aside and rebuilt.
fn assert_one_notice(r: &Run, how: Damage, cmd: &str) {
    let err = r.stderr();
    let lines: Vec<&str> = err.lines().filter(|l| l.contains("cache")).collect();
    assert_eq!(lines.len(), 1, "{cmd} after {how:?}: {err}");
    assert!(
        lines[0].contains("moved aside") && lines[0].contains("rebuil"),
        "{cmd} after {how:?}: {err}"
    );
}

// See: issue 18, item 3
#[test]
fn a_damaged_cache_is_moved_aside_and_rebuilt_by_backup_restore_and_check() {
    let t = TestRepo::new();
    let src = tree(&t);
    t.backup(&[src.to_str().unwrap()]);
    let db = cache_db(&t);
    for how in [Damage::RandomBytes, Damage::BrokenHeader, Damage::Truncated] {
        damage(&db, how);
        let r = t.run(&["--json", "backup", src.to_str().unwrap()]).ok();
        assert_one_notice(&r, how, "backup");
        damage(&db, how);
        let out = t.path(&format!("out-{how:?}"));
        let r = t
            .run(&["restore", "latest", "--target", out.to_str().unwrap()])
            .ok();
        assert_one_notice(&r, how, "restore");
        assert_same_tree(&src, &restored(&out, &src));
        damage(&db, how);
        let r = t.run(&["check", "--read-data"]).ok();
        assert_one_notice(&r, how, "check");
        // the damaged files are kept aside for a look, not deleted
        let aside = walk(db.parent().unwrap())
            .into_iter()
            .filter(|p| p.to_string_lossy().contains("cache.db.corrupt-"))
            .count();
        assert!(aside >= 1, "nothing kept aside after {how:?}");
        // and the rebuilt cache is whole: nothing to say the next time
        let r = t.run(&["check"]).ok();
        assert!(!r.stderr().contains("cache"), "{}", r.stderr());
    }
}
