//! `coffer completions SHELL` and `coffer man DIR`: generated from the
//! clap definitions, the completions load in bash and every page renders.

use std::process::Command;

use crate::util::*;

#[test]
fn bash_loads_the_completions() {
    let script = format!(
        "source <('{}' completions bash) && complete -p coffer",
        bin()
    );
    let out = Command::new("bash").args(["-c", &script]).output().unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stderr.is_empty(), "{stderr}");
    assert!(
        stdout.starts_with("complete ") && stdout.trim_end().ends_with(" coffer"),
        "{stdout}"
    );
    let bash = clean_command()
        .args(["completions", "bash"])
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&bash.stdout);
    for word in ["find", "restore", "--password-command", "--ignore-case"] {
        assert!(text.contains(word), "{word} not completed");
    }
    for shell in ["zsh", "fish", "elvish", "powershell"] {
        let out = clean_command()
            .args(["completions", shell])
            .output()
            .unwrap();
        assert!(out.status.success(), "{shell}");
        assert!(
            String::from_utf8_lossy(&out.stdout).contains("password-command"),
            "{shell}"
        );
    }
    let bad = clean_command()
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(bad.status.code(), Some(2));
}

/// The commands `--help` lists (`help` aside), by name.
fn commands_in_help(args: &[&str]) -> Vec<String> {
    let out = clean_command().args(args).arg("--help").output().unwrap();
    let help = String::from_utf8_lossy(&out.stdout).into_owned();
    help.split("Commands:\n")
        .nth(1)
        .unwrap_or("")
        .lines()
        .take_while(|l| l.starts_with("  "))
        .filter(|l| l.starts_with("  ") && !l.starts_with("   "))
        .map(|l| l.split_whitespace().next().unwrap().to_string())
        .filter(|c| c != "help")
        .collect()
}

#[test]
fn every_command_has_a_manual_page_that_renders() {
    let dir = tempfile::tempdir().unwrap();
    let out = dir.path().join("man1");
    let run = Run {
        out: clean_command()
            .args(["--json", "man"])
            .arg(&out)
            .output()
            .unwrap(),
    }
    .ok();
    let pages: Vec<String> = run
        .json()
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p.as_str().unwrap().to_string())
        .collect();
    // Every command and subcommand that --help lists has its page.
    let mut want = vec!["coffer.1".to_string()];
    for c in commands_in_help(&[]) {
        want.push(format!("coffer-{c}.1"));
        for s in commands_in_help(&[&c]) {
            want.push(format!("coffer-{c}-{s}.1"));
        }
    }
    assert!(want.len() > 20, "{want:?}");
    assert!(want.contains(&"coffer-key-add.1".to_string()), "{want:?}");
    let mut names: Vec<String> = pages
        .iter()
        .map(|p| p.rsplit('/').next().unwrap().to_string())
        .collect();
    names.sort();
    want.sort();
    assert_eq!(names, want);
    for p in &pages {
        let r = Command::new("man")
            .args(["-l", p])
            .env("MANPAGER", "cat")
            .env("PAGER", "cat")
            .env("MANWIDTH", "80")
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&r.stdout);
        assert!(
            r.status.success(),
            "{p}: {}",
            String::from_utf8_lossy(&r.stderr)
        );
        assert!(text.trim().len() > 100, "{p} renders nearly empty: {text}");
    }
    // The find page carries its options, from the same definitions.
    let find = std::fs::read_to_string(out.join("coffer-find.1")).unwrap();
    assert!(find.contains("ignore\\-case"), "{find}");
}
