//! Which snapshots a sweep keeps past their expiry: the keep rules per
//! backup job, as pure decisions over the stamps a store read. Time alone
//! never removes a job's newest snapshots (`keep_last`, at least 1), and
//! the period rules keep the newest snapshot of each of the last N days,
//! ISO weeks, months and years that have one, by the store's clock (UTC),
//! as restic's `forget --keep-*` counts them (Proxmox Backup Server's prune
//! skips periods an earlier rule covered; this does not). Rules only keep: a snapshot goes when time would remove it and no
//! rule names it.

use std::collections::HashMap;

use serde::{Deserialize, Serialize};

use crate::calendar::Period;
use crate::id::{SnapshotGroup, SnapshotId};

/// A namespace's keep rules (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KeepRules {
    /// The newest snapshots of each group, however old (at least 1).
    #[serde(default = "one")]
    pub last: u32,
    /// The newest of each of the last N days that have a snapshot.
    #[serde(default)]
    pub daily: u32,
    /// The newest of each of the last N ISO weeks that have one.
    #[serde(default)]
    pub weekly: u32,
    /// The newest of each of the last N calendar months that have one.
    #[serde(default)]
    pub monthly: u32,
    /// The newest of each of the last N calendar years that have one.
    #[serde(default)]
    pub yearly: u32,
}

fn one() -> u32 {
    1
}

impl Default for KeepRules {
    fn default() -> Self {
        KeepRules {
            last: 1,
            daily: 0,
            weekly: 0,
            monthly: 0,
            yearly: 0,
        }
    }
}

impl KeepRules {
    /// The period rules with their counts, in the order [`KeptBy`] names them.
    fn periods(&self) -> [(Period, u32, KeptBy); 4] {
        [
            (Period::Day, self.daily, KeptBy::DAILY),
            (Period::Week, self.weekly, KeptBy::WEEKLY),
            (Period::Month, self.monthly, KeptBy::MONTHLY),
            (Period::Year, self.yearly, KeptBy::YEARLY),
        ]
    }
}

/// The set of rules that keep a snapshot; JSON and CBOR carry it as a list
/// of rule names (`keep_last`, `keep_daily`, ...), and a name this version
/// does not know is ignored.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct KeptBy(u8);

const NAMES: [(KeptBy, &str); 5] = [
    (KeptBy::LAST, "keep_last"),
    (KeptBy::DAILY, "keep_daily"),
    (KeptBy::WEEKLY, "keep_weekly"),
    (KeptBy::MONTHLY, "keep_monthly"),
    (KeptBy::YEARLY, "keep_yearly"),
];

impl KeptBy {
    /// `keep_last`.
    pub const LAST: KeptBy = KeptBy(1);
    /// `keep_daily`.
    pub const DAILY: KeptBy = KeptBy(2);
    /// `keep_weekly`.
    pub const WEEKLY: KeptBy = KeptBy(4);
    /// `keep_monthly`.
    pub const MONTHLY: KeptBy = KeptBy(8);
    /// `keep_yearly`.
    pub const YEARLY: KeptBy = KeptBy(16);

    /// No rule.
    pub fn is_empty(&self) -> bool {
        self.0 == 0
    }

    /// Whether `rule` is among them.
    pub fn contains(&self, rule: KeptBy) -> bool {
        self.0 & rule.0 == rule.0
    }

    fn insert(&mut self, rule: KeptBy) {
        self.0 |= rule.0;
    }

    /// The rule names, in a fixed order.
    pub fn names(&self) -> Vec<&'static str> {
        NAMES
            .iter()
            .filter(|(r, _)| self.contains(*r))
            .map(|(_, n)| *n)
            .collect()
    }
}

impl std::fmt::Display for KeptBy {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.names().join(","))
    }
}

impl Serialize for KeptBy {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        self.names().serialize(s)
    }
}

impl<'de> Deserialize<'de> for KeptBy {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let names: Vec<String> = Vec::deserialize(d)?;
        let mut k = KeptBy::default();
        for n in &names {
            if let Some((r, _)) = NAMES.iter().find(|(_, name)| name == n) {
                k.insert(*r);
            }
        }
        Ok(k)
    }
}

/// A snapshot as the rules see it.
#[derive(Debug, Clone, Copy)]
pub struct Entry {
    /// The snapshot.
    pub id: SnapshotId,
    /// Its backup job (`None`: a client that names none; those share one group).
    pub group: Option<SnapshotGroup>,
    /// When the store received it.
    pub received: i64,
    /// Whether time alone removes it now: past its expiry and lock, not held.
    pub due: bool,
}

/// What the rules say of one snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Verdict {
    /// The snapshot.
    pub id: SnapshotId,
    /// The rules that name it now.
    pub kept_by: KeptBy,
    /// Until when the period rules keep it at the least, whatever is
    /// committed meanwhile: its expiry may be extended to this. `None` when
    /// no period rule names it, or none for longer than the current period.
    pub kept_until: Option<i64>,
    /// Whether the sweep removes it now: due, and named by no rule.
    pub remove: bool,
}

/// Applies `rules` at `now` to `entries`, given in commit order (oldest
/// first); the verdicts come in the same order.
pub fn plan(entries: &[Entry], rules: &KeepRules, now: i64) -> Vec<Verdict> {
    let mut out: Vec<Verdict> = entries
        .iter()
        .map(|e| Verdict {
            id: e.id,
            kept_by: KeptBy::default(),
            kept_until: None,
            remove: false,
        })
        .collect();
    let mut groups: HashMap<Option<SnapshotGroup>, Vec<usize>> = HashMap::new();
    for (i, e) in entries.iter().enumerate() {
        groups.entry(e.group).or_default().push(i);
    }
    for members in groups.values() {
        // Newest first.
        for &i in members.iter().rev().take(rules.last as usize) {
            out[i].kept_by.insert(KeptBy::LAST);
        }
        for (period, n, rule) in rules.periods() {
            let mut kept = 0u32;
            let mut last = None;
            for &i in members.iter().rev() {
                if kept == n {
                    break;
                }
                let b = period.of(entries[i].received);
                if last == Some(b) {
                    continue;
                }
                last = Some(b);
                out[i].kept_by.insert(rule);
                // It is the newest of the kept-th newest period. A snapshot
                // of the current period may be superseded by the next
                // commit; one of a past period leaves the rule only once
                // n - kept newer periods have snapshots, and new snapshots
                // arrive no earlier than now's period.
                let ahead = i64::from(n - 1 - kept);
                if ahead > 0 && b < period.of(now) {
                    let until = period.start(period.of(now) + ahead);
                    out[i].kept_until = Some(out[i].kept_until.map_or(until, |u| u.max(until)));
                }
                kept += 1;
            }
        }
    }
    for (v, e) in out.iter_mut().zip(entries) {
        v.remove = e.due && v.kept_by.is_empty();
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::calendar::{days_from_civil, DAY_SECS};

    fn entry(n: u8, group: u8, received: i64, due: bool) -> Entry {
        Entry {
            id: SnapshotId([n; 32]),
            group: Some(SnapshotGroup([group; 32])),
            received,
            due,
        }
    }

    #[test]
    fn the_newest_of_each_group_stays_however_old() {
        let t = 1_800_000_000;
        let e = [
            entry(1, 1, t, true),
            entry(2, 2, t + 10, true),
            entry(3, 1, t + 20, true),
            entry(4, 2, t + 30, true),
            entry(5, 3, t + 40, true),
        ];
        let v = plan(&e, &KeepRules::default(), t + 400 * DAY_SECS);
        let removed: Vec<u8> = v.iter().filter(|v| v.remove).map(|v| v.id.0[0]).collect();
        assert_eq!(removed, vec![1, 2]);
        assert!(v[4].kept_by.contains(KeptBy::LAST));
        assert_eq!(v[4].kept_by.names(), vec!["keep_last"]);
        // nothing due, nothing removed
        let fresh: Vec<Entry> = e.iter().map(|x| Entry { due: false, ..*x }).collect();
        assert!(plan(&fresh, &KeepRules::default(), t)
            .iter()
            .all(|v| !v.remove));
    }

    #[test]
    fn daily_keeps_the_newest_of_each_day_with_a_snapshot() {
        let day0 = days_from_civil(2027, 3, 1) * DAY_SECS;
        // two a day for five days
        let e: Vec<Entry> = (0..10)
            .map(|i| entry(i as u8, 1, day0 + (i / 2) * DAY_SECS + (i % 2) * 3600, true))
            .collect();
        let rules = KeepRules {
            last: 1,
            daily: 3,
            ..KeepRules::default()
        };
        let now = day0 + 4 * DAY_SECS + 7200;
        let v = plan(&e, &rules, now);
        let kept: Vec<u8> = v.iter().filter(|v| !v.remove).map(|v| v.id.0[0]).collect();
        // the newest of days 4, 3, 2
        assert_eq!(kept, vec![5, 7, 9]);
        // day 2's snapshot is the third of three: nothing to extend; day 3's
        // stays at least until day 5 begins; day 4's is today's, which the
        // next backup today supersedes: no extension.
        assert_eq!(v[5].kept_until, None);
        assert_eq!(v[7].kept_until, Some(day0 + 5 * DAY_SECS));
        assert_eq!(v[9].kept_until, None);
        // A day later, day 4's is the newest of a past day: three newer
        // days with backups (5, 6 and 7) must come before it leaves.
        let v = plan(&e, &rules, now + DAY_SECS);
        assert_eq!(v[9].kept_until, Some(day0 + 7 * DAY_SECS));
    }

    proptest::proptest! {
        /// `kept_until` is a promise: whatever is committed after `now`, a
        /// snapshot stays named by its rules until then.
        #[test]
        fn kept_until_holds_whatever_comes_next(
            gaps in proptest::collection::vec(0i64..3 * DAY_SECS, 1..40),
            later in proptest::collection::vec(0i64..20 * DAY_SECS, 0..40),
            daily in 0u32..6, weekly in 0u32..4, monthly in 0u32..4,
        ) {
            let rules = KeepRules { last: 1, daily, weekly, monthly, yearly: 0 };
            let mut t = 1_800_000_000i64;
            let mut e = Vec::new();
            for (i, g) in gaps.iter().enumerate() {
                t += g;
                e.push(entry(i as u8, 1, t, false));
            }
            let now = t + 3600;
            let first = plan(&e, &rules, now);
            // New commits, no earlier than now, then a sweep before the promise ends.
            let mut t2 = now;
            for (j, g) in later.iter().enumerate() {
                t2 += g;
                e.push(entry(100 + j as u8, 1, t2, false));
                let v = plan(&e, &rules, t2);
                for (a, b) in first.iter().zip(&v) {
                    if a.kept_until.is_some_and(|u| t2 < u) {
                        let periods = b.kept_by.0 & !KeptBy::LAST.0;
                        proptest::prop_assert!(periods != 0, "{:?} at {}", a, t2);
                    }
                }
            }
        }
    }

    #[test]
    fn kept_by_reads_back_and_ignores_names_it_does_not_know() {
        let mut k = KeptBy::LAST;
        k.insert(KeptBy::MONTHLY);
        let j = serde_json::to_string(&k).unwrap();
        assert_eq!(j, r#"["keep_last","keep_monthly"]"#);
        let back: KeptBy =
            serde_json::from_str(r#"["keep_monthly","keep_hourly","keep_last"]"#).unwrap();
        assert_eq!(back, k);
        assert_eq!(k.to_string(), "keep_last,keep_monthly");
    }
}
