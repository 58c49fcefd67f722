//! What a restore does with each entry: which entries the `--include` and
//! `--exclude` patterns take, and whether an entry already in the target is
//! replaced, left alone or refused (`--overwrite`). Also the content check
//! that `if-changed` and `--verify` share.
//!
//! Patterns are globs matched against an entry's path relative to the
//! restored root (`sub/file`, no leading `/`). A pattern without a `/`
//! (a trailing one aside) matches the entry's name at any depth, like
//! `.gitignore`; one with a `/` matches the whole relative path (a leading
//! `/` is ignored). `*` and `?` stay within one name, `**` crosses
//! directories. A trailing `/` changes nothing: a pattern that matches a
//! directory takes its whole subtree. An entry is restored when it or a
//! directory above it matches an include (every entry when there is none)
//! and neither it nor a directory above it matches an exclude.

use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::fs::{MetadataExt, OpenOptionsExt};
use std::path::Path;
use std::str::FromStr;

use globset::{Glob, GlobBuilder, GlobSet, GlobSetBuilder};

use super::Repository;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};

/// What to do with an entry that already stands where the snapshot has one.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Overwrite {
    /// Replace it, whatever it is.
    Always,
    /// Replace it unless it is what the snapshot has: same kind, size,
    /// mtime, mode (and owner when owners are restored) and, for a file,
    /// the same content, checked against the snapshot's chunk list with
    /// the repository's keyed chunk hash.
    #[default]
    IfChanged,
    /// Replace it when the snapshot's mtime is later than its.
    IfNewer,
    /// Never replace it; only what is missing is created.
    Never,
}

impl FromStr for Overwrite {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Overwrite, String> {
        Ok(match s {
            "always" => Overwrite::Always,
            "if-changed" => Overwrite::IfChanged,
            "if-newer" => Overwrite::IfNewer,
            "never" => Overwrite::Never,
            _ => {
                return Err(format!(
                    "{s:?}: expected always, if-changed, if-newer or never"
                ))
            }
        })
    }
}

/// Compiled `--include` and `--exclude` patterns.
#[derive(Debug, Clone, Default)]
pub struct Patterns {
    include: Option<Matcher>,
    exclude: Option<Matcher>,
}

/// Patterns of one kind: those matched against the name, those against
/// the relative path.
#[derive(Debug, Clone)]
struct Matcher {
    names: GlobSet,
    paths: GlobSet,
}

impl Matcher {
    fn new(pats: &[String]) -> Result<Option<Matcher>> {
        if pats.is_empty() {
            return Ok(None);
        }
        let (mut names, mut paths) = (GlobSetBuilder::new(), GlobSetBuilder::new());
        for p in pats {
            let t = p.trim_end_matches('/');
            let glob = |g: &str| -> Result<Glob> {
                GlobBuilder::new(g)
                    .literal_separator(true)
                    .build()
                    .map_err(|e| Error::Denied(format!("pattern {p:?}: {e}")))
            };
            match t.contains('/') {
                true => paths.add(glob(t.trim_start_matches('/'))?),
                false => names.add(glob(t)?),
            };
        }
        let set = |b: GlobSetBuilder| b.build().map_err(|e| Error::Denied(e.to_string()));
        Ok(Some(Matcher {
            names: set(names)?,
            paths: set(paths)?,
        }))
    }

    fn is_match(&self, rel: &str, name: &str) -> bool {
        self.names.is_match(name) || self.paths.is_match(rel)
    }
}

impl Patterns {
    /// Compiles the patterns; an invalid one is refused.
    pub fn new(include: &[String], exclude: &[String]) -> Result<Patterns> {
        Ok(Patterns {
            include: Matcher::new(include)?,
            exclude: Matcher::new(exclude)?,
        })
    }

    /// Whether there are no patterns at all.
    pub fn is_empty(&self) -> bool {
        self.include.is_none() && self.exclude.is_none()
    }

    /// Whether there are include patterns.
    pub fn has_includes(&self) -> bool {
        self.include.is_some()
    }

    /// Whether `rel` (named `name`) itself matches an exclude.
    pub fn excluded(&self, rel: &str, name: &str) -> bool {
        self.exclude.as_ref().is_some_and(|m| m.is_match(rel, name))
    }

    /// Whether `rel` itself matches an include (true without includes).
    pub fn included(&self, rel: &str, name: &str) -> bool {
        self.include.as_ref().is_none_or(|m| m.is_match(rel, name))
    }
}

/// What to do with one entry of the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing is there: create it.
    Create,
    /// Leave what is there (for a directory: restore into it).
    Keep,
    /// Leave what is there, something else than the directory the
    /// snapshot has, and restore nothing below it (`never`).
    Leave,
    /// Remove what is there, then create it.
    Replace,
    /// A non-empty directory stands where the snapshot has something else,
    /// and nothing said it may go.
    Refuse,
}

/// A file's mtime in nanoseconds.
pub fn mtime_ns(m: &Metadata) -> i64 {
    m.mtime() * 1_000_000_000 + m.mtime_nsec()
}

/// Decides for `node` at `path`, where `m` stands (None: nothing).
/// `same_content` is asked only when everything else already matches.
pub fn decide(
    mode: Overwrite,
    delete: bool,
    owners: bool,
    node: &Node,
    path: &Path,
    m: Option<&Metadata>,
    same_content: &mut dyn FnMut() -> bool,
) -> Action {
    let Some(m) = m else {
        return Action::Create;
    };
    let is_dir = node.kind == Some(NodeKind::Dir);
    if is_dir && m.is_dir() {
        return Action::Keep;
    }
    // Something else where the snapshot has a directory is never restored
    // into (it may be a symlink to anywhere): replaced, or left alone.
    if is_dir {
        return match mode {
            Overwrite::Never => Action::Leave,
            _ => Action::Replace,
        };
    }
    if m.is_dir() {
        let empty = std::fs::read_dir(path).is_ok_and(|mut d| d.next().is_none());
        return match (empty, mode) {
            (_, Overwrite::Never) if empty => Action::Keep,
            (true, _) => Action::Replace,
            (false, _) if mode == Overwrite::Always || delete => Action::Replace,
            (false, _) => Action::Refuse,
        };
    }
    match mode {
        Overwrite::Always => Action::Replace,
        Overwrite::Never => Action::Keep,
        Overwrite::IfNewer if node.mtime_ns > mtime_ns(m) => Action::Replace,
        Overwrite::IfNewer => Action::Keep,
        Overwrite::IfChanged if same_meta(node, path, m, owners) && same_content() => Action::Keep,
        Overwrite::IfChanged => Action::Replace,
    }
}

/// Whether what stands at `path` is of the node's kind, with its metadata.
fn same_meta(node: &Node, path: &Path, m: &Metadata, owners: bool) -> bool {
    let ft = m.file_type();
    let kind = match node.kind {
        Some(NodeKind::File) => ft.is_file() && m.len() == node.size,
        Some(NodeKind::Symlink) => {
            use std::os::unix::ffi::OsStrExt;
            let target = node.target.as_deref().map(|t| t.as_ref());
            return ft.is_symlink()
                && std::fs::read_link(path)
                    .ok()
                    .as_deref()
                    .map(|p| p.as_os_str().as_bytes())
                    == target;
        }
        Some(NodeKind::Fifo) => {
            use std::os::unix::fs::FileTypeExt;
            ft.is_fifo()
        }
        Some(NodeKind::Chardev | NodeKind::Blockdev) => m.rdev() == node.rdev,
        _ => false,
    };
    kind && m.mode() & 0o7777 == node.mode
        && mtime_ns(m) == node.mtime_ns
        && (!owners || (m.uid() == node.uid && m.gid() == node.gid))
}

/// Whether the file at `path` holds exactly the content of `node`: read
/// once, each piece hashed with the repository's keyed chunk hash and
/// compared with the snapshot's chunk list (a zero run must be zeros).
/// A file that does not open, or is not a regular file, does not match.
pub fn content_matches(repo: &Repository, cache: &Cache, node: &Node, path: &Path) -> Result<bool> {
    let Ok(mut f) = File::options()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW | libc::O_NONBLOCK)
        .open(path)
    else {
        return Ok(false);
    };
    match f.metadata() {
        Ok(m) if m.is_file() && m.len() == node.size => {}
        _ => return Ok(false),
    }
    let keys = repo.keys().clone();
    let (mut same, mut buf, mut total) = (true, Vec::new(), 0u64);
    repo.for_each_chunk(cache, node, &mut |chunk| {
        total += chunk.len;
        if !same {
            return Ok(());
        }
        buf.resize(chunk.len as usize, 0);
        if f.read_exact(&mut buf).is_err() {
            same = false;
        } else if chunk.is_zero() {
            same = buf.iter().all(|b| *b == 0);
        } else {
            same = keys.blob_id(&buf) == chunk.id;
        }
        Ok(())
    })?;
    Ok(same && total == node.size && f.read(&mut [0u8; 1]).is_ok_and(|n| n == 0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patterns_match_names_anywhere_and_paths_from_the_root() {
        let p = Patterns::new(
            &["sub/".into(), "*.rs".into(), "/docs/*.md".into()],
            &["target".into(), "a/**/x".into()],
        )
        .unwrap();
        assert!(p.included("sub", "sub") && p.included("deep/sub", "sub"));
        assert!(p.included("src/lib.rs", "lib.rs"));
        assert!(p.included("docs/a.md", "a.md"));
        assert!(!p.included("docs/x/a.md", "a.md"), "* stays in one name");
        assert!(!p.included("subway", "subway"));
        assert!(p.excluded("x/target", "target"));
        assert!(p.excluded("a/b/c/x", "x") && p.excluded("a/x", "x"));
        assert!(!p.excluded("b/x", "x"));
        let none = Patterns::new(&[], &[]).unwrap();
        assert!(none.is_empty() && none.included("any", "any") && !none.excluded("a", "a"));
        assert!(Patterns::new(&["a[".into()], &[]).is_err());
    }

    #[test]
    fn overwrite_modes_parse() {
        assert_eq!("if-newer".parse::<Overwrite>(), Ok(Overwrite::IfNewer));
        assert!("sometimes".parse::<Overwrite>().is_err());
    }

    #[test]
    fn a_non_empty_directory_in_the_way_is_refused_unless_told() {
        let d = tempfile::tempdir().unwrap();
        let dir = d.path().join("x");
        std::fs::create_dir_all(dir.join("inner")).unwrap();
        let m = std::fs::symlink_metadata(&dir).unwrap();
        let file = Node {
            kind: Some(NodeKind::File),
            ..Default::default()
        };
        let mut yes = || true;
        let go = |mode, delete, yes: &mut dyn FnMut() -> bool| {
            decide(mode, delete, false, &file, &dir, Some(&m), yes)
        };
        assert_eq!(go(Overwrite::IfChanged, false, &mut yes), Action::Refuse);
        assert_eq!(go(Overwrite::Never, false, &mut yes), Action::Refuse);
        assert_eq!(go(Overwrite::IfNewer, false, &mut yes), Action::Refuse);
        assert_eq!(go(Overwrite::IfChanged, true, &mut yes), Action::Replace);
        assert_eq!(go(Overwrite::Always, false, &mut yes), Action::Replace);
        // A directory of the snapshot over a file: never restored into.
        let f = d.path().join("f");
        std::fs::write(&f, b"").unwrap();
        let fm = std::fs::symlink_metadata(&f).unwrap();
        let dnode = Node {
            kind: Some(NodeKind::Dir),
            ..Default::default()
        };
        let on_file = |mode| decide(mode, false, false, &dnode, &f, Some(&fm), &mut || true);
        assert_eq!(on_file(Overwrite::Never), Action::Leave);
        assert_eq!(on_file(Overwrite::IfChanged), Action::Replace);
        assert_eq!(on_file(Overwrite::IfNewer), Action::Replace);
        std::fs::remove_dir(dir.join("inner")).unwrap();
        assert_eq!(go(Overwrite::IfChanged, false, &mut yes), Action::Replace);
        assert_eq!(go(Overwrite::Never, false, &mut yes), Action::Keep);
    }
}
