//! A backup job's configuration file (`coffer backup --config FILE`): the
//! repository, how to reach and open it, and every source one run backs up
//! into one snapshot. Unknown keys and bad values are refused with a message
//! that names them, so a typo never silently drops a source.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::{Error, Result};
use crate::format::tree::safe_name;
use crate::repo::backup::BackupSource;

/// A hook command: a string run by `/bin/sh -c`, or a program and its
/// arguments run directly.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
#[serde(untagged)]
pub enum HookCommand {
    /// `sh -c STRING`.
    Shell(String),
    /// Program and arguments.
    Argv(Vec<String>),
}

impl HookCommand {
    /// Program and arguments to run.
    pub fn argv(&self) -> Vec<String> {
        match self {
            HookCommand::Shell(s) => vec!["/bin/sh".into(), "-c".into(), s.clone()],
            HookCommand::Argv(v) => v.clone(),
        }
    }

    /// The command as shown in messages.
    pub fn shown(&self) -> String {
        match self {
            HookCommand::Shell(s) => s.clone(),
            HookCommand::Argv(v) => v.join(" "),
        }
    }

    fn validate(&self, key: &str) -> Result<()> {
        let empty = match self {
            HookCommand::Shell(s) => s.trim().is_empty(),
            HookCommand::Argv(v) => v.first().is_none_or(|p| p.is_empty()),
        };
        if empty {
            return Err(Error::Denied(format!("`{key}` is empty")));
        }
        Ok(())
    }
}

/// One `[[source]]`: exactly one of `path`, `command` or `image`.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SourceEntry {
    /// A file or directory tree.
    pub path: Option<PathBuf>,
    /// Patterns left out below `path`.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// A command whose standard output is backed up (needs `name`).
    pub command: Option<Vec<String>>,
    /// A disk image or block device.
    pub image: Option<PathBuf>,
    /// The file name in the snapshot of a command's output or an image.
    pub name: Option<String>,
}

/// The whole file.
#[derive(Debug, Clone, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct JobConfig {
    /// A local directory or `quic://HOST:PORT/NAMESPACE`.
    pub repo: Option<String>,
    /// File holding the repository passphrase (one line).
    pub password_file: Option<PathBuf>,
    /// This client's identity file (quic:// repositories).
    pub identity: Option<PathBuf>,
    /// The server's certificate fingerprint (quic:// repositories).
    pub server_fingerprint: Option<String>,
    /// The local cache directory.
    pub cache_dir: Option<PathBuf>,
    /// The file that keeps two runs of this job apart (default: in the cache
    /// directory, named after the config file).
    pub lock_file: Option<PathBuf>,
    /// Host name recorded in the snapshot.
    pub host: Option<String>,
    /// The backup job's name for retention (see `backup --job`).
    pub job: Option<String>,
    /// Tags of the snapshot.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Patterns left out of every path source (docs/operations.md,
    /// Excludes); the keys below are those of `backup`'s options of the
    /// same names.
    #[serde(default)]
    pub exclude: Vec<String>,
    /// Files of patterns, one a line.
    #[serde(default)]
    pub exclude_file: Vec<PathBuf>,
    /// Patterns whose letters match either case.
    #[serde(default)]
    pub iexclude: Vec<String>,
    /// Files of such patterns.
    #[serde(default)]
    pub iexclude_file: Vec<PathBuf>,
    /// Leave out the content of directories with a valid CACHEDIR.TAG.
    #[serde(default)]
    pub exclude_caches: bool,
    /// Leave out the content of directories holding an entry of this name.
    #[serde(default)]
    pub exclude_if_present: Vec<String>,
    /// Leave out files larger than this (`10M`, `1GiB`).
    pub exclude_larger_than: Option<String>,
    /// Files listing paths to back up (one path source beside the
    /// `[[source]]`s), one a line, trimmed, `#` comments skipped.
    #[serde(default)]
    pub files_from: Vec<PathBuf>,
    /// The same, every line taken as it is.
    #[serde(default)]
    pub files_from_verbatim: Vec<PathBuf>,
    /// The same, paths separated by NUL bytes.
    #[serde(default)]
    pub files_from_raw: Vec<PathBuf>,
    /// Stay on the file system of each path.
    #[serde(default)]
    pub one_file_system: bool,
    /// zstd level for this job.
    pub compression: Option<i32>,
    /// Upload at most this many KiB per second.
    pub limit_upload_kib: Option<u64>,
    /// Run before the backup (e.g. create a device snapshot).
    pub pre: Option<HookCommand>,
    /// Run after the backup, whatever happened (e.g. release the snapshot).
    pub post: Option<HookCommand>,
    /// What to back up.
    #[serde(default, rename = "source")]
    pub sources: Vec<SourceEntry>,
}

impl JobConfig {
    /// Reads and validates a job file.
    pub fn load(path: &Path) -> Result<JobConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse(&text).map_err(|e| Error::Denied(format!("{}: {e}", path.display())))
    }

    /// Reads a job file as a profile for commands other than `backup`
    /// (`--profile`): validated as a job, except that it need not name a
    /// source.
    pub fn load_profile(path: &Path) -> Result<JobConfig> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        Self::parse_as(&text, false).map_err(|e| Error::Denied(format!("{}: {e}", path.display())))
    }

    /// Parses and validates job text.
    pub fn parse(text: &str) -> Result<JobConfig> {
        Self::parse_as(text, true)
    }

    fn parse_as(text: &str, needs_source: bool) -> Result<JobConfig> {
        let c: JobConfig =
            toml::from_str(text).map_err(|e| Error::Denied(e.to_string().trim().to_string()))?;
        c.validate(needs_source)?;
        Ok(c)
    }

    fn validate(&self, needs_source: bool) -> Result<()> {
        if let Some(r) = &self.repo {
            if r.trim().is_empty() {
                return Err(Error::Denied("`repo` is empty".into()));
            }
        }
        if let Some(l) = self.compression {
            if !(0..=19).contains(&l) {
                return Err(Error::Denied(format!(
                    "`compression` = {l}: must be 0 (off) to 19"
                )));
            }
        }
        if self.limit_upload_kib == Some(0) {
            return Err(Error::Denied(
                "`limit_upload_kib` must be at least 1 (leave it out for no limit)".into(),
            ));
        }
        #[cfg(feature = "net")]
        if let Some(fp) = &self.server_fingerprint {
            crate::net::Fingerprint::parse(fp)
                .map_err(|e| Error::Denied(format!("`server_fingerprint`: {e}")))?;
        }
        if let Some(h) = &self.pre {
            h.validate("pre")?;
        }
        if let Some(h) = &self.post {
            h.validate("post")?;
        }
        if let Some(size) = &self.exclude_larger_than {
            crate::repo::exclude::parse_size(size)
                .map_err(|e| Error::Denied(format!("`exclude_larger_than`: {e}")))?;
        }
        if self.sources.is_empty() && !self.lists_paths() && needs_source {
            return Err(Error::Denied(
                "no [[source]]: give at least one `path`, `command` or `image` (or `files_from`)"
                    .into(),
            ));
        }
        let mut names = HashSet::new();
        for (i, s) in self.sources().into_iter().enumerate() {
            let name = match s? {
                BackupSource::Command { name, .. } | BackupSource::Stream { name, .. } => {
                    Some(name)
                }
                BackupSource::Image { name, path } => {
                    name.or_else(|| path.file_name().map(|n| n.to_string_lossy().into_owned()))
                }
                BackupSource::Paths { .. } => None,
            };
            if let Some(n) = name {
                if !names.insert(n.clone()) {
                    return Err(Error::Denied(format!(
                        "source #{}: the name {n:?} is used twice",
                        i + 1
                    )));
                }
            }
        }
        Ok(())
    }

    /// Whether a `files_from` key names a list of paths.
    pub fn lists_paths(&self) -> bool {
        !(self.files_from.is_empty()
            && self.files_from_verbatim.is_empty()
            && self.files_from_raw.is_empty())
    }

    /// The sources, each checked: exactly one kind, and the keys it allows.
    pub fn sources(&self) -> Vec<Result<BackupSource>> {
        self.sources
            .iter()
            .enumerate()
            .map(|(i, s)| {
                s.to_source()
                    .map_err(|e| Error::Denied(format!("source #{}: {e}", i + 1)))
            })
            .collect()
    }
}

impl SourceEntry {
    fn to_source(&self) -> std::result::Result<BackupSource, String> {
        let kinds = [
            self.path.is_some(),
            self.command.is_some(),
            self.image.is_some(),
        ];
        if kinds.iter().filter(|k| **k).count() != 1 {
            return Err("give exactly one of `path`, `command` or `image`".into());
        }
        if !self.exclude.is_empty() && self.path.is_none() {
            return Err("`exclude` applies to a `path` source only".into());
        }
        if let Some(n) = &self.name {
            if self.path.is_some() {
                return Err("`name` applies to a `command` or `image` source only".into());
            }
            if !safe_name(n.as_bytes()) {
                return Err(format!(
                    "`name` = {n:?} must be a plain file name (no '/', not '.' or '..')"
                ));
            }
        }
        if let Some(p) = &self.path {
            if p.as_os_str().is_empty() {
                return Err("`path` is empty".into());
            }
            return Ok(BackupSource::Paths {
                paths: vec![p.clone()],
                excludes: self.exclude.clone(),
            });
        }
        if let Some(argv) = &self.command {
            if argv.first().is_none_or(|p| p.is_empty()) {
                return Err("`command` is empty".into());
            }
            let name = self
                .name
                .clone()
                .ok_or("a `command` source needs a `name` (its file name in the snapshot)")?;
            return Ok(BackupSource::Command {
                name,
                argv: argv.clone(),
            });
        }
        // unwrap-free: exactly one kind is set, and it is the image.
        let path = self.image.clone().unwrap_or_default();
        if path.as_os_str().is_empty() {
            return Err("`image` is empty".into());
        }
        if self.name.is_none() && path.file_name().is_none() {
            return Err(format!("`image` = {} has no file name", path.display()));
        }
        Ok(BackupSource::Image {
            path,
            name: self.name.clone(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GOOD: &str = r#"
repo = "quic://backup.internal:7443/vps-101"
password_file = "/etc/coffer/passphrase"
identity = "/etc/coffer/client.identity"
server_fingerprint = "0000000000000000000000000000000000000000000000000000000000000001"
pre = "lvcreate -s -n snap vg0/vm101"
post = ["lvremove", "-y", "vg0/snap"]

[[source]]
path = "/"
exclude = ["/proc", "/sys", "/dev", "/run", "/tmp"]

[[source]]
name = "app.dump"
command = ["pg_dump", "-Fc", "app"]

[[source]]
image = "/dev/vg0/vm101-snap"
"#;

    #[test]
    fn the_documented_example_parses() {
        let c = JobConfig::parse(GOOD).unwrap();
        let s: Vec<BackupSource> = c.sources().into_iter().map(|s| s.unwrap()).collect();
        assert!(
            matches!(&s[1], BackupSource::Command { name, argv } if name == "app.dump" && argv[..] == ["pg_dump", "-Fc", "app"])
        );
        assert!(matches!(&s[0], BackupSource::Paths { excludes, .. } if excludes.len() == 5));
        assert!(matches!(&s[2], BackupSource::Image { name: None, .. }));
        assert_eq!(c.pre.unwrap().argv()[..2], ["/bin/sh", "-c"]);
        assert_eq!(c.post.unwrap().argv()[0], "lvremove");
    }

    #[test]
    fn the_shipped_example_parses() {
        let c = JobConfig::parse(include_str!("../docs/coffer-job.toml")).unwrap();
        assert_eq!(c.sources.len(), 2);
        assert!(c.sources().iter().all(|s| s.is_ok()));
    }

    fn refused(text: &str, needle: &str) {
        let e = JobConfig::parse(text).unwrap_err().to_string();
        assert!(e.contains(needle), "{needle:?} not in {e:?}");
    }

    #[test]
    fn refusals_name_the_key() {
        refused("repo = \"/r\"\nrepository = \"/x\"\n", "repository");
        refused("[[source]]\npath = \"/\"\nexlude = [\"/x\"]\n", "exlude");
        refused("repo = \"/r\"\n", "[[source]]");
        refused(
            "[[source]]\npath = \"/\"\nimage = \"/dev/x\"\n",
            "exactly one",
        );
        refused("[[source]]\ncommand = [\"pg_dump\"]\n", "needs a `name`");
        refused(
            "[[source]]\ncommand = []\nname = \"a\"\n",
            "`command` is empty",
        );
        refused(
            "[[source]]\nimage = \"/dev/x\"\nname = \"../x\"\n",
            "plain file name",
        );
        refused(
            "compression = 40\n[[source]]\npath = \"/\"\n",
            "compression",
        );
        refused(
            "limit_upload_kib = 0\n[[source]]\npath = \"/\"\n",
            "limit_upload_kib",
        );
        refused("pre = \"\"\n[[source]]\npath = \"/\"\n", "`pre` is empty");
        refused(
            "limit_upload_kib = \"fast\"\n[[source]]\npath = \"/\"\n",
            "limit_upload_kib",
        );
        refused(
            "[[source]]\nimage = \"/a/disk\"\n[[source]]\ncommand = [\"x\"]\nname = \"disk\"\n",
            "used twice",
        );
        refused(
            "server_fingerprint = \"zz\"\n[[source]]\npath = \"/\"\n",
            "server_fingerprint",
        );
        refused(
            "exclude_larger_than = \"1MB\"\n[[source]]\npath = \"/\"\n",
            "exclude_larger_than",
        );
        assert!(JobConfig::parse("files_from = [\"/etc/coffer/paths\"]\n").is_ok());
    }
}
