//! The object backend on a real S3 store (SeaweedFS, see `weed.rs`),
//! through the `ObjectBackend` trait, and the store's own Object Lock
//! checked with the server's credentials used directly, as an attacker
//! holding them would. Retentions of a few seconds make expiry testable.

use std::ops::ControlFlow;
use std::time::{Duration, Instant, SystemTime};

use std::os::unix::fs::PermissionsExt;

use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{
    BucketVersioningStatus, ChecksumMode, ObjectLockRetention, ObjectLockRetentionMode,
    VersioningConfiguration,
};
use coffer::object::s3::S3Backend;
use coffer::object::{LockMode, ObjectBackend, ObjectKey, PutOutcome, Retention, VersionId};
use coffer::ErrorKind;

use crate::weed::Weed;

fn key(s: &str) -> ObjectKey {
    ObjectKey::new(s).unwrap()
}

fn created(o: PutOutcome) -> VersionId {
    match o {
        PutOutcome::Created(v) => v,
        PutOutcome::Exists => panic!("expected a new object"),
    }
}

/// Puts `bytes` once under `k`, locked in `mode` until `until`.
fn put_locked(
    b: &S3Backend,
    k: &ObjectKey,
    bytes: &[u8],
    mode: LockMode,
    until: SystemTime,
) -> VersionId {
    created(
        b.put_once(k, bytes, Some(Retention::new(mode, until)))
            .unwrap(),
    )
}

fn in_secs(s: u64) -> SystemTime {
    SystemTime::now() + Duration::from_secs(s)
}

/// Waits (bounded) until `t` has passed on the store's clock too.
pub(crate) fn wait_past(b: &S3Backend, t: SystemTime) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while b.clock().unwrap() <= t + Duration::from_secs(1) {
        assert!(Instant::now() < deadline, "store clock never passed {t:?}");
        std::thread::sleep(Duration::from_millis(250));
    }
}

/// Keys under `prefix` (after the config's prefix), sorted.
pub(crate) fn keys(b: &dyn ObjectBackend, prefix: &str) -> Vec<String> {
    let mut v = Vec::new();
    b.list(prefix, &mut |e| {
        v.push(e.key.to_string());
        Ok(ControlFlow::Continue(()))
    })
    .unwrap();
    v.sort();
    v
}

/// The full S3 key of `k` under the test config's prefix.
fn full(k: &str) -> String {
    format!("site-a/{k}")
}

#[test]
fn put_once_twice_keeps_the_first_bytes_and_reads_ranges() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("once", true);
    b.check().unwrap();
    let k = key("packs/ab/abcdef");
    let first: Vec<u8> = (0..100_000u32).map(|i| (i * 7 % 251) as u8).collect();
    let v = created(b.put_once(&k, &first, None).unwrap());
    assert_eq!(
        b.put_once(&k, b"other bytes", None).unwrap(),
        PutOutcome::Exists
    );
    let head = b.head(&k, None).unwrap().unwrap();
    assert_eq!((head.size, &head.version), (first.len() as u64, &v));
    assert_eq!(b.get_range(&k, None, 0..first.len() as u64).unwrap(), first);
    assert_eq!(
        b.get_range(&k, None, 1000..1010).unwrap(),
        &first[1000..1010]
    );
    assert_eq!(
        b.list_versions(&k).unwrap().len(),
        1,
        "the loser wrote no version"
    );
    let e = b.get_range(&k, None, 99_990..100_010).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Corrupt, "{e}");
    let e = b.get_range(&key("packs/none"), None, 0..1).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::NotFound, "{e}");
    assert_eq!(b.head(&key("packs/none"), None).unwrap(), None);

    // the Ceph RGW setting: a HEAD first answers for an existing key
    let mut cfg = weed.config("once", LockMode::Compliance);
    cfg.head_before_put = true;
    let ceph = S3Backend::connect(cfg).unwrap();
    assert_eq!(
        ceph.put_once(&k, b"third", None).unwrap(),
        PutOutcome::Exists
    );
    created(ceph.put_once(&key("packs/new"), b"n", None).unwrap());
    assert_eq!(b.get_range(&k, None, 0..3).unwrap(), &first[..3]);

    // the put carried a SHA-256 the store kept, and the store checks one:
    // bytes that do not match their checksum are refused
    let sum = b.raw(|c| async move {
        c.head_object()
            .bucket("once")
            .key(full("packs/ab/abcdef"))
            .checksum_mode(ChecksumMode::Enabled)
            .send()
            .await
            .unwrap()
            .checksum_sha256()
            .map(str::to_string)
    });
    assert_eq!(sum.map(|s| s.len()), Some(44), "base64 of 32 bytes");
    let forged = b.raw(|c| async move {
        c.put_object()
            .bucket("once")
            .key(full("packs/forged"))
            .checksum_sha256("47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=")
            .body(ByteStream::from_static(b"not the empty string"))
            .send()
            .await
    });
    let e = format!(
        "{:?}",
        forged.expect_err("a body that fails its checksum was stored")
    );
    assert!(e.contains("BadDigest"), "{e}");
}

#[test]
fn list_crosses_pages_and_keeps_to_its_prefix() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("pages", true).with_page_size(7);
    for i in 0..25 {
        b.put_once(&key(&format!("packs/{i:02}")), b"p", None)
            .unwrap();
    }
    b.put_once(&key("packsx"), b"x", None).unwrap();
    b.put_once(&key("snapshots/s1"), b"s", None).unwrap();
    let packs = keys(&b, "packs/");
    assert_eq!(packs.len(), 25, "{packs:?}");
    assert_eq!(packs[0], "packs/00");
    assert_eq!(packs[24], "packs/24");
    assert_eq!(keys(&b, "packs").len(), 26);
    // the write probe of the startup check is not a coffer key
    b.check().unwrap();
    assert_eq!(keys(&b, "").len(), 27);
    let mut seen = 0;
    b.list("packs/", &mut |_| {
        seen += 1;
        Ok(if seen == 9 {
            ControlFlow::Break(())
        } else {
            ControlFlow::Continue(())
        })
    })
    .unwrap();
    assert_eq!(seen, 9, "a break stops the listing across pages");
}

#[test]
fn compliance_refuses_purge_and_shortening_even_with_raw_credentials() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("comply", true);
    let k = key("packs/locked");
    let until = in_secs(3600);
    let v = put_locked(&b, &k, b"locked bytes", LockMode::Compliance, until);
    let head = b.head(&k, None).unwrap().unwrap();
    assert_eq!(
        head.retention,
        Some(Retention::new(LockMode::Compliance, until))
    );

    // through the trait
    let e = b.delete_version(&k, &v).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    let kept = b
        .extend_retention(&k, None, Retention::new(LockMode::Compliance, in_secs(60)))
        .unwrap();
    assert_eq!(kept.until, head.retention.unwrap().until, "never shortened");

    // as an attacker with the server's credentials: delete the version,
    // with and without a governance bypass, and shorten the retention
    let (vid, fk) = (v.0.clone(), full("packs/locked"));
    let deleted = b.raw(|c| {
        let (vid, fk) = (vid.clone(), fk.clone());
        async move {
            c.delete_object()
                .bucket("comply")
                .key(fk)
                .version_id(vid)
                .bypass_governance_retention(true)
                .send()
                .await
        }
    });
    assert!(
        deleted.is_err(),
        "a COMPLIANCE version was purged: {deleted:?}"
    );
    let shortened = b.raw(|c| {
        let (vid, fk) = (vid.clone(), fk.clone());
        async move {
            c.put_object_retention()
                .bucket("comply")
                .key(fk)
                .version_id(vid)
                .bypass_governance_retention(true)
                .retention(
                    ObjectLockRetention::builder()
                        .mode(ObjectLockRetentionMode::Compliance)
                        .retain_until_date(aws_sdk_s3::primitives::DateTime::from(in_secs(5)))
                        .build(),
                )
                .send()
                .await
        }
    });
    assert!(
        shortened.is_err(),
        "a COMPLIANCE retention was shortened: {shortened:?}"
    );
    assert_eq!(b.get_range(&k, Some(&v), 0..12).unwrap(), b"locked bytes");
    assert_eq!(b.head(&k, None).unwrap().unwrap().retention, head.retention);

    // extending works, and is what the head reports afterwards
    let later = in_secs(7200);
    let r = b
        .extend_retention(&k, None, Retention::new(LockMode::Compliance, later))
        .unwrap();
    assert_eq!(r, Retention::new(LockMode::Compliance, later));
    assert_eq!(b.head(&k, None).unwrap().unwrap().retention, Some(r));
}

#[test]
fn governance_version_delete_works_only_with_the_bypass_coffer_never_sends() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("govern", true);
    let k = key("packs/gov");
    let v = put_locked(&b, &k, b"g", LockMode::Governance, in_secs(3600));
    let e = b.delete_version(&k, &v).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    let raw_delete = |bypass: bool| {
        let vid = v.0.clone();
        b.raw(|c| async move {
            c.delete_object()
                .bucket("govern")
                .key(full("packs/gov"))
                .version_id(vid)
                .bypass_governance_retention(bypass)
                .send()
                .await
                .map(|_| ())
                .map_err(|e| format!("{e:?}"))
        })
    };
    assert!(raw_delete(false).is_err(), "purged without the bypass");
    assert!(b.get_range(&k, Some(&v), 0..1).is_ok());
    raw_delete(true).expect("the bypass purges a GOVERNANCE version");
    assert!(b.list_versions(&k).unwrap().is_empty());
}

#[test]
fn legal_hold_refuses_a_purge_until_cleared() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("hold", true);
    let k = key("snapshots/held");
    let v = created(b.put_once(&k, b"h", None).unwrap());
    b.set_legal_hold(&k, None, true).unwrap();
    assert!(b.head(&k, None).unwrap().unwrap().legal_hold);
    let e = b.delete_version(&k, &v).unwrap_err();
    assert_eq!(e.kind(), ErrorKind::Denied, "{e}");
    assert!(b.get_range(&k, Some(&v), 0..1).is_ok());
    b.set_legal_hold(&k, Some(&v), false).unwrap();
    assert!(!b.head(&k, None).unwrap().unwrap().legal_hold);
    b.delete_version(&k, &v).unwrap();
    assert_eq!(b.head(&k, None).unwrap(), None);
    assert!(b.list_versions(&k).unwrap().is_empty());
}

#[test]
fn delete_leaves_a_marker_and_the_version_is_purged_after_its_retention() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("marker", true);
    let k = key("packs/gone");
    let until = in_secs(4);
    let v = put_locked(&b, &k, b"still here", LockMode::Compliance, until);
    b.put_once(&key("packs/kept"), b"k", None).unwrap();
    let marker = b.delete(&k).unwrap().expect("a delete marker's version");
    assert_ne!(marker, v);
    assert_eq!(
        keys(&b, "packs/"),
        ["packs/kept"],
        "the key leaves the listing"
    );
    assert_eq!(b.head(&k, None).unwrap(), None);
    assert_eq!(
        b.get_range(&k, None, 0..1).unwrap_err().kind(),
        ErrorKind::NotFound
    );
    assert_eq!(b.get_range(&k, Some(&v), 0..10).unwrap(), b"still here");
    let versions = b.list_versions(&k).unwrap();
    assert_eq!(versions.len(), 2, "{versions:?}");
    assert!(versions[0].is_latest && versions[0].is_delete_marker);
    assert_eq!(versions[1].version, v);
    assert_eq!(versions[1].size, 10);

    let e = b.delete_version(&k, &v).unwrap_err();
    assert_eq!(
        e.kind(),
        ErrorKind::Denied,
        "purged before its retention lapsed: {e}"
    );
    wait_past(&b, until);
    b.delete_version(&k, &v).unwrap();
    b.delete_version(&k, &marker).unwrap();
    assert!(b.list_versions(&k).unwrap().is_empty());
    b.delete_version(&k, &v)
        .expect("purging a version that is gone is not an error");
    assert_eq!(keys(&b, "packs/"), ["packs/kept"]);
}

#[test]
fn a_put_after_a_delete_marker_makes_a_new_version() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("again", true);
    let k = key("packs/again");
    let v1 = created(b.put_once(&k, b"one", None).unwrap());
    b.delete(&k).unwrap();
    let v2 = created(b.put_once(&k, b"two", None).unwrap());
    assert_ne!(v1, v2);
    assert_eq!(b.get_range(&k, None, 0..3).unwrap(), b"two");
    assert_eq!(b.get_range(&k, Some(&v1), 0..3).unwrap(), b"one");
    assert_eq!(b.head(&k, None).unwrap().unwrap().version, v2);
    assert_eq!(keys(&b, "packs/"), ["packs/again"]);
    let versions = b.list_versions(&k).unwrap();
    assert_eq!(versions.len(), 3, "{versions:?}");
    assert_eq!(versions[0].version, v2);
}

#[test]
fn the_store_clock_is_within_seconds_of_ours() {
    let Some(weed) = Weed::start() else { return };
    let b = weed.bucket("clock", true);
    let theirs = b.clock().unwrap();
    let ours = SystemTime::now();
    let skew = match ours.duration_since(theirs) {
        Ok(d) => d,
        Err(e) => e.duration(),
    };
    assert!(skew < Duration::from_secs(5), "skew {skew:?}");
}

#[test]
fn startup_checks_name_the_problem() {
    let Some(weed) = Weed::start() else { return };
    let check = |b: S3Backend| b.check().unwrap_err().to_string();
    let with = |bucket: &str, identity: &str| {
        let mut cfg = weed.config(bucket, LockMode::Compliance);
        cfg.credentials_file = weed.credentials_of(identity);
        S3Backend::connect(cfg).unwrap()
    };
    let versioning = |b: &S3Backend, status: BucketVersioningStatus| {
        let bucket = b.config().bucket.clone();
        b.raw(|c| async move {
            c.put_bucket_versioning()
                .bucket(bucket)
                .versioning_configuration(VersioningConfiguration::builder().status(status).build())
                .send()
                .await
        })
        .unwrap();
    };

    let e = check(weed.backend("missing", LockMode::Compliance));
    assert!(
        e.contains("\"missing\"") && e.contains("the bucket does not exist"),
        "{e}"
    );

    let plain = weed.bucket("plain", false);
    let e = check(weed.backend("plain", LockMode::Compliance));
    assert!(e.contains("versioning is not enabled"), "{e}");
    versioning(&plain, BucketVersioningStatus::Enabled);
    let e = check(weed.backend("plain", LockMode::Compliance));
    assert!(e.contains("Object Lock is not enabled"), "{e}");
    versioning(&plain, BucketVersioningStatus::Suspended);
    let e = check(weed.backend("plain", LockMode::Compliance));
    assert!(e.contains("versioning is suspended"), "{e}");

    weed.bucket("locked", true);
    let e = check(with("locked", "reader"));
    assert!(e.contains("the credentials cannot write"), "{e}");
    let e = check(with("locked", "writer"));
    assert!(
        e.contains("may not read the bucket's Object Lock configuration"),
        "{e}"
    );

    // a credentials file others can read is refused before any request
    let loose = weed.dir.path().join("loose.credentials");
    std::fs::copy(&weed.credentials, &loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o644)).unwrap();
    let mut cfg = weed.config("locked", LockMode::Compliance);
    cfg.credentials_file = loose;
    let e = S3Backend::open(cfg).err().expect("refused").to_string();
    assert!(e.contains("readable by group or others (mode 0644)"), "{e}");

    S3Backend::open(weed.config("locked", LockMode::Compliance)).expect("a good bucket opens");
}
