//! `restore --format qcow2`: a disk image snapshot written as a qcow2
//! disk. The restore writes the raw disk (sparse) as always; `qemu-img
//! convert` then makes the qcow2 beside it (holes stay unallocated) and the
//! raw file goes. qemu-img is QEMU's own writer of its format: coffer does
//! not write qcow2 itself.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use coffer::format::snapshot::SourceKind;
use coffer::repo::Snapshot;

/// The format a disk image is restored in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum DiskFormat {
    /// The disk's bytes as they are (sparse where the disk was).
    Raw,
    /// A qcow2 disk, through `qemu-img convert`.
    Qcow2,
}

/// The disk images of `s` as restored under `target`: the image the
/// record names, or every source of an image snapshot.
pub(super) fn images(s: &Snapshot, target: &Path) -> Result<Vec<PathBuf>> {
    let names: Vec<String> = match (&s.record.image, s.record.source) {
        (Some(i), _) => vec![i.name.clone()],
        (None, SourceKind::Image) => s
            .record
            .paths
            .iter()
            .filter_map(|p| Path::new(p).file_name())
            .map(|n| n.to_string_lossy().into_owned())
            .collect(),
        _ => bail!(
            "snapshot {} is not of a disk image: --format qcow2 applies to image snapshots",
            s.id.short()
        ),
    };
    Ok(names.into_iter().map(|n| target.join(n)).collect())
}

/// Fails early when qemu-img is not there to convert.
pub(super) fn check_tool() -> Result<()> {
    match Command::new("qemu-img").arg("--version").output() {
        Ok(o) if o.status.success() => Ok(()),
        _ => bail!("--format qcow2 needs qemu-img (Debian: apt-get install qemu-utils)"),
    }
}

/// Converts each restored raw image to `NAME.qcow2` and removes the raw
/// file; the qcow2 paths.
pub(super) fn to_qcow2(raws: &[PathBuf]) -> Result<Vec<PathBuf>> {
    let mut out = Vec::new();
    for raw in raws {
        if !raw.is_file() || coffer::source::nbd::qemu::is_qcow2(raw) {
            // Not restored (left out by a pattern), or a qcow2 container
            // backed up as a file: nothing to convert.
            continue;
        }
        let mut name = raw.file_name().unwrap_or_default().to_os_string();
        if !name.to_string_lossy().ends_with(".qcow2") {
            name.push(".qcow2");
        }
        let dest = raw.with_file_name(name);
        let tmp = raw.with_file_name(format!(
            ".{}.coffer-tmp",
            dest.file_name().unwrap_or_default().to_string_lossy()
        ));
        let res = Command::new("qemu-img")
            .args(["convert", "-f", "raw", "-O", "qcow2"])
            .arg(raw)
            .arg(&tmp)
            .output()
            .context("running qemu-img")?;
        if !res.status.success() {
            let _ = std::fs::remove_file(&tmp);
            bail!(
                "qemu-img convert of {} failed: {}",
                raw.display(),
                String::from_utf8_lossy(&res.stderr).trim()
            );
        }
        std::fs::rename(&tmp, &dest).with_context(|| format!("naming {}", dest.display()))?;
        if dest != *raw {
            std::fs::remove_file(raw).with_context(|| format!("removing {}", raw.display()))?;
        }
        out.push(dest);
    }
    Ok(out)
}
