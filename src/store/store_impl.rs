//! The [`Store`] contract on a local directory.

use super::*;

impl Store for LocalStore {
    fn read_config(&self) -> Result<Vec<u8>> {
        read_small(&self.root.join("config"), MAX_SMALL_FILE_BYTES)
    }

    fn write_config(&self, bytes: &[u8]) -> Result<()> {
        if let Some(b) = &self.bucket {
            // The same bytes there already: an init cut off between the
            // bucket and here, run again.
            if !b.put_once("config", bytes, 0, self.now())? && b.read("config")? != bytes {
                return Err(Error::Conflict(
                    "the namespace's bucket holds another config: rebuild this server from it (coffer serve --rebuild)".into(),
                ));
            }
        }
        write_once(&self.root.join("tmp"), &self.root.join("config"), bytes)
    }

    fn list_keys(&self) -> Result<Vec<String>> {
        let dir = self.root.join("keys");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(n) = e.file_name().to_str() {
                if valid_key_name(n) {
                    out.push(n.to_string());
                }
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_key(&self, name: &str) -> Result<Vec<u8>> {
        if !valid_key_name(name) {
            return Err(Error::NotFound(format!("key {name}")));
        }
        read_small(&self.root.join("keys").join(name), MAX_SMALL_FILE_BYTES)
    }

    fn write_key(&self, name: &str, bytes: &[u8]) -> Result<()> {
        if !valid_key_name(name) {
            return Err(Error::Denied(format!("invalid key name {name:?}")));
        }
        if let Some(b) = &self.bucket {
            let rel = format!("keys/{name}");
            if !b.put_once(&rel, bytes, 0, self.now())? && b.read(&rel)? != bytes {
                return Err(Error::Conflict(format!("key {name} exists already")));
            }
        }
        write_once(
            &self.root.join("tmp"),
            &self.root.join("keys").join(name),
            bytes,
        )
    }

    fn remove_key(&self, name: &str) -> Result<()> {
        if !valid_key_name(name) {
            return Err(Error::NotFound(format!("key {name}")));
        }
        let p = self.root.join("keys").join(name);
        fs::remove_file(&p).at(&p)?;
        fsync_dir(&self.root.join("keys"))?;
        if let Some(b) = &self.bucket {
            b.collected(&format!("keys/{name}"), 0)?;
        }
        Ok(())
    }

    fn upload_pack(&self) -> Result<Box<dyn PackUpload>> {
        let (tmp, file, held) = crate::partial::create(&self.root.join("tmp"))?;
        Ok(Box::new(LocalUpload {
            tmp,
            _held: held,
            file: io::BufWriter::with_capacity(1 << 20, file),
            hasher: PackHasher::default(),
            len: 0,
            root: self.root.clone(),
            clock: self.clock.clone(),
            bucket: self.bucket.clone(),
            policy: self.policy,
        }))
    }

    fn pack_size(&self, id: &PackId) -> Result<Option<u64>> {
        let p = self.pack_path(id);
        match fs::metadata(&p) {
            Ok(m) => Ok(Some(m.len())),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(Error::io(p, e)),
        }
    }

    fn read_pack(&self, id: &PackId, offset: u64, len: usize) -> Result<Vec<u8>> {
        within_any_pack(id, offset, len)?;
        let f = self.handle(id)?;
        let mut buf = vec![0u8; len];
        f.read_exact_at(&mut buf, offset)
            .map_err(|e| self.short_read(id, e))?;
        Ok(buf)
    }

    fn read_pack_span(
        &self,
        id: &PackId,
        offset: u64,
        len: usize,
        buf: &mut Vec<u8>,
    ) -> Result<std::ops::Range<usize>> {
        within_any_pack(id, offset, len)?;
        if let Some(r) = self.read_direct(id, offset, len, buf)? {
            return Ok(r);
        }
        let f = self.handle(id)?;
        buf.resize(buf.len().max(len), 0);
        f.read_exact_at(&mut buf[..len], offset)
            .map_err(|e| self.short_read(id, e))?;
        Ok(0..len)
    }

    fn warm(&self) {
        let root = self.root.clone();
        // Detached: it only reads, and a command that needs none of it may
        // exit before it is done.
        let _ = std::thread::Builder::new()
            .name("warm".into())
            .spawn(move || warm_dirs(&root));
    }

    fn for_each_pack(&self, f: &mut dyn FnMut(PackId, u64) -> Result<()>) -> Result<()> {
        for shard in self.pack_shards()? {
            for (id, len) in self.shard_packs(&shard)? {
                f(id, len)?;
            }
        }
        Ok(())
    }

    fn write_snapshot(&self, bytes: &[u8], group: Option<SnapshotGroup>) -> Result<SnapshotId> {
        let file = snapshot::decode(bytes)?;
        // A shared lock: a collection cannot delete a pack between the check
        // below and the commit.
        let _guard = self.lock_file(false)?;
        let mut packs = Vec::with_capacity(file.packs.len());
        for p in &file.packs {
            let path = self.pack_path(p);
            let meta = match fs::metadata(&path) {
                Ok(m) => m,
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(Error::Denied(format!(
                        "snapshot refused: it references pack {p}, which the repository does not hold"
                    )))
                }
                Err(e) => return Err(Error::io(path, e)),
            };
            packs.push((*p, meta.len(), mtime_secs(&meta)));
        }
        // Monitoring's figure, best effort: a commit never fails for it.
        let usage = match self.usage(&packs) {
            Ok(u) => Some(u),
            Err(e) => {
                warn_usage(&e);
                None
            }
        };
        let id = SnapshotId::of(bytes);
        if self.snapshot_path(&id).exists() {
            return Err(Error::Conflict(format!("snapshot {id} exists already")));
        }
        // Counted before the snapshot is written: a copy of this directory
        // put back later shows a smaller count (see `commits`).
        crate::commits::bump(self)?;
        // The store's clock, never the client's, starts the lock window.
        let now = (self.clock)();
        let now = now.max(self.seen());
        self.note_time(now)?;
        let stamp = Stamp {
            usage,
            group,
            ..Stamp::new(now, &self.policy)
        };
        if let Some(b) = &self.bucket {
            // Every pack locked in the bucket at least as long as the
            // snapshot, before the snapshot exists anywhere.
            let slack = bucket::slack(&self.policy);
            b.cover_packs(&file.packs, stamp.locked_until, false, slack, now, &|p| {
                self.pack_path(p)
            })?;
        }
        match self.write_stamp(&id, &stamp, false) {
            // A stamp left by an interrupted commit of the same snapshot: keep the earlier one.
            Ok(()) | Err(Error::Conflict(_)) => {}
            Err(e) => return Err(e),
        }
        if let Some(b) = &self.bucket {
            let rel = format!("snapshots/{}", id.to_hex());
            b.put_once(&rel, bytes, stamp.locked_until, now)?;
        }
        write_once(&self.root.join("tmp"), &self.snapshot_path(&id), bytes)?;
        Ok(id)
    }

    fn list_snapshots(&self) -> Result<Vec<SnapshotId>> {
        let dir = self.root.join("snapshots");
        let mut out = Vec::new();
        for e in fs::read_dir(&dir).at(&dir)? {
            let e = e.at(&dir)?;
            if let Some(id) = e.file_name().to_str().and_then(|n| n.parse().ok()) {
                out.push(id);
            }
        }
        out.sort();
        Ok(out)
    }

    fn read_snapshot(&self, id: &SnapshotId) -> Result<Vec<u8>> {
        read_small(&self.snapshot_path(id), MAX_SNAPSHOT_BYTES)
    }

    fn stamp(&self, id: &SnapshotId) -> Result<Stamp> {
        let snap = self.snapshot_path(id);
        let meta = fs::metadata(&snap).map_err(|e| match e.kind() {
            io::ErrorKind::NotFound => Error::NotFound(format!("snapshot {id}")),
            _ => Error::io(&snap, e),
        })?;
        match fs::read(self.stamp_path(id)) {
            Ok(b) => serde_json::from_slice(&b)
                .map_err(|e| Error::Corrupt(format!("stamp of snapshot {}: {e}", id.short()))),
            // No stamp (written by an older build): the file's time stands in.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                Ok(Stamp::new(mtime_secs(&meta).unwrap_or(0), &self.policy))
            }
            Err(e) => Err(Error::io(self.stamp_path(id), e)),
        }
    }

    fn forget(&self, id: &SnapshotId) -> Result<()> {
        let _g = self.stamps_lock()?;
        let st = self.stamp(id)?;
        let now = (self.clock)();
        if let Some(why) =
            crate::clock_guard::refusal(self, self.seen(), crate::clock_guard::Check::Forget)?
        {
            return Err(Error::Denied(why));
        }
        retention::may_forget(*id, &st, now, self.seen())
            .map_err(|r| Error::Denied(r.to_string()))?;
        self.note_time(now)?;
        self.remove_snapshot(id)
    }

    fn repair(&self, id: &PackId) -> Result<bool> {
        let ok = crate::scrub::repair_pack(self, id)?;
        self.forget_handle(id);
        Ok(ok)
    }

    fn lock(&self, id: &SnapshotId, until: i64, hold: bool) -> Result<Stamp> {
        // A lock is a promise of storage: bounded, so a client cannot pin
        // space for ever (a legal hold is the explicit way to do that).
        let max = (self.clock)().saturating_add(MAX_LOCK_SECS);
        if until > max {
            return Err(Error::Denied(format!(
                "a lock may reach at most {} days ahead; use a legal hold to keep a snapshot longer",
                MAX_LOCK_SECS / retention::DAY_SECS
            )));
        }
        let _g = self.stamps_lock()?;
        let mut st = self.stamp(id)?;
        st.extend(until, hold);
        // The packs and the snapshot file first, then the stamp that
        // reports the lock.
        self.lock_in_bucket(id, &st)?;
        self.write_stamp(id, &st, true)?;
        Ok(st)
    }
}
