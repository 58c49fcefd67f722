//! Creating a repository and its keys: `init`, `key …` and `identity …`.

use super::*;

pub(super) fn cmd_init(cli: &Cli, a: &InitArgs) -> Result<()> {
    let choices = init_choices(a)?;
    let r = repo_arg(cli)?;
    let created = !r.starts_with("quic://") && !Path::new(r).exists();
    let res = init_with(cli, choices);
    if res.is_err() && created {
        // A failed init leaves no skeleton behind for the next one to trip on.
        let _ = std::fs::remove_dir_all(r);
    }
    res
}

/// What `init` was asked for: options, retention rules, parity.
type InitChoices = (
    InitOptions,
    coffer::retention::Policy,
    coffer::parity::ParityConfig,
);

pub(super) fn init_with(cli: &Cli, (opts, policy, parity): InitChoices) -> Result<()> {
    let (store, exists) = store(cli, true)?;
    if exists {
        bail!("{} holds a repository already", repo_arg(cli)?);
    }
    let pw = secret::passphrase(cli, "New repository passphrase: ", true)?;
    if !repo_arg(cli)?.starts_with("quic://") {
        let local = LocalStore::open_dir(Path::new(repo_arg(cli)?))?;
        if policy != coffer::retention::Policy::default() {
            local.write_policy(&policy)?;
        }
        if parity != coffer::parity::ParityConfig::default() {
            local.write_parity(&parity)?;
        }
    }
    let id = Repository::init_store(store.as_ref(), &pw, &opts)?;
    if cli.json {
        print_json(&json!({"id": id.to_hex(), "repo": repo_arg(cli)?}))?;
    } else if !cli.quiet {
        outln!("created repository {} at {}", id.short(), repo_arg(cli)?);
    }
    Ok(())
}

/// What `init` was asked for, checked before anything is created: a
/// rejected choice is a usage error (exit 2) that leaves no directory.
pub(super) fn init_choices(a: &InitArgs) -> Result<InitChoices> {
    let d = Settings::default();
    let settings = Settings {
        chunker: ChunkerParams {
            min: a.chunk_min.unwrap_or(d.chunker.min),
            avg: a.chunk_avg.unwrap_or(d.chunker.avg),
            max: a.chunk_max.unwrap_or(d.chunker.max),
        },
        image_block: a.image_block.unwrap_or(d.image_block),
        pack_size: a.pack_size.unwrap_or(d.pack_size),
        compression: a.compression.unwrap_or(d.compression),
    };
    let opts = InitOptions {
        kdf: KdfParams {
            memory_kib: a.kdf_memory_kib,
            iterations: a.kdf_iterations,
            parallelism: KdfParams::DEFAULT.parallelism,
        },
        settings,
        host: host(),
        now: now_ns() / 1_000_000_000,
    };
    let usage = |e: String| anyhow::Error::new(Usage(e));
    opts.settings.validate().map_err(|e| usage(e.to_string()))?;
    opts.kdf.check().map_err(|e| usage(e.to_string()))?;
    let policy = coffer::retention::Policy {
        lock_secs: a.lock_days as i64 * coffer::retention::DAY_SECS,
        retention_secs: a.retention_days as i64 * coffer::retention::DAY_SECS,
        keep: coffer::keep::KeepRules {
            last: a.keep_last,
            daily: a.keep_daily,
            weekly: a.keep_weekly,
            monthly: a.keep_monthly,
            yearly: a.keep_yearly,
        },
        ..Default::default()
    };
    policy.validate().map_err(usage)?;
    let parity = coffer::parity::ParityConfig::parse(&a.parity).map_err(usage)?;
    Ok((opts, policy, parity))
}

pub(super) fn cmd_key(cli: &Cli, k: &KeyCommand) -> Result<()> {
    let repo = open(cli)?;
    let new_pw = secret::new_passphrase;
    let add_key = |pw: &[u8], memory_kib: u32, iterations: u32| -> Result<String> {
        let params = KdfParams {
            memory_kib,
            iterations,
            parallelism: KdfParams::DEFAULT.parallelism,
        };
        Ok(repo.add_key(pw, params, host(), now_ns() / 1_000_000_000)?)
    };
    match k {
        KeyCommand::Add {
            kdf_memory_kib,
            kdf_iterations,
        } => {
            let name = add_key(&new_pw()?, *kdf_memory_kib, *kdf_iterations)?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else if !cli.quiet {
                outln!("added key {name}");
            }
        }
        KeyCommand::List => {
            let keys = repo.list_keys()?;
            if cli.json {
                let v: Vec<_> = keys
                    .iter()
                    .map(|(n, k)| json!({"id": n, "current": n == repo.key_name(), "host": k.host,
                                         "created": fmt_time(k.created * 1_000_000_000), "kdf": k.params}))
                    .collect();
                return print_json(&serde_json::Value::Array(v));
            }
            for (n, k) in keys {
                let cur = if n == repo.key_name() { "*" } else { " " };
                outln!(
                    "{cur} {n}  {}  {}  argon2id m={}KiB t={}",
                    fmt_time(k.created * 1_000_000_000),
                    k.host,
                    k.params.memory_kib,
                    k.params.iterations
                );
            }
        }
        KeyCommand::Remove { id } => {
            let name = repo.remove_key(id)?;
            if cli.json {
                print_json(&json!({"id": name}))?;
            } else if !cli.quiet {
                outln!("removed key {name}");
            }
        }
        KeyCommand::Passwd {
            kdf_memory_kib,
            kdf_iterations,
        } => {
            let name = add_key(&new_pw()?, *kdf_memory_kib, *kdf_iterations)?;
            repo.store().remove_key(repo.key_name())?;
            if cli.json {
                print_json(&json!({"id": name, "replaced": repo.key_name()}))?;
            } else if !cli.quiet {
                outln!(
                    "passphrase changed: key {} replaced by {name}",
                    repo.key_name()
                );
            }
        }
    }
    Ok(())
}

pub(super) fn cmd_identity(cli: &Cli, i: &IdentityCommand) -> Result<()> {
    let (fp, path) = match i {
        IdentityCommand::New { out } => {
            let (id, pem) = Identity::generate()?;
            use std::os::unix::fs::OpenOptionsExt;
            let mut f = std::fs::OpenOptions::new()
                .write(true)
                .create_new(true)
                .mode(0o600)
                .open(out)
                .with_context(|| {
                    format!(
                        "creating {} (an existing identity is never overwritten)",
                        out.display()
                    )
                })?;
            f.write_all(pem.as_bytes())?;
            f.sync_all()?;
            (id.fingerprint(), out)
        }
        IdentityCommand::Show { file } => (Identity::load(file)?.fingerprint(), file),
    };
    if cli.json {
        print_json(&json!({"fingerprint": fp.to_string(), "file": path}))
    } else {
        outln!("{fp}");
        Ok(())
    }
}
