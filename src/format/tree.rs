//! Trees: one directory's entries, sorted by name, as a CBOR blob. Owns the
//! node model and the rules a decoded tree must satisfy (names are single path
//! components, unique and sorted), so a hostile tree cannot steer a restore
//! outside its target. Never touches files.

use serde::{Deserialize, Serialize};
use serde_bytes::ByteBuf;

use super::{cbor_decode, cbor_encode, FormatError};
use crate::id::BlobId;

/// What a node is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum NodeKind {
    /// A regular file.
    File,
    /// A directory.
    Dir,
    /// A symbolic link.
    Symlink,
    /// A character device.
    Chardev,
    /// A block device.
    Blockdev,
    /// A named pipe.
    Fifo,
    /// A Unix socket (recorded, restored as nothing).
    Socket,
}

/// An extended attribute.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Xattr {
    /// Its name.
    pub name: ByteBuf,
    /// Its value.
    pub value: ByteBuf,
}

/// One entry of a directory.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Node {
    /// A single path component (bytes: names need not be UTF-8).
    pub name: ByteBuf,
    /// What it is.
    pub kind: Option<NodeKind>,
    /// Permission bits and set-id bits (`st_mode & 0o7777`).
    pub mode: u32,
    /// Owner id.
    pub uid: u32,
    /// Group id.
    pub gid: u32,
    /// Owner name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// Group name, when known.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub group: Option<String>,
    /// Modification time, nanoseconds since the epoch.
    pub mtime_ns: i64,
    /// Status change time, nanoseconds since the epoch.
    pub ctime_ns: i64,
    /// Size in bytes (files), target length (symlinks).
    pub size: u64,
    /// Inode number, for hard links.
    pub inode: u64,
    /// Device of the inode, for hard links.
    pub dev: u64,
    /// Number of hard links.
    pub links: u64,
    /// Device number of device nodes.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub rdev: u64,
    /// Symlink target.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub target: Option<ByteBuf>,
    /// Directory content.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub subtree: Option<BlobId>,
    /// File content, inline: an encoded chunk list.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub chunks: Option<ByteBuf>,
    /// File content, for long lists: chunk-list blobs in order.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lists: Option<Vec<BlobId>>,
    /// Extended attributes.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub xattrs: Vec<Xattr>,
}

fn is_zero(v: &u64) -> bool {
    *v == 0
}

/// A directory listing.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, Default)]
pub struct Tree {
    /// Entries sorted by name.
    pub nodes: Vec<Node>,
}

/// Whether `name` is one safe path component: not empty, not `.` or `..`,
/// no `/` and no NUL.
pub fn safe_name(name: &[u8]) -> bool {
    !name.is_empty() && name != b"." && name != b".." && !name.contains(&b'/') && !name.contains(&0)
}

impl Tree {
    /// Encodes the tree; nodes are sorted first so equal directories give
    /// equal bytes (and so deduplicate).
    pub fn encode(&mut self) -> Vec<u8> {
        self.nodes.sort_by(|a, b| a.name.cmp(&b.name));
        cbor_encode(self)
    }

    /// Decodes and validates a tree.
    pub fn decode(bytes: &[u8]) -> Result<Tree, FormatError> {
        let t: Tree = cbor_decode("tree", bytes)?;
        for (i, n) in t.nodes.iter().enumerate() {
            if !safe_name(&n.name) {
                return Err(FormatError::invalid(
                    "tree",
                    format!("unsafe entry name {:?}", String::from_utf8_lossy(&n.name)),
                ));
            }
            if i > 0 && t.nodes[i - 1].name >= n.name {
                return Err(FormatError::invalid(
                    "tree",
                    "entries not sorted or not unique",
                ));
            }
            let ok = match n.kind {
                Some(NodeKind::Dir) => n.subtree.is_some(),
                Some(NodeKind::Symlink) => n.target.is_some(),
                Some(NodeKind::File) => n.chunks.is_some() != n.lists.is_some(),
                Some(_) => true,
                None => false,
            };
            if !ok {
                return Err(FormatError::invalid(
                    "tree",
                    format!(
                        "entry {:?} lacks the fields of its kind",
                        String::from_utf8_lossy(&n.name)
                    ),
                ));
            }
        }
        Ok(t)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn node(name: &[u8], kind: NodeKind) -> Node {
        let mut n = Node {
            name: ByteBuf::from(name.to_vec()),
            kind: Some(kind),
            mode: 0o644,
            mtime_ns: 1_700_000_000_123_456_789,
            ..Default::default()
        };
        match kind {
            NodeKind::Dir => n.subtree = Some(BlobId([1; 32])),
            NodeKind::Symlink => n.target = Some(ByteBuf::from(b"../x".to_vec())),
            NodeKind::File => n.chunks = Some(ByteBuf::from(vec![])),
            _ => {}
        }
        n
    }

    #[test]
    fn refuses_unsafe_names() {
        for bad in [&b".."[..], b".", b"a/b", b"", b"a\0"] {
            let mut t = Tree {
                nodes: vec![node(bad, NodeKind::File)],
            };
            assert!(Tree::decode(&t.encode()).is_err(), "{bad:?}");
        }
        let mut t = Tree {
            nodes: vec![node(b"a", NodeKind::File), node(b"a", NodeKind::File)],
        };
        assert!(Tree::decode(&t.encode()).is_err());
    }

    proptest! {
        #[test]
        fn round_trip(names in proptest::collection::btree_set(proptest::collection::vec(1u8..=255, 1..20), 0..20)) {
            let kinds = [NodeKind::File, NodeKind::Dir, NodeKind::Symlink, NodeKind::Fifo];
            let nodes: Vec<Node> = names.into_iter().filter(|n| safe_name(n)).enumerate()
                .map(|(i, n)| node(&n, kinds[i % 4])).collect();
            let mut t = Tree { nodes };
            let enc = t.encode();
            prop_assert_eq!(Tree::decode(&enc).unwrap(), t);
        }
        #[test]
        fn decode_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = Tree::decode(&b);
        }
    }
}
