//! Passphrases and key files.

use std::fs;

use crate::util::*;

#[test]
fn wrong_passphrase_is_refused_without_output() {
    let t = TestRepo::new();
    let src = t.path("src");
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("secret"), b"SECRET-PLAINTEXT").unwrap();
    t.backup(&[src.to_str().unwrap()]);
    for args in [
        vec!["snapshots"],
        vec!["dump", "latest", &format!("{}/secret", src.display())],
    ] {
        let r = t.run_env(&args, &[("COFFER_PASSWORD", "wrong")]).fails();
        assert_eq!(r.code(), 4, "{}", r.stderr());
        assert!(r.stderr().contains("wrong passphrase"), "{}", r.stderr());
        assert!(r.out.stdout.is_empty());
    }
    // no passphrase at all, no terminal: a clear error
    let r = t.run_env(&["snapshots"], &[("COFFER_PASSWORD", "")]);
    assert!(!r.out.status.success());
}

#[test]
fn weakened_key_file_is_refused() {
    let t = TestRepo::new();
    let key = walk(&t.repo.join("keys")).pop().unwrap();
    let mut kf: serde_json::Value = serde_json::from_slice(&fs::read(&key).unwrap()).unwrap();
    kf["params"]["memory_kib"] = 1024.into();
    fs::write(&key, serde_json::to_vec(&kf).unwrap()).unwrap();
    let r = t.run(&["snapshots"]).fails();
    assert!(r.stderr().contains("below the floor"), "{}", r.stderr());
    assert_eq!(r.code(), 4);
    // raised but edited: the binding no longer holds
    kf["params"]["memory_kib"] = 40000.into();
    fs::write(&key, serde_json::to_vec(&kf).unwrap()).unwrap();
    assert_eq!(t.run(&["snapshots"]).fails().code(), 4);
}

#[test]
fn key_add_list_remove_passwd() {
    let t = TestRepo::new();
    let floor = ["--kdf-memory-kib", "19456", "--kdf-iterations", "2"];
    let mut args = vec!["--json", "key", "add"];
    args.extend_from_slice(&floor);
    let added = t
        .run_env(&args, &[("COFFER_NEW_PASSWORD", "second")])
        .ok()
        .json();
    let id = added["id"].as_str().unwrap().to_string();
    let list = t.run(&["--json", "key", "list"]).ok().json();
    assert_eq!(list.as_array().unwrap().len(), 2);
    // both passphrases open the repository
    t.run_env(&["snapshots"], &[("COFFER_PASSWORD", "second")])
        .ok();
    // the key in use cannot be removed; another one can
    let r = t
        .run_env(&["key", "remove", &id], &[("COFFER_PASSWORD", "second")])
        .fails();
    assert!(r.stderr().contains("in use"), "{}", r.stderr());
    t.run(&["key", "remove", &id[..8]]).ok();
    assert_eq!(
        t.run_env(&["snapshots"], &[("COFFER_PASSWORD", "second")])
            .fails()
            .code(),
        4
    );
    // passwd: the old passphrase stops working, the new one works
    let mut args = vec!["key", "passwd"];
    args.extend_from_slice(&floor);
    t.run_env(&args, &[("COFFER_NEW_PASSWORD", "third")]).ok();
    assert_eq!(t.run(&["snapshots"]).fails().code(), 4);
    t.run_env(&["snapshots"], &[("COFFER_PASSWORD", "third")])
        .ok();
    // the last key cannot be removed
    let only = t
        .run_env(&["--json", "key", "list"], &[("COFFER_PASSWORD", "third")])
        .ok()
        .json();
    let only = only[0]["id"].as_str().unwrap().to_string();
    t.run_env(&["key", "remove", &only], &[("COFFER_PASSWORD", "third")])
        .fails();
}

#[test]
fn passphrase_from_file() {
    let t = TestRepo::new();
    let pf = t.path("pass");
    fs::write(&pf, format!("{PASSWORD}\n")).unwrap();
    let mut c = clean_command();
    let out = c
        .env("COFFER_PASSWORD_FILE", &pf)
        .env("COFFER_CACHE_DIR", &t.cache)
        .args(["--repo", t.repo.to_str().unwrap(), "snapshots"])
        .output()
        .unwrap();
    Run { out }.ok();
}
