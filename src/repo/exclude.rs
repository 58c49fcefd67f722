//! What a backup leaves out, decided for each entry as the walk meets it:
//! gitignore patterns anchored at each backed-up path (`ignore`'s
//! gitignore builder), directories marked by a valid CACHEDIR.TAG or by a
//! named file, and files above a size. docs/operations.md (Excludes) has
//! the rules with examples; in short:
//!
//! - a pattern without `/` (`*.tmp`, `cache`) matches a name at any depth;
//! - a pattern with `/` (`data/x.tmp`, `/logs`) is relative to the
//!   backed-up path; an absolute one that starts with a backed-up path
//!   (`/srv/app/logs` when backing up `/srv/app`) is taken relative to it,
//!   and to that path only;
//! - `dir/` matches directories only, `**` any number of directories,
//!   `!pattern` keeps what an earlier pattern left out: the last pattern
//!   that matches decides;
//! - a marked directory is kept with its marker and nothing else.
//!
//! The walk tells which patterns matched something, so a pattern that
//! never did is reported (a typo, or a path that moved).

use std::ffi::{OsStr, OsString};
use std::fs::{File, Metadata};
use std::io::Read;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

use ignore::gitignore::{Gitignore, GitignoreBuilder};

use crate::error::{Error, Result};

/// The tag file of a cache directory (<https://bford.info/cachedir/>).
pub const CACHEDIR_TAG: &str = "CACHEDIR.TAG";
/// What a valid [`CACHEDIR_TAG`] starts with.
pub const CACHEDIR_SIGNATURE: &[u8] = b"Signature: 8a477f597d28d172789f06886806bc55";

/// What to leave out of the path sources of a backup.
#[derive(Debug, Clone, Default)]
pub struct ExcludeRules {
    /// Patterns, in order (see the module doc).
    pub patterns: Vec<String>,
    /// Patterns whose letters match either case, checked after `patterns`.
    pub ipatterns: Vec<String>,
    /// Leave out the content of a directory holding a valid CACHEDIR.TAG.
    pub caches: bool,
    /// Leave out the content of a directory holding an entry of one of
    /// these names.
    pub if_present: Vec<String>,
    /// Leave out regular files larger than this many bytes.
    pub larger_than: Option<u64>,
}

impl ExcludeRules {
    /// Whether nothing is left out.
    pub fn is_empty(&self) -> bool {
        self.patterns.is_empty()
            && self.ipatterns.is_empty()
            && !self.caches
            && self.if_present.is_empty()
            && self.larger_than.is_none()
    }
}

/// One path source as the matcher sees it.
pub(crate) struct SourceRoots<'a> {
    /// Each path as the walk meets it (absolute, its directory resolved),
    /// and as it was given (absolute only), which a pattern may name too.
    pub roots: Vec<(PathBuf, PathBuf)>,
    /// The source's own patterns, checked after the rules' patterns.
    pub patterns: &'a [String],
}

/// The patterns below one backed-up path.
struct Root {
    path: PathBuf,
    all: Gitignore,
    /// Each pattern alone, to tell which ones matched.
    each: Vec<(usize, Gitignore)>,
}

/// A [`Root`] while its patterns are added.
struct RootBuilder {
    /// The source it is a path of.
    source: usize,
    path: PathBuf,
    /// The path as given.
    given: PathBuf,
    all: GitignoreBuilder,
    each: Vec<(usize, Gitignore)>,
}

impl RootBuilder {
    /// Adds pattern `idx`, written `line` here and `given` by the user.
    fn add(&mut self, idx: usize, line: &str, icase: bool, given: &str) -> Result<()> {
        add(&mut self.all, line, icase, given)?;
        let mut one = GitignoreBuilder::new(&self.path);
        add(&mut one, line, icase, given)?;
        self.each.push((idx, build(&one)?));
        Ok(())
    }
}

/// The compiled rules of one backup.
pub(crate) struct Excludes {
    /// Every pattern as given, for the warning.
    patterns: Vec<String>,
    used: Vec<AtomicBool>,
    roots: Vec<Root>,
    markers: Vec<(OsString, bool)>,
    larger_than: Option<u64>,
}

impl Excludes {
    pub(crate) fn new(rules: &ExcludeRules, sources: &[SourceRoots]) -> Result<Excludes> {
        // (text, either case, the source it belongs to: None for all)
        let mut all: Vec<(&str, bool, Option<usize>)> = Vec::new();
        all.extend(rules.patterns.iter().map(|p| (p.as_str(), false, None)));
        all.extend(rules.ipatterns.iter().map(|p| (p.as_str(), true, None)));
        for (i, s) in sources.iter().enumerate() {
            all.extend(s.patterns.iter().map(|p| (p.as_str(), false, Some(i))));
        }
        let mut roots: Vec<RootBuilder> = Vec::new();
        for (i, s) in sources.iter().enumerate() {
            for (walked, given) in &s.roots {
                roots.push(RootBuilder {
                    source: i,
                    given: given.clone(),
                    all: GitignoreBuilder::new(walked),
                    path: walked.clone(),
                    each: Vec::new(),
                });
            }
        }
        for (idx, &(text, icase, src)) in all.iter().enumerate() {
            let mut scope: Vec<&mut RootBuilder> = roots
                .iter_mut()
                .filter(|r| src.is_none_or(|s| s == r.source))
                .collect();
            // An absolute pattern naming a backed-up path belongs to it
            // alone; any other is anchored at every one.
            let named: Vec<Option<Option<String>>> = scope
                .iter()
                .map(|r| below(text, &r.path).or_else(|| below(text, &r.given)))
                .collect();
            let anywhere = named.iter().all(|n| n.is_none());
            for (r, n) in scope.iter_mut().zip(named) {
                let line = match (anywhere, n) {
                    (true, _) => text.to_string(),
                    (false, Some(Some(rel))) => rel,
                    // Another path's, or the backed-up path itself (never
                    // left out).
                    (false, _) => continue,
                };
                r.add(idx, &line, icase, text)?;
            }
        }
        let roots = roots
            .into_iter()
            .map(|r| {
                Ok(Root {
                    all: build(&r.all)?,
                    path: r.path,
                    each: r.each,
                })
            })
            .collect::<Result<Vec<_>>>()?;
        let mut markers = Vec::new();
        if rules.caches {
            markers.push((OsString::from(CACHEDIR_TAG), true));
        }
        markers.extend(rules.if_present.iter().map(|n| (OsString::from(n), false)));
        Ok(Excludes {
            patterns: all.iter().map(|(t, _, _)| t.to_string()).collect(),
            used: all.iter().map(|_| AtomicBool::new(false)).collect(),
            roots,
            markers,
            larger_than: rules.larger_than,
        })
    }

    /// Whether the patterns leave `path` out; `track`: note which
    /// patterns matched it (the walk, not a helper looking ahead).
    pub(crate) fn matched(&self, path: &Path, is_dir: bool, track: bool) -> bool {
        let Some(root) = self.roots.iter().find(|r| path.starts_with(&r.path)) else {
            return false;
        };
        let m = root.all.matched(path, is_dir);
        if m.is_none() {
            return false;
        }
        if track {
            for (i, one) in &root.each {
                if !self.used[*i].load(Ordering::Relaxed) && !one.matched(path, is_dir).is_none() {
                    self.used[*i].store(true, Ordering::Relaxed);
                }
            }
        }
        m.is_ignore()
    }

    /// Whether an entry (its metadata read) is left out by a pattern or
    /// by its size.
    pub(crate) fn leaves_out(&self, path: &Path, m: &Metadata, track: bool) -> bool {
        self.matched(path, m.is_dir(), track)
            || (m.is_file() && self.larger_than.is_some_and(|max| m.len() > max))
    }

    /// For a directory a marker empties: the names it keeps (its markers).
    pub(crate) fn marked(&self, dir: &Path) -> Option<Vec<&OsStr>> {
        let kept: Vec<&OsStr> = self
            .markers
            .iter()
            .filter(|(name, tag)| match tag {
                true => is_cachedir_tag(&dir.join(name)),
                false => std::fs::symlink_metadata(dir.join(name)).is_ok(),
            })
            .map(|(name, _)| name.as_os_str())
            .collect();
        (!kept.is_empty()).then_some(kept)
    }

    /// Patterns that matched nothing the walk met, as given.
    pub(crate) fn unmatched(&self) -> Vec<String> {
        self.patterns
            .iter()
            .zip(&self.used)
            .filter(|(_, u)| !u.load(Ordering::Relaxed))
            .map(|(p, _)| p.clone())
            .collect()
    }
}

/// Whether a directory's entry `name` is walked, given what
/// [`Excludes::marked`] said of the directory: all are, unless it is marked.
pub(crate) fn keeps(kept: &Option<Vec<&OsStr>>, name: &OsStr) -> bool {
    kept.as_ref().is_none_or(|k| k.contains(&name))
}

fn add(b: &mut GitignoreBuilder, line: &str, icase: bool, given: &str) -> Result<()> {
    // unwrap-free: case_insensitive never fails (its Result is historical).
    let _ = b.case_insensitive(icase);
    b.add_line(None, line)
        .map_err(|e| Error::Denied(format!("bad exclude pattern {given:?}: {e}")))?;
    Ok(())
}

fn build(b: &GitignoreBuilder) -> Result<Gitignore> {
    b.build()
        .map_err(|e| Error::Denied(format!("exclude patterns: {e}")))
}

/// An absolute pattern that starts with `root` (component by component,
/// a component of the pattern may be a glob): the rest, anchored at
/// `root` (`None`: the pattern names `root` itself). `None` outside.
fn below(pattern: &str, root: &Path) -> Option<Option<String>> {
    let (bang, body) = match pattern.strip_prefix('!') {
        Some(b) => ("!", b),
        None => ("", pattern),
    };
    let body = body.strip_prefix('/')?;
    let comps: Vec<&str> = body.split('/').collect();
    let root_comps: Vec<&OsStr> = root.iter().skip(1).collect();
    if comps.len() < root_comps.len() {
        return None;
    }
    for (p, r) in comps.iter().zip(&root_comps) {
        if !component_matches(p, r) {
            return None;
        }
    }
    let rest = comps[root_comps.len()..].join("/");
    if rest.is_empty() {
        return Some(None);
    }
    Some(Some(format!("{bang}/{rest}")))
}

fn component_matches(pattern: &str, name: &OsStr) -> bool {
    if pattern.as_bytes() == name.as_bytes() {
        return true;
    }
    if pattern == "**" || !pattern.contains(['*', '?', '[', '{']) {
        return false;
    }
    globset::Glob::new(pattern).is_ok_and(|g| g.compile_matcher().is_match(name))
}

/// Whether `path` is a file that starts with the CACHEDIR.TAG signature.
pub fn is_cachedir_tag(path: &Path) -> bool {
    let Ok(f) = File::open(path) else {
        return false;
    };
    let mut head = Vec::with_capacity(CACHEDIR_SIGNATURE.len());
    f.take(CACHEDIR_SIGNATURE.len() as u64)
        .read_to_end(&mut head)
        .is_ok()
        && head == CACHEDIR_SIGNATURE
}

/// A size such as `10M`, `1GiB`, `512k` or `4096`: K, M, G and T (also
/// written KiB … TiB) are powers of 1024, as restic's.
pub fn parse_size(s: &str) -> std::result::Result<u64, String> {
    let t = s.trim();
    let split = t.find(|c: char| !c.is_ascii_digit()).unwrap_or(t.len());
    let (num, unit) = t.split_at(split);
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected a number and a unit such as 10M or 1GiB"))?;
    let shift = match unit.to_ascii_lowercase().as_str() {
        "" | "b" => 0,
        "k" | "kib" => 10,
        "m" | "mib" => 20,
        "g" | "gib" => 30,
        "t" | "tib" => 40,
        _ => {
            return Err(format!(
                "{s:?}: unknown unit {unit:?} (B, K, M, G, T or KiB … TiB, powers of 1024)"
            ))
        }
    };
    n.checked_mul(1 << shift)
        .ok_or_else(|| format!("{s:?} is too large"))
}

/// How a list of patterns or paths is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ListFormat {
    /// One a line, each trimmed; blank lines and `#` comments skipped
    /// (`--exclude-file`, `--files-from`).
    Lines,
    /// One a line, each taken as it is; only empty lines skipped
    /// (`--files-from-verbatim`).
    Verbatim,
    /// Separated by NUL bytes, as `find -print0` writes them; empty
    /// entries skipped (`--files-from-raw`).
    Raw,
}

/// The entries of a list file's bytes.
pub fn list_entries(bytes: &[u8], format: ListFormat) -> Vec<OsString> {
    let sep = match format {
        ListFormat::Raw => 0,
        _ => b'\n',
    };
    bytes
        .split(|b| *b == sep)
        .map(|e| match format {
            ListFormat::Lines => e.trim_ascii(),
            _ => e,
        })
        .filter(|e| !(e.is_empty() || format == ListFormat::Lines && e.starts_with(b"#")))
        .map(|e| OsStr::from_bytes(e).to_os_string())
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rules(patterns: &[&str]) -> ExcludeRules {
        ExcludeRules {
            patterns: patterns.iter().map(|p| p.to_string()).collect(),
            ..Default::default()
        }
    }

    fn at(root: &str, rules: &ExcludeRules) -> Excludes {
        let src = SourceRoots {
            roots: vec![(root.into(), root.into())],
            patterns: &[],
        };
        Excludes::new(rules, &[src]).unwrap()
    }

    #[test]
    fn names_anywhere_paths_from_the_root() {
        let e = at(
            "/srv/app",
            &rules(&["*.bak", "data/x.tmp", "/logs", "sub/", "/srv/app/cache"]),
        );
        let m = |p: &str, dir: bool| e.matched(Path::new(p), dir, true);
        assert!(m("/srv/app/a/b/c.bak", false));
        assert!(m("/srv/app/data/x.tmp", false));
        assert!(!m("/srv/app/other/data/x.tmp", false));
        assert!(m("/srv/app/logs", true) && !m("/srv/app/a/logs", true));
        assert!(m("/srv/app/a/sub", true) && !m("/srv/app/a/sub", false));
        assert!(m("/srv/app/cache", true) && !m("/srv/app/x/cache", true));
        assert!(e.unmatched().is_empty(), "{:?}", e.unmatched());
    }

    /// The table of docs/operations.md, section 3.11, row by row.
    #[test]
    fn the_documented_examples() {
        // (pattern, what it leaves out, what it keeps): (path, is a dir)
        type Paths = &'static [(&'static str, bool)];
        let rows: &[(&str, Paths, Paths)] = &[
            (
                "*.tmp",
                &[("a.tmp", false), ("x/y/b.tmp", false)],
                &[("a.TMP", false)],
            ),
            (
                "cache",
                &[("cache", true), ("x/cache", false)],
                &[("cache2", true)],
            ),
            (
                "data/x.tmp",
                &[("data/x.tmp", false)],
                &[("old/data/x.tmp", false)],
            ),
            (
                "/data/x.tmp",
                &[("data/x.tmp", false)],
                &[("old/data/x.tmp", false)],
            ),
            ("/srv/app/data/x.tmp", &[("data/x.tmp", false)], &[]),
            ("/logs", &[("logs", true)], &[("x/logs", true)]),
            ("sub/", &[("sub", true), ("a/sub", true)], &[("sub", false)]),
            (
                "**/build/*.o",
                &[("build/a.o", false), ("x/build/a.o", false)],
                &[("build/x/a.o", false)],
            ),
            (
                "data/**",
                &[("data/a", false), ("data/b/c", false)],
                &[("data", true)],
            ),
            ("/var/cache", &[("var/cache", true)], &[("var", true)]),
        ];
        for (pattern, yes, no) in rows {
            let e = at("/srv/app", &rules(&[pattern]));
            for (rel, dir) in *yes {
                let p = format!("/srv/app/{rel}");
                assert!(e.matched(Path::new(&p), *dir, false), "{pattern} {p}");
            }
            for (rel, dir) in *no {
                let p = format!("/srv/app/{rel}");
                assert!(!e.matched(Path::new(&p), *dir, false), "{pattern} {p}");
            }
        }
        let mut r = rules(&[]);
        r.ipatterns = vec!["*.tmp".into()];
        assert!(at("/srv/app", &r).matched(Path::new("/srv/app/a.TMP"), false, false));
    }

    #[test]
    fn the_old_absolute_patterns_still_match() {
        let e = at("/", &rules(&["*.tmp", "/proc", "/var/cache/*"]));
        let m = |p: &str| e.matched(Path::new(p), false, false);
        assert!(m("/a/b.tmp") && m("/proc") && m("/var/cache/x"));
        assert!(!m("/a/proc"));
        // A glob in the part that names the backed-up path.
        let e = at("/home/alice", &rules(&["/home/*/.cache"]));
        assert!(e.matched(Path::new("/home/alice/.cache"), true, false));
        assert!(!e.matched(Path::new("/home/alice/x/.cache"), true, false));
    }

    #[test]
    fn bang_and_case_and_what_matched_nothing() {
        let mut r = rules(&["*.log", "!keep.log", "*.nothing"]);
        r.ipatterns = vec!["*.TMP".into()];
        let e = at("/r", &r);
        assert!(e.matched(Path::new("/r/a.log"), false, true));
        assert!(!e.matched(Path::new("/r/keep.log"), false, true));
        assert!(e.matched(Path::new("/r/x.tmp"), false, true));
        assert!(e.matched(Path::new("/r/X.Tmp"), false, true));
        assert_eq!(e.unmatched(), ["*.nothing"]);
    }

    #[test]
    fn an_absolute_pattern_belongs_to_the_root_it_names() {
        let own = ["/b/x".to_string()];
        let sources = [
            SourceRoots {
                roots: vec![("/a".into(), "/a".into())],
                patterns: &[],
            },
            SourceRoots {
                roots: vec![("/b".into(), "/link-to-b".into())],
                patterns: &own,
            },
        ];
        let e = Excludes::new(&rules(&["/a/x", "/link-to-b/y", "/z"]), &sources).unwrap();
        let m = |p: &str| e.matched(Path::new(p), false, true);
        assert!(m("/a/x") && !m("/b/a/x") && !m("/b/x/a/x"));
        assert!(m("/b/y") && m("/b/x"));
        // Naming no backed-up path: anchored at each.
        assert!(m("/a/z") && m("/b/z"));
        assert!(!m("/elsewhere/x"));
        assert!(e.unmatched().is_empty());
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_size("10M"), Ok(10 << 20));
        assert_eq!(parse_size("1GiB"), Ok(1 << 30));
        assert_eq!(parse_size("512k"), Ok(512 << 10));
        assert_eq!(parse_size("4096"), Ok(4096));
        assert!(parse_size("ten").is_err() && parse_size("1MB").is_err());
        assert!(parse_size("99999999999T").is_err());
    }

    #[test]
    fn list_formats() {
        let text = b"# c\n\n  a b  \r\n\t#x\nc\n";
        let v = |f| -> Vec<String> {
            list_entries(text, f)
                .into_iter()
                .map(|s| s.into_string().unwrap())
                .collect()
        };
        assert_eq!(v(ListFormat::Lines), ["a b", "c"]);
        assert_eq!(v(ListFormat::Verbatim), ["# c", "  a b  \r", "\t#x", "c"]);
        assert_eq!(list_entries(b"a\n b\0\0c", ListFormat::Raw), ["a\n b", "c"]);
    }

    #[test]
    fn cache_tags_and_markers() {
        let dir = tempfile::tempdir().unwrap();
        let (good, bad) = (dir.path().join("good"), dir.path().join("bad"));
        std::fs::create_dir_all(&good).unwrap();
        std::fs::create_dir_all(&bad).unwrap();
        let mut tag = CACHEDIR_SIGNATURE.to_vec();
        tag.extend_from_slice(b"\n# comment");
        std::fs::write(good.join(CACHEDIR_TAG), tag).unwrap();
        std::fs::write(bad.join(CACHEDIR_TAG), &CACHEDIR_SIGNATURE[..42]).unwrap();
        std::fs::write(bad.join(".nobackup"), b"").unwrap();
        let mut r = rules(&[]);
        r.caches = true;
        let e = at("/", &r);
        assert_eq!(e.marked(&good), Some(vec![OsStr::new(CACHEDIR_TAG)]));
        assert_eq!(e.marked(&bad), None);
        r.if_present = vec![".nobackup".into()];
        let e = at("/", &r);
        assert_eq!(e.marked(&bad), Some(vec![OsStr::new(".nobackup")]));
    }
}
