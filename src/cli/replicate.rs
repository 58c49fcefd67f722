//! `coffer replicate --config FILE`: a replica server's copy runs, on demand.

use super::*;

pub(super) fn cmd_replicate(
    cli: &Cli,
    config: &Path,
    namespace: Option<&str>,
    allow_root: bool,
) -> Result<()> {
    if nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to write a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let cfg = coffer::net::config::ServerConfig::load(config)?;
    let all = cfg.validated_replications()?;
    let runs: Vec<_> = all
        .iter()
        .filter(|r| namespace.is_none_or(|n| n == r.namespace))
        .collect();
    if runs.is_empty() {
        return Err(Usage(match namespace {
            Some(n) => format!(
                "{}: no [[replicate]] entry for namespace {n}",
                config.display()
            ),
            None => format!("{}: no [[replicate]] entry", config.display()),
        })
        .into());
    }
    let (mut failed, mut refused) = (0, 0);
    let mut out = Vec::new();
    for r in runs {
        let res = coffer::net::replica::run_config(&cfg, r);
        let ns = &r.namespace;
        match &res {
            Ok(rep) => {
                refused += rep.refused.len() + rep.keys_refused.len();
                for f in &rep.refused {
                    errln!(
                        "coffer: {ns}: snapshot {} not copied: {}",
                        f.snapshot,
                        f.reason
                    );
                }
                for f in &rep.keys_refused {
                    errln!(
                        "coffer: {ns}: key file {:?} not copied: {}",
                        f.snapshot,
                        f.reason
                    );
                }
                if !cli.json && !cli.quiet {
                    outln!(
                        "{ns}: {} snapshots copied ({} packs, {} bytes), {} keys, {} locks extended; the primary lists {}",
                        rep.snapshots_copied,
                        rep.packs_copied,
                        rep.bytes_copied,
                        rep.keys_copied,
                        rep.locks_extended,
                        rep.source_snapshots
                    );
                }
            }
            Err(e) => {
                failed += 1;
                errln!("coffer: {ns}: copy failed: {e}");
            }
        }
        out.push(match res {
            Ok(rep) => json!({"namespace": ns, "report": rep}),
            Err(e) => json!({"namespace": ns, "error": e.to_string()}),
        });
    }
    if cli.json {
        print_json(&serde_json::Value::Array(out))?;
    }
    if failed > 0 {
        bail!("{failed} namespaces were not copied");
    }
    if refused > 0 {
        return Err(Incomplete(format!("{refused} snapshots or key files were not copied")).into());
    }
    Ok(())
}
