//! One profile for every command: the job file of `backup --config` names
//! the repository, passphrase file and cache for `snapshots`, `ls`,
//! `restore`, `dump`, `diff`, `check`, `stats` and `forget` too, with the
//! rules of the job: the command line over the file, the file over
//! `COFFER_*` variables.

use std::fs;

use crate::util::*;

#[test]
fn a_job_file_serves_every_command_as_a_profile() {
    let t = TestRepo::with_init(&["--lock-days", "0"]);
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("a"), random_bytes(1, 70_000)).unwrap();
    let pw = t.path("pw");
    fs::write(&pw, format!("{PASSWORD}\n")).unwrap();
    let job = t.path("job.toml");
    fs::write(
        &job,
        format!(
            "repo = \"{}\"\npassword_file = \"{}\"\ncache_dir = \"{}\"\n\n[[source]]\npath = \"{}\"\n",
            t.repo.display(),
            pw.display(),
            t.cache.display(),
            src.display()
        ),
    )
    .unwrap();
    // Nothing but the profile: no --repo, no passphrase in the environment.
    let run = |args: &[&str]| Run {
        out: clean_command()
            .arg("--profile")
            .arg(&job)
            .args(args)
            .output()
            .unwrap(),
    };
    let first = run(&["--json", "backup", "--config", job.to_str().unwrap()])
        .ok()
        .json();
    fs::write(src.join("b"), b"second").unwrap();
    let second = run(&["--json", "backup", src.to_str().unwrap()])
        .ok()
        .json();
    let (a, b) = (
        first["id"].as_str().unwrap(),
        second["id"].as_str().unwrap(),
    );
    let snaps = run(&["--json", "snapshots"]).ok().json();
    assert_eq!(snaps.as_array().unwrap().len(), 2, "{snaps}");
    let ls = run(&["ls", "latest"]).ok().stdout();
    assert!(ls.contains("/b"), "{ls}");
    let target = t.path("restored");
    run(&["restore", a, "--target", target.to_str().unwrap()]).ok();
    assert_eq!(
        fs::read(restored(&target, &src).join("a")).unwrap(),
        fs::read(src.join("a")).unwrap()
    );
    let dumped = run(&["dump", "latest", src.join("b").to_str().unwrap()]).ok();
    assert_eq!(dumped.out.stdout, b"second");
    let diff = run(&["diff", a, b]).ok().stdout();
    assert!(diff.contains("b"), "{diff}");
    run(&["check"]).ok();
    run(&["stats"]).ok();
    run(&["forget", a]).ok();
    assert_eq!(
        run(&["--json", "snapshots"])
            .ok()
            .json()
            .as_array()
            .unwrap()
            .len(),
        1
    );

    // The file wins over a variable, the command line over the file.
    let elsewhere = t.path("elsewhere");
    let out = clean_command()
        .env("COFFER_REPO", &elsewhere)
        .env("COFFER_PASSWORD", "wrong passphrase")
        .arg("--profile")
        .arg(&job)
        .args(["snapshots"])
        .output()
        .unwrap();
    let out = Run { out };
    assert!(
        out.out.status.success(),
        "env won over the profile: {}",
        out.stderr()
    );
    let out = Run {
        out: clean_command()
            .arg("--profile")
            .arg(&job)
            .arg("--repo")
            .arg(&elsewhere)
            .args(["snapshots"])
            .output()
            .unwrap(),
    };
    assert!(
        !out.out.status.success() && out.stderr().contains("elsewhere"),
        "--repo on the command line did not win over the profile: {}",
        out.stderr()
    );
    // COFFER_PROFILE names it too; a profile that does not load is an error naming it.
    let out = clean_command()
        .env("COFFER_PROFILE", &job)
        .args(["snapshots"])
        .output()
        .unwrap();
    assert!(out.status.success(), "{out:?}");
    fs::write(t.path("bad.toml"), "repo = \n").unwrap();
    let out = Run {
        out: clean_command()
            .arg("--profile")
            .arg(t.path("bad.toml"))
            .args(["snapshots"])
            .output()
            .unwrap(),
    };
    assert!(!out.out.status.success());
    assert!(out.stderr().contains("bad.toml"), "{}", out.stderr());
}
