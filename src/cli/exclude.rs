//! The exclude options and path lists of `backup`: list files read, and the
//! job file's keys merged with the command line's (lists add up, the job
//! file's first; a flag set in either holds; the command line's size wins).

use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use anyhow::{bail, Context, Result};

use super::args::BackupArgs;
use coffer::job::JobConfig;
use coffer::repo::exclude::{list_entries, parse_size, ExcludeRules, ListFormat};

/// The rules of a run: the job file's (an empty one for a run from
/// arguments), then the command line's.
pub(super) fn rules(c: &JobConfig, a: &BackupArgs) -> Result<ExcludeRules> {
    let patterns = |given: &[String], files: &[PathBuf]| -> Result<Vec<String>> {
        let mut out = given.to_vec();
        for f in files {
            for p in read_list(f, ListFormat::Lines)? {
                match p.into_string() {
                    Ok(p) => out.push(p),
                    Err(p) => bail!("{}: pattern {p:?} is not UTF-8", f.display()),
                }
            }
        }
        Ok(out)
    };
    let mut out = ExcludeRules {
        patterns: patterns(&c.exclude, &c.exclude_file)?,
        ipatterns: patterns(&c.iexclude, &c.iexclude_file)?,
        caches: c.exclude_caches || a.exclude_caches,
        if_present: c.exclude_if_present.clone(),
        larger_than: a.exclude_larger_than,
    };
    out.patterns.extend(patterns(&a.exclude, &a.exclude_file)?);
    out.ipatterns
        .extend(patterns(&a.iexclude, &a.iexclude_file)?);
    out.if_present.extend(a.exclude_if_present.iter().cloned());
    if out.larger_than.is_none() {
        if let Some(s) = &c.exclude_larger_than {
            out.larger_than = Some(parse_size(s).map_err(anyhow::Error::msg)?);
        }
    }
    Ok(out)
}

/// The paths of the `--files-from` lists (or of the job file's keys).
pub(super) fn listed_paths(
    lines: &[PathBuf],
    verbatim: &[PathBuf],
    raw: &[PathBuf],
) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for (files, format) in [
        (lines, ListFormat::Lines),
        (verbatim, ListFormat::Verbatim),
        (raw, ListFormat::Raw),
    ] {
        for f in files {
            let paths = read_list(f, format)?;
            if paths.is_empty() {
                bail!("{}: lists no path", f.display());
            }
            out.extend(paths.into_iter().map(PathBuf::from));
        }
    }
    Ok(out)
}

/// Whether the command line gives a `--files-from` list.
pub(super) fn lists_paths(a: &BackupArgs) -> bool {
    !(a.files_from.is_empty() && a.files_from_verbatim.is_empty() && a.files_from_raw.is_empty())
}

/// A list file's entries; `-` is standard input.
fn read_list(path: &Path, format: ListFormat) -> Result<Vec<OsString>> {
    let mut bytes = Vec::new();
    if path == Path::new("-") {
        std::io::stdin()
            .read_to_end(&mut bytes)
            .context("reading a list from standard input")?;
    } else {
        bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
    }
    Ok(list_entries(&bytes, format))
}
