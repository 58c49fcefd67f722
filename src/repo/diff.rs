//! Diff: what changed between two snapshots, walking both trees side by
//! side and skipping subtrees whose ids are equal.

use super::Repository;
use crate::cache::Cache;
use crate::error::Result;
use crate::format::tree::{Node, NodeKind, Tree};
use crate::id::BlobId;

/// One difference.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Change {
    /// `+` added, `-` removed, `M` content changed, `U` metadata only, `T` type changed.
    pub change: char,
    /// The path inside the snapshots.
    pub path: String,
}

/// Lists the changes from tree `a` to tree `b`.
pub fn diff(repo: &Repository, cache: &Cache, a: &BlobId, b: &BlobId) -> Result<Vec<Change>> {
    let mut out = Vec::new();
    walk(repo, cache, Some(a), Some(b), "", &mut out)?;
    Ok(out)
}

fn load(repo: &Repository, cache: &Cache, id: Option<&BlobId>) -> Result<Tree> {
    match id {
        Some(id) => repo.load_tree(cache, id),
        None => Ok(Tree::default()),
    }
}

fn walk(
    repo: &Repository,
    cache: &Cache,
    a: Option<&BlobId>,
    b: Option<&BlobId>,
    prefix: &str,
    out: &mut Vec<Change>,
) -> Result<()> {
    if a == b {
        return Ok(());
    }
    let (ta, tb) = (load(repo, cache, a)?, load(repo, cache, b)?);
    let (mut i, mut j) = (0, 0);
    while i < ta.nodes.len() || j < tb.nodes.len() {
        let na = ta.nodes.get(i);
        let nb = tb.nodes.get(j);
        let ord = match (na, nb) {
            (Some(x), Some(y)) => x.name.cmp(&y.name),
            (Some(_), None) => std::cmp::Ordering::Less,
            _ => std::cmp::Ordering::Greater,
        };
        let name = |n: &Node| format!("{prefix}/{}", String::from_utf8_lossy(&n.name));
        match ord {
            std::cmp::Ordering::Less => {
                // unwrap: Less means `na` is Some
                let n = na.unwrap();
                removed_or_added(repo, cache, n, &name(n), '-', out)?;
                i += 1;
            }
            std::cmp::Ordering::Greater => {
                // unwrap: Greater means `nb` is Some
                let n = nb.unwrap();
                removed_or_added(repo, cache, n, &name(n), '+', out)?;
                j += 1;
            }
            std::cmp::Ordering::Equal => {
                // unwrap: Equal means both are Some
                let (x, y) = (na.unwrap(), nb.unwrap());
                let path = name(x);
                if x.kind != y.kind {
                    out.push(Change {
                        change: 'T',
                        path: path.clone(),
                    });
                } else if x.kind == Some(NodeKind::Dir) {
                    if meta_differs(x, y) {
                        out.push(Change {
                            change: 'U',
                            path: path.clone(),
                        });
                    }
                    walk(
                        repo,
                        cache,
                        x.subtree.as_ref(),
                        y.subtree.as_ref(),
                        &path,
                        out,
                    )?;
                } else if x.chunks != y.chunks
                    || x.lists != y.lists
                    || x.target != y.target
                    || x.size != y.size
                {
                    out.push(Change { change: 'M', path });
                } else if meta_differs(x, y) {
                    out.push(Change { change: 'U', path });
                }
                i += 1;
                j += 1;
            }
        }
    }
    Ok(())
}

fn meta_differs(x: &Node, y: &Node) -> bool {
    x.mode != y.mode
        || x.uid != y.uid
        || x.gid != y.gid
        || x.mtime_ns != y.mtime_ns
        || x.xattrs != y.xattrs
}

fn removed_or_added(
    repo: &Repository,
    cache: &Cache,
    n: &Node,
    path: &str,
    c: char,
    out: &mut Vec<Change>,
) -> Result<()> {
    out.push(Change {
        change: c,
        path: path.to_string(),
    });
    if let (Some(NodeKind::Dir), Some(sub)) = (n.kind, n.subtree.as_ref()) {
        let (a, b) = if c == '-' {
            (Some(sub), None)
        } else {
            (None, Some(sub))
        };
        walk(repo, cache, a, b, path, out)?;
    }
    Ok(())
}
