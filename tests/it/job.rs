//! Unattended runs: `backup --config` jobs with several sources, the run
//! lock, pre/post hooks on failure and on signals, quiet output for cron,
//! the upload limit.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::server::TestServer;
use crate::util::*;

/// A repository directory, a cache and a passphrase file for job files.
struct Job {
    t: TestRepo,
    pwfile: PathBuf,
}

impl Job {
    fn new() -> Job {
        let t = TestRepo::new();
        let pwfile = t.path("passphrase");
        fs::write(&pwfile, format!("{PASSWORD}\n")).unwrap();
        Job { t, pwfile }
    }

    /// Writes a job file: the repository and passphrase, then `body`.
    fn config(&self, name: &str, body: &str) -> PathBuf {
        let p = self.t.path(name);
        let text = format!(
            "repo = \"{}\"\npassword_file = \"{}\"\n{body}",
            self.t.repo.display(),
            self.pwfile.display()
        );
        fs::write(&p, text).unwrap();
        p
    }

    /// `coffer ARGS` with no passphrase or repository in the environment:
    /// everything comes from the job file.
    fn command(&self, args: &[&str]) -> Command {
        let mut c = clean_command();
        c.env("COFFER_CACHE_DIR", &self.t.cache)
            .args(args)
            .stdin(Stdio::null());
        c
    }

    fn run(&self, args: &[&str]) -> Run {
        Run {
            out: self.command(args).output().unwrap(),
        }
    }

    fn spawn(&self, args: &[&str]) -> Child {
        self.command(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap()
    }
}

fn wait_for(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let end = Instant::now() + timeout;
    while !f() {
        assert!(Instant::now() < end, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

fn read(p: &Path) -> String {
    fs::read_to_string(p).unwrap_or_default()
}

fn output(c: Child) -> Run {
    Run {
        out: c.wait_with_output().unwrap(),
    }
}

fn sigterm(c: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(c.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

#[test]
fn one_run_backs_up_every_source_into_one_snapshot() {
    let j = Job::new();
    let src = j.t.path("src");
    fs::create_dir_all(src.join("keep")).unwrap();
    fs::create_dir_all(src.join("cache")).unwrap();
    fs::write(src.join("keep/a.txt"), text_bytes(1, 300_000)).unwrap();
    fs::write(src.join("cache/junk"), b"left out").unwrap();
    fs::write(src.join("b.tmp"), b"left out by name").unwrap();
    let img = j.t.path("vm101.img");
    {
        let f = fs::File::create(&img).unwrap();
        f.set_len(8 << 20).unwrap();
        use std::os::unix::fs::FileExt;
        f.write_at(&random_bytes(2, 100_000), 3 << 20).unwrap();
    }
    let cfg = j.config(
        "job.toml",
        &format!(
            r#"tags = ["nightly"]
exclude = ["*.tmp"]

[[source]]
path = "{src}"
exclude = ["{src}/cache"]

[[source]]
name = "app.dump"
command = ["sh", "-c", "seq 1 100000"]

[[source]]
name = "users.sql"
command = ["sh", "-c", "printf 'CREATE TABLE users;\n'"]

[[source]]
image = "{img}"
"#,
            src = src.display(),
            img = img.display()
        ),
    );
    let r = j
        .run(&["--json", "backup", "--config", cfg.to_str().unwrap()])
        .ok();
    let summary = r.json();
    assert_eq!(summary["sources"], 4);
    let snaps = j.t.snapshots();
    assert_eq!(snaps.len(), 1, "one snapshot for all sources");
    let s = &snaps[0];
    assert_eq!(s["source"], "mixed");
    assert_eq!(s["tags"][0], "nightly");
    assert_eq!(s["paths"].as_array().unwrap().len(), 4);
    // Each dump and the image is a file at the root, byte for byte.
    let dump = j.t.run(&["dump", "latest", "app.dump"]).ok().out.stdout;
    let expect: String = (1..=100000).map(|i| format!("{i}\n")).collect();
    assert!(dump == expect.as_bytes(), "app.dump differs");
    let users = j.t.run(&["dump", "latest", "users.sql"]).ok().out.stdout;
    assert_eq!(users, b"CREATE TABLE users;\n");
    let image = j.t.run(&["dump", "latest", "vm101.img"]).ok().out.stdout;
    assert!(image == fs::read(&img).unwrap(), "image differs");
    // The tree, with both kinds of exclude applied.
    let target = j.t.path("out");
    j.t.run(&["restore", "latest", "--target", target.to_str().unwrap()])
        .ok();
    let got = restored(&target, &src);
    assert_eq!(
        fs::read(got.join("keep/a.txt")).unwrap(),
        fs::read(src.join("keep/a.txt")).unwrap()
    );
    assert!(!got.join("cache/junk").exists(), "source exclude ignored");
    assert!(!got.join("b.tmp").exists(), "global exclude ignored");
    assert!(target.join("app.dump").is_file());
}

#[test]
fn a_failing_or_killed_dump_fails_the_run_and_commits_nothing() {
    let j = Job::new();
    let src = j.t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    for (i, cmd) in ["seq 1 50000; exit 3", "seq 1 50000; kill -9 $$"]
        .iter()
        .enumerate()
    {
        let cfg = j.config(
            &format!("bad{i}.toml"),
            &format!(
                "[[source]]\npath = \"{}\"\n\n[[source]]\nname = \"good.dump\"\ncommand = [\"sh\", \"-c\", \"seq 1 10\"]\n\n[[source]]\nname = \"bad.dump\"\ncommand = [\"sh\", \"-c\", \"{cmd}\"]\n",
                src.display()
            ),
        );
        let r = j
            .run(&["backup", "--config", cfg.to_str().unwrap()])
            .fails();
        assert_eq!(r.code(), 1, "{}", r.stderr());
        assert!(r.stderr().contains("bad.dump"), "{}", r.stderr());
        assert!(
            r.stderr().contains("no snapshot committed"),
            "{}",
            r.stderr()
        );
    }
    assert!(
        j.t.snapshots().is_empty(),
        "a failed job committed a snapshot"
    );
    j.t.run(&["check"]).ok();
}

#[test]
fn bad_config_is_refused_by_name_before_anything_runs() {
    let j = Job::new();
    let marker = j.t.path("ran");
    for (body, needle) in [
        ("exclud = [\"/x\"]\n[[source]]\npath = \"/etc\"\n", "exclud"),
        (
            "[[source]]\npath = \"/etc\"\ncommand = [\"true\"]\n",
            "exactly one",
        ),
        (
            "[[source]]\ncommand = [\"sh\", \"-c\", \"true\"]\n",
            "needs a `name`",
        ),
        (
            "compression = \"fast\"\n[[source]]\npath = \"/etc\"\n",
            "compression",
        ),
    ] {
        let body = format!("pre = \"touch {}\"\n{body}", marker.display());
        let cfg = j.config("bad.toml", &body);
        let r = j
            .run(&["--json", "backup", "--config", cfg.to_str().unwrap()])
            .fails();
        assert!(r.stderr().contains(needle), "{needle}: {}", r.stderr());
        // --json: stdout still answers, with the error.
        let v = r.json();
        assert!(v["error"].as_str().unwrap().contains(needle));
        assert_eq!(v["exit_code"], 1);
    }
    assert!(!marker.exists(), "a hook ran for a refused config");
    assert!(j.t.snapshots().is_empty());
}

#[test]
fn a_second_run_of_the_same_job_is_refused_and_names_the_holder() {
    let j = Job::new();
    let started = j.t.path("started");
    let gate = j.t.path("gate");
    // The first run's dump waits for the test to open the gate.
    let cfg = j.config(
        "job.toml",
        &format!(
            "[[source]]\nname = \"slow.dump\"\ncommand = [\"sh\", \"-c\", \"touch {}; while [ ! -e {} ]; do sleep 0.05; done; echo done\"]\n",
            started.display(),
            gate.display()
        ),
    );
    let c = cfg.to_str().unwrap();
    let first = j.spawn(&["backup", "--config", c]);
    wait_for(
        "the first run to start its dump",
        Duration::from_secs(60),
        || started.exists(),
    );
    let r = j.run(&["backup", "--config", c]).fails();
    assert_eq!(r.code(), 6, "{}", r.stderr());
    assert!(
        r.stderr().contains(&format!("pid {}", first.id())),
        "holder not named: {}",
        r.stderr()
    );
    fs::write(&gate, b"").unwrap();
    output(first).ok();
    assert_eq!(j.t.snapshots().len(), 1);
    // The lock went with the first run: a third run goes ahead.
    j.run(&["backup", "--config", c]).ok();
    assert_eq!(j.t.snapshots().len(), 2);
}

#[test]
fn a_killed_run_leaves_no_stale_lock_and_the_next_completes() {
    let j = Job::new();
    let started = j.t.path("started");
    let cfg = j.config(
        "job.toml",
        &format!(
            "[[source]]\nname = \"big.dump\"\ncommand = [\"sh\", \"-c\", \"touch {}; seq 1 300000; sleep 20\"]\n",
            started.display()
        ),
    );
    let c = cfg.to_str().unwrap();
    let mut first = j.spawn(&["backup", "--config", c]);
    wait_for("the dump to start", Duration::from_secs(60), || {
        started.exists()
    });
    std::thread::sleep(Duration::from_millis(300));
    first.kill().unwrap();
    first.wait().unwrap();
    let cfg2 = j.config(
        "job.toml",
        "[[source]]\nname = \"big.dump\"\ncommand = [\"sh\", \"-c\", \"seq 1 300000\"]\n",
    );
    j.run(&["backup", "--config", cfg2.to_str().unwrap()]).ok();
    assert_eq!(j.t.snapshots().len(), 1);
    j.t.run(&["check", "--read-data"]).ok();
}

#[test]
fn post_hook_runs_on_sigterm_and_no_snapshot_is_committed() {
    let j = Job::new();
    let log = j.t.path("hooks.log");
    let cfg = j.config(
        "job.toml",
        &format!(
            r#"pre = "echo pre >> {log}"
post = "echo post $COFFER_RESULT >> {log}"

[[source]]
name = "hung.dump"
command = ["sh", "-c", "echo started >> {log}; seq 1 1000; sleep 6017 | cat"]
"#,
            log = log.display()
        ),
    );
    let child = j.spawn(&["backup", "--config", cfg.to_str().unwrap()]);
    wait_for("the dump to start", Duration::from_secs(60), || {
        read(&log).contains("started")
    });
    let t0 = Instant::now();
    sigterm(&child);
    let r = output(child);
    assert_eq!(r.code(), 143, "{}", r.stderr());
    // The hung dump was stopped, not waited for.
    assert!(t0.elapsed() < Duration::from_secs(25), "{:?}", t0.elapsed());
    assert_eq!(
        read(&log).lines().collect::<Vec<_>>(),
        ["pre", "started", "post interrupted"]
    );
    assert!(j.t.snapshots().is_empty());
    // Everything the dump started is gone too, not only its shell.
    wait_for(
        "the dump's pipeline to end",
        Duration::from_secs(10),
        || !processes().iter().any(|c| c.contains("6017")),
    );
}

/// Command lines of the processes running now.
fn processes() -> Vec<String> {
    fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| fs::read(e.path().join("cmdline")).ok())
        .map(|c| String::from_utf8_lossy(&c).replace('\0', " "))
        .collect()
}

#[test]
fn sources_that_overlap_or_share_a_root_name_are_refused_before_any_dump_runs() {
    let j = Job::new();
    let src = j.t.path("src");
    fs::create_dir_all(src.join("inner")).unwrap();
    let marker = j.t.path("dumped");
    let dump = format!(
        "[[source]]\nname = \"d.sql\"\ncommand = [\"sh\", \"-c\", \"touch {}\"]\n",
        marker.display()
    );
    let nested = j.config(
        "nested.toml",
        &format!(
            "{dump}[[source]]\npath = \"{src}\"\nexclude = [\"{src}/inner\"]\n[[source]]\npath = \"{src}/inner\"\n",
            src = src.display()
        ),
    );
    let r = j
        .run(&["backup", "--config", nested.to_str().unwrap()])
        .fails();
    assert!(r.stderr().contains("overlap"), "{}", r.stderr());
    // An image named like the first component of a path source.
    let first = src
        .components()
        .nth(1)
        .unwrap()
        .as_os_str()
        .to_str()
        .unwrap()
        .to_string();
    let img = j.t.path("disk.img");
    fs::write(&img, b"x").unwrap();
    let clash = j.config(
        "clash.toml",
        &format!(
            "{dump}[[source]]\npath = \"{}\"\n[[source]]\nimage = \"{}\"\nname = \"{first}\"\n",
            src.display(),
            img.display()
        ),
    );
    let r = j
        .run(&["backup", "--config", clash.to_str().unwrap()])
        .fails();
    assert!(
        r.stderr().contains("at the snapshot's root"),
        "{}",
        r.stderr()
    );
    assert!(!marker.exists(), "a dump ran for a job that was refused");
    assert!(j.t.snapshots().is_empty());
}

#[test]
fn the_job_file_wins_over_variables_and_options_win_over_the_file() {
    let j = Job::new();
    let src = j.t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"x").unwrap();
    let cfg = j.config(
        "job.toml",
        &format!("[[source]]\npath = \"{}\"\n", src.display()),
    );
    let c = cfg.to_str().unwrap();
    let elsewhere = j.t.path("elsewhere");
    // Variables exported for interactive use do not redirect the job.
    let r = Run {
        out: j
            .command(&["backup", "--config", c])
            .env("COFFER_REPO", &elsewhere)
            .env("COFFER_PASSWORD", "not the job's passphrase")
            .output()
            .unwrap(),
    }
    .ok();
    assert_eq!(r.stdout(), "");
    assert_eq!(j.t.snapshots().len(), 1);
    assert!(!elsewhere.exists());
    // An option on the command line does.
    j.run(&[
        "--repo",
        elsewhere.to_str().unwrap(),
        "backup",
        "--config",
        c,
    ])
    .ok();
    assert!(elsewhere.join("config").exists());
    assert_eq!(j.t.snapshots().len(), 1);
}

#[test]
fn post_hook_runs_on_failure_and_a_failed_pre_skips_the_backup() {
    let j = Job::new();
    let log = j.t.path("hooks.log");
    // The backup itself fails (a path that does not exist).
    let cfg = j.config(
        "job.toml",
        &format!(
            "pre = \"echo pre >> {log}\"\npost = [\"sh\", \"-c\", \"echo post $COFFER_RESULT >> {log}\"]\n[[source]]\npath = \"/nonexistent/coffer-test\"\n",
            log = log.display()
        ),
    );
    j.run(&["backup", "--config", cfg.to_str().unwrap()])
        .fails();
    assert_eq!(read(&log), "pre\npost failed\n");
    // The pre hook fails: no backup, post still runs (it cleans up after pre).
    fs::remove_file(&log).unwrap();
    let src = j.t.path("src");
    fs::create_dir_all(&src).unwrap();
    let cfg = j.config(
        "job.toml",
        &format!(
            "pre = \"echo pre >> {log}; exit 7\"\npost = \"echo post $COFFER_RESULT >> {log}\"\n[[source]]\npath = \"{}\"\n",
            src.display(),
            log = log.display()
        ),
    );
    let r = j
        .run(&["backup", "--config", cfg.to_str().unwrap()])
        .fails();
    assert!(r.stderr().contains("pre hook"), "{}", r.stderr());
    assert_eq!(read(&log), "pre\npost failed\n");
    assert!(j.t.snapshots().is_empty());
}

#[test]
fn a_post_hook_that_fails_after_a_saved_snapshot_exits_3_and_keeps_the_summary() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let r = t
        .run(&[
            "--json",
            "backup",
            src.to_str().unwrap(),
            "--post",
            "exit 9",
        ])
        .fails();
    // 3: saved, with a warning; 1 would tell a monitor nothing was saved.
    assert_eq!(r.code(), 3);
    assert!(
        r.stderr().contains("saved, but the post hook failed"),
        "{}",
        r.stderr()
    );
    // The summary names the snapshot that exists.
    let id = r.json()["id"].as_str().unwrap().to_string();
    assert_eq!(t.snapshots()[0]["id"], id.as_str());
}

#[test]
fn image_hooks_from_the_command_line_bracket_the_backup() {
    let t = TestRepo::new();
    let log = t.path("hooks.log");
    let dev = t.path("snap.img");
    // The pre hook makes the "snapshot" the backup reads; post removes it.
    let pre = format!(
        "echo pre >> {log}; head -c 3000000 /dev/urandom > {dev}",
        log = log.display(),
        dev = dev.display()
    );
    let post = format!(
        "echo post $COFFER_RESULT $COFFER_SNAPSHOT >> {log}; rm -f {dev}",
        log = log.display(),
        dev = dev.display()
    );
    let out = t.backup(&[
        "--image",
        dev.to_str().unwrap(),
        "--pre",
        &pre,
        "--post",
        &post,
    ]);
    let id = out["id"].as_str().unwrap();
    assert_eq!(read(&log), format!("pre\npost ok {id}\n"));
    assert!(!dev.exists(), "post did not run after the backup");
    let restored = t.run(&["dump", "latest", "snap.img"]).ok().out.stdout;
    assert_eq!(restored.len(), 3_000_000);
}

#[test]
fn cron_runs_are_quiet_on_success_and_say_one_line_when_asked() {
    let j = Job::new();
    let src = j.t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), text_bytes(3, 50_000)).unwrap();
    age(&src.join("f"));
    let cfg = j.config(
        "job.toml",
        &format!("[[source]]\npath = \"{}\"\n", src.display()),
    );
    let c = cfg.to_str().unwrap();
    // stdout and stderr are pipes here, as under cron.
    let r = j.run(&["backup", "--config", c]).ok();
    assert_eq!(r.stdout(), "");
    assert_eq!(r.stderr(), "");
    let r = j.run(&["backup", "--config", c, "--verbose"]).ok();
    assert_eq!(r.stdout().lines().count(), 1, "{}", r.stdout());
    assert!(r.stdout().starts_with("snapshot "), "{}", r.stdout());
    assert_eq!(r.stderr(), "");
    let v = j.run(&["--json", "backup", "--config", c]).ok().json();
    assert_eq!(v["files"], 1);
    assert_eq!(v["files_unchanged"], 1);
    assert_eq!(j.t.snapshots().len(), 3);
}

#[test]
fn the_upload_limit_holds_the_rate() {
    // 1 MiB packs (the test repository's size), 2 MiB of random data.
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("r"), random_bytes(4, 2 << 20)).unwrap();
    let t0 = Instant::now();
    let out = t.backup(&[src.to_str().unwrap(), "--limit-upload", "512"]);
    let took = t0.elapsed();
    let stored = out["new_pack_bytes"].as_u64().unwrap();
    assert!(stored >= 2 << 20);
    // At 512 KiB/s every pack waits for its share: about 4 s in all.
    let floor = Duration::from_secs_f64(stored as f64 / (512 << 10) as f64 - 1.0);
    assert!(took >= floor, "{took:?} < {floor:?} for {stored} bytes");
    t.run(&["backup", src.to_str().unwrap(), "--limit-upload", "0"])
        .fails();
}

#[test]
fn a_job_file_reaches_a_server() {
    let s = TestServer::start(1);
    let dir = tempfile::tempdir().unwrap();
    let pw = dir.path().join("pw");
    fs::write(&pw, PASSWORD).unwrap();
    let (id, _, ns) = &s.clients[0];
    let cfg = dir.path().join("job.toml");
    fs::write(
        &cfg,
        format!(
            "repo = \"{}\"\npassword_file = \"{}\"\nidentity = \"{}\"\nserver_fingerprint = \"{}\"\ncache_dir = \"{}\"\n[[source]]\nname = \"db.dump\"\ncommand = [\"sh\", \"-c\", \"seq 1 20000\"]\n",
            s.url(ns),
            pw.display(),
            id.display(),
            s.fingerprint,
            dir.path().join("cache").display()
        ),
    )
    .unwrap();
    let r = Run {
        out: clean_command()
            .args(["--json", "backup", "--config", cfg.to_str().unwrap()])
            .stdin(Stdio::null())
            .output()
            .unwrap(),
    }
    .ok();
    assert_eq!(r.json()["files"], 1);
    let dumped = s
        .client(0, &dir.path().join("cache"))
        .args(["dump", "latest", "db.dump"])
        .output()
        .unwrap();
    let expect: String = (1..=20000).map(|i| format!("{i}\n")).collect();
    assert!(dumped.stdout == expect.as_bytes());
}
