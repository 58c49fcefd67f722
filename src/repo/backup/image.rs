//! Disk images: a file or device read in fixed blocks, an NBD export
//! (a qcow2 through a private qemu-nbd included), and the clean ranges of
//! a dirty-bitmap backup taken from the parent snapshot unread.

use super::*;

/// Whether an image source is a qcow2 file read as its guest's disk.
pub(super) fn qcow2_guest(path: &Path) -> bool {
    source::nbd::qemu::is_qcow2(path) && source::nbd::qemu::available()
}

/// The file name an image source gets in the snapshot.
pub(super) fn image_name(path: &Path, name: Option<&str>) -> Result<String> {
    if let Some(n) = name {
        return Ok(n.to_string());
    }
    if source::nbd::is_url(&path.to_string_lossy()) {
        return Ok(nbd_name(&nbd_url(path)?));
    }
    if qcow2_guest(path) {
        // The guest's disk, not the container: `vm101.qcow2` holds `vm101`.
        let stem = path.file_stem().unwrap_or_default().to_string_lossy();
        return Ok(stem.into_owned());
    }
    Ok(path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default())
}

/// An image source's NBD URI.
pub(super) fn nbd_url(path: &Path) -> Result<source::nbd::NbdUrl> {
    source::nbd::NbdUrl::parse(&path.to_string_lossy()).map_err(Error::Denied)
}

/// The file name an NBD export gets in the snapshot when none is given:
/// its export name's last part, or `disk`.
pub(super) fn nbd_name(url: &source::nbd::NbdUrl) -> String {
    let last = url.export.rsplit('/').next().unwrap_or_default();
    match crate::format::tree::safe_name(last.as_bytes()) {
        true => last.to_string(),
        false => "disk".to_string(),
    }
}

impl Walker {
    /// A buffer of an image's fixed blocks: every block's id first, then
    /// one batched lookup for the lot. `parent`: the parent snapshot's
    /// references for the same range when the dirty bitmap called it
    /// changed (else empty); a block equal to the parent's at the same
    /// offset (a bitmap granule is larger than a block, and a write may
    /// put back the same bytes) takes the parent's reference, which lies in
    /// the parent's packs, without a look-up.
    pub(super) fn push_blocks(
        &mut self,
        cb: &mut ContentBuilder,
        file: u64,
        data: &[u8],
        parent: &[ChunkRef],
    ) -> Result<()> {
        let mut refs = Vec::with_capacity(data.len().div_ceil(self.block));
        let mut blobs = Vec::with_capacity(refs.capacity());
        let mut old = parent.iter().peekable();
        let mut old_at = 0u64;
        for (i, chunk) in data.chunks(self.block).enumerate() {
            let len = chunk.len() as u64;
            if is_zero(chunk) {
                refs.push(ChunkRef::zeros(len));
                continue;
            }
            let id = self.keys.blob_id(chunk);
            let at = (i * self.block) as u64;
            while let Some(r) = old.next_if(|r| old_at + r.len <= at) {
                old_at += r.len;
            }
            let r = ChunkRef { id, len };
            if old.peek().is_none_or(|o| old_at != at || **o != r) {
                blobs.push((id, chunk));
            }
            refs.push(r);
        }
        self.add_blobs(file, Kind::Data, &blobs)?;
        for r in refs {
            self.push_ref(cb, file, r)?;
        }
        Ok(())
    }

    /// Where `data`, read at `pos`, differs from the parent's `refs` for
    /// the same range, compared chunk by chunk as the parent was cut (its
    /// blocks need not be this run's size).
    pub(super) fn differs(&self, refs: &[ChunkRef], data: &[u8], pos: u64) -> Option<u64> {
        let mut at = 0usize;
        for r in refs {
            let end = usize::try_from(r.len).ok().and_then(|n| at.checked_add(n));
            let Some(part) = end.and_then(|e| data.get(at..e)) else {
                return Some(pos + at as u64);
            };
            let same = match r.is_zero() {
                true => is_zero(part),
                false => r.id == self.keys.blob_id(part),
            };
            if !same {
                return Some(pos + at as u64);
            }
            at += part.len();
        }
        (at != data.len()).then_some(pos + at as u64)
    }

    /// Appends a chunk of the parent snapshot's disk, unread and not
    /// looked up: [`Walker::inherit_packs`] lists the parent's packs, which
    /// hold it. Looking up every clean chunk cost each nightly incremental
    /// time in proportion to the disk rather than to what changed.
    pub(super) fn reuse_ref(
        &mut self,
        cb: &mut ContentBuilder,
        file: u64,
        r: ChunkRef,
    ) -> Result<()> {
        self.push_ref(cb, file, r)
    }

    /// Lists the parent snapshot's packs in this one, for the chunks taken
    /// from its disk. The parent's list names every pack that holds one of
    /// its chunks (checked when it was committed, and the store refuses a
    /// snapshot that lists a pack it does not hold), so the chunks taken
    /// from it need no look-up of their own. A pack whose every chunk was
    /// rewritten since stays listed until a full read starts the chain
    /// again. Each counts as wholly live, so no pack of the disk is taken
    /// for mostly dead by the next run.
    fn inherit_packs(&mut self, parent: &ParentRefs) -> Result<()> {
        for p in parent.packs() {
            let size = self.cache.pack_size(p)?.unwrap_or(0);
            *self.run_packs.entry(*p).or_default() += size;
            if self.run_packs.len() >= PACK_MEMO {
                self.flush_run_packs()?;
            }
        }
        Ok(())
    }

    /// Reads an image in fixed blocks: an in-place change of a few bytes
    /// costs one block, and zero blocks (or holes, never read) cost nothing.
    pub(super) fn read_blocks(
        &mut self,
        f: &File,
        sparse: bool,
        file: u64,
        src: &Path,
    ) -> Result<(Content, u64)> {
        let reader = ImageReader::start(f, sparse, self.block).map_err(|e| Error::io(src, e))?;
        self.read_pieces(reader, file, src, None)
    }

    /// Takes an image reader's pieces into fixed blocks.
    pub(super) fn read_pieces(
        &mut self,
        reader: ImageReader,
        file: u64,
        src: &Path,
        mut parent: Option<&mut ParentRefs>,
    ) -> Result<(Content, u64)> {
        let mut cb = ContentBuilder::default();
        let mut pos = 0u64;
        loop {
            self.check_cancel()?;
            match reader.next_piece().map_err(|e| Error::io(src, e))? {
                Piece::Hole(n) => {
                    self.push_zeros(&mut cb, n);
                    pos += n;
                }
                Piece::Data(b) => {
                    let len = b.bytes().len() as u64;
                    self.source_read += len;
                    let old = match parent.as_deref_mut() {
                        Some(p) => p.take(&self.cache, pos, len)?,
                        None => Vec::new(),
                    };
                    self.push_blocks(&mut cb, file, b.bytes(), &old)?;
                    pos += len;
                    reader.give_back(b);
                }
                Piece::Clean(n) => {
                    let Some(p) = parent.as_deref_mut() else {
                        return Err(Error::Corrupt("a clean range without a parent".into()));
                    };
                    for r in p.take(&self.cache, pos, n)? {
                        self.reuse_ref(&mut cb, file, r)?;
                    }
                    pos += n;
                }
                Piece::Sample(b) => {
                    let Some(p) = parent.as_deref_mut() else {
                        return Err(Error::Corrupt("a clean range without a parent".into()));
                    };
                    let len = b.bytes().len() as u64;
                    self.source_read += len;
                    let refs = p.take(&self.cache, pos, len)?;
                    if let Some(at) = self.differs(&refs, b.bytes(), pos) {
                        self.bitmap_lie = Some(at);
                        return Err(Error::Corrupt(format!(
                            "the dirty bitmap called byte {at} clean, but it changed"
                        )));
                    }
                    reader.give_back(b);
                    for r in refs {
                        self.reuse_ref(&mut cb, file, r)?;
                    }
                    pos += len;
                }
                Piece::End => break,
            }
        }
        let bytes = cb.bytes;
        Ok((self.finish_content(cb, file)?, bytes))
    }

    /// Appends a run of zero bytes that was not read (a hole).
    pub(super) fn push_zeros(&mut self, cb: &mut ContentBuilder, len: u64) {
        cb.bytes += len;
        self.note_progress(0, len);
        match cb.refs.last_mut() {
            Some(last) if last.is_zero() => last.len += len,
            _ => cb.refs.push(ChunkRef::zeros(len)),
        }
    }

    /// An NBD export, read through its server: a file of the export's
    /// size, owned by the user running the backup, stamped with the
    /// backup's start.
    pub(super) fn backup_nbd(&mut self, path: &Path, name: Option<&str>) -> Result<Node> {
        let url = nbd_url(path)?;
        let name = name.map(str::to_string).unwrap_or_else(|| nbd_name(&url));
        if !crate::format::tree::safe_name(name.as_bytes()) {
            return Err(Error::Denied(format!(
                "image name {name:?} must be a plain file name"
            )));
        }
        let bitmap = self.changed_bitmap.clone();
        let parent = self.parent.take();
        let ask = bitmap.as_deref().filter(|_| parent.is_some());
        let client =
            source::nbd::NbdClient::connect_with(&url, ask).map_err(|e| Error::io(path, e))?;
        let mut refs = None;
        if let (Some(b), Some(p)) = (&bitmap, parent) {
            if client.size() != p.size {
                self.notices.push(format!(
                    "image {name:?} changed size ({} to {} bytes) since snapshot {}: reading the whole disk",
                    p.size,
                    client.size(),
                    p.id.short()
                ));
            } else if !client.has_bitmap() {
                self.notices.push(format!(
                    "the NBD server exports no dirty bitmap {b:?} (qemu-nbd -B {b}): reading the whole disk"
                ));
            } else {
                refs = Some(ParentRefs::new(p)?);
            }
        }
        let mut node = Node {
            name: ByteBuf::from(name.clone().into_bytes()),
            kind: Some(NodeKind::File),
            mode: 0o600,
            uid: nix::unistd::getuid().as_raw(),
            gid: nix::unistd::getgid().as_raw(),
            mtime_ns: self.start_ns,
            ..Node::default()
        };
        let reader = ImageReader::start_nbd(client, self.block, refs.is_some(), self.verify_clean)
            .map_err(|e| Error::io(path, e))?;
        self.file_seq += 1;
        self.note_progress(1, 0);
        let (c, n) = match self.read_pieces(reader, self.file_seq, path, refs.as_mut()) {
            Err(_) if self.bitmap_lie.is_some() => {
                let at = self.bitmap_lie.take().unwrap_or_default();
                self.notices.push(format!(
                    "dirty bitmap {:?} missed a change (byte {at} differs from snapshot {}): read the whole disk instead; start the bitmap again with this backup's disk snapshot",
                    bitmap.as_deref().unwrap_or_default(),
                    refs.as_ref().map(|r| r.id().short()).unwrap_or_default()
                ));
                refs = None;
                let client =
                    source::nbd::NbdClient::connect(&url).map_err(|e| Error::io(path, e))?;
                let reader = ImageReader::start_nbd(client, self.block, false, 0.0)
                    .map_err(|e| Error::io(path, e))?;
                self.read_pieces(reader, self.file_seq, path, None)?
            }
            r => r?,
        };
        if let Some(p) = &refs {
            self.inherit_packs(p)?;
        }
        self.stats.files += 1;
        self.stats.bytes += n;
        node.size = n;
        Self::set_content(&mut node, &c);
        self.image = Some(ImageRecord {
            name,
            size: n,
            bitmap_start: None,
            bitmap_token: None,
            bitmap_changed: refs.as_ref().and(bitmap),
            parent: refs.as_ref().map(|r| r.id()),
        });
        Ok(node)
    }

    /// A qcow2 file: its guest disk, through a private `qemu-nbd`.
    pub(super) fn backup_qcow2(&mut self, path: &Path, name: Option<&str>) -> Result<Node> {
        let export = image_name(path, name)?;
        let bitmap = self
            .changed_bitmap
            .clone()
            .filter(|_| self.parent.is_some());
        let qemu = source::nbd::qemu::QemuNbd::start;
        let srv = match qemu(path, &export, bitmap.as_deref()) {
            Ok(s) => s,
            Err(e) if bitmap.is_some() => {
                self.notices.push(format!("{e}: reading the whole disk"));
                self.parent = None;
                qemu(path, &export, None).map_err(|e| Error::io(path, e))?
            }
            Err(e) => return Err(Error::io(path, e)),
        };
        self.backup_nbd(Path::new(&srv.url), Some(&export))
    }

    pub(super) fn backup_image(&mut self, path: &Path, name: Option<&str>) -> Result<Node> {
        if source::nbd::is_url(&path.to_string_lossy()) {
            return self.backup_nbd(path, name);
        }
        if qcow2_guest(path) {
            return self.backup_qcow2(path, name);
        }
        if source::nbd::qemu::is_qcow2(path) {
            self.notices.push(format!(
                "qemu-nbd is not installed: {} is backed up as the qcow2 file it is, not as the guest's disk (apt-get install qemu-utils)",
                path.display()
            ));
        }
        let m = fs::metadata(path).map_err(|e| Error::io(path, e))?;
        let name = match name {
            Some(n) if crate::format::tree::safe_name(n.as_bytes()) => OsStr::new(n),
            Some(n) => {
                return Err(Error::Denied(format!(
                    "image name {n:?} must be a plain file name"
                )))
            }
            None => path
                .file_name()
                .ok_or_else(|| Error::Denied(format!("{} has no file name", path.display())))?,
        };
        let mut node = source::node_from(path, name.as_bytes(), &m, &mut self.names);
        node.kind = Some(NodeKind::File);
        node.rdev = 0;
        let f = File::open(path).map_err(|e| Error::io(path, e))?;
        self.file_seq += 1;
        self.note_progress(1, 0);
        let (c, n) = self.read_blocks(&f, m.is_file(), self.file_seq, path)?;
        self.stats.files += 1;
        self.stats.bytes += n;
        node.size = n;
        Self::set_content(&mut node, &c);
        Ok(node)
    }
}
