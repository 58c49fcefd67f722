//! `find`: entries of many snapshots whose name or path matches glob
//! patterns. Snapshots of the same source share most of their trees (a
//! directory that did not change is the same tree blob), so a tree is read
//! and matched once: the matches found beneath it are remembered by tree id
//! (and, when a pattern reads whole paths, by the directory's path too) in a
//! bounded LRU, and thirty nightly snapshots of a mostly unchanged tree cost
//! about one walk plus what changed.
//!
//! A remembered result holds the matching entries of its own directory and
//! shared pointers to its subdirectories' results (only those with a match),
//! so a match is stored once however many snapshots and ancestors share it;
//! a directory without a match below costs one LRU slot and nothing else.

use std::ffi::OsStr;
use std::num::NonZeroUsize;
use std::os::unix::ffi::OsStrExt;
use std::rc::Rc;

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use super::{Repository, Snapshot};
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::format::tree::NodeKind;
use crate::id::BlobId;

/// How many trees' results the memo keeps (least recently used go first).
pub const MEMO_TREES: usize = 1 << 16;

/// What to look for.
#[derive(Debug, Clone, Default)]
pub struct FindOptions {
    /// Glob patterns (globset syntax); an entry matching any is found.
    pub patterns: Vec<String>,
    /// Match every pattern against the whole path, not only those with a `/`.
    pub whole_path: bool,
    /// Letters match either case.
    pub ignore_case: bool,
}

/// The compiled patterns: a pattern without `/` matches an entry's name, one
/// with `/` its whole path from the snapshot's root (`/home/u/x`), `*`
/// staying within one component and `**` crossing them. With
/// [`FindOptions::whole_path`] every pattern matches the whole path and `*`
/// crosses `/` too, as `find -path` reads it (`*nginx*` finds everything
/// beneath a directory named so). A path pattern that does not start with
/// `/` or `**` may match at any depth (`docs/*.md` is `**/docs/*.md`).
#[derive(Debug, Clone)]
pub struct Matcher {
    by_name: GlobSet,
    by_path: GlobSet,
}

impl Matcher {
    /// Compiles `opts`' patterns; a bad pattern is refused, named.
    pub fn new(opts: &FindOptions) -> Result<Matcher> {
        let mut by_name = GlobSetBuilder::new();
        let mut by_path = GlobSetBuilder::new();
        for p in &opts.patterns {
            let trimmed = match p.trim_end_matches('/') {
                "" => p.as_str(),
                t => t,
            };
            let whole = opts.whole_path || trimmed.contains('/');
            let text = match whole && !trimmed.starts_with('/') && !trimmed.starts_with("**") {
                true => format!("**/{trimmed}"),
                false => trimmed.to_string(),
            };
            let g = GlobBuilder::new(&text)
                .case_insensitive(opts.ignore_case)
                .literal_separator(whole && !opts.whole_path)
                .backslash_escape(true)
                .build()
                .map_err(|e| Error::Denied(format!("bad pattern {p:?}: {e}")))?;
            match whole {
                true => by_path.add(g),
                false => by_name.add(g),
            };
        }
        let build = |b: GlobSetBuilder| {
            b.build()
                .map_err(|e| Error::Denied(format!("find patterns: {e}")))
        };
        Ok(Matcher {
            by_name: build(by_name)?,
            by_path: build(by_path)?,
        })
    }

    /// Whether any pattern reads whole paths (then a tree's matches depend
    /// on where it stands, not only on its id).
    pub fn reads_paths(&self) -> bool {
        !self.by_path.is_empty()
    }

    /// Whether the entry `name` at `path` (bytes: names need not be UTF-8)
    /// is found.
    pub fn matches(&self, name: &[u8], path: &[u8]) -> bool {
        self.by_name.is_match(OsStr::from_bytes(name))
            || (self.reads_paths() && self.by_path.is_match(OsStr::from_bytes(path)))
    }
}

/// One entry found in one snapshot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Hit {
    /// Its path from the snapshot's root, `/`-separated, as bytes.
    pub path: Vec<u8>,
    /// What it is.
    pub kind: Option<NodeKind>,
    /// Its size (files), target length (symlinks).
    pub size: u64,
    /// Its modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
}

/// An entry of a remembered result, in the directory's name order: a
/// matching entry, or a subdirectory with matches beneath (a matching
/// directory is both, the entry first).
#[derive(Debug)]
enum Item {
    Entry {
        name: Vec<u8>,
        kind: Option<NodeKind>,
        size: u64,
        mtime_ns: i64,
    },
    Below(Vec<u8>, Rc<Found>),
}

/// What a tree holds that matches, all the way down.
#[derive(Debug, Default)]
struct Found {
    items: Vec<Item>,
}

/// A memo key: the tree, and its directory's path when patterns read paths.
type Key = (BlobId, Option<Vec<u8>>);

/// Counts of the work a [`Finder`] did, for the summary line.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FindStats {
    /// Tree blobs read and matched.
    pub trees_read: u64,
    /// Trees answered from the memo instead.
    pub trees_reused: u64,
}

/// Searches snapshots of one repository, remembering results per tree.
pub struct Finder<'a> {
    repo: &'a Repository,
    cache: &'a Cache,
    matcher: Matcher,
    memo: lru::LruCache<Key, Rc<Found>>,
    empty: Rc<Found>,
    stats: FindStats,
}

impl<'a> Finder<'a> {
    /// A finder for `opts` over `repo`, reading blobs through `cache`.
    pub fn new(repo: &'a Repository, cache: &'a Cache, opts: &FindOptions) -> Result<Finder<'a>> {
        Self::with_memo(repo, cache, opts, MEMO_TREES)
    }

    /// Like [`Finder::new`] with a memo of `trees` entries (at least 1).
    pub fn with_memo(
        repo: &'a Repository,
        cache: &'a Cache,
        opts: &FindOptions,
        trees: usize,
    ) -> Result<Finder<'a>> {
        Ok(Finder {
            repo,
            cache,
            matcher: Matcher::new(opts)?,
            memo: lru::LruCache::new(NonZeroUsize::new(trees.max(1)).expect("at least 1")),
            empty: Rc::new(Found::default()),
            stats: FindStats::default(),
        })
    }

    /// The work done so far.
    pub fn stats(&self) -> FindStats {
        self.stats
    }

    /// Every entry of `snap` that matches, in the order `ls` lists them.
    pub fn find(&mut self, snap: &Snapshot) -> Result<Vec<Hit>> {
        let root = self.found(snap.record.tree, b"")?;
        let mut out = Vec::new();
        expand(&root, b"", &mut out);
        Ok(out)
    }

    /// The matches beneath the tree `id` standing at `dir` (empty: the root).
    fn found(&mut self, id: BlobId, dir: &[u8]) -> Result<Rc<Found>> {
        let key = (id, self.matcher.reads_paths().then(|| dir.to_vec()));
        if let Some(f) = self.memo.get(&key) {
            self.stats.trees_reused += 1;
            return Ok(f.clone());
        }
        let tree = self.repo.load_tree(self.cache, &id)?;
        self.stats.trees_read += 1;
        let mut items = Vec::new();
        for n in tree.nodes {
            let path = join(dir, &n.name);
            if self.matcher.matches(&n.name, &path) {
                items.push(Item::Entry {
                    name: n.name.to_vec(),
                    kind: n.kind,
                    size: n.size,
                    mtime_ns: n.mtime_ns,
                });
            }
            if let Some(sub) = n.subtree {
                let below = self.found(sub, &path)?;
                if !below.items.is_empty() {
                    items.push(Item::Below(n.name.into_vec(), below));
                }
            }
        }
        let f = match items.is_empty() {
            true => self.empty.clone(),
            false => Rc::new(Found { items }),
        };
        self.memo.put(key, f.clone());
        Ok(f)
    }
}

fn join(dir: &[u8], name: &[u8]) -> Vec<u8> {
    let mut p = Vec::with_capacity(dir.len() + 1 + name.len());
    p.extend_from_slice(dir);
    p.push(b'/');
    p.extend_from_slice(name);
    p
}

fn expand(f: &Found, dir: &[u8], out: &mut Vec<Hit>) {
    for item in &f.items {
        match item {
            Item::Entry {
                name,
                kind,
                size,
                mtime_ns,
            } => out.push(Hit {
                path: join(dir, name),
                kind: *kind,
                size: *size,
                mtime_ns: *mtime_ns,
            }),
            Item::Below(name, below) => expand(below, &join(dir, name), out),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(patterns: &[&str], whole_path: bool, ignore_case: bool) -> Matcher {
        Matcher::new(&FindOptions {
            patterns: patterns.iter().map(|s| s.to_string()).collect(),
            whole_path,
            ignore_case,
        })
        .unwrap()
    }

    #[test]
    fn a_pattern_without_a_slash_reads_the_name() {
        let x = m(&["*.conf"], false, false);
        assert!(x.matches(b"a.conf", b"/etc/a.conf"));
        assert!(!x.matches(b"a.CONF", b"/etc/a.CONF"));
        assert!(!x.matches(b"etc", b"/x.conf/etc"), "the name, not the path");
        assert!(m(&["*.conf"], false, true).matches(b"a.CONF", b"/etc/a.CONF"));
        // Non-UTF-8 names match as bytes.
        assert!(m(&["a*"], false, false).matches(b"a\xff", b"/a\xff"));
    }

    #[test]
    fn a_pattern_with_a_slash_reads_the_whole_path() {
        let x = m(&["/etc/*.conf"], false, false);
        assert!(x.matches(b"a.conf", b"/etc/a.conf"));
        assert!(
            !x.matches(b"a.conf", b"/etc/sub/a.conf"),
            "* stays in one component"
        );
        assert!(m(&["/etc/**/*.conf"], false, false).matches(b"a.conf", b"/etc/sub/a.conf"));
        // Relative: at any depth.
        let r = m(&["nginx/*.conf"], false, false);
        assert!(r.matches(b"a.conf", b"/etc/nginx/a.conf"));
        assert!(!r.matches(b"a.conf", b"/etc/apache/a.conf"));
        // --path: every pattern reads the path, `*` across components.
        let p = m(&["*nginx*"], true, false);
        assert!(p.matches(b"a.conf", b"/etc/nginx/a.conf"));
        assert!(!p.matches(b"a.conf", b"/etc/apache/a.conf"));
        assert!(!m(&["*nginx*"], false, false).matches(b"a.conf", b"/etc/nginx/a.conf"));
        assert!(m(&["/ETC/*"], true, true).matches(b"a", b"/etc/x/a"));
        assert!(Matcher::new(&FindOptions {
            patterns: vec!["a[".into()],
            ..Default::default()
        })
        .is_err());
    }
}
