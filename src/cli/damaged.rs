//! `coffer forget --damaged`: removes snapshots that do not open, whatever
//! their lock and legal hold say. A client that is taken over can plant a
//! snapshot file whose sealed record is garbage and hold it for years; a
//! lock protects a backup, and such a file restores nothing. With a local
//! repository the passphrase proves the snapshot does not open; a server's
//! operator (`--config`, `--namespace`) holds no key, so the command takes
//! the operator's word and logs it in the namespace's `operator.log`.

use std::path::Path;

use anyhow::{bail, Result};

use super::args::Cli;
use super::{open, print_json, repo_arg, who_runs};
use coffer::id::SnapshotId;
use coffer::net::config::ServerConfig;
use coffer::store::LocalStore;
use serde_json::json;

/// A local repository: each named snapshot must fail to open.
pub(super) fn cmd_forget_damaged(cli: &Cli, snaps: &[String]) -> Result<()> {
    let r = repo_arg(cli)?;
    if r.starts_with("quic://") {
        bail!(
            "only the server's operator removes a damaged snapshot: \
             `coffer forget --damaged --config SERVER_CONFIG --namespace NAME ID`"
        );
    }
    let repo = open(cli)?;
    let store = LocalStore::open(Path::new(r))?;
    let mut forgets = super::rollback::Forgets::start(&repo);
    let mut done = Vec::new();
    for spec in snaps {
        let id = repo.resolve_snapshot(spec)?;
        let why = match repo.load_snapshot(&id) {
            Ok(_) => bail!(
                "snapshot {} opens: it is not damaged (`coffer forget` removes it once its lock allows)",
                id.short()
            ),
            Err(e) if e.kind() == coffer::ErrorKind::Corrupt => e.to_string(),
            Err(e) => return Err(e.into()),
        };
        // Seen by this client while it opened: not reported as vanished.
        forgets.before(id);
        let res = remove(cli, &store, r, id, &why);
        forgets.after(id, res.is_ok());
        done.push(res?);
    }
    finish(cli, done)
}

/// A server's namespace, as its operator: no key, the full id required.
pub(super) fn cmd_forget_damaged_on_server(
    cli: &Cli,
    config: &Path,
    namespace: &str,
    snaps: &[String],
    allow_root: bool,
) -> Result<()> {
    let (_, store) = operator_store(config, namespace, allow_root)?;
    let mut done = Vec::new();
    for spec in snaps {
        // The whole id: without a key nothing confirms the choice, so a
        // prefix that happens to match is not enough.
        let id: SnapshotId = spec.parse().map_err(|_| {
            anyhow::anyhow!("give the snapshot's whole id (64 hex digits), as `coffer snapshots` or `check` named it: {spec:?}")
        })?;
        done.push(remove(
            cli,
            &store,
            namespace,
            id,
            "named by the server's operator",
        )?);
    }
    finish(cli, done)
}

/// A namespace of a server config, opened for its operator (not as root
/// unless allowed: files created would be root's).
pub(super) fn operator_store(
    config: &Path,
    namespace: &str,
    allow_root: bool,
) -> Result<(ServerConfig, LocalStore)> {
    if nix::unistd::geteuid().is_root() && !allow_root {
        bail!("refusing to change a server's data as root: run as the server's user (or pass --allow-root)");
    }
    let cfg = ServerConfig::load(config)?;
    let Some(client) = cfg
        .namespaces()?
        .into_iter()
        .find(|c| c.namespace == namespace)
    else {
        bail!("namespace {namespace:?} is not in {}", config.display());
    };
    let store = cfg.namespace_store(&client)?;
    Ok((cfg, store))
}

fn remove(
    cli: &Cli,
    store: &LocalStore,
    name: &str,
    id: SnapshotId,
    why: &str,
) -> Result<serde_json::Value> {
    let st = store.remove_damaged(&id, &who_runs(), why)?;
    let held = if st.hold { ", on legal hold" } else { "" };
    if !cli.json && !cli.quiet {
        outln!(
            "{name}: removed damaged snapshot {id} (was locked until {}{held}); logged in operator.log",
            coffer::retention::fmt_time(st.locked_until)
        );
    }
    Ok(json!({"repository": name, "snapshot": id.to_hex(), "stamp": st}))
}

pub(super) fn finish(cli: &Cli, done: Vec<serde_json::Value>) -> Result<()> {
    if cli.json {
        print_json(&serde_json::Value::Array(done))?;
    }
    Ok(())
}
