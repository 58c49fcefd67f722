//! Parity and scrub on a local store (a repository directory, or one
//! namespace of a server). Owns the parity files under `REPO/parity/` and
//! the repair of damaged packs from them; needs no key. The codec is in
//! [`crate::parity`].
//!
//! Packs are grouped in stripes of up to k members with m parity shards.
//! New packs join the open stripe, whose parity is recomputed as it fills.
//! A scrub reads every block of every member and shard, checks its BLAKE3,
//! rebuilds damaged rows when at most m shards of the row are bad, writes a
//! repaired pack atomically after checking that it hashes to its name again,
//! and reports what it could not repair with the snapshots that need it.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fs::{self, File};
use std::io::Write;
use std::os::unix::fs::FileExt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Instant;

use crossbeam_channel::RecvTimeoutError;
use serde::Serialize;
use serde_bytes::ByteBuf;

use crate::error::{Error, IoContext, Result};
use crate::id::{PackId, SnapshotId};
use crate::parity::{self, Member, StripeHeader, MAGIC_PARITY, PARITY_BLOCK, STRIPE_VERSION};
use crate::partial;
use crate::referenced;
use crate::store::{fsync_dir, replace_file, LocalStore, Store};
use crate::stripe_index::{self, Known, StripeIndex};

/// Stripe shape: k packs, m parity shards.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ParityConfig {
    /// Members per stripe.
    pub k: usize,
    /// Parity shards per stripe: that many lost members can be rebuilt.
    pub m: usize,
}

impl ParityConfig {
    /// Checks a shape read from a file or an option.
    pub fn validate(&self) -> std::result::Result<(), String> {
        if (1..=64).contains(&self.k) && (1..=16).contains(&self.m) {
            Ok(())
        } else {
            Err(format!(
                "parity {}+{}: k must be 1..=64 and m 1..=16",
                self.k, self.m
            ))
        }
    }

    /// Whether a stripe of `members` packs with `m` parity shards is the
    /// open one new packs join: not full, and of this shape.
    fn takes_more(&self, members: usize, m: u32) -> bool {
        members < self.k && m as usize == self.m
    }

    /// Parses `K+M`, e.g. `10+2`.
    pub fn parse(s: &str) -> std::result::Result<ParityConfig, String> {
        let (k, m) = s
            .split_once('+')
            .ok_or_else(|| format!("parity {s:?}: expected K+M, e.g. 10+2"))?;
        let p = ParityConfig {
            k: k.trim()
                .parse()
                .map_err(|_| format!("parity {s:?}: K is not a number"))?,
            m: m.trim()
                .parse()
                .map_err(|_| format!("parity {s:?}: M is not a number"))?,
        };
        p.validate()?;
        Ok(p)
    }
}

impl Default for ParityConfig {
    fn default() -> Self {
        ParityConfig { k: 10, m: 2 }
    }
}

/// What `protect` did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ProtectReport {
    /// Packs that joined a stripe.
    pub packs_protected: u64,
    /// Stripes whose parity was (re)written.
    pub stripes_written: u64,
    /// Packs left out because they did not hash to their name.
    pub damaged: Vec<PackId>,
}

/// A pack that could not be repaired.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct Unrepairable {
    /// The pack.
    pub pack: PackId,
    /// Why.
    pub reason: String,
    /// The snapshots that reference it.
    pub snapshots: Vec<SnapshotId>,
}

/// What a scrub found and did.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ScrubReport {
    /// Packs read.
    pub packs_checked: u64,
    /// Parity files read.
    pub parity_checked: u64,
    /// Bytes read.
    pub bytes_read: u64,
    /// Blocks whose checksum was verified.
    pub blocks_checked: u64,
    /// Blocks found damaged or missing (packs and parity).
    pub damaged_blocks: u64,
    /// Blocks rebuilt.
    pub repaired_blocks: u64,
    /// Blocks of packs that could not be rebuilt (beyond the parity budget,
    /// or every block of a damaged pack that was in no stripe yet).
    pub unrepairable_blocks: u64,
    /// Packs rewritten after repair.
    pub repaired_packs: Vec<PackId>,
    /// Stripes whose parity was rewritten.
    pub parity_rewritten: u64,
    /// Packs in no stripe yet (checked by their hash only).
    pub unprotected_checked: u64,
    /// Stripes skipped because the interrupted pass had verified them.
    pub stripes_resumed: u64,
    /// Stripes none of whose parity files could be read: their members
    /// were checked by their hash and given new parity.
    pub stripes_unreadable: u64,
    /// What could not be repaired.
    pub unrepairable: Vec<Unrepairable>,
}

/// How to scrub.
#[derive(Debug, Clone, Default)]
pub struct ScrubOptions {
    /// Read at most this many bytes per second (none: no limit).
    pub rate: Option<u64>,
    /// Start a new pass even if an earlier one was interrupted.
    pub restart: bool,
}

/// Progress of scrub passes, kept in `REPO/scrub.json` so an interrupted
/// pass carries on where it stopped.
#[derive(Debug, Clone, Default, Serialize, serde::Deserialize)]
pub struct ScrubState {
    /// When the current (or last) pass started.
    pub pass_started: i64,
    /// When the last pass completed (0: never).
    pub last_complete: i64,
    /// Stripes verified in the current pass, and when.
    pub verified: BTreeMap<u64, i64>,
    /// Stripes the current pass has to verify (its progress is
    /// `verified / stripes`).
    #[serde(default)]
    pub stripes: u64,
    /// What the current pass found so far; kept across an interruption.
    #[serde(default)]
    pub current: ScrubCounts,
    /// What the last completed pass found, whoever ran it (the server's
    /// schedule or `coffer scrub`): what monitoring and alerts report.
    #[serde(default)]
    pub last: Option<ScrubCounts>,
}

impl ScrubState {
    /// Whether a pass has started and not completed (running, or interrupted).
    pub fn in_pass(&self) -> bool {
        self.pass_started > self.last_complete
    }

    /// Share of the current pass done, 0 to 1; 1 when no pass is under way.
    pub fn progress(&self) -> f64 {
        if !self.in_pass() {
            1.0
        } else if self.stripes == 0 {
            0.0
        } else {
            (self.verified.len() as f64 / self.stripes as f64).min(1.0)
        }
    }
}

/// The most unrepairable packs a scrub state lists by name (the count is
/// always complete): a disaster must not make the state file huge.
pub const MAX_LISTED_UNREPAIRABLE: usize = 100;

/// What one scrub pass found, summed over its runs when it was interrupted.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, serde::Deserialize)]
pub struct ScrubCounts {
    /// Blocks whose checksum was verified.
    pub blocks_checked: u64,
    /// Blocks found damaged or missing.
    pub damaged_blocks: u64,
    /// Blocks rebuilt from parity.
    pub repaired_blocks: u64,
    /// Blocks that could not be rebuilt.
    pub unrepairable_blocks: u64,
    /// Packs that could not be repaired.
    pub unrepairable_packs: u64,
    /// The first [`MAX_LISTED_UNREPAIRABLE`] of them, with the snapshots
    /// they touch (known once the pass completes).
    #[serde(default)]
    pub unrepairable: Vec<Unrepairable>,
}

impl ScrubCounts {
    /// `base` (earlier runs of the pass) plus what this run found so far.
    fn tally(base: &ScrubCounts, rep: &ScrubReport, bad: &[Unrepairable]) -> ScrubCounts {
        let mut unrepairable = base.unrepairable.clone();
        unrepairable.extend(bad.iter().cloned());
        unrepairable.truncate(MAX_LISTED_UNREPAIRABLE);
        ScrubCounts {
            blocks_checked: base.blocks_checked + rep.blocks_checked,
            damaged_blocks: base.damaged_blocks + rep.damaged_blocks,
            repaired_blocks: base.repaired_blocks + rep.repaired_blocks,
            unrepairable_blocks: base.unrepairable_blocks + rep.unrepairable_blocks,
            unrepairable_packs: base.unrepairable_packs + bad.len() as u64,
            unrepairable,
        }
    }
}

/// Packs found bad so far, as unrepairable entries without their snapshots.
fn listed(bad: &HashMap<PackId, String>) -> Vec<Unrepairable> {
    let mut v: Vec<Unrepairable> = bad
        .iter()
        .map(|(pack, reason)| Unrepairable {
            pack: *pack,
            reason: reason.clone(),
            snapshots: Vec::new(),
        })
        .collect();
    v.sort_by_key(|u| u.pack);
    v
}

/// Reads the scrub state of a store.
pub fn scrub_state(s: &LocalStore) -> ScrubState {
    fs::read(s.root().join("scrub.json"))
        .ok()
        .and_then(|b| serde_json::from_slice(&b).ok())
        .unwrap_or_default()
}

/// How often a scrub records its progress: an interruption repeats at most
/// this much work.
const SAVE_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

fn save_state(s: &LocalStore, st: &ScrubState) -> Result<()> {
    // unwrap: plain data always serializes
    let bytes = serde_json::to_vec(st).expect("scrub state JSON");
    replace_file(&s.root().join("tmp"), &s.root().join("scrub.json"), &bytes)
}

struct Stripe {
    id: u64,
    header: StripeHeader,
    /// Parity shard `i`: its path and its block sums, when a file agreeing
    /// with `header` exists.
    files: Vec<Option<(PathBuf, ByteBuf)>>,
}

fn parity_dir(s: &LocalStore) -> PathBuf {
    s.root().join("parity")
}

fn parity_path(s: &LocalStore, stripe: u64, i: usize) -> PathBuf {
    parity_dir(s).join(format!("{stripe:016x}.{i}"))
}

fn read_header(path: &std::path::Path) -> Result<StripeHeader> {
    let f = File::open(path).at(path)?;
    let len = f.metadata().at(path)?.len();
    if len < 12 {
        return Err(Error::Corrupt(format!("{}: too short", path.display())));
    }
    let mut t = [0u8; 4];
    f.read_exact_at(&mut t, len - 4).at(path)?;
    let n = parity::decode_trailer(&t, len)?;
    let mut h = vec![0u8; n];
    f.read_exact_at(&mut h, len - 4 - n as u64).at(path)?;
    let mut magic = [0u8; 8];
    f.read_exact_at(&mut magic, 0).at(path)?;
    if magic != MAGIC_PARITY {
        return Err(Error::Corrupt(format!(
            "{}: not a parity file",
            path.display()
        )));
    }
    Ok(parity::decode_header(&h, len)?)
}

/// The parity files in `parity/`, by stripe id in order: names only, so
/// a walk over the stripes holds one stripe's headers at a time.
fn stripe_files(s: &LocalStore) -> Result<BTreeMap<u64, Vec<(usize, PathBuf)>>> {
    let dir = parity_dir(s);
    fs::create_dir_all(&dir).at(&dir)?;
    let mut by_id: BTreeMap<u64, Vec<(usize, PathBuf)>> = BTreeMap::new();
    for e in fs::read_dir(&dir).at(&dir)? {
        let e = e.at(&dir)?;
        let name = e.file_name();
        let Some((id, idx)) = name.to_str().and_then(|n| n.split_once('.')) else {
            continue;
        };
        let (Ok(id), Ok(idx)) = (u64::from_str_radix(id, 16), idx.parse::<usize>()) else {
            continue;
        };
        by_id.entry(id).or_default().push((idx, e.path()));
    }
    Ok(by_id)
}

/// A stripe's description from its parity files: the file with the most
/// members describes it (a stripe only grows until it is rewritten whole);
/// files that disagree with it count as missing. `None` when no file of
/// it can be read.
fn load_stripe(id: u64, files: Vec<(usize, PathBuf)>) -> Option<Stripe> {
    let files: Vec<(usize, PathBuf, Option<StripeHeader>)> = files
        .into_iter()
        .map(|(idx, path)| {
            let h = read_header(&path).ok();
            (idx, path, h)
        })
        .collect();
    let best = files
        .iter()
        .filter_map(|(_, _, h)| h.as_ref())
        .max_by_key(|h| h.members.len())
        .cloned()?;
    let mut slots = vec![None; best.m as usize];
    for (idx, path, h) in files {
        if let Some(h) = h {
            if idx < slots.len() && h.members == best.members && h.index as usize == idx {
                slots[idx] = Some((path, h.sums));
            }
        }
    }
    Some(Stripe {
        id,
        header: best,
        files: slots,
    })
}

/// Calls `f` with every stripe, in id order, one in memory at a time: a
/// stripe's headers carry the block sums of its members, so holding them
/// all would grow with the repository (about 0.06 % of its size).
fn for_each_stripe(s: &LocalStore, f: &mut dyn FnMut(Stripe) -> Result<()>) -> Result<()> {
    for (id, files) in stripe_files(s)? {
        if let Some(st) = load_stripe(id, files) {
            f(st)?;
        }
    }
    Ok(())
}

fn read_block(f: Option<&File>, size: u64, row: u64) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    read_block_into(f?, size, row, &mut b).then_some(b)
}

/// Reads block `row` of a member of `size` bytes into `b` (empty past its
/// end), reusing its allocation; false when it cannot be read.
fn read_block_into(f: &File, size: u64, row: u64, b: &mut Vec<u8>) -> bool {
    let start = row * PARITY_BLOCK as u64;
    let len = size.saturating_sub(start).min(PARITY_BLOCK as u64) as usize;
    // Every byte is overwritten by the read: no need to zero it first.
    if b.len() != len {
        b.resize(len, 0);
    }
    len == 0 || f.read_exact_at(b, start).is_ok()
}

/// What [`write_stripe`] did.
#[derive(Debug, PartialEq, Eq)]
enum Wrote {
    /// The parity is written; these fresh members were left out because
    /// they are missing or do not hash to their name.
    Done(Vec<PackId>),
    /// A member the stripe's parity already held is missing or damaged:
    /// nothing was written. That parity is what can rebuild the member,
    /// so the stripe is never recomputed without it.
    Kept(Vec<PackId>),
}

/// Computes and writes the parity of a stripe over `members`, replacing
/// any earlier version. The first `old` members are those the stripe's
/// current parity holds: when one of them is missing or damaged, the
/// stripe is left as it is ([`Wrote::Kept`]). Fresh members that are
/// missing or damaged are left out and returned.
fn write_stripe(
    s: &LocalStore,
    id: u64,
    members: &[(PackId, u64)],
    old: usize,
    m: usize,
) -> Result<Wrote> {
    let (earlier, _) = members.split_at(old.min(members.len()));
    let earlier: Vec<PackId> = earlier.iter().map(|(p, _)| *p).collect();
    let mut members = members.to_vec();
    let mut bad = Vec::new();
    loop {
        // One pass computes parity, block sums and each member's hash; a
        // member that does not hash to its name is left out and the stripe
        // computed again without it.
        match write_stripe_once(s, id, &members, m)? {
            None => return Ok(Wrote::Done(bad)),
            Some(wrong) if wrong.iter().any(|p| earlier.contains(p)) => {
                return Ok(Wrote::Kept(wrong))
            }
            Some(wrong) => {
                members.retain(|(p, _)| !wrong.contains(p));
                bad.extend(wrong);
            }
        }
    }
}

/// One attempt: `Some(packs)` names members that are missing or do not
/// hash to their name (nothing written); `None` means the parity is written.
fn write_stripe_once(
    s: &LocalStore,
    id: u64,
    good: &[(PackId, u64)],
    m: usize,
) -> Result<Option<Vec<PackId>>> {
    if good.is_empty() {
        for i in 0..m {
            let _ = fs::remove_file(parity_path(s, id, i));
        }
        return Ok(None);
    }
    let mut files = Vec::new();
    let mut missing = Vec::new();
    for (p, _) in good {
        match File::open(s.pack_path(p)) {
            Ok(f) => files.push(f),
            Err(_) => missing.push(*p),
        }
    }
    if !missing.is_empty() {
        return Ok(Some(missing));
    }
    let rows = good
        .iter()
        .map(|(_, z)| parity::blocks(*z))
        .max()
        .unwrap_or(0);
    let tmp_dir = s.root().join("tmp");
    // Every file created is in `outs` before anything is written to it,
    // so that a failure anywhere (a full disk) removes them all.
    let mut outs: Vec<(PathBuf, File, Vec<u8>)> = Vec::new();
    // Locked while this writer lives: a new session's sweep leaves them.
    let mut held = Vec::new();
    let res = (|| -> Result<Option<Vec<PackId>>> {
        for _ in 0..m {
            let (t, mut f, h) = partial::create(&tmp_dir)?;
            held.push(h);
            // Written a 64 KiB block at a time, unbuffered: a stripe
            // computed during a backup adds little to its memory.
            let magic = f.write_all(&MAGIC_PARITY).at(&t);
            outs.push((t, f, Vec::new()));
            magic?;
        }
        let (rows_done, names) = std::thread::scope(|sc| {
            // The members' block sums and whole hashes on a second core,
            // from the blocks this one reads for the parity: every byte is
            // read once.
            // Rows go to the hashing thread and come back to be filled
            // again: at most three rows of blocks exist.
            let (tx, rx) = crossbeam_channel::bounded::<Vec<Vec<u8>>>(1);
            let (back_tx, back_rx) = crossbeam_channel::unbounded::<Vec<Vec<u8>>>();
            let hashing = sc.spawn(move || {
                // One pass: the block sums also give each member's hash.
                let mut sums: Vec<Vec<u8>> = vec![Vec::new(); good.len()];
                let mut single: Vec<Option<[u8; 32]>> = vec![None; good.len()];
                for (row, blocks) in rx.into_iter().enumerate() {
                    for (i, b) in blocks.iter().enumerate() {
                        if b.is_empty() {
                            continue;
                        }
                        sums[i].extend_from_slice(&parity::block_sum(
                            STRIPE_VERSION,
                            row as u64,
                            b,
                        ));
                        if good[i].1 <= PARITY_BLOCK as u64 {
                            single[i] = Some(*blake3::hash(b).as_bytes());
                        }
                    }
                    let _ = back_tx.send(blocks);
                }
                let names: Vec<Option<PackId>> = sums
                    .iter()
                    .zip(&single)
                    .map(|(s, one)| one.or_else(|| parity::member_hash(s)).map(PackId))
                    .collect();
                (names, sums)
            });
            let rows_done = (|| -> Result<Option<Vec<PackId>>> {
                let mut enc = parity::RowEncoder::new(good.len(), m)?;
                let mut pbs = vec![Vec::new(); m];
                for row in 0..rows {
                    let mut blocks = back_rx
                        .try_recv()
                        .unwrap_or_else(|_| vec![Vec::new(); good.len()]);
                    for (i, (p, size)) in good.iter().enumerate() {
                        if !read_block_into(&files[i], *size, row, &mut blocks[i]) {
                            return Ok(Some(vec![*p]));
                        }
                    }
                    let refs: Vec<&[u8]> = blocks.iter().map(|b| b.as_slice()).collect();
                    enc.encode(&refs, &mut pbs)?;
                    for ((t, w, ss), pb) in outs.iter_mut().zip(&pbs) {
                        w.write_all(pb).at(&*t)?;
                        ss.extend_from_slice(&parity::block_sum(STRIPE_VERSION, row, pb));
                    }
                    if tx.send(blocks).is_err() {
                        break;
                    }
                }
                Ok(None)
            })();
            drop(tx);
            (rows_done, hashing.join())
        });
        if let Some(bad) = rows_done? {
            return Ok(Some(bad));
        }
        let (names, member_sums) =
            names.map_err(|_| Error::Corrupt("a parity thread panicked".into()))?;
        let wrong: Vec<PackId> = good
            .iter()
            .zip(names)
            .filter(|((p, _), name)| *name != Some(*p))
            .map(|((p, _), _)| *p)
            .collect();
        if !wrong.is_empty() {
            return Ok(Some(wrong));
        }
        let members: Vec<Member> = good
            .iter()
            .zip(member_sums)
            .map(|((p, size), s)| Member {
                pack: *p,
                size: *size,
                sums: ByteBuf::from(s),
            })
            .collect();
        for (j, (t, w, ss)) in outs.iter_mut().enumerate() {
            let h = StripeHeader {
                version: STRIPE_VERSION,
                stripe: id,
                m: m as u32,
                block: PARITY_BLOCK as u32,
                rows,
                members: members.clone(),
                index: j as u32,
                sums: ByteBuf::from(std::mem::take(ss)),
            };
            w.write_all(&parity::encode_tail(&h)).at(&*t)?;
            w.sync_all().at(&*t)?;
        }
        for (j, (t, _, _)) in outs.iter().enumerate() {
            fs::rename(t, parity_path(s, id, j)).at(parity_path(s, id, j))?;
        }
        fsync_dir(&parity_dir(s))?;
        Ok(None)
    })();
    if !matches!(res, Ok(None)) {
        for (t, _, _) in &outs {
            let _ = fs::remove_file(t);
        }
    }
    res
}

/// Puts every pack that is in no stripe into one, computing parity at once:
/// the open stripe is recomputed as it fills, full stripes start anew.
pub fn protect(s: &LocalStore, cfg: ParityConfig) -> Result<ProtectReport> {
    let _g = s.lock_named("parity.lock", true)?;
    protect_locked(s, cfg)
}

/// A stripe's members as written: each pack with its size.
type Members = Vec<(PackId, u64)>;

fn protect_locked(s: &LocalStore, cfg: ParityConfig) -> Result<ProtectReport> {
    // Which packs are in a stripe comes from the stripe index, brought up
    // to date first: only stripes written or changed since the last run
    // are read, and no set of every protected pack is held.
    let files = stripe_files(s)?;
    let mut idx = StripeIndex::open(&parity_dir(s))?;
    idx.refresh(&files, &mut |id, f| load_stripe(id, f).map(|st| known(&st)))?;
    let top = files.keys().next_back().copied();
    // The stripe being filled starts as the last one when that one is
    // readable and not full.
    let open = match top {
        Some(t) => idx
            .stripe(t)?
            .filter(|k| k.readable && cfg.takes_more(k.members.len(), k.m))
            .map(|k| Open {
                id: t,
                old: k.members.len(),
                members: k.members,
                grew: false,
            }),
        None => None,
    };
    let mut f = Filler {
        s,
        cfg,
        idx,
        rep: ProtectReport::default(),
        open,
        next_id: top.map_or(0, |t| t + 1),
    };
    // Packs in no stripe join the open one as the walk finds them, looked
    // up a batch at a time: only one stripe's members are held, never the
    // list of every pack.
    let mut batch: Members = Vec::with_capacity(stripe_index::LOOKUP_BATCH);
    s.for_each_pack(&mut |id, size| {
        batch.push((id, size));
        if batch.len() >= stripe_index::LOOKUP_BATCH {
            f.add_batch(&mut batch)?;
        }
        Ok(())
    })?;
    f.add_batch(&mut batch)?;
    f.close()
}

/// A stripe as the index records it.
fn known(st: &Stripe) -> Known {
    Known {
        m: st.header.m,
        members: st.header.members.iter().map(|m| (m.pack, m.size)).collect(),
        readable: true,
    }
}

/// Puts packs in no stripe into stripes, for [`protect`].
struct Filler<'a> {
    s: &'a LocalStore,
    cfg: ParityConfig,
    idx: StripeIndex,
    rep: ProtectReport,
    /// The stripe being filled.
    open: Option<Open>,
    next_id: u64,
}

/// The stripe [`Filler`] is filling.
struct Open {
    id: u64,
    members: Members,
    /// How many of `members` its parity on disk holds already.
    old: usize,
    /// Whether it gained any member.
    grew: bool,
}

impl Filler<'_> {
    fn add_batch(&mut self, batch: &mut Members) -> Result<()> {
        let fresh = self.idx.unprotected(batch)?;
        for ((id, size), fresh) in batch.drain(..).zip(fresh) {
            if !fresh {
                continue;
            }
            let next_id = &mut self.next_id;
            let open = self.open.get_or_insert_with(|| {
                *next_id += 1;
                Open {
                    id: *next_id - 1,
                    members: Vec::new(),
                    old: 0,
                    grew: false,
                }
            });
            open.members.push((id, size));
            open.grew = true;
            self.rep.packs_protected += 1;
            if open.members.len() >= self.cfg.k {
                // unwrap: set just above
                let full = self.open.take().unwrap();
                self.write(full)?;
            }
        }
        Ok(())
    }

    fn write(&mut self, st: Open) -> Result<()> {
        let spare = self.next_id;
        let (id, written) = write_counted(
            self.s,
            self.cfg,
            &mut self.rep,
            (st.id, spare),
            &st.members,
            st.old,
        )?;
        if id == spare {
            self.next_id += 1;
        }
        if written.is_empty() {
            return self.idx.remove(id);
        }
        let files: Vec<(usize, PathBuf)> = (0..self.cfg.m)
            .map(|i| (i, parity_path(self.s, id, i)))
            .collect();
        let k = Known {
            m: self.cfg.m as u32,
            members: written,
            readable: true,
        };
        self.idx.record(id, &stripe_index::signature(&files), &k)
    }

    fn close(mut self) -> Result<ProtectReport> {
        if let Some(st) = self.open.take().filter(|o| o.grew) {
            self.write(st)?;
        }
        Ok(self.rep)
    }
}

/// Writes stripe `id.0` over `members`, the first `old` of which its
/// parity holds already, and counts it: fresh members that turn out
/// damaged are left out of it and reported instead of protected. When an
/// old member is missing or damaged, that stripe keeps its parity (the
/// copy that can rebuild the member) and the fresh members go to the new
/// stripe `id.1` instead. Returns the stripe written and its members.
fn write_counted(
    s: &LocalStore,
    cfg: ParityConfig,
    rep: &mut ProtectReport,
    id: (u64, u64),
    members: &[(PackId, u64)],
    old: usize,
) -> Result<(u64, Members)> {
    let (id, members, bad) = match write_stripe(s, id.0, members, old, cfg.m)? {
        Wrote::Done(bad) => (id.0, members, bad),
        Wrote::Kept(lost) => {
            rep.damaged.extend(lost);
            let fresh = &members[old..];
            match write_stripe(s, id.1, fresh, 0, cfg.m)? {
                Wrote::Done(bad) | Wrote::Kept(bad) => (id.1, fresh, bad),
            }
        }
    };
    // Saturating: an earlier member of a grown stripe may be among them.
    rep.packs_protected = rep.packs_protected.saturating_sub(bad.len() as u64);
    let written = members
        .iter()
        .filter(|(p, _)| !bad.contains(p))
        .copied()
        .collect();
    rep.damaged.extend(bad);
    rep.stripes_written += 1;
    Ok((id, written))
}

/// Parity computed while a backup runs: the backup hands over each pack as
/// soon as it is durable, full stripes are written at once (their packs are
/// still in the page cache), and the rest when the backup stops handing
/// packs over. The [`protect`] after the commit then only finds what other
/// writers left.
pub struct Protector {
    tx: Option<crossbeam_channel::Sender<(PackId, u64)>>,
    thread: std::thread::JoinHandle<Result<ProtectReport>>,
    stop: Arc<AtomicBool>,
}

impl Protector {
    /// Starts the parity thread for `s`.
    pub fn start(s: LocalStore, cfg: ParityConfig) -> Result<Protector> {
        // Stripes from before this run's packs existed cannot hold them,
        // except the last readable one, which another writer's protect may
        // grow.
        let mut from = 0;
        for (id, files) in stripe_files(&s)?.into_iter().rev() {
            if load_stripe(id, files).is_some() {
                from = id;
                break;
            }
        }
        let (tx, rx) = crossbeam_channel::unbounded();
        let stop = Arc::new(AtomicBool::new(false));
        let st = stop.clone();
        let thread = std::thread::spawn(move || protect_fresh(&s, cfg, from, rx, &st));
        Ok(Protector {
            tx: Some(tx),
            thread,
            stop,
        })
    }

    /// Where to send each new pack (id and size) once it is durable.
    pub fn sender(&mut self) -> Option<crossbeam_channel::Sender<(PackId, u64)>> {
        self.tx.take()
    }

    /// Waits until every pack handed over is in a stripe (or left for the
    /// next protect, when parity was busy elsewhere).
    pub fn finish(mut self) -> Result<ProtectReport> {
        drop(self.tx.take());
        self.thread
            .join()
            .map_err(|_| Error::Corrupt("the parity thread panicked".into()))?
    }

    /// For a backup that failed or was interrupted: starts no further
    /// stripe, and waits only for the one being written, so that the
    /// process does not exit with its temporary files half written in
    /// `tmp/` (CI's full-disk test caught two). The next protect covers
    /// the packs.
    pub fn abandon(mut self) {
        self.stop.store(true, Ordering::SeqCst);
        drop(self.tx.take());
        let _ = self.thread.join();
    }
}

/// How often the parity thread of a backup looks whether it was abandoned.
const STOP_POLL: std::time::Duration = std::time::Duration::from_millis(50);

/// The parity thread: gathers fresh packs, writes each stripe as soon as
/// it can be filled, and the last (open) one when the sender is gone.
fn protect_fresh(
    s: &LocalStore,
    cfg: ParityConfig,
    mut from: u64,
    rx: crossbeam_channel::Receiver<(PackId, u64)>,
    stop: &AtomicBool,
) -> Result<ProtectReport> {
    let mut rep = ProtectReport::default();
    let mut fresh: Members = Vec::new();
    let mut open = true;
    while open {
        // Polled, so an abandoning backup that still holds a sender is not
        // kept waiting.
        match rx.recv_timeout(STOP_POLL) {
            Ok(p) => fresh.push(p),
            Err(RecvTimeoutError::Timeout) if stop.load(Ordering::SeqCst) => break,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => open = false,
        }
        // A lock and a directory listing per stripe, not per pack.
        if fresh.is_empty() || (open && fresh.len() < cfg.k) || stop.load(Ordering::SeqCst) {
            continue;
        }
        // Never waits behind a scrub (which holds the lock for its whole
        // pass): the protect after the commit does what is left.
        let Some(_g) = s.try_lock_named("parity.lock")? else {
            continue;
        };
        let files = stripe_files(s)?;
        // Another writer's protect may have taken some of these packs into
        // a stripe since the last look: those written or grown since.
        let mut last = None;
        for (id, f) in files.range(from..) {
            if let Some(st) = load_stripe(*id, f.clone()) {
                fresh.retain(|(p, _)| st.header.members.iter().all(|m| m.pack != *p));
                last = Some(st);
            }
        }
        let top = files.keys().next_back().copied();
        let (mut id, mut members): (u64, Members) = match last {
            Some(st)
                if Some(st.id) == top && cfg.takes_more(st.header.members.len(), st.header.m) =>
            {
                let m = st.header.members.iter().map(|m| (m.pack, m.size));
                (st.id, m.collect())
            }
            _ => (top.map_or(0, |t| t + 1), Vec::new()),
        };
        let mut old = members.len();
        // Full stripes now; while the backup runs, an open one waits.
        while !fresh.is_empty()
            && (!open || members.len() + fresh.len() >= cfg.k)
            && !stop.load(Ordering::SeqCst)
        {
            let n = (cfg.k - members.len()).min(fresh.len());
            members.extend(fresh.drain(..n));
            rep.packs_protected += n as u64;
            let (used, _) = write_counted(s, cfg, &mut rep, (id, id + 1), &members, old)?;
            from = used;
            id = used + 1;
            members.clear();
            old = 0;
        }
    }
    Ok(rep)
}

/// After packs were deleted on purpose: rewrites the parity of the stripes
/// that held them, so a scrub never brings a collected pack back. `gone`
/// tells whether a pack was deleted; it is asked once per stripe member.
/// A stripe with another member missing or damaged keeps its parity: it
/// is what rebuilds that member (a scrub may then bring the collected
/// ones back too, as unreferenced packs the next collection removes).
pub fn forget_packs(
    s: &LocalStore,
    gone: &mut dyn FnMut(&PackId) -> Result<bool>,
    cfg: ParityConfig,
) -> Result<()> {
    let _g = s.lock_named("parity.lock", true)?;
    for_each_stripe(s, &mut |st| {
        let mut keep = Vec::with_capacity(st.header.members.len());
        for m in &st.header.members {
            if !gone(&m.pack)? {
                keep.push((m.pack, m.size));
            }
        }
        if keep.len() < st.header.members.len() {
            write_stripe(s, st.id, &keep, keep.len(), cfg.m.max(st.header.m as usize))?;
        }
        Ok(())
    })
}

struct Throttle {
    rate: Option<u64>,
    start: Instant,
    bytes: u64,
}

impl Throttle {
    fn add(&mut self, n: u64) {
        self.bytes += n;
        if let Some(rate) = self.rate.filter(|r| *r > 0) {
            let due = std::time::Duration::from_secs_f64(self.bytes as f64 / rate as f64);
            let spent = self.start.elapsed();
            if due > spent {
                std::thread::sleep(due - spent);
            }
        }
    }
}

/// Repairs one pack from its stripe's parity, for a reader that found it
/// damaged. Returns whether the pack is sound now.
pub fn repair_pack(s: &LocalStore, id: &PackId) -> Result<bool> {
    let _g = s.lock_named("parity.lock", true)?;
    let mut found = None;
    for_each_stripe(s, &mut |st| {
        if found.is_none() && st.header.members.iter().any(|m| m.pack == *id) {
            found = Some(st);
        }
        Ok(())
    })?;
    let Some(st) = found else {
        return Ok(false);
    };
    let mut rep = ScrubReport::default();
    let mut t = Throttle {
        rate: None,
        start: Instant::now(),
        bytes: 0,
    };
    let mut bad = HashMap::new();
    scrub_stripe(s, &st, &mut rep, &mut t, &mut bad)?;
    Ok(fs::read(s.pack_path(id))
        .map(|b| PackId::of(&b) == *id)
        .unwrap_or(false))
}

/// Reads and checks everything, repairs what parity allows, then protects
/// packs that were in no stripe yet.
pub fn scrub(s: &LocalStore, cfg: ParityConfig, opts: &ScrubOptions) -> Result<ScrubReport> {
    let _g = s.lock_named("parity.lock", true)?;
    // What a killed scrub (or upload) left in tmp/: repaired packs and
    // parity half written. Live writers hold theirs locked.
    s.sweep_abandoned()?;
    let mut rep = ScrubReport::default();
    let mut t = Throttle {
        rate: opts.rate,
        start: Instant::now(),
        bytes: 0,
    };
    let mut bad: HashMap<PackId, String> = HashMap::new();
    let stripes = stripe_files(s)?;
    let mut state = scrub_state(s);
    // An interrupted pass (started, not completed since) carries on.
    if opts.restart || !state.in_pass() {
        state.pass_started = s.now().max(state.last_complete + 1);
        state.verified.clear();
        state.current = ScrubCounts::default();
    }
    state.stripes = stripes.len() as u64;
    save_state(s, &state)?;
    let base = state.current.clone();
    let mut saved: Option<Instant> = None;
    let mut in_stripe = HashSet::new();
    // The scrub reads every header, so it also tells the stripe index what
    // it found: a stripe whose headers rotted in place (same inode, length
    // and mtime) is known unreadable, and its members get new parity.
    let mut idx = StripeIndex::open(&parity_dir(s))?;
    // One stripe's headers in memory at a time.
    for (id, files) in stripes {
        let sig = stripe_index::signature(&files);
        let Some(st) = load_stripe(id, files) else {
            rep.stripes_unreadable += 1;
            idx.record(id, &sig, &Known::unreadable())?;
            continue;
        };
        idx.record(id, &sig, &known(&st))?;
        for m in &st.header.members {
            in_stripe.insert(m.pack);
        }
        if state.verified.contains_key(&st.id) {
            rep.stripes_resumed += 1;
            continue;
        }
        scrub_stripe(s, &st, &mut rep, &mut t, &mut bad)?;
        state.verified.insert(st.id, s.now());
        // The state grows with the pass: saved after the first stripe, then
        // at most every SAVE_EVERY (and at the end), not after every stripe.
        if saved.is_none_or(|t| t.elapsed() >= SAVE_EVERY) {
            state.current = ScrubCounts::tally(&base, &rep, &listed(&bad));
            save_state(s, &state)?;
            saved = Some(Instant::now());
        }
    }
    // Packs in no stripe yet: their name is their hash, nothing to repair from.
    let mut loose = Vec::new();
    s.for_each_pack(&mut |id, size| {
        if !in_stripe.contains(&id) {
            loose.push((id, size));
        }
        Ok(())
    })?;
    for &(id, size) in &loose {
        rep.unprotected_checked += 1;
        rep.packs_checked += 1;
        let ok = s.read_pack(&id, 0, size as usize).map(|b| {
            t.add(size);
            rep.bytes_read += size;
            PackId::of(&b) == id
        });
        if !matches!(ok, Ok(true)) {
            rep.unrepairable_blocks += parity::blocks(size);
            bad.insert(id, "damaged and in no stripe yet (no parity)".into());
        }
    }
    let loose: HashSet<PackId> = loose.into_iter().map(|(id, _)| id).collect();
    let pr = protect_locked(s, cfg)?;
    for p in pr.damaged {
        bad.entry(p).or_insert_with(|| "damaged".into());
    }
    // Every pack a snapshot lists must be somewhere: one lost together
    // with its stripe's parity is in no stripe and on no disk, and only
    // the snapshots still know of it.
    let mut refs = referenced::walk(s, &|p| in_stripe.contains(p) || loose.contains(p), &mut bad)?;
    let mut list: Vec<_> = bad.into_iter().collect();
    list.sort();
    for (pack, reason) in list {
        rep.unrepairable.push(Unrepairable {
            pack,
            reason,
            snapshots: refs.remove(&pack).unwrap_or_default(),
        });
    }
    state.last = Some(ScrubCounts::tally(&base, &rep, &rep.unrepairable));
    state.current = ScrubCounts::default();
    state.last_complete = s.now().max(state.pass_started);
    state.verified.clear();
    save_state(s, &state)?;
    Ok(rep)
}

fn scrub_stripe(
    s: &LocalStore,
    st: &Stripe,
    rep: &mut ScrubReport,
    t: &mut Throttle,
    bad: &mut HashMap<PackId, String>,
) -> Result<()> {
    let h = &st.header;
    let k = h.members.len();
    let m = h.m as usize;
    let members: Vec<Option<File>> = h
        .members
        .iter()
        .map(|mb| File::open(s.pack_path(&mb.pack)).ok())
        .collect();
    let sizes: Vec<u64> = members
        .iter()
        .map(|f| {
            f.as_ref()
                .and_then(|f| f.metadata().ok())
                .map(|md| md.len())
                .unwrap_or(0)
        })
        .collect();
    let shards: Vec<Option<(File, &ByteBuf)>> = st
        .files
        .iter()
        .map(|p| {
            p.as_ref()
                .and_then(|(p, sums)| File::open(p).ok().map(|f| (f, sums)))
        })
        .collect();
    rep.packs_checked += k as u64;
    rep.parity_checked += m as u64;
    let mut fixes: Vec<BTreeMap<u64, Vec<u8>>> = vec![BTreeMap::new(); k];
    let mut parity_bad = false;
    for row in 0..h.rows {
        let mut mb: Vec<Option<Vec<u8>>> = Vec::with_capacity(k);
        let mut damaged = false;
        for (i, member) in h.members.iter().enumerate() {
            if row >= parity::blocks(member.size) {
                mb.push(Some(Vec::new()));
                continue;
            }
            rep.blocks_checked += 1;
            // Read as the member should be: its recorded size, not the file's.
            let b = read_block(members[i].as_ref(), member.size, row).filter(|b| {
                let want = &member.sums[row as usize * 32..row as usize * 32 + 32];
                parity::block_sum(h.version, row, b) == want
            });
            if let Some(b) = &b {
                t.add(b.len() as u64);
                rep.bytes_read += b.len() as u64;
            } else {
                damaged = true;
                rep.damaged_blocks += 1;
            }
            mb.push(b);
        }
        let mut pb: Vec<Option<Vec<u8>>> = Vec::with_capacity(m);
        for sh in &shards {
            rep.blocks_checked += 1;
            let start = 8 + row * PARITY_BLOCK as u64;
            let b = sh.as_ref().and_then(|(f, sums)| {
                let mut b = vec![0u8; PARITY_BLOCK];
                f.read_exact_at(&mut b, start).ok()?;
                let want = &sums[row as usize * 32..row as usize * 32 + 32];
                (parity::block_sum(h.version, row, &b) == want).then_some(b)
            });
            if b.is_none() {
                rep.damaged_blocks += 1;
                parity_bad = true;
            } else {
                t.add(PARITY_BLOCK as u64);
                rep.bytes_read += PARITY_BLOCK as u64;
            }
            pb.push(b);
        }
        if !damaged {
            continue;
        }
        match parity::rebuild_row(&mb, &pb) {
            Ok(full) => {
                for (i, was) in mb.iter().enumerate() {
                    if was.is_none() {
                        let len = (h.members[i].size - row * PARITY_BLOCK as u64)
                            .min(PARITY_BLOCK as u64) as usize;
                        fixes[i].insert(row, full[i][..len].to_vec());
                        rep.repaired_blocks += 1;
                    }
                }
            }
            Err(e) => {
                for (i, was) in mb.iter().enumerate() {
                    if was.is_none() {
                        rep.unrepairable_blocks += 1;
                        bad.entry(h.members[i].pack)
                            .or_insert_with(|| format!("beyond the parity budget: {e}"));
                    }
                }
            }
        }
    }
    // Write every repaired pack: the old bytes with the rebuilt blocks, and
    // only if the result hashes to the pack's name again. A file longer than
    // its pack (bytes appended) is cut back the same way.
    for (i, f) in fixes.into_iter().enumerate() {
        let member = &h.members[i];
        let too_long = members[i].is_some() && sizes[i] > member.size;
        if too_long && f.is_empty() {
            rep.damaged_blocks += 1;
        }
        if (f.is_empty() && !too_long) || bad.contains_key(&member.pack) {
            continue;
        }
        let mut bytes = vec![0u8; member.size as usize];
        if let Some(file) = &members[i] {
            let have = sizes[i].min(member.size) as usize;
            let _ = file.read_exact_at(&mut bytes[..have], 0);
        }
        for (row, b) in f {
            let off = row as usize * PARITY_BLOCK;
            bytes[off..off + b.len()].copy_from_slice(&b);
        }
        if PackId::of(&bytes) != member.pack {
            bad.insert(
                member.pack,
                "rebuilt bytes do not hash to the pack's name".into(),
            );
            continue;
        }
        let path = s.pack_path(&member.pack);
        let (tmp, mut out, _held) = partial::create(&s.root().join("tmp"))?;
        // A pack keeps its time (the store's clock at upload: what a
        // commit's new bytes and the collection's grace period read).
        let written = fs::metadata(&path).and_then(|m| m.modified()).ok();
        out.write_all(&bytes)
            .and_then(|_| written.map_or(Ok(()), |t| out.set_modified(t)))
            .and_then(|_| out.sync_all())
            .at(&tmp)?;
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir).at(dir)?;
        }
        // The one place a pack is replaced: by its own verified bytes.
        fs::rename(&tmp, &path).at(&path)?;
        // unwrap: a pack path always has a parent
        fsync_dir(path.parent().expect("pack dir"))?;
        s.forget_handle(&member.pack);
        // Checked again as stored.
        if fs::read(&path)
            .map(|b| PackId::of(&b) != member.pack)
            .unwrap_or(true)
        {
            bad.insert(
                member.pack,
                "the repaired pack did not read back intact".into(),
            );
            continue;
        }
        rep.repaired_packs.push(member.pack);
    }
    if parity_bad {
        let keep: Vec<(PackId, u64)> = h
            .members
            .iter()
            .filter(|mb| !bad.contains_key(&mb.pack))
            .map(|mb| (mb.pack, mb.size))
            .collect();
        if keep.len() == h.members.len()
            && write_stripe(s, st.id, &keep, keep.len(), m)? == Wrote::Done(Vec::new())
        {
            rep.parity_rewritten += 1;
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::fs::OpenOptions;

    fn pack(s: &LocalStore, bytes: &[u8]) -> (PackId, u64) {
        let id = PackId::of(bytes);
        let mut u = s.upload_pack().unwrap();
        u.write_all(bytes).unwrap();
        u.commit(id).unwrap();
        (id, bytes.len() as u64)
    }

    /// A store with parity `k+m` and `n` packs of distinct content.
    fn store_with(
        k: usize,
        m: usize,
        n: usize,
        tag: &str,
    ) -> (tempfile::TempDir, LocalStore, Vec<(PackId, u64)>) {
        let d = tempfile::tempdir().unwrap();
        let s = LocalStore::create(d.path())
            .unwrap()
            .with_parity(ParityConfig { k, m });
        let packs = (0..n)
            .map(|i| pack(&s, format!("{tag} {i} ").repeat(3000).as_bytes()))
            .collect();
        (d, s, packs)
    }

    /// Damages a parity file's header in place, keeping its inode, length
    /// and mtime (what the stripe index compares).
    fn rot_header(p: &std::path::Path) {
        let md = fs::metadata(p).unwrap();
        let f = OpenOptions::new().write(true).open(p).unwrap();
        f.write_all_at(&[0x55; 8], md.len() - 8).unwrap();
        f.set_modified(md.modified().unwrap()).unwrap();
    }

    /// Every stripe's members, in stripe order.
    fn members(s: &LocalStore) -> Vec<Vec<PackId>> {
        let mut out = Vec::new();
        for_each_stripe(s, &mut |st| {
            out.push(st.header.members.iter().map(|m| m.pack).collect());
            Ok(())
        })
        .unwrap();
        out
    }

    #[test]
    fn parity_during_a_backup_fills_stripes_once_and_leaves_nothing_to_protect() {
        let d = tempfile::tempdir().unwrap();
        let cfg = ParityConfig { k: 3, m: 1 };
        let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
        // An open stripe from an earlier run.
        let old = pack(&s, b"a pack of an earlier run");
        protect(&s, cfg).unwrap();
        let mut p = Protector::start(LocalStore::open_dir(d.path()).unwrap(), cfg).unwrap();
        let tx = p.sender().unwrap();
        assert!(p.sender().is_none(), "one sender only");
        // Another writer's protect takes one of the packs first.
        let taken = pack(&s, b"a pack another protect takes first");
        protect(&s, cfg).unwrap();
        let fresh: Vec<(PackId, u64)> = (0..6)
            .map(|i| {
                pack(
                    &s,
                    format!("fresh pack {i} ").repeat(5000 * (i + 1)).as_bytes(),
                )
            })
            .collect();
        tx.send(taken).unwrap();
        for f in &fresh {
            tx.send(*f).unwrap();
        }
        drop(tx);
        let rep = p.finish().unwrap();
        assert_eq!(rep.packs_protected, 6, "{rep:?}");
        assert!(rep.damaged.is_empty());
        let id = |p: &(PackId, u64)| p.0;
        assert_eq!(
            members(&s),
            vec![
                // the open stripe is filled first, then new ones start
                vec![id(&old), id(&taken), id(&fresh[0])],
                fresh[1..4].iter().map(id).collect::<Vec<_>>(),
                fresh[4..].iter().map(id).collect::<Vec<_>>(),
            ]
        );
        let again = protect(&s, cfg).unwrap();
        assert_eq!((again.packs_protected, again.stripes_written), (0, 0));
        // and the parity it wrote repairs a lost member
        fs::remove_file(s.pack_path(&fresh[2].0)).unwrap();
        assert!(repair_pack(&s, &fresh[2].0).unwrap());
        assert_eq!(s.pack_size(&fresh[2].0).unwrap(), Some(fresh[2].1));
    }

    #[test]
    fn protect_reads_only_the_stripes_that_changed_and_survives_a_lost_index() {
        let (d, s, packs) = store_with(3, 1, 7, "pack");
        let cfg = s.parity();
        let rep = protect(&s, cfg).unwrap();
        assert_eq!((rep.packs_protected, rep.stripes_written), (7, 3));
        // Stripe 0's header made unreadable in place, its length and mtime
        // kept: protect trusts the index and does not read it again (the
        // scrub is what reads every byte).
        rot_header(&parity_path(&s, 0, 0));
        let rep = protect(&s, cfg).unwrap();
        assert_eq!((rep.packs_protected, rep.stripes_written), (0, 0));
        // Stripe 1's files gone: the index notices, its members are
        // protected again, in a new stripe.
        fs::remove_file(parity_path(&s, 1, 0)).unwrap();
        let rep = protect(&s, cfg).unwrap();
        assert_eq!(
            (rep.packs_protected, rep.stripes_written),
            (3, 2),
            "{rep:?}"
        );
        let in_stripes = members(&s).into_iter().flatten();
        assert_eq!(in_stripes.filter(|p| *p == packs[4].0).count(), 1);
        // A damaged index is rebuilt from the headers; stripe 0, unreadable
        // now, gives its members to the open stripe and a new one.
        fs::write(
            d.path().join("parity").join(stripe_index::INDEX_FILE),
            b"not sqlite",
        )
        .unwrap();
        let rep = protect(&s, cfg).unwrap();
        assert_eq!(
            (rep.packs_protected, rep.stripes_written),
            (3, 2),
            "{rep:?}"
        );
        let again = protect(&s, cfg).unwrap();
        assert_eq!((again.packs_protected, again.stripes_written), (0, 0));
        // Every pack is in exactly one readable stripe.
        let mut all: Vec<PackId> = members(&s).into_iter().flatten().collect();
        all.sort();
        let mut want: Vec<PackId> = packs.iter().map(|p| p.0).collect();
        want.sort();
        assert_eq!(all, want);
    }

    #[test]
    fn stripes_of_layout_1_are_still_checked_and_repaired() {
        let d = tempfile::tempdir().unwrap();
        let cfg = ParityConfig { k: 3, m: 1 };
        let s = LocalStore::create(d.path()).unwrap().with_parity(cfg);
        let packs: Vec<(PackId, u64)> = (0..3)
            .map(|i| {
                let text = format!("layout one {i} ").repeat(20_000 * (i + 1));
                pack(&s, text.as_bytes())
            })
            .collect();
        protect(&s, cfg).unwrap();
        // The stripe rewritten as layout 1 wrote it: the same shard, and
        // the sum of each block alone.
        let sums_v1 = |bytes: &[u8]| -> ByteBuf {
            let s = bytes
                .chunks(PARITY_BLOCK)
                .flat_map(|b| parity::block_sum(1, 0, b));
            ByteBuf::from(s.collect::<Vec<u8>>())
        };
        let path = parity_path(&s, 0, 0);
        let mut h = read_header(&path).unwrap();
        assert_eq!(h.version, STRIPE_VERSION);
        h.version = 1;
        for m in &mut h.members {
            m.sums = sums_v1(&fs::read(s.pack_path(&m.pack)).unwrap());
        }
        let file = fs::read(&path).unwrap();
        let end = 8 + h.rows as usize * PARITY_BLOCK;
        h.sums = sums_v1(&file[8..end]);
        let mut out = file[..end].to_vec();
        out.extend_from_slice(&parity::encode_tail(&h));
        fs::write(&path, out).unwrap();
        let rep = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
        assert_eq!(
            (rep.damaged_blocks, rep.stripes_unreadable),
            (0, 0),
            "{rep:?}"
        );
        // A flipped byte in a member of several blocks is found and
        // repaired from the layout 1 parity.
        let victim = s.pack_path(&packs[2].0);
        let mut bytes = fs::read(&victim).unwrap();
        bytes[100_000] ^= 1;
        fs::remove_file(&victim).unwrap();
        fs::write(&victim, &bytes).unwrap();
        let rep = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
        assert_eq!((rep.damaged_blocks, rep.repaired_blocks), (1, 1), "{rep:?}");
        assert!(rep.unrepairable.is_empty(), "{rep:?}");
        assert_eq!(PackId::of(&fs::read(&victim).unwrap()), packs[2].0);
        assert_eq!(
            read_header(&path).unwrap().version,
            1,
            "sound parity is kept"
        );
    }

    #[test]
    fn a_scrub_finds_headers_rotted_in_place_and_their_packs_get_new_parity() {
        let (_d, s, packs) = store_with(3, 1, 3, "rot");
        let cfg = s.parity();
        let mut packs: Vec<PackId> = packs.into_iter().map(|p| p.0).collect();
        protect(&s, cfg).unwrap();
        // The only parity file's header rots; inode, length and mtime stay.
        rot_header(&parity_path(&s, 0, 0));
        assert_eq!(protect(&s, cfg).unwrap().packs_protected, 0, "trusted");
        let rep = scrub(&s, cfg, &ScrubOptions::default()).unwrap();
        assert_eq!(rep.stripes_unreadable, 1, "{rep:?}");
        assert!(rep.unrepairable.is_empty(), "{rep:?}");
        assert_eq!(rep.unprotected_checked, 3);
        // the scrub's protect gave them a readable stripe again
        let mut all: Vec<PackId> = members(&s).into_iter().flatten().collect();
        all.sort();
        packs.sort();
        assert_eq!(all, packs);
        let again = protect(&s, cfg).unwrap();
        assert_eq!((again.packs_protected, again.stripes_written), (0, 0));
    }

    #[test]
    fn parity_during_a_backup_never_waits_for_a_scrub_and_stops_when_abandoned() {
        let (d, s, packs) = store_with(2, 1, 4, "busy");
        let cfg = s.parity();
        // A scrub holds the lock: the thread leaves the packs for later.
        let held = s.lock_named("parity.lock", true).unwrap();
        let mut p = Protector::start(LocalStore::open_dir(d.path()).unwrap(), cfg).unwrap();
        let tx = p.sender().unwrap();
        for x in &packs[..2] {
            tx.send(*x).unwrap();
        }
        drop(tx);
        assert_eq!(p.finish().unwrap().packs_protected, 0);
        drop(held);
        assert!(members(&s).is_empty());
        // Abandoned (a failed backup): the thread has stopped when abandon
        // returns, though the backup still holds its sender, and nothing
        // more is written.
        let mut p = Protector::start(LocalStore::open_dir(d.path()).unwrap(), cfg).unwrap();
        let tx = p.sender().unwrap();
        p.abandon();
        for x in &packs[2..] {
            assert!(tx.send(*x).is_err(), "no one listens any more");
        }
        drop(tx);
        assert!(members(&s).is_empty());
        // The next protect covers them all.
        assert_eq!(protect(&s, cfg).unwrap().packs_protected, 4);
    }
}
