//! The mount's inodes: the fixed directories that sort snapshots (`ids/`,
//! `hosts/`, `tags/`, `latest/`), each snapshot's root, and the entries
//! inside snapshots, numbered as the kernel looks them up and dropped when it
//! forgets them. An entry inside a snapshot is held as its place (a tree and
//! an index in it), never as a copy of its node, so the table stays small
//! however much of a snapshot is walked.

use std::collections::{BTreeMap, HashMap};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;

use crate::id::BlobId;
use crate::repo::Snapshot;

/// The kernel's number of the mount's top directory.
pub const ROOT: u64 = 1;

/// What an inode stands for.
#[derive(Debug, Clone)]
pub enum What {
    /// A directory of the mount itself, its entries by name.
    Dir(Vec<(OsString, u64)>),
    /// A symbolic link of the mount itself (`latest`).
    Link(OsString),
    /// A snapshot's top directory: snapshot `snap` of the mount's list.
    Root {
        /// Its index in the mount's list.
        snap: usize,
        /// Its top tree.
        tree: BlobId,
    },
    /// Entry `index` of `tree`, inside the snapshot whose top is `root`.
    Node {
        /// The number of the snapshot's top directory.
        root: u64,
        /// The tree that lists it.
        tree: BlobId,
        /// Its index in that tree.
        index: u32,
    },
}

/// How an entry inside a snapshot is found again, so a second lookup gives
/// the same number: by place (a directory and an index in it), or, for a
/// file with several hard links, by its stored inode (so the links share
/// one number, as on the source).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Key {
    Place(u64, u32),
    Link { root: u64, dev: u64, inode: u64 },
}

struct Entry {
    what: What,
    /// Lookups the kernel has not forgotten (entries inside snapshots only).
    lookups: u64,
    key: Option<Key>,
}

/// Every inode the kernel knows.
pub struct Table {
    entries: HashMap<u64, Entry>,
    by_key: HashMap<Key, u64>,
    next: u64,
}

impl Table {
    /// The fixed directories for `snaps` (oldest first).
    pub fn new(snaps: &[Snapshot]) -> Table {
        let mut t = Table {
            entries: HashMap::new(),
            by_key: HashMap::new(),
            next: ROOT + 1,
        };
        let mut top = Vec::new();
        // ids/<short id>
        let ids = snaps
            .iter()
            .enumerate()
            .map(|(i, s)| (OsString::from(s.id.short()), t.root_of(snaps, i)))
            .collect();
        top.push(("ids".into(), t.add(What::Dir(ids))));
        // hosts/<host>/<time>, hosts/<host>/latest; latest/<host>
        let mut hosts: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        let mut tags: BTreeMap<&str, Vec<usize>> = BTreeMap::new();
        for (i, s) in snaps.iter().enumerate() {
            hosts.entry(&s.record.host).or_default().push(i);
            for tag in &s.record.tags {
                tags.entry(tag).or_default().push(i);
            }
        }
        let mut latest = Vec::new();
        let mut by_host = Vec::new();
        for (host, list) in &hosts {
            let (dir, newest) = t.by_time(snaps, list);
            latest.push((
                OsString::from(safe(host)),
                t.add(What::Link(
                    format!("../hosts/{}/{newest}", safe(host)).into(),
                )),
            ));
            by_host.push((OsString::from(safe(host)), dir));
        }
        top.push(("hosts".into(), t.add(What::Dir(by_host))));
        let mut by_tag = Vec::new();
        for (tag, list) in &tags {
            by_tag.push((OsString::from(safe(tag)), t.by_time(snaps, list).0));
        }
        top.push(("latest".into(), t.add(What::Dir(latest))));
        top.push(("tags".into(), t.add(What::Dir(by_tag))));
        top.sort();
        t.entries.insert(
            ROOT,
            Entry {
                what: What::Dir(top),
                lookups: 0,
                key: None,
            },
        );
        t
    }

    /// A directory of snapshots named by their time (a second snapshot of
    /// the same second gets its short id after the time), with `latest`
    /// linking to the newest; and the newest's name.
    fn by_time(&mut self, snaps: &[Snapshot], list: &[usize]) -> (u64, String) {
        let mut names: Vec<(OsString, u64)> = Vec::new();
        let mut newest = String::new();
        for &i in list {
            let s = &snaps[i];
            let time = crate::retention::fmt_time(s.record.time_ns.div_euclid(1_000_000_000));
            let mut name = time.clone();
            if names.iter().any(|(n, _)| *n == *time) {
                name = format!("{time}-{}", s.id.short());
            }
            names.push((name.clone().into(), self.root_of(snaps, i)));
            newest = name;
        }
        names.push(("latest".into(), self.add(What::Link(newest.clone().into()))));
        names.sort();
        (self.add(What::Dir(names)), newest)
    }

    fn root_of(&mut self, snaps: &[Snapshot], i: usize) -> u64 {
        self.add(What::Root {
            snap: i,
            tree: snaps[i].record.tree,
        })
    }

    fn add(&mut self, what: What) -> u64 {
        let ino = self.next;
        self.next += 1;
        self.entries.insert(
            ino,
            Entry {
                what,
                lookups: 0,
                key: None,
            },
        );
        ino
    }

    /// What `ino` stands for.
    pub fn get(&self, ino: u64) -> Option<&What> {
        self.entries.get(&ino).map(|e| &e.what)
    }

    /// The number of entry `index` of `tree` inside directory `parent` (a
    /// snapshot's top or a directory in it), counting one lookup; `link` is
    /// the stored (device, inode) of a file with several hard links.
    pub fn child(
        &mut self,
        parent: u64,
        tree: BlobId,
        index: u32,
        link: Option<(u64, u64)>,
    ) -> u64 {
        let root = match self.get(parent) {
            Some(What::Node { root, .. }) => *root,
            _ => parent,
        };
        let key = match link {
            Some((dev, inode)) => Key::Link { root, dev, inode },
            None => Key::Place(parent, index),
        };
        if let Some(&ino) = self.by_key.get(&key) {
            if let Some(e) = self.entries.get_mut(&ino) {
                e.lookups += 1;
                return ino;
            }
        }
        let ino = self.add(What::Node { root, tree, index });
        let e = self.entries.get_mut(&ino).expect("just added");
        e.lookups = 1;
        e.key = Some(key);
        self.by_key.insert(key, ino);
        ino
    }

    /// The number `child` would give, without counting a lookup or adding
    /// an entry (for directory listings, whose numbers the kernel does not
    /// keep): the known number, or a stable one apart from every real one.
    pub fn peek(&self, parent: u64, index: u32) -> u64 {
        match self.by_key.get(&Key::Place(parent, index)) {
            Some(&ino) => ino,
            None => (1 << 63) | (parent << 24) ^ u64::from(index),
        }
    }

    /// The kernel forgot `n` lookups of `ino`: an entry inside a snapshot
    /// with none left is dropped (it is found again by place if needed).
    pub fn forget(&mut self, ino: u64, n: u64) {
        let Some(e) = self.entries.get_mut(&ino) else {
            return;
        };
        let Some(key) = e.key else {
            return;
        };
        e.lookups = e.lookups.saturating_sub(n);
        if e.lookups == 0 {
            self.entries.remove(&ino);
            self.by_key.remove(&key);
        }
    }

    /// Inodes held (for tests of the bound).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether it holds nothing (never: the top directory is always there).
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }
}

/// A host or tag as one path component: `/` and NUL become `_`, and `.` or
/// `..` or an empty name get a leading `_`.
fn safe(name: &str) -> String {
    let s: String = name
        .chars()
        .map(|c| if c == '/' || c == '\0' { '_' } else { c })
        .collect();
    match s.as_str() {
        "" | "." | ".." => format!("_{s}"),
        _ => s,
    }
}

/// A name's bytes as an `OsString`.
pub fn os(name: &[u8]) -> OsString {
    OsString::from_vec(name.to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::format::snapshot::{SnapshotRecord, SnapshotStats, SourceKind};
    use crate::id::SnapshotId;

    fn snap(n: u8, host: &str, secs: i64, tags: &[&str]) -> Snapshot {
        Snapshot {
            id: SnapshotId::of(&[n]),
            record: SnapshotRecord {
                version: 2,
                time_ns: secs * 1_000_000_000,
                host: host.into(),
                user: "u".into(),
                source: SourceKind::Tree,
                paths: vec!["/x".into()],
                tags: tags.iter().map(|s| s.to_string()).collect(),
                tree: BlobId([n; 32]),
                stats: SnapshotStats::default(),
                image: None,
            },
            packs: vec![],
            stamp: None,
        }
    }

    fn dir(t: &Table, ino: u64, name: &str) -> u64 {
        match t.get(ino) {
            Some(What::Dir(v)) => v.iter().find(|(n, _)| n == name).unwrap().1,
            w => panic!("{ino} is {w:?}"),
        }
    }

    #[test]
    fn snapshots_sort_by_id_host_and_tag_with_a_latest_each() {
        let snaps = [
            snap(1, "a", 0, &["x"]),
            snap(2, "b", 60, &[]),
            snap(3, "a", 60, &["x"]),
            snap(4, "a", 60, &[]),
            snap(5, "../evil", 90, &[]),
        ];
        let t = Table::new(&snaps);
        let a = dir(&t, dir(&t, ROOT, "hosts"), "a");
        let names: Vec<_> = match t.get(a) {
            Some(What::Dir(v)) => v.iter().map(|(n, _)| n.clone()).collect(),
            _ => unreachable!(),
        };
        let dup = format!("1970-01-01T00:01:00Z-{}", snaps[3].id.short());
        assert_eq!(
            names,
            [
                "1970-01-01T00:00:00Z",
                "1970-01-01T00:01:00Z",
                &dup,
                "latest"
            ]
        );
        let link = dir(&t, a, "latest");
        assert!(matches!(t.get(link), Some(What::Link(l)) if *l == *dup));
        let latest_a = dir(&t, dir(&t, ROOT, "latest"), "a");
        assert!(
            matches!(t.get(latest_a), Some(What::Link(l)) if *l == *format!("../hosts/a/{dup}"))
        );
        assert!(dir(&t, dir(&t, ROOT, "hosts"), ".._evil") > 0);
        let x = dir(&t, dir(&t, ROOT, "tags"), "x");
        let r = dir(&t, x, "1970-01-01T00:01:00Z");
        assert!(matches!(t.get(r), Some(What::Root { snap: 2, .. })));
        let id = dir(&t, dir(&t, ROOT, "ids"), &snaps[2].id.short());
        assert_ne!(id, r, "each place of a snapshot is a directory of its own");
    }

    #[test]
    fn entries_are_numbered_once_and_dropped_when_forgotten() {
        let snaps = [snap(1, "a", 0, &[])];
        let mut t = Table::new(&snaps);
        let root = dir(&t, dir(&t, ROOT, "ids"), &snaps[0].id.short());
        let before = t.len();
        let tree = BlobId([9; 32]);
        let a = t.child(root, tree, 0, None);
        assert_eq!(t.child(root, tree, 0, None), a);
        assert_eq!(t.peek(root, 0), a);
        assert_ne!(t.peek(root, 1), a);
        let h1 = t.child(root, tree, 1, Some((7, 8)));
        let h2 = t.child(a, BlobId([8; 32]), 3, Some((7, 8)));
        assert_eq!(h1, h2, "hard links share a number");
        t.forget(a, 1);
        assert_eq!(t.len(), before + 2, "one lookup left");
        t.forget(a, 1);
        t.forget(h1, 2);
        assert_eq!(t.len(), before);
        t.forget(ROOT, 5);
        assert!(t.get(ROOT).is_some());
    }
}
