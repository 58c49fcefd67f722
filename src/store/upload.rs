//! A pack being written into a local store: hashed as it goes, made
//! durable and linked under its name on commit, first writer wins.

use super::*;

pub(super) struct LocalUpload {
    pub(super) clock: Clock,
    pub(super) tmp: PathBuf,
    /// Held while the upload lives: a sweep leaves its file alone.
    pub(super) _held: crate::partial::Held,
    pub(super) file: io::BufWriter<File>,
    pub(super) hasher: PackHasher,
    pub(super) len: u64,
    pub(super) root: PathBuf,
    pub(super) bucket: Option<Arc<Bucket>>,
    /// The lock window a new pack's retention in the bucket covers.
    pub(super) policy: Policy,
}

impl Write for LocalUpload {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        if self.len + buf.len() as u64 > MAX_PACK_BYTES {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "pack larger than allowed",
            ));
        }
        let n = self.file.write(buf).map_err(|e| self.named(e))?;
        self.hasher.update(&buf[..n]);
        self.len += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> io::Result<()> {
        self.file.flush().map_err(|e| self.named(e))
    }
}

impl LocalUpload {
    /// An error that says which file it was about ("No space left on
    /// device" alone does not say where), of the same kind.
    fn named(&self, e: io::Error) -> io::Error {
        io::Error::new(e.kind(), format!("writing {}: {e}", self.tmp.display()))
    }
}

impl Drop for LocalUpload {
    fn drop(&mut self) {
        let _ = fs::remove_file(&self.tmp);
    }
}

impl PackUpload for LocalUpload {
    fn commit(mut self: Box<Self>, id: PackId) -> Result<bool> {
        // The store's own rule: a pack is named by the hash of its bytes.
        let actual = self.hasher.finalize();
        if actual != id {
            return Err(Error::Denied(format!(
                "pack named {id} hashes to {actual}; refused"
            )));
        }
        self.file.flush().at(&self.tmp)?;
        // A pack's age for collection is by the store's clock, like stamps.
        // Never behind a time the store has seen, like a stamp's `received`,
        // so a clock stepped back does not make new packs look old.
        let now = (self.clock)().max(read_seen(&self.root));
        let written = std::time::UNIX_EPOCH + std::time::Duration::from_secs(now.max(0) as u64);
        self.file.get_ref().set_modified(written).at(&self.tmp)?;
        self.file.get_ref().sync_all().at(&self.tmp)?;
        let hex = id.to_hex();
        let path = self.root.join("packs").join(&hex[..2]).join(&hex);
        if let Some(b) = &self.bucket {
            if path.exists() {
                return Ok(false); // here, so in the bucket: first writer won
            }
            // In the bucket, locked for the lock window and the slack,
            // before it is visible here: a crash in between leaves a pack
            // the bucket holds and the client sends again (put once, so
            // the second send is free of effect).
            b.put_pack(&id, &self.tmp, bucket::pack_until(&self.policy, now), now)?;
        }
        link_into_place(&self.tmp, &path)
    }
}
