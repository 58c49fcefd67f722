//! What a client certificate alone, or bad luck, must not be able to do to
//! the history of a namespace: a junk snapshot, a garbage pack, a step
//! that fails after the commit, an output pipe that closes. See issue 18.

use std::fs;
use std::io::Read;
use std::path::Path;
use std::process::Stdio;

use coffer::id::SnapshotId;
use coffer::store::Store;

use crate::server::TestServer;
use crate::util::*;

/// A snapshot file with the plain part of `real` (so a store without the
/// key accepts it) and a sealed record of random bytes.
fn junk_snapshot(real: &[u8], seed: u64) -> Vec<u8> {
    let f = coffer::format::snapshot::decode(real).unwrap();
    let plain = 8 + 4 + 32 * f.packs.len();
    let mut junk = real[..plain].to_vec();
    junk.extend(random_bytes(seed, real.len() - plain));
    junk
}

fn snapshot_file(dir: &Path, id: &str) -> Vec<u8> {
    fs::read(dir.join("snapshots").join(id)).unwrap()
}

/// A repository with one backup of a directory holding file `a` of
/// random bytes; returns it, the directory and the snapshot's id.
fn backed_up(seed: u64) -> (TestRepo, std::path::PathBuf, String) {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(seed, 200 << 10)).unwrap();
    let id = t.backup(&[src.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    (t, src, id)
}

#[test]
fn a_junk_snapshot_hides_no_history_and_the_owner_can_remove_it() {
    let (t, src, first) = backed_up(1);
    fs::write(src.join("b"), text_bytes(2, 300 << 10)).unwrap();
    let second = t.backup(&[src.to_str().unwrap()])["id"]
        .as_str()
        .unwrap()
        .to_string();
    // Planted beside them, with a lock and a legal hold for years.
    let junk = junk_snapshot(&snapshot_file(&t.repo, &second), 7);
    let junk_id = SnapshotId::of(&junk).to_hex();
    fs::write(t.repo.join("snapshots").join(&junk_id), &junk).unwrap();
    let stamp = t.repo.join("snapshots").join(format!("{second}.stamp"));
    let mut st: serde_json::Value = serde_json::from_slice(&fs::read(stamp).unwrap()).unwrap();
    st["hold"] = true.into();
    st["locked_until"] = (st["locked_until"].as_i64().unwrap() + 3000 * 86_400).into();
    fs::write(
        t.repo.join("snapshots").join(format!("{junk_id}.stamp")),
        st.to_string(),
    )
    .unwrap();

    // Listing shows every good snapshot and names the bad one apart.
    let r = t.run(&["snapshots"]).ok();
    assert!(r.stdout().contains(&first[..8]) && r.stdout().contains(&second[..8]));
    assert!(!r.stdout().contains(&junk_id[..8]), "{}", r.stdout());
    assert!(
        r.stderr().contains(&junk_id) && r.stderr().contains("does not open"),
        "{}",
        r.stderr()
    );
    let ids: Vec<String> = t
        .snapshots()
        .iter()
        .map(|s| s["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids, [first.clone(), second.clone()]);
    assert_eq!(t.run(&["snapshots", "--strict"]).code(), 3);
    // -q: the ids alone.
    let q = t.run(&["-q", "snapshots"]).ok().stdout();
    assert_eq!(q.lines().collect::<Vec<_>>(), [&first, &second]);

    // `latest` is the newest snapshot that opens.
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&out, &src));

    // check reads everything else and names the bad snapshot.
    let c = t.run(&["check", "--read-data"]);
    assert_eq!(c.code(), 5, "{}", c.stderr());
    assert!(c.stdout().contains("checked 3 snapshots"), "{}", c.stdout());
    let damaged: Vec<String> = c
        .stderr()
        .lines()
        .filter(|l| l.contains("damaged:"))
        .map(String::from)
        .collect();
    assert_eq!(damaged.len(), 1, "{}", c.stderr());
    assert!(damaged[0].contains(&junk_id), "{}", c.stderr());

    // An ordinary forget respects its lock and hold; `--damaged` refuses a
    // snapshot that opens, and removes the one that does not, logged.
    let f = t.run(&["forget", &junk_id[..12]]).fails();
    assert_eq!(f.code(), 1, "{}", f.stderr());
    let f = t.run(&["forget", "--damaged", &second[..12]]).fails();
    assert!(f.stderr().contains("opens"), "{}", f.stderr());
    t.run(&["forget", "--damaged", &junk_id[..12]]).ok();
    assert!(!t.repo.join("snapshots").join(&junk_id).exists());
    let log = fs::read_to_string(t.repo.join("operator.log")).unwrap();
    assert!(log.contains(&junk_id) && log.contains("remove-damaged-snapshot"));
    assert_eq!(log.lines().count(), 1);
    t.run(&["snapshots", "--strict"]).ok();
    t.run(&["check", "--read-data"]).ok();
}

#[test]
fn a_junk_snapshot_planted_through_the_server_is_removed_by_the_operator() {
    let srv = TestServer::start(1);
    let tmp = tempfile::tempdir().unwrap();
    let cache = tmp.path().join("cache");
    let src = tmp.path().join("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(3, 150 << 10)).unwrap();
    let client = |args: &[&str]| Run {
        out: srv
            .client(0, &cache)
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    };
    client(&["backup", src.to_str().unwrap()]).ok();
    // The attacker holds the certificate: a junk snapshot, held for years.
    let ns = srv.namespace_dir("ns-0");
    let real = fs::read_dir(ns.join("snapshots"))
        .unwrap()
        .flatten()
        .map(|e| e.path())
        .find(|p| p.extension().is_none())
        .unwrap();
    let store = srv.store(0, "ns-0").unwrap();
    let junk_id = store
        .write_snapshot(&junk_snapshot(&fs::read(real).unwrap(), 11), None)
        .unwrap();
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs() as i64
        + 3000 * 86_400;
    store.lock(&junk_id, until, true).unwrap();
    drop(store);

    let r = client(&["--json", "snapshots"]).ok();
    assert_eq!(r.json().as_array().unwrap().len(), 1);
    assert!(r.stderr().contains(&junk_id.to_hex()), "{}", r.stderr());
    let out = tmp.path().join("out");
    client(&["restore", "latest", "--target", out.to_str().unwrap()]).ok();
    assert_same_tree(&src, &restored(&out, &src));
    // The client may not override the lock, nor use --damaged remotely.
    client(&["forget", &junk_id.to_hex()]).fails();
    client(&["forget", "--damaged", &junk_id.to_hex()]).fails();

    // The operator may: by whole id, logged in the namespace.
    let operator_removes = |id: &str| Run {
        out: srv.operator(&["forget", "--damaged", "--namespace", "ns-0", id]),
    };
    let o = operator_removes(&junk_id.to_hex()[..12]).fails();
    assert!(o.stderr().contains("whole id"), "{}", o.stderr());
    let o = operator_removes(&junk_id.to_hex()).ok();
    assert!(
        o.stdout().contains("removed damaged snapshot"),
        "{}",
        o.stdout()
    );
    let log = fs::read_to_string(ns.join("operator.log")).unwrap();
    assert!(log.contains(&junk_id.to_hex()));
    client(&["snapshots", "--strict"]).ok();
}

/// A pack of random bytes stored under its true BLAKE3 name, as a client
/// with a certificate but without the key can upload.
fn plant_garbage_pack(repo: &Path, seed: u64) -> String {
    let bytes = random_bytes(seed, 300 << 10);
    let name = blake3::hash(&bytes).to_hex().to_string();
    let dir = repo.join("packs").join(&name[..2]);
    fs::create_dir_all(&dir).unwrap();
    fs::write(dir.join(&name), bytes).unwrap();
    name
}

#[test]
fn a_garbage_pack_is_a_foreign_object_not_damage_nor_a_source_error() {
    let (t, src, _) = backed_up(5);
    let name = plant_garbage_pack(&t.repo, 99);

    // backup: exit 0, one warning naming the pack, no entry counted lost.
    fs::write(src.join("b"), random_bytes(6, 100 << 10)).unwrap();
    let b = t.run(&["--json", "backup", src.to_str().unwrap()]);
    assert_eq!(b.code(), 0, "{}", b.stderr());
    assert_eq!(b.json()["warnings"].as_array().unwrap().len(), 0);
    assert_eq!(b.json()["notices"].as_array().unwrap().len(), 1);
    assert!(b.stderr().contains(&name), "{}", b.stderr());
    assert!(!b.stderr().contains("could not be read"), "{}", b.stderr());

    // check: a warning line of its own, exit 0; with and without reading.
    for args in [&["check"][..], &["check", "--read-data"][..]] {
        let c = t.run(args);
        assert_eq!(c.code(), 0, "{args:?}: {}", c.stderr());
        let lines: Vec<String> = c
            .stderr()
            .lines()
            .filter(|l| l.contains(&name))
            .map(String::from)
            .collect();
        assert_eq!(lines.len(), 1, "{args:?}: {}", c.stderr());
        assert!(lines[0].contains("foreign"), "{}", lines[0]);
    }
    let j = t.run(&["--json", "check", "--read-data"]).ok().json();
    assert_eq!(j["foreign_packs"].as_array().unwrap().len(), 1);
    assert!(j["errors"].as_array().unwrap().is_empty());

    // The restore is whole; prune collects the pack once its grace is over.
    let out = t.path("out");
    t.run(&["restore", "latest", "--target", out.to_str().unwrap()])
        .ok();
    assert_same_tree(&src, &restored(&out, &src));
    let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
    let p = t.repo.join("packs").join(&name[..2]).join(&name);
    filetime::set_file_mtime(&p, old).unwrap();
    t.run(&["prune"]).ok();
    assert!(!p.exists(), "the garbage pack was collected");
    t.run(&["check", "--read-data"]).ok();
}

#[test]
fn a_garbage_pack_that_a_snapshot_lists_is_damage() {
    let (t, _, id) = backed_up(8);
    // A pack the snapshot lists is replaced by junk under its own name
    // (as a store that lost it and got garbage back would hold).
    let snap = snapshot_file(&t.repo, &id);
    let f = coffer::format::snapshot::decode(&snap).unwrap();
    let victim = f.packs[0].to_hex();
    let name = plant_garbage_pack(&t.repo, 100);
    let vp = t.repo.join("packs").join(&victim[..2]).join(&victim);
    fs::rename(t.repo.join("packs").join(&name[..2]).join(&name), &vp).unwrap();
    fs::remove_dir_all(t.path("cache")).unwrap();
    let c = t.run(&["check"]);
    assert_eq!(c.code(), 5, "{}", c.stderr());
    assert!(c.stderr().contains(&victim), "{}", c.stderr());
    assert!(!c.stderr().contains("foreign"), "{}", c.stderr());
}

#[test]
fn a_failure_after_the_commit_exits_3_and_names_the_snapshot() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(9, 300 << 10)).unwrap();
    // Parity cannot take its lock: it fails after the snapshot is saved,
    // as it does on a disk that filled late.
    fs::create_dir_all(t.repo.join("parity.lock")).unwrap();
    let r = t.run(&["--json", "backup", src.to_str().unwrap()]);
    assert_eq!(r.code(), 3, "{}", r.stderr());
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert!(
        r.stderr()
            .contains(&format!("snapshot {id} saved, but parity")),
        "{}",
        r.stderr()
    );
    fs::remove_dir(t.repo.join("parity.lock")).unwrap();
    assert_eq!(t.snapshots()[0]["id"], id.as_str());
    t.run(&["check", "--read-data"]).ok();
}

/// Runs `c` as `c | true`: standard output is a pipe whose reader is gone
/// before the first line; returns the exit code and standard error.
fn with_closed_stdout(mut c: std::process::Command) -> (i32, String) {
    let mut child = c
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let mut err = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut err)
        .unwrap();
    (child.wait().unwrap().code().unwrap_or(-1), err)
}

#[test]
fn commands_whose_output_closes_exit_cleanly_and_finish_their_work() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    for i in 0..40 {
        fs::write(src.join(format!("f{i:02}")), text_bytes(i, 2000)).unwrap();
    }
    for _ in 0..3 {
        t.backup(&[src.to_str().unwrap()]);
    }
    for args in [
        &["scrub"][..],
        &["prune"],
        &["snapshots"],
        &["ls", "latest"],
        &["check"],
        &["--json", "snapshots"],
        &["--json", "prune"],
    ] {
        let mut c = t.command();
        c.args(args);
        let (code, err) = with_closed_stdout(c);
        assert_eq!(code, 0, "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{args:?}: {err}");
    }
    // The scrub that lost its reader still finished its pass.
    let st: serde_json::Value =
        serde_json::from_slice(&fs::read(t.repo.join("scrub.json")).unwrap()).unwrap();
    assert!(st["last"].is_object(), "{st}");
}

#[test]
fn an_operators_prune_and_scrub_with_stdout_closed_finish_every_namespace() {
    let srv = TestServer::start(2);
    let tmp = tempfile::tempdir().unwrap();
    let mut planted = Vec::new();
    for i in 0..2 {
        let cache = tmp.path().join(format!("cache{i}"));
        let src = tmp.path().join(format!("src{i}"));
        fs::create_dir_all(&src).unwrap();
        fs::write(src.join("f"), random_bytes(20 + i as u64, 100 << 10)).unwrap();
        let mut c = srv.client(i, &cache);
        c.args(["backup", src.to_str().unwrap()]);
        Run {
            out: c.stdin(Stdio::null()).output().unwrap(),
        }
        .ok();
        // An unreferenced pack past its grace period in each namespace.
        let ns = srv.namespace_dir(&format!("ns-{i}"));
        let name = plant_garbage_pack(&ns, 30 + i as u64);
        let p = ns.join("packs").join(&name[..2]).join(&name);
        let old = filetime::FileTime::from_unix_time(1_600_000_000, 0);
        filetime::set_file_mtime(&p, old).unwrap();
        planted.push(p);
    }
    for args in [&["scrub"][..], &["prune"]] {
        let mut c = clean_command();
        c.args(args)
            .args(["--allow-root", "--config"])
            .arg(srv.dir.path().join("server.toml"));
        let (code, err) = with_closed_stdout(c);
        assert_eq!(code, 0, "{args:?}: {err}");
    }
    for p in planted {
        assert!(!p.exists(), "{} was collected", p.display());
    }
}

/// Issue 20: a repository in a scheme coffer does not speak, from --repo,
/// COFFER_REPO or a job file, is a usage error (exit 2) naming the scheme,
/// and nothing is created where coffer runs (taken as a path, `s3://…`
/// became a repository in `./s3:`). `./s3://…` is a local directory.
#[test]
fn a_repository_in_a_foreign_scheme_is_refused_and_creates_nothing() {
    let cwd = tempfile::tempdir().unwrap();
    let aside = tempfile::tempdir().unwrap();
    let src = aside.path().join("src");
    fs::write(&src, b"data").unwrap();
    let job = aside.path().join("job.toml");
    fs::write(&job, "repo = \"rest:http://backup.internal:8000/\"\n").unwrap();
    let run = |args: &[&str], env: &[(&str, &str)]| {
        let mut c = clean_command();
        c.current_dir(cwd.path())
            .env("COFFER_PASSWORD", PASSWORD)
            .env("COFFER_CACHE_DIR", aside.path().join("cache"))
            .envs(env.iter().copied())
            .args(args)
            .stdin(Stdio::null());
        Run {
            out: c.output().unwrap(),
        }
    };
    let init = ["init", "--kdf-memory-kib", "19456", "--kdf-iterations", "2"];
    let src = src.to_str().unwrap();
    for (args, env, scheme) in [
        (
            [&["--repo", "s3://bucket/x"][..], &init].concat(),
            vec![],
            "s3",
        ),
        (
            vec!["--repo", "sftp:user@host:/srv/repo", "backup", src],
            vec![],
            "sftp",
        ),
        (
            vec!["backup", src],
            vec![("COFFER_REPO", "b2:bucket:coffer")],
            "b2",
        ),
        (
            vec!["--profile", job.to_str().unwrap(), "snapshots"],
            vec![],
            "rest",
        ),
    ] {
        let r = run(&args, &env).fails();
        assert_eq!(r.code(), 2, "{args:?}: {}", r.stderr());
        assert!(
            r.stderr()
                .contains(&format!("does not speak the {scheme} scheme")),
            "{args:?}: {}",
            r.stderr()
        );
        let left: Vec<_> = fs::read_dir(cwd.path()).unwrap().collect();
        assert!(left.is_empty(), "{args:?} created {left:?}");
    }

    // The way to a directory of that name, as the message says.
    run(&[&["--repo", "./s3://bucket/x"][..], &init].concat(), &[]).ok();
    assert!(cwd.path().join("s3:/bucket/x/config").is_file());
}
