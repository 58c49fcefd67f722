//! `dump` of a directory: a tar stream (POSIX ustar with PAX extended
//! headers) of its entries, named relative to it (`sub/file`, the directory
//! itself not included), as `tar -C DIR -c .` would name them without the
//! `./`. Kept: mode, uid/gid and owner names, mtime to the nanosecond
//! (PAX, also before 1970), symlink targets, hard links (the second name
//! of an inode is a link to the first), device numbers, and xattrs as
//! `SCHILY.xattr.*` records. Long names and targets go in PAX records.
//! Sockets have no tar form and are left out. File content streams through
//! [`super::restore::dump`], so nothing wrong is ever emitted.

use std::collections::HashMap;
use std::io::Write;
use std::os::unix::ffi::OsStrExt;

use tar::{EntryType, Header};

use super::dump::dump;
use super::Repository;
use crate::cache::Cache;
use crate::error::{Error, Result};
use crate::format::tree::{Node, NodeKind};
use crate::id::BlobId;

const BLOCK: usize = 512;

/// Writes the tree of the directory `dir` to `out` as a tar stream, and
/// the two zero blocks that end it.
pub fn dump_tar(repo: &Repository, cache: &Cache, dir: &Node, out: &mut dyn Write) -> Result<()> {
    let mut w = TarWriter {
        repo,
        cache,
        out,
        links: HashMap::new(),
    };
    match (&dir.kind, &dir.subtree) {
        (Some(NodeKind::Dir), Some(sub)) => w.tree(sub, b"")?,
        _ => w.entry(dir, &dir.name)?,
    }
    w.out.write_all(&[0; 2 * BLOCK]).map_err(Error::RawIo)?;
    w.out.flush().map_err(Error::RawIo)
}

struct TarWriter<'a> {
    repo: &'a Repository,
    cache: &'a Cache,
    out: &'a mut dyn Write,
    /// The first name of each hard-linked inode written.
    links: HashMap<(u64, u64), Vec<u8>>,
}

impl TarWriter<'_> {
    fn tree(&mut self, id: &BlobId, prefix: &[u8]) -> Result<()> {
        for n in self.repo.load_tree(self.cache, id)?.nodes {
            let path = [prefix, &n.name].concat();
            self.entry(&n, &path)?;
            if let (Some(NodeKind::Dir), Some(sub)) = (n.kind, &n.subtree) {
                self.tree(sub, &[&path[..], b"/"].concat())?;
            }
        }
        Ok(())
    }

    fn write(&mut self, b: &[u8]) -> Result<()> {
        self.out.write_all(b).map_err(Error::RawIo)
    }

    /// Zeros up to the next block boundary after `len` bytes.
    fn pad(&mut self, len: u64) -> Result<()> {
        let rem = (len % BLOCK as u64) as usize;
        match rem {
            0 => Ok(()),
            _ => self.write(&[0; BLOCK][..BLOCK - rem]),
        }
    }

    fn entry(&mut self, n: &Node, path: &[u8]) -> Result<()> {
        let mut h = Header::new_ustar();
        let mut pax: Vec<(String, Vec<u8>)> = Vec::new();
        let mut size = 0;
        let mut link: Option<Vec<u8>> = None;
        let mut name = path.to_vec();
        let kind = match n.kind {
            Some(NodeKind::File) => {
                let key = (n.dev, n.inode);
                match self.links.get(&key).filter(|_| n.links > 1) {
                    Some(first) => {
                        link = Some(first.clone());
                        EntryType::Link
                    }
                    None => {
                        if n.links > 1 {
                            self.links.insert(key, path.to_vec());
                        }
                        size = n.size;
                        EntryType::Regular
                    }
                }
            }
            Some(NodeKind::Dir) => {
                name.push(b'/');
                EntryType::Directory
            }
            Some(NodeKind::Symlink) => {
                link = n.target.as_ref().map(|t| t.to_vec());
                EntryType::Symlink
            }
            Some(NodeKind::Fifo) => EntryType::Fifo,
            Some(NodeKind::Chardev) => EntryType::Char,
            Some(NodeKind::Blockdev) => EntryType::Block,
            Some(NodeKind::Socket) | None => return Ok(()),
        };
        h.set_entry_type(kind);
        if matches!(kind, EntryType::Char | EntryType::Block) {
            let dev = n.rdev as libc::dev_t;
            h.set_device_major(libc::major(dev))
                .and_then(|_| h.set_device_minor(libc::minor(dev)))
                .map_err(Error::RawIo)?;
        }
        h.set_mode(n.mode);
        h.set_uid(n.uid.into());
        h.set_gid(n.gid.into());
        for (key, v, set) in [
            (
                "uname",
                &n.user,
                Header::set_username as fn(&mut Header, &str) -> _,
            ),
            ("gname", &n.group, Header::set_groupname),
        ] {
            if let Some(v) = v {
                if set(&mut h, v).is_err() {
                    pax.push((key.into(), v.as_bytes().to_vec()));
                }
            }
        }
        let (secs, ns) = (
            n.mtime_ns.div_euclid(1_000_000_000),
            n.mtime_ns.rem_euclid(1_000_000_000),
        );
        h.set_mtime(secs.max(0) as u64);
        if ns != 0 || secs < 0 {
            pax.push(("mtime".into(), pax_time(n.mtime_ns).into_bytes()));
        }
        if h.set_path(std::ffi::OsStr::from_bytes(&name)).is_err() {
            let field = &mut h.as_old_mut().name;
            let k = name.len().min(field.len());
            field[..k].copy_from_slice(&name[..k]);
            pax.push(("path".into(), name.clone()));
        }
        if let Some(l) = &link {
            if h.set_link_name(std::ffi::OsStr::from_bytes(l)).is_err() {
                let field = &mut h.as_old_mut().linkname;
                let k = l.len().min(field.len());
                field[..k].copy_from_slice(&l[..k]);
                pax.push(("linkpath".into(), l.clone()));
            }
        }
        for x in &n.xattrs {
            let key = format!("SCHILY.xattr.{}", String::from_utf8_lossy(&x.name));
            pax.push((key, x.value.to_vec()));
        }
        h.set_size(size);
        h.set_cksum();
        if !pax.is_empty() {
            self.pax_header(&pax, &name)?;
        }
        self.write(h.as_bytes())?;
        if size > 0 {
            let wrote = dump(self.repo, self.cache, n, self.out)?;
            if wrote != size {
                return Err(Error::Corrupt(format!(
                    "{}: content is {wrote} bytes, the tree says {size}",
                    String::from_utf8_lossy(path)
                )));
            }
            self.pad(size)?;
        }
        Ok(())
    }

    /// A PAX extended header (type `x`) carrying `records` for the entry
    /// that follows.
    fn pax_header(&mut self, records: &[(String, Vec<u8>)], name: &[u8]) -> Result<()> {
        let mut data = Vec::new();
        for (k, v) in records {
            data.extend_from_slice(&pax_record(k, v));
        }
        let mut h = Header::new_ustar();
        h.set_entry_type(EntryType::XHeader);
        let base = name
            .rsplit(|b| *b == b'/')
            .find(|s| !s.is_empty())
            .unwrap_or(b"x");
        let short = [b"PaxHeaders/", &base[..base.len().min(80)]].concat();
        let field = &mut h.as_old_mut().name;
        field[..short.len()].copy_from_slice(&short);
        h.set_mode(0o644);
        h.set_size(data.len() as u64);
        h.set_cksum();
        self.write(h.as_bytes())?;
        self.write(&data)?;
        self.pad(data.len() as u64)
    }
}

/// One PAX record, `LEN KEY=VALUE\n`, LEN counting the whole record.
fn pax_record(key: &str, value: &[u8]) -> Vec<u8> {
    let rest = key.len() + value.len() + 3; // ' ', '=', '\n'
    let mut len = rest + rest.to_string().len();
    if len.to_string().len() + rest != len {
        len = rest + len.to_string().len();
    }
    let mut r = format!("{len} {key}=").into_bytes();
    r.extend_from_slice(value);
    r.push(b'\n');
    r
}

/// A time in nanoseconds as PAX writes it: seconds with a fraction, the
/// sign in front (`-1.5` is a second and a half before 1970).
fn pax_time(ns: i64) -> String {
    let (sign, abs) = if ns < 0 {
        ("-", ns.unsigned_abs())
    } else {
        ("", ns as u64)
    };
    let (s, f) = (abs / 1_000_000_000, abs % 1_000_000_000);
    match f {
        0 => format!("{sign}{s}"),
        f => format!("{sign}{s}.{f:09}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pax_records_count_their_own_length() {
        assert_eq!(pax_record("path", b"abc"), b"12 path=abc\n");
        // 9 + digits: a length crossing 99 to 100 takes one digit more.
        for n in 80..110 {
            let r = pax_record("k", &vec![b'v'; n]);
            let len: usize = std::str::from_utf8(&r[..r.iter().position(|b| *b == b' ').unwrap()])
                .unwrap()
                .parse()
                .unwrap();
            assert_eq!(len, r.len(), "value of {n}");
        }
    }

    #[test]
    fn pax_times_keep_the_sign_and_nanoseconds() {
        assert_eq!(pax_time(1_500_000_000), "1.500000000");
        assert_eq!(pax_time(-1_500_000_000), "-1.500000000");
        assert_eq!(pax_time(-86_400_000_000_000), "-86400");
        assert_eq!(pax_time(250), "0.000000250");
    }
}
