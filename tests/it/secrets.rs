//! Where the passphrase comes from: `--password-command` /
//! `COFFER_PASSWORD_COMMAND`, `--password-file` / `COFFER_PASSWORD_FILE`,
//! `COFFER_PASSWORD`, the command line over the environment, and an empty
//! passphrase refused by every command that creates or opens a repository.

use std::fs;
use std::path::Path;
use std::process::Stdio;

use crate::util::*;

/// Runs `args` on `t`'s repository with only the given variables (no
/// `COFFER_PASSWORD` unless given).
fn run_with(t: &TestRepo, repo: &Path, args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut c = clean_command();
    c.env("COFFER_CACHE_DIR", &t.cache)
        .arg("--repo")
        .arg(repo)
        .args(args)
        .stdin(Stdio::null());
    for (k, v) in env {
        c.env(k, v);
    }
    Run {
        out: c.output().unwrap(),
    }
}

fn printing(pw: &str) -> String {
    format!("printf '%s\\n' '{pw}'")
}

#[test]
fn a_password_command_gives_the_passphrase() {
    let t = TestRepo::new();
    let r = &t.repo;
    let n = |run: Run| run.ok().json().as_array().unwrap().len();
    // The flag; split into argv without a shell.
    assert_eq!(
        n(run_with(
            &t,
            r,
            &[
                "--json",
                "snapshots",
                "--password-command",
                &printing(PASSWORD)
            ],
            &[]
        )),
        0
    );
    // The variable, as `sh -c '…'`: its first line only.
    let two_lines = format!("sh -c \"echo '{PASSWORD}'; echo second line\"");
    assert_eq!(
        n(run_with(
            &t,
            r,
            &["--json", "snapshots"],
            &[("COFFER_PASSWORD_COMMAND", &two_lines)]
        )),
        0
    );
    // The command line over the environment.
    let pf = t.path("pass");
    fs::write(&pf, format!("{PASSWORD}\n")).unwrap();
    let pf = pf.to_str().unwrap();
    for (args, env) in [
        (
            vec!["--password-file", pf],
            vec![("COFFER_PASSWORD_COMMAND", "false")],
        ),
        (
            vec!["--password-command", "cat nowhere"],
            vec![("COFFER_PASSWORD_FILE", pf)],
        ),
    ] {
        let mut a = vec!["--json", "snapshots"];
        a.extend_from_slice(&args);
        let run = run_with(&t, r, &a, &env);
        if args[0] == "--password-file" {
            assert_eq!(n(run), 0);
        } else {
            // The flag's command runs (and fails), not the variable's file.
            let run = run.fails();
            assert!(run.stderr().contains("cat nowhere"), "{}", run.stderr());
        }
    }
    // Two sources in the environment are ambiguous.
    let run = run_with(
        &t,
        r,
        &["snapshots"],
        &[("COFFER_PASSWORD", PASSWORD), ("COFFER_PASSWORD_FILE", pf)],
    )
    .fails();
    assert!(
        run.stderr().contains("COFFER_PASSWORD_FILE"),
        "{}",
        run.stderr()
    );
    // Both on the command line: refused by the parser.
    let run = run_with(
        &t,
        r,
        &[
            "snapshots",
            "--password-file",
            pf,
            "--password-command",
            "x",
        ],
        &[],
    );
    assert_eq!(run.code(), 2, "{}", run.stderr());
}

#[test]
fn a_failing_password_command_is_an_error_naming_it() {
    let t = TestRepo::new();
    for (cmd, why) in [
        ("sh -c 'exit 3'", "exit status: 3"),
        ("sh -c 'kill -9 $$'", "signal 9"),
        ("no-such-program-here --x", "No such file"),
    ] {
        let run = run_with(&t, &t.repo, &["snapshots", "--password-command", cmd], &[]).fails();
        let err = run.stderr();
        assert_eq!(run.code(), 1, "{err}");
        assert!(err.contains(cmd), "{cmd}: {err}");
        assert!(err.contains(why), "{cmd}: {err}");
        assert!(!err.contains("wrong passphrase"), "{err}");
    }
}

#[test]
fn a_password_command_that_prints_nothing_is_an_error() {
    let t = TestRepo::new();
    for cmd in ["true", "printf '\\n'"] {
        let run = run_with(&t, &t.repo, &["snapshots", "--password-command", cmd], &[]).fails();
        let err = run.stderr();
        assert!(err.contains(cmd) && err.contains("empty"), "{cmd}: {err}");
    }
}

#[test]
fn an_empty_passphrase_is_refused_by_init_backup_and_snapshots() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), b"data").unwrap();
    let empty = t.path("empty");
    fs::write(&empty, "\n").unwrap();
    let empty = empty.to_str().unwrap();
    let sources: [&[(&str, &str)]; 2] = [
        &[("COFFER_PASSWORD", "")],
        &[("COFFER_PASSWORD_FILE", empty)],
    ];
    for (i, env) in sources.iter().enumerate() {
        for cmd in ["init", "backup"] {
            let new = t.path(&format!("new-{cmd}-{i}"));
            let mut args = vec![cmd];
            if cmd == "backup" {
                args.push(src.to_str().unwrap());
            }
            let run = run_with(&t, &new, &args, env).fails();
            assert!(
                run.stderr().contains("empty passphrase"),
                "{cmd}: {}",
                run.stderr()
            );
            assert!(
                !new.join("config").exists(),
                "{cmd} created a repository with an empty passphrase"
            );
        }
        let run = run_with(&t, &t.repo, &["snapshots"], env).fails();
        assert!(
            run.stderr().contains("empty passphrase"),
            "{}",
            run.stderr()
        );
    }
}

#[test]
fn help_lists_every_source_of_the_passphrase() {
    let out = clean_command().arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout);
    for s in [
        "--password-command",
        "--password-file",
        "COFFER_PASSWORD_COMMAND",
        "COFFER_PASSWORD_FILE",
        "COFFER_PASSWORD ",
    ] {
        assert!(help.contains(s), "{s} not in --help:\n{help}");
    }
}
