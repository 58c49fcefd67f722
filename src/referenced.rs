//! The packs the snapshots reference, read from their plain pack lists
//! one snapshot at a time and without a key: which of them are missing
//! from the store, and which snapshots a bad pack touches. Reads only;
//! what to do about a loss is the caller's (the scrub's) business.

use std::collections::HashMap;

use crate::error::Result;
use crate::format::snapshot;
use crate::id::{PackId, SnapshotId};
use crate::store::{LocalStore, Store};

/// Why a pack that a snapshot lists and the store does not hold is beyond
/// repair: parity rebuilds only members of a stripe it can still read.
pub const MISSING: &str = "missing: a snapshot lists it, and no readable stripe holds it";

/// Walks every snapshot's pack list, one snapshot in memory at a time. A
/// listed pack that `checked` does not vouch for (read by the caller in a
/// stripe or whole) and that the store does not hold is added to `bad`
/// as [`MISSING`]. Returns, for every pack in `bad`, the snapshots that
/// list it. A snapshot file that cannot be read or decoded is skipped
/// here (check and prune name it).
pub fn walk(
    s: &LocalStore,
    checked: &dyn Fn(&PackId) -> bool,
    bad: &mut HashMap<PackId, String>,
) -> Result<HashMap<PackId, Vec<SnapshotId>>> {
    // Shared with commits, exclusive of a collection: no pack of a snapshot
    // read here is deleted (as unreferenced) before it is looked up.
    let _shared = s.lock_file(false)?;
    let mut touched: HashMap<PackId, Vec<SnapshotId>> = HashMap::new();
    for_each_list(s, &mut |sid, packs| {
        for p in packs {
            // A pack written since the caller's walk (a backup running
            // meanwhile) is vouched for by its presence; a missing one is
            // looked up once, then known bad.
            if !checked(&p) && !bad.contains_key(&p) && s.pack_size(&p)?.is_none() {
                bad.insert(p, MISSING.into());
            }
            if bad.contains_key(&p) {
                touched.entry(p).or_default().push(sid);
            }
        }
        Ok(())
    })?;
    Ok(touched)
}

/// Calls `f` with each snapshot's plain pack list, one snapshot in memory
/// at a time, without a key. A snapshot file that cannot be read or
/// decoded is skipped: check and prune name it.
pub fn for_each_list(
    s: &dyn Store,
    f: &mut dyn FnMut(SnapshotId, Vec<PackId>) -> Result<()>,
) -> Result<()> {
    for sid in s.list_snapshots()? {
        let Ok(bytes) = s.read_snapshot(&sid) else {
            continue;
        };
        if let Ok(file) = snapshot::decode(&bytes) {
            f(sid, file.packs)?;
        }
    }
    Ok(())
}
