//! The directory walk of a backup: entries and their metadata, files
//! read (or reused whole from the files cache), directory trees built
//! bottom-up, and the virtual root above several sources.

use super::*;

impl Walker {
    /// `res`, or `None` with a warning when it failed on `path` itself
    /// (the entry is left out); errors of other paths (the repository's)
    /// stay fatal.
    fn or_left_out<T>(&mut self, res: Result<T>, path: &Path) -> Result<Option<T>> {
        match res {
            Ok(v) => Ok(Some(v)),
            Err(Error::Io { path: p, err }) if p == path => {
                self.warnings.push(format!("{}: {err}", p.display()));
                Ok(None)
            }
            Err(e) => Err(e),
        }
    }

    /// Reads the files-cache records of a directory's next regular files
    /// in one go.
    fn look_up(&mut self, entries: &[(std::ffi::OsString, PathBuf, Metadata)]) -> Result<()> {
        let files: Vec<&PathBuf> = entries
            .iter()
            .filter(|(_, _, m)| m.is_file())
            .map(|(_, p, _)| p)
            .collect();
        let recs = self
            .cache
            .files(files.iter().map(|p| p.as_os_str().as_bytes()))?;
        for (p, rec) in files.into_iter().zip(recs) {
            self.looked_up.insert(p.clone(), rec);
        }
        Ok(())
    }

    /// The files-cache record of `path`, from the batched lookup when there
    /// was one.
    fn file_record(&mut self, path: &Path) -> Result<Option<FileRecord>> {
        match self.looked_up.remove(path) {
            Some(rec) => Ok(rec),
            None => self.cache.file(path.as_os_str().as_bytes()),
        }
    }

    /// Reuses a file's content from the files cache when the file is
    /// unchanged and every pack it lives in is still known.
    fn cached_content(&mut self, path: &Path, m: &Metadata) -> Result<Option<Content>> {
        if !self.use_files_cache {
            return Ok(None);
        }
        let Some(rec) = self.file_record(path)? else {
            return Ok(None);
        };
        let same = rec.matches(m) && rec.dev == m.dev();
        if !same || rec.packs.len() % 40 != 0 {
            return Ok(None);
        }
        let packs: Vec<(PackId, u64)> = rec
            .packs
            .chunks(40)
            .filter_map(|e| {
                let mut b = [0u8; 8];
                b.copy_from_slice(&e[32..]);
                PackId::from_slice(&e[..32]).map(|p| (p, u64::from_le_bytes(b)))
            })
            .collect();
        for (p, _) in &packs {
            // A mostly dead pack: read the file again so its chunks move out.
            if self.up.sparse.contains(p) || !self.pack_known(p)? {
                return Ok(None);
            }
        }
        let Ok(content) = cbor_decode::<Content>("files cache", &rec.content) else {
            return Ok(None);
        };
        for (p, bytes) in packs {
            *self.run_packs.entry(p).or_default() += bytes;
        }
        if self.run_packs.len() >= PACK_MEMO {
            self.flush_run_packs()?;
        }
        Ok(Some(content))
    }

    /// Tells the listener, if any, what became of the file at `path`.
    fn tell(&self, path: &Path, status: FileStatus) {
        if let Some(f) = &self.on_file {
            f(path, status);
        }
    }

    fn file_content(&mut self, path: &Path, m: &Metadata, node: &mut Node) -> Result<()> {
        let hard = m.nlink() > 1;
        if hard {
            if let Some(c) = self.hardlinks.get(&(m.dev(), m.ino())) {
                Self::set_content(node, &c.clone());
                self.tell(path, FileStatus::Linked);
                return Ok(());
            }
        }
        let key = path.as_os_str().as_bytes();
        // For the listener: whether the files cache holds an earlier version
        // (the record stays in `looked_up` for `cached_content` to take).
        let known = self.on_file.is_some() && self.use_files_cache && {
            if !self.looked_up.contains_key(path) {
                let rec = self.cache.file(key)?;
                self.looked_up.insert(path.to_path_buf(), rec);
            }
            self.looked_up.get(path).is_some_and(|r| r.is_some())
        };
        let content = if let Some(c) = self.cached_content(path, m)? {
            self.stats.files_unchanged += 1;
            self.stats.bytes += m.len();
            self.note_progress(0, m.len());
            self.tell(path, FileStatus::Unchanged);
            c
        } else {
            let mut f = match self.prefetched.remove(path) {
                Some(f) => f,
                None => File::open(path).map_err(|e| Error::io(path, e))?,
            };
            self.file_seq += 1;
            let seq = self.file_seq;
            let (c, n) = if source::is_image_like(path, m) {
                self.read_blocks(&f, m.is_file(), seq, path)?
            } else {
                self.read_cdc(&mut f, seq, path)?
            };
            self.stats.bytes += n;
            self.read_bytes += n;
            node.size = n;
            let status = if known {
                FileStatus::Modified
            } else {
                FileStatus::New
            };
            self.tell(path, status);
            // A file modified within the last seconds could change again
            // within the same timestamp: do not trust the cache for it.
            let mtime_ns = m.mtime() * 1_000_000_000 + m.mtime_nsec();
            if n == m.len() && mtime_ns < self.start_ns - 2_000_000_000 {
                let rec = FileRecord {
                    size: m.len(),
                    mtime_ns,
                    ctime_ns: m.ctime() * 1_000_000_000 + m.ctime_nsec(),
                    inode: m.ino(),
                    dev: m.dev(),
                    content: cbor_encode(&c),
                    packs: Vec::new(),
                };
                self.run_files.push((seq, key.to_vec(), rec));
                if self.run_files.len() >= LOOKUP_BATCH {
                    self.flush_run_files()?;
                }
            }
            c
        };
        Self::set_content(node, &content);
        if hard {
            self.hardlinks.insert((m.dev(), m.ino()), content);
        }
        Ok(())
    }

    /// One entry of a directory; `None` when it could not be read.
    fn entry(&mut self, path: &Path, name: &[u8], m: &Metadata) -> Result<Option<Node>> {
        let mut node = source::node_from(path, name, m, &mut self.names);
        match node.kind {
            Some(NodeKind::Dir) => {
                self.stats.dirs += 1;
                let sub = if self.one_file_system && m.dev() != self.root_dev {
                    self.store_tree(&mut Tree::default())?
                } else {
                    // The directory itself could not be listed: leave it out.
                    let listed = self.walk_dir(path);
                    match self.or_left_out(listed, path)? {
                        Some(id) => id,
                        None => return Ok(None),
                    }
                };
                node.subtree = Some(sub);
            }
            Some(NodeKind::File) => {
                self.stats.files += 1;
                self.note_progress(1, 0);
                let before = self.read_bytes;
                let res = self.file_content(path, m, &mut node);
                if let Some(a) = &self.ahead {
                    a.progress(self.read_bytes > before, self.read_bytes);
                }
                // The file could not be opened or read: leave it out.
                if self.or_left_out(res, path)?.is_none() {
                    return Ok(None);
                }
            }
            _ => self.stats.others += 1,
        }
        Ok(Some(node))
    }

    fn walk_dir(&mut self, dir: &Path) -> Result<BlobId> {
        let mut tree = self.dir_tree(dir)?;
        self.store_tree(&mut tree)
    }

    /// One directory's entries, their subtrees stored.
    fn dir_tree(&mut self, dir: &Path) -> Result<Tree> {
        self.check_cancel()?;
        let mut names: Vec<std::ffi::OsString> = Vec::new();
        for e in fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            match e {
                Ok(e) => names.push(e.file_name()),
                Err(e) => self.warnings.push(format!("{}: {e}", dir.display())),
            }
        }
        names.sort_by(|a, b| a.as_bytes().cmp(b.as_bytes()));
        // A marked directory keeps its markers only.
        let kept = self.ex.marked(dir);
        names.retain(|n| keeps(&kept, n));
        let mut entries = Vec::with_capacity(names.len());
        for name in names {
            let path = dir.join(&name);
            match fs::symlink_metadata(&path) {
                Ok(m) if self.ex.leaves_out(&path, &m, true) => {}
                Ok(m) => entries.push((name, path, m)),
                // Unreadable, but left out by name anyway: no warning.
                Err(_) if self.ex.matched(&path, false, true) => {}
                Err(e) => self.warnings.push(format!("{}: {e}", path.display())),
            }
        }
        let mut tree = Tree::default();
        let (mut next, mut looked) = (0, 0);
        for i in 0..entries.len() {
            if self.use_files_cache && looked <= i + PREFETCH_FILES {
                let end = (looked + LOOKUP_BATCH).min(entries.len());
                self.look_up(&entries[looked..end])?;
                looked = end;
            }
            // Ask the kernel for the next files' first bytes now, so cold
            // reads overlap instead of waiting one after another.
            while next < entries.len() && next <= i + PREFETCH_FILES {
                let (_, path, m) = &entries[next];
                self.prefetch(path, m)?;
                next += 1;
            }
            let (name, path, m) = &entries[i];
            if let Some(n) = self.entry(path, name.as_bytes(), m)? {
                tree.nodes.push(n);
            }
            self.prefetched.remove(path);
            self.looked_up.remove(path);
        }
        Ok(tree)
    }

    /// Opens a file that will be read soon and advises the kernel to read
    /// its start ahead; skipped for files the files cache will reuse.
    fn prefetch(&mut self, path: &Path, m: &Metadata) -> Result<()> {
        if !m.is_file() || m.len() == 0 || self.prefetched.contains_key(path) {
            return Ok(());
        }
        if self.cache_would_reuse(path, m)? {
            return Ok(());
        }
        if let Ok(f) = File::open(path) {
            let len = m.len().min(PREFETCH_BYTES);
            source::advise(&f, 0, len, PosixFadviseAdvice::POSIX_FADV_WILLNEED);
            self.prefetched.insert(path.to_path_buf(), f);
        }
        Ok(())
    }

    fn cache_would_reuse(&mut self, path: &Path, m: &Metadata) -> Result<bool> {
        if !self.use_files_cache {
            return Ok(false);
        }
        if !self.looked_up.contains_key(path) {
            let rec = self.cache.file(path.as_os_str().as_bytes())?;
            self.looked_up.insert(path.to_path_buf(), rec);
        }
        let rec = self.looked_up.get(path).and_then(|r| r.as_ref());
        Ok(rec.is_some_and(|rec| rec.matches(m)))
    }

    /// The root tree of the given absolute paths.
    pub(super) fn backup_paths(&mut self, paths: &[PathBuf]) -> Result<Tree> {
        let mut root = Trie::default();
        for p in paths {
            let mut t = &mut root;
            for c in p.components().skip(1) {
                t = t
                    .children
                    .entry(c.as_os_str().as_bytes().to_vec())
                    .or_default();
            }
            t.leaf = true;
        }
        if root.leaf {
            let m = fs::symlink_metadata("/").map_err(|e| Error::io("/", e))?;
            self.root_dev = m.dev();
            return self.dir_tree(Path::new("/"));
        }
        self.virtual_tree(Path::new("/"), &root)
    }

    /// A directory on the way to a given path: only the named children.
    fn virtual_tree(&mut self, dir: &Path, t: &Trie) -> Result<Tree> {
        let mut tree = Tree::default();
        for (name, child) in &t.children {
            let path = dir.join(OsStr::from_bytes(name));
            let m = fs::symlink_metadata(&path).map_err(|e| Error::io(&path, e))?;
            let node = if child.leaf {
                self.root_dev = m.dev();
                match self.entry(&path, name, &m)? {
                    Some(n) => n,
                    None => continue,
                }
            } else {
                let mut n = source::node_from(&path, name, &m, &mut self.names);
                if n.kind != Some(NodeKind::Dir) {
                    return Err(Error::Denied(format!(
                        "{} is not a directory",
                        path.display()
                    )));
                }
                let mut sub = self.virtual_tree(&path, child)?;
                n.subtree = Some(self.store_tree(&mut sub)?);
                n
            };
            tree.nodes.push(node);
        }
        Ok(tree)
    }
}
