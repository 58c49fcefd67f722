//! The parity files of a store: where they live, reading their headers,
//! walking the stripes, and writing a stripe's parity durably.

use super::*;

pub(super) struct Stripe {
    pub(super) id: u64,
    pub(super) header: StripeHeader,
    /// Parity shard `i`: its path and its block sums, when a file agreeing
    /// with `header` exists.
    pub(super) files: Vec<Option<(PathBuf, ByteBuf)>>,
}

pub(super) fn parity_dir(s: &LocalStore) -> PathBuf {
    s.root().join("parity")
}

pub(super) fn parity_path(s: &LocalStore, stripe: u64, i: usize) -> PathBuf {
    parity_dir(s).join(format!("{stripe:016x}.{i}"))
}

pub(super) fn read_header(path: &std::path::Path) -> Result<StripeHeader> {
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
pub(super) fn stripe_files(s: &LocalStore) -> Result<BTreeMap<u64, Vec<(usize, PathBuf)>>> {
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
pub(super) fn load_stripe(id: u64, files: Vec<(usize, PathBuf)>) -> Option<Stripe> {
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
pub(super) fn for_each_stripe(
    s: &LocalStore,
    f: &mut dyn FnMut(Stripe) -> Result<()>,
) -> Result<()> {
    for (id, files) in stripe_files(s)? {
        if let Some(st) = load_stripe(id, files) {
            f(st)?;
        }
    }
    Ok(())
}

pub(super) fn read_block(f: Option<&File>, size: u64, row: u64) -> Option<Vec<u8>> {
    let mut b = Vec::new();
    read_block_into(f?, size, row, &mut b).then_some(b)
}

/// Reads block `row` of a member of `size` bytes into `b` (empty past its
/// end), reusing its allocation; false when it cannot be read.
pub(super) fn read_block_into(f: &File, size: u64, row: u64, b: &mut Vec<u8>) -> bool {
    let start = row * PARITY_BLOCK as u64;
    let len = size.saturating_sub(start).min(PARITY_BLOCK as u64) as usize;
    // Every byte is overwritten by the read: no need to zero it first.
    if b.len() != len {
        b.resize(len, 0);
    }
    len == 0 || f.read_exact_at(b, start).is_ok()
}
