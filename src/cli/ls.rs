//! `coffer ls`: a snapshot's entries, one a line (`--long` as `ls -l`), or
//! as JSON. Names go to a terminal escaped: a control character in a name
//! (a newline, an escape sequence) prints as `\n`, `\x1b`, never raw. JSON
//! keeps the names as they are.

use super::restore::{find, joined, kind_name};
use super::*;

/// `s` with control characters (and `\`) written as escapes.
pub(super) fn escape(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\t' => out.push_str("\\t"),
            '\r' => out.push_str("\\r"),
            c if c.is_control() => out.push_str(&format!("\\x{:02x}", c as u32)),
            c => out.push(c),
        }
    }
    out
}

/// `drwxr-xr-x` of a node: its kind, then the permission and set-id bits.
fn mode_string(n: &Node) -> String {
    let kind = match n.kind {
        Some(NodeKind::Dir) => 'd',
        Some(NodeKind::Symlink) => 'l',
        Some(NodeKind::Chardev) => 'c',
        Some(NodeKind::Blockdev) => 'b',
        Some(NodeKind::Fifo) => 'p',
        Some(NodeKind::Socket) => 's',
        _ => '-',
    };
    let mut s = String::from(kind);
    for (i, (setid, special)) in [(0o4000, 's'), (0o2000, 's'), (0o1000, 't')]
        .into_iter()
        .enumerate()
    {
        let bits = n.mode >> (6 - 3 * i);
        s.push(if bits & 4 != 0 { 'r' } else { '-' });
        s.push(if bits & 2 != 0 { 'w' } else { '-' });
        s.push(match (bits & 1 != 0, n.mode & setid != 0) {
            (true, true) => special,
            (false, true) => special.to_ascii_uppercase(),
            (true, false) => 'x',
            (false, false) => '-',
        });
    }
    s
}

fn owner(name: &Option<String>, id: u32) -> String {
    name.clone().unwrap_or_else(|| id.to_string())
}

fn target(n: &Node) -> Option<String> {
    n.target
        .as_ref()
        .map(|t| String::from_utf8_lossy(t).into_owned())
}

pub(super) fn cmd_ls(cli: &Cli, snap: &str, path: Option<&str>, long: bool) -> Result<()> {
    let repo = open(cli)?;
    let mut cache = repo.cache()?;
    repo.sync_cache(&mut cache)?;
    let (s, sub) = find(cli, &repo, snap)?;
    let start = joined(sub.as_deref(), path).unwrap_or_else(|| "/".into());
    let start = start.as_str();
    let node = repo.find_node(&cache, &s, start)?;
    let mut rows = Vec::new();
    let base = format!("/{}", start.trim_matches('/'));
    let stdout = io::stdout();
    let mut out = io::BufWriter::new(stdout.lock());
    let mut visit = |n: &Node, p: &str| -> Result<()> {
        if cli.json {
            rows.push(json!({"path": p, "type": kind_name(n.kind), "size": n.size, "mode": format!("{:o}", n.mode),
                             "uid": n.uid, "gid": n.gid, "user": n.user, "group": n.group,
                             "mtime": fmt_time(n.mtime_ns), "mtime_ns": n.mtime_ns,
                             "links": n.links, "target": target(n)}));
            return Ok(());
        }
        let arrow = target(n).map_or(String::new(), |t| format!(" -> {}", escape(&t)));
        if long {
            writeln!(
                out,
                "{} {:>3} {:<8} {:<8} {:>12} {}  {}{arrow}",
                mode_string(n),
                n.links.max(1),
                escape(&owner(&n.user, n.uid)),
                escape(&owner(&n.group, n.gid)),
                n.size,
                fmt_time(n.mtime_ns),
                escape(p)
            )?;
        } else {
            writeln!(
                out,
                "{:<7} {:>5o} {:>12} {}  {}{arrow}",
                kind_name(n.kind),
                n.mode,
                n.size,
                fmt_time(n.mtime_ns),
                escape(p)
            )?;
        }
        Ok(())
    };
    fn walk(
        repo: &Repository,
        cache: &coffer::cache::Cache,
        n: &Node,
        p: &str,
        visit: &mut dyn FnMut(&Node, &str) -> Result<()>,
    ) -> Result<()> {
        if let Some(sub) = &n.subtree {
            for c in repo.load_tree(cache, sub)?.nodes {
                let cp = format!(
                    "{}/{}",
                    p.trim_end_matches('/'),
                    String::from_utf8_lossy(&c.name)
                );
                visit(&c, &cp)?;
                walk(repo, cache, &c, &cp, visit)?;
            }
        }
        Ok(())
    }
    if node.kind != Some(NodeKind::Dir) {
        visit(&node, &base)?;
    } else {
        walk(&repo, &cache, &node, &base, &mut visit)?;
    }
    out.flush()?;
    drop(out);
    if cli.json {
        print_json(&serde_json::Value::Array(rows))?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_escaped() {
        assert_eq!(
            escape("a\nb\x1b[31m\\c\u{9b}é"),
            "a\\nb\\x1b[31m\\\\c\\x9bé"
        );
    }

    #[test]
    fn modes_read_as_ls_l() {
        let n = |kind, mode| Node {
            kind: Some(kind),
            mode,
            ..Default::default()
        };
        assert_eq!(mode_string(&n(NodeKind::Dir, 0o755)), "drwxr-xr-x");
        assert_eq!(mode_string(&n(NodeKind::File, 0o4754)), "-rwsr-xr--");
        assert_eq!(mode_string(&n(NodeKind::File, 0o3640)), "-rw-r-S--T");
        assert_eq!(mode_string(&n(NodeKind::Symlink, 0o777)), "lrwxrwxrwx");
    }
}
