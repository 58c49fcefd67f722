//! `coffer completions SHELL` and `coffer man DIR`: shell completions and
//! manual pages generated from the clap definitions in `args`, so they
//! cannot drift from the command line they describe.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use clap::CommandFactory;

use super::args::Cli;

/// Writes the completion script for `shell` to standard output.
pub(super) fn cmd_completions(shell: clap_complete::Shell) -> Result<()> {
    let mut out = Vec::new();
    clap_complete::generate(shell, &mut Cli::command(), "coffer", &mut out);
    outln!("{}", String::from_utf8_lossy(&out).trim_end());
    Ok(())
}

/// Writes one manual page per command (section 1: `coffer.1`,
/// `coffer-backup.1`, `coffer-key-add.1`, …) into `dir`, made if missing;
/// returns their paths.
pub(super) fn write_man_pages(dir: &Path) -> Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    let mut cmd = Cli::command().disable_help_subcommand(true);
    cmd.build();
    let mut written = Vec::new();
    page(cmd, dir, &mut written)?;
    written.sort();
    Ok(written)
}

fn page(cmd: clap::Command, dir: &Path, written: &mut Vec<PathBuf>) -> Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        page(sub.clone(), dir, written)?;
    }
    let path = clap_mangen::Man::new(cmd)
        .generate_to(dir)
        .with_context(|| format!("writing a manual page into {}", dir.display()))?;
    written.push(path);
    Ok(())
}
