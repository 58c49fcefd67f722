//! `coffer mount DIR`: the snapshots (those the filter takes) as a
//! read-only file system, served until a signal or an unmount. The file
//! system itself is `coffer::mount`.

use super::*;
use coffer::mount::{detach, serve, Browse, MountOptions};

pub(super) fn cmd_mount(cli: &Cli, a: &args::MountArgs) -> Result<()> {
    if !Path::new("/dev/fuse").exists() {
        bail!("cannot mount: /dev/fuse is missing (load the fuse module; in a container, pass the device in)");
    }
    let shown = a.dir.display();
    match std::fs::metadata(&a.dir) {
        Ok(m) if m.is_dir() => {}
        Ok(_) => return Err(Usage(format!("{shown} is not a directory")).into()),
        Err(e) if e.raw_os_error() == Some(libc::ENOTCONN) => bail!(
            "{shown}: {e}: a mount there ended without unmounting; `fusermount3 -u -z {shown}` frees it"
        ),
        Err(e) => bail!("{shown}: {e}"),
    }
    let dir = a.dir.canonicalize()?;
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let all = repo.snapshots()?;
    restore::report_unopened(&all.unopened);
    let snaps: Vec<Snapshot> = all
        .good
        .into_iter()
        .filter(|s| cli.filter.matches(&s.record))
        .collect();
    if snaps.is_empty() {
        errln!(
            "coffer: warning: no snapshot to show{}",
            match cli.filter.is_empty() {
                true => String::new(),
                false => format!(" matching {}", cli.filter.describe()),
            }
        );
    }
    let count = snaps.len();
    // Ctrl-C, SIGTERM or SIGHUP unmount. A file still open keeps the
    // connection after the mount point is detached: the process goes after a
    // short grace all the same (its readers then get an error, never a hang).
    use signal_hook::consts::{SIGHUP, SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGINT, SIGTERM, SIGHUP])?;
    let at = dir.clone();
    std::thread::spawn(move || {
        if signals.forever().next().is_some() {
            if let Err(e) = detach(&at) {
                errln!("coffer: unmounting {}: {e}", at.display());
            }
            std::thread::sleep(std::time::Duration::from_secs(2));
            std::process::exit(0);
        }
    });
    let notice = Box::new(|m: &str| errln!("coffer: mount: {m}"));
    let fs = Browse::new(repo, cache, snaps, notice);
    let opts = MountOptions {
        allow_other: a.allow_other,
    };
    let quiet = cli.quiet;
    serve(fs, &dir, &opts, || {
        if !quiet {
            errln!(
                "coffer: {count} snapshot(s) mounted at {}; Ctrl-C or `fusermount3 -u {}` unmounts",
                dir.display(),
                dir.display()
            );
        }
    })
    .with_context(|| format!("mounting at {}", dir.display()))?;
    Ok(())
}
