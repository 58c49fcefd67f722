//! Stale clients are loud by default: a server with no `[alerts]` section
//! judges every namespace against a two-day threshold (or the namespace's
//! own `stale_after`), logs a stale one (rate-limited as every alert) and,
//! with `[metrics]`, shows it.

use std::fs;
use std::time::{Duration, Instant};

use crate::monitor::{metric, poll, scrape};
use crate::server::{init_args, run, TestServer};
use crate::util::*;

#[test]
fn a_stale_namespace_is_logged_and_shown_without_an_alerts_section() {
    let mut srv = TestServer::start_full(
        2,
        "",
        "[metrics]\nlisten = \"127.0.0.1:0\"\nrefresh_interval = \"1s\"\n",
        &[],
    );
    let tmp = tempfile::tempdir().unwrap();
    let (cache, src) = (tmp.path().join("cache"), tmp.path().join("src"));
    fs::create_dir_all(&src).unwrap();
    fs::write(src.join("f"), random_bytes(1, 100_000)).unwrap();
    run(srv.client(0, &cache), &init_args()).ok();
    run(srv.client(0, &cache), &["backup", src.to_str().unwrap()]).ok();
    let backed_up = Instant::now();
    // Both fresh by the default threshold of two days.
    let t = poll("ns-0's snapshot in the figures", || {
        let t = scrape(&srv);
        (metric(&t, "coffer_namespace_snapshots", "ns-0") == Some(1.0)).then_some(t)
    });
    for ns in ["ns-0", "ns-1"] {
        assert_eq!(metric(&t, "coffer_namespace_stale", ns), Some(0.0), "{t}");
        assert_eq!(
            metric(&t, "coffer_namespace_stale_after_seconds", ns),
            Some(172_800.0),
            "{t}"
        );
    }
    let age = metric(&t, "coffer_namespace_last_snapshot_age_seconds", "ns-0").unwrap();
    assert!((0.0..600.0).contains(&age), "{t}");

    // ns-0's own threshold: 2 s, long past once the server starts again.
    let cfg = srv.dir.path().join("server.toml");
    let text = fs::read_to_string(&cfg).unwrap().replace(
        "namespace = \"ns-0\"\n",
        "namespace = \"ns-0\"\nstale_after = \"2s\"\n",
    );
    fs::write(&cfg, text).unwrap();
    std::thread::sleep(Duration::from_secs(3).saturating_sub(backed_up.elapsed()));
    srv.restart();
    let line = "alert: namespace ns-0: no snapshot since";
    let log = poll("the stale line", || {
        let l = srv.log();
        l.contains(line).then_some(l)
    });
    assert!(log.contains("alert=\"stale\""), "{log}");
    assert!(!log.contains("alert: namespace ns-1"), "{log}");
    let t = poll("ns-0 stale in the metrics", || {
        let t = scrape(&srv);
        (metric(&t, "coffer_namespace_stale", "ns-0") == Some(1.0)).then_some(t)
    });
    assert_eq!(
        metric(&t, "coffer_namespace_stale_after_seconds", "ns-0"),
        Some(2.0)
    );
    assert_eq!(metric(&t, "coffer_namespace_stale", "ns-1"), Some(0.0));

    // Rate-limited across a restart: not logged again while it holds.
    srv.restart();
    poll("a check after the restart", || {
        let t = scrape(&srv);
        (metric(&t, "coffer_alert_checks_total", "") >= Some(1.0)).then_some(())
    });
    assert_eq!(srv.log().matches(line).count(), 1, "{}", srv.log());
}

#[test]
fn a_client_that_never_backed_up_is_logged_by_a_server_with_no_monitoring_sections() {
    let mut srv = TestServer::start_with(1, "stale_after = \"2s\"");
    let started = Instant::now();
    // Watched since this first start (kept across restarts): stale 2 s on.
    std::thread::sleep(Duration::from_secs(3).saturating_sub(started.elapsed()));
    srv.restart();
    let log = poll("the stale line", || {
        let l = srv.log();
        l.contains("alert: namespace ns-0: no snapshot at all")
            .then_some(l)
    });
    assert!(log.contains("WARN"), "{log}");
}
