//! The retention sweep and collection of a local store: which snapshots go
//! (time, and the keep rules of [`crate::keep`]), then which packs no
//! remaining snapshot references. A dry run decides the same and deletes
//! nothing, so its list is what the next real sweep at the same time
//! removes.

use std::collections::HashSet;
use std::fs;

use serde::Serialize;

use super::{fsync_dir, mtime_secs, replace_file, LocalStore, PackSet, COLLECTING};
use crate::error::{Error, IoContext, Result};
use crate::format::snapshot;
use crate::id::{PackId, SnapshotId};
use crate::keep::{self, KeptBy};
use crate::retention::{self, fmt_time, PackAge, Policy, Stamp};
use crate::store::Store;

/// What a sweep did, or with `dry_run` what it would do.
#[derive(Debug, Default, Clone, Serialize)]
pub struct PruneReport {
    /// Nothing was deleted: this is what a sweep at this time would do.
    pub dry_run: bool,
    /// Snapshots removed because they expired and no rule keeps them.
    pub snapshots_removed: Vec<SnapshotId>,
    /// Packs removed because no snapshot references them.
    pub packs_removed: u64,
    /// Bytes those packs held.
    pub bytes_freed: u64,
    /// The packs a dry run would collect (a real sweep only counts them).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub packs_freed: Vec<PackId>,
    /// Snapshots kept.
    pub snapshots_kept: u64,
    /// Packs kept.
    pub packs_kept: u64,
    /// Files left in `tmp/` by killed writers (older than the grace
    /// period), removed.
    pub tmp_removed: u64,
    /// Why nothing was deleted, when nothing could be.
    pub refused: Option<String>,
    /// The bucket's purge of collected packs, on a namespace that has one.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub bucket: Option<super::PurgeReport>,
    /// Snapshots whose pack list could not be read: what packs they need
    /// is unknown, so no pack was collected (the cause of `refused`).
    pub unreadable: Vec<SnapshotId>,
    /// Every snapshot, in commit order, with what the sweep decided and why.
    pub snapshots: Vec<SnapshotFate>,
    /// The rules in force differ from those of the previous sweep: what
    /// changed (also appended to the store's operator.log).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub policy_changed: Option<String>,
}

/// One snapshot's fate in a sweep.
#[derive(Debug, Clone, Serialize)]
pub struct SnapshotFate {
    /// The snapshot.
    pub id: SnapshotId,
    /// When the store received it (RFC 3339).
    pub received: String,
    /// When time alone removes it (RFC 3339), after any extension the
    /// rules gave it.
    pub expires: String,
    /// `keep` or `remove`.
    pub fate: &'static str,
    /// The rules that name it.
    pub kept_by: KeptBy,
    /// Why, in words: the rule, hold or lock that keeps it, or its expiry.
    pub reason: String,
}

/// The file that records the rules of the last sweep, so a change is noticed.
const APPLIED: &str = "policy.applied";

impl LocalStore {
    /// Removes expired snapshots that no keep rule names, then every pack
    /// that no remaining snapshot references and that is older than the
    /// grace period. Needs no key. Deletes nothing after a jump of the
    /// clock (see `clock_guard`).
    pub fn prune(&self) -> Result<PruneReport> {
        self.sweep(false)
    }

    /// What [`LocalStore::prune`] would remove now, removing nothing.
    pub fn prune_dry_run(&self) -> Result<PruneReport> {
        self.sweep(true)
    }

    fn sweep(&self, dry: bool) -> Result<PruneReport> {
        // One prune at a time (the server's schedule and an operator's
        // `prune --config` may meet): the `collecting` marker one writes
        // must not be removed by the other before its packs are out of
        // the parity.
        let _one = self.lock_named("prune.lock", true)?;
        // Exclusive from the clock reading on: no commit is halfway (its
        // stamp written, its snapshot file not yet) while the rules judge,
        // so every commit the sweep does not see arrives after `now`; and
        // none can come to reference a pack being deleted below.
        let guard = self.lock_file(true)?;
        let now = (self.clock)();
        let mut rep = PruneReport {
            dry_run: dry,
            ..PruneReport::default()
        };
        let check = match dry {
            true => crate::clock_guard::Check::DryRun,
            false => crate::clock_guard::Check::Sweep,
        };
        if let Some(why) = crate::clock_guard::refusal(self, self.seen(), check)? {
            rep.refused = Some(why);
            return Ok(rep);
        }
        if !dry {
            self.note_time(now)?;
            rep.policy_changed = self.note_policy(now)?;
        }
        let removed = self.sweep_snapshots(now, dry, &mut rep)?;
        // What the remaining snapshots reference goes to disk, one snapshot
        // at a time, so that memory does not grow with the repository.
        let tmp = self.root.join("tmp");
        let mut referenced = PackSet::create(&tmp)?;
        let mut first_error = None;
        for id in self.list_snapshots()? {
            if dry && removed.contains(&id) {
                continue; // still there: a real sweep removed it
            }
            let read = match self.read_snapshot(&id) {
                Err(Error::NotFound(_)) => continue, // forgotten meanwhile
                r => r.and_then(|b| Ok(snapshot::decode(&b)?.packs)),
            };
            rep.snapshots_kept += 1;
            match read {
                Ok(packs) => referenced.insert(&packs)?,
                // Which packs it needs is unknown: collect nothing, but
                // read on to count (and name) the others.
                Err(e) => {
                    rep.unreadable.push(id);
                    first_error.get_or_insert(format!("snapshot {id} is unreadable ({e})"));
                }
            }
        }
        if let Some(why) = first_error {
            let more = match rep.unreadable.len() - 1 {
                0 => String::new(),
                n => format!(", and {n} more"),
            };
            rep.refused = Some(format!("{why}{more}; no pack collected"));
            return Ok(rep);
        }
        // Then the packs, one shard at a time: the rule sees the shard's packs
        // and which of them are referenced, read back from disk in one range.
        let collecting = self.root.join(COLLECTING);
        let mut marked = false;
        let mut walk = || -> Result<()> {
            for shard in self.pack_shards()? {
                let packs = self.shard_packs(&shard)?;
                let (Some(lo), Some(hi)) = (packs.first(), packs.last()) else {
                    continue;
                };
                let in_use = referenced.range(&lo.0, &hi.0)?;
                let ages: Vec<PackAge> = packs
                    .iter()
                    .map(|(id, _)| PackAge {
                        id: *id,
                        written: fs::metadata(self.pack_path(id))
                            .ok()
                            .and_then(|m| mtime_secs(&m))
                            .unwrap_or(now),
                    })
                    .collect();
                let doomed = retention::collectable(&ages, &in_use, now, &self.policy);
                // Marked before the first deletion, durably: parity must
                // forget whatever was deleted even if this process is
                // killed before it gets there (the next prune does it).
                if !dry && !doomed.is_empty() && !marked {
                    replace_file(&tmp, &collecting, b"")?;
                    marked = true;
                }
                for id in &doomed {
                    if dry {
                        rep.packs_freed.push(*id);
                    } else {
                        let p = self.pack_path(id);
                        fs::remove_file(&p).at(&p)?;
                        self.forget_handle(id);
                        if let Some(b) = &self.bucket {
                            b.collected(&super::bucket::pack_rel(id), 0)?;
                        }
                    }
                    rep.packs_removed += 1;
                    // both sorted by name
                    if let Ok(i) = packs.binary_search_by(|(p, _)| p.cmp(id)) {
                        rep.bytes_freed += packs[i].1;
                    }
                }
                if !dry && !doomed.is_empty() {
                    fsync_dir(&shard)?;
                }
                rep.packs_kept += (packs.len() - doomed.len()) as u64;
            }
            Ok(())
        };
        let walked = walk();
        drop(guard);
        if dry {
            return walked.map(|()| rep);
        }
        // Parity must forget collected packs, or a scrub would bring them
        // back: also when the walk failed after deleting some, and when an
        // earlier prune was killed after deleting some. A collected pack is
        // one no snapshot lists whose file is gone; one that a snapshot
        // lists is never forgotten (a scrub reports it as missing), and a
        // missing pack cannot come to be listed (a commit checks its packs).
        if collecting.exists() {
            crate::scrub::forget_packs(
                self,
                &mut |id| Ok(!referenced.contains(id)? && self.pack_size(id)?.is_none()),
                self.parity,
            )?;
            fs::remove_file(&collecting).at(&collecting)?;
        }
        drop(referenced);
        walked?;
        rep.tmp_removed = self.sweep_tmp(now)?;
        if let Some(b) = &self.bucket {
            // The second phase of collection: versions whose lock lapsed.
            let live = |rel: &str| self.root.join(rel).exists();
            rep.bucket = Some(b.purge(now, &live)?);
        }
        Ok(rep)
    }

    /// Decides every snapshot's fate by its stamp and the keep rules,
    /// records in the stamps of those kept what keeps them (and extends an
    /// expiry the period rules outlast), and removes the rest unless `dry`.
    /// Returns the snapshots removed (or that would be).
    fn sweep_snapshots(
        &self,
        now: i64,
        dry: bool,
        rep: &mut PruneReport,
    ) -> Result<HashSet<SnapshotId>> {
        let (stamps, unreadable) = self.stamps()?;
        // A stamp that does not read: its snapshot's fate is unknown.
        if let Some(e) = unreadable.into_iter().next() {
            return Err(e);
        }
        let entries: Vec<keep::Entry> = stamps
            .iter()
            .map(|(id, st)| keep::Entry {
                id: *id,
                group: st.group,
                received: st.received,
                due: retention::expired(st, now),
            })
            .collect();
        let verdicts = keep::plan(&entries, &self.policy.keep, now);
        let mut removed = HashSet::new();
        for ((id, st), v) in stamps.iter().zip(&verdicts) {
            let mut st = *st;
            if v.remove {
                // Judged again under the stamps' lock: a `lock` or a hold
                // that came meanwhile wins.
                if !dry {
                    let _g = self.stamps_lock()?;
                    match self.stamp(id) {
                        Ok(now_st) if retention::expired(&now_st, now) => {
                            self.remove_snapshot(id)?
                        }
                        Ok(_) | Err(Error::NotFound(_)) => continue,
                        Err(e) => return Err(e),
                    }
                }
                removed.insert(*id);
                rep.snapshots_removed.push(*id);
            } else if !dry {
                st = self.record_kept(id, v)?.unwrap_or(st);
            } else {
                st.expires = st.expires.max(v.kept_until.unwrap_or(i64::MIN));
            }
            rep.snapshots.push(SnapshotFate {
                id: *id,
                received: fmt_time(st.received),
                expires: fmt_time(st.expires),
                fate: if v.remove { "remove" } else { "keep" },
                kept_by: v.kept_by,
                reason: reason(&st, v, now),
            });
        }
        Ok(removed)
    }

    /// Writes into a kept snapshot's stamp the rules that keep it and the
    /// expiry they guarantee, when either changed. Returns the stamp as it
    /// stands (`None` when the snapshot went meanwhile).
    fn record_kept(&self, id: &SnapshotId, v: &keep::Verdict) -> Result<Option<Stamp>> {
        let _g = self.stamps_lock()?;
        let mut st = match self.stamp(id) {
            Ok(st) => st,
            Err(Error::NotFound(_)) => return Ok(None),
            Err(e) => return Err(e),
        };
        let expires = st.expires.max(v.kept_until.unwrap_or(i64::MIN));
        if expires != st.expires || st.kept_by != v.kept_by {
            st.expires = expires;
            st.kept_by = v.kept_by;
            self.write_stamp(id, &st, true)?;
        }
        Ok(Some(st))
    }

    /// Records the rules this sweep applies; when they differ from those of
    /// the previous sweep (or none were recorded, or the record does not
    /// read), says so, in the operator log too, so every rule in force has
    /// a line saying since when.
    fn note_policy(&self, now: i64) -> Result<Option<String>> {
        let path = self.root.join(APPLIED);
        let before: Option<Policy> = match fs::read(&path) {
            Ok(b) => serde_json::from_slice(&b).ok(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(e) => return Err(Error::io(&path, e)),
        };
        if before == Some(self.policy) {
            return Ok(None);
        }
        // unwrap: plain data always serializes
        let bytes = serde_json::to_vec_pretty(&self.policy).expect("policy JSON");
        let (action, said) = match &before {
            Some(b) => ("policy-changed", describe_change(b, &self.policy)),
            None => (
                "policy-applied",
                format!(
                    "now in force: {}",
                    describe_change(&Policy::unset(), &self.policy)
                ),
            ),
        };
        super::append_operator_log(
            &self.root,
            &serde_json::json!({
                "time": fmt_time(now), "action": action,
                "from": before, "to": self.policy,
            }),
        )?;
        replace_file(&self.root.join("tmp"), &path, &bytes)?;
        Ok(Some(said))
    }

    /// Removes what killed writers left in `tmp/`: partial uploads and
    /// scratch files last written more than the grace period ago, by the
    /// store's clock. A live upload writes its file as it goes, and one
    /// idle that long has been given up. Returns how many were removed.
    fn sweep_tmp(&self, now: i64) -> Result<u64> {
        let dir = self.root.join("tmp");
        let mut removed = 0;
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            // Partial files belong to `partial`: their writers hold them
            // locked, and a scrub's repair sets its file's time back to the
            // pack's, so age says nothing about them. Those no one holds
            // are removed below whatever their age.
            let partial = e.path().extension().is_some_and(crate::partial::is_partial);
            let Ok(m) = e.metadata() else { continue };
            let old =
                mtime_secs(&m).is_some_and(|t| now.saturating_sub(t) >= self.policy.grace_secs);
            if !partial && m.is_file() && old && fs::remove_file(e.path()).is_ok() {
                removed += 1;
            }
        }
        Ok(removed + self.sweep_abandoned()?.0)
    }
}

/// Why a snapshot is kept, or goes.
fn reason(st: &Stamp, v: &keep::Verdict, now: i64) -> String {
    if v.remove {
        return format!("expired {}", fmt_time(st.expires));
    }
    if st.hold {
        return "legal hold".into();
    }
    if now < st.locked_until {
        return format!("locked until {}", fmt_time(st.locked_until));
    }
    if now < st.expires {
        return match v.kept_by.is_empty() {
            true => format!("expires {}", fmt_time(st.expires)),
            false => format!("expires {} ({})", fmt_time(st.expires), v.kept_by),
        };
    }
    format!("past its expiry, kept by {}", v.kept_by)
}

/// The rules that changed, in words (all of them, from [`Policy::unset`]).
fn describe_change(a: &Policy, b: &Policy) -> String {
    let days = |s: i64| s / retention::DAY_SECS;
    let mut out = Vec::new();
    let unset = *a == Policy::unset();
    let mut diff = |name: &str, x: i64, y: i64| match (unset, x != y) {
        (true, _) => out.push(format!("{name} {y}")),
        (false, true) => out.push(format!("{name} {x} -> {y}")),
        (false, false) => {}
    };
    diff("lock_days", days(a.lock_secs), days(b.lock_secs));
    diff(
        "retention_days",
        days(a.retention_secs),
        days(b.retention_secs),
    );
    diff("gc_grace_secs", a.grace_secs, b.grace_secs);
    diff("keep_last", a.keep.last.into(), b.keep.last.into());
    diff("keep_daily", a.keep.daily.into(), b.keep.daily.into());
    diff("keep_weekly", a.keep.weekly.into(), b.keep.weekly.into());
    diff("keep_monthly", a.keep.monthly.into(), b.keep.monthly.into());
    diff("keep_yearly", a.keep.yearly.into(), b.keep.yearly.into());
    out.join(", ")
}
