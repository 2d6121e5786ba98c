//! Rewriting `pgbouncer.ini`: the `host` and `port` of named entries of its
//! `[databases]` section change; every other byte of the file stays as it was. The
//! file is replaced atomically (temporary file, fsync, rename, directory fsync) with
//! its owner and mode kept, so PgBouncer never reads half a file; where the directory
//! is not pgdr's to write but the file is (Debian's layout), it is rewritten in place
//! with the old text kept to put back. `probe` finds out which, before anything
//! changes.

use std::collections::BTreeMap;
use std::io::Write;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::Path;

use anyhow::{Context, Result, anyhow};

use super::Endpoint;

/// `name = value` of a line, with the byte offset where the value starts.
fn entry(line: &str) -> Option<(String, usize)> {
    let trimmed = line.trim_start();
    if trimmed.is_empty() || trimmed.starts_with(';') || trimmed.starts_with('#') || trimmed.starts_with('[') {
        return None;
    }
    let eq = line.find('=')?;
    let name = line[..eq].trim().trim_matches('"').to_string();
    let after = &line[eq + 1..];
    let value_at = eq + 1 + (after.len() - after.trim_start().len());
    Some((name, value_at))
}

/// libpq-style `key=value key='quoted value'` pairs, in order.
fn parse_connstr(value: &str) -> Result<Vec<(String, String)>> {
    let mut out = Vec::new();
    let mut chars = value.chars().peekable();
    loop {
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let Some(_) = chars.peek() else { break };
        let mut key = String::new();
        while let Some(&c) = chars.peek() {
            if c == '=' || c.is_whitespace() {
                break;
            }
            key.push(c);
            chars.next();
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        if chars.next() != Some('=') {
            return Err(anyhow!("expected key=value, found {key:?}"));
        }
        while chars.peek().is_some_and(|c| c.is_whitespace()) {
            chars.next();
        }
        let mut val = String::new();
        if chars.peek() == Some(&'\'') {
            // PgBouncer's quoting: a quote inside is doubled; a backslash is a
            // backslash.
            chars.next();
            loop {
                match chars.next() {
                    None => return Err(anyhow!("unterminated quote in the value of {key}")),
                    Some('\'') if chars.peek() == Some(&'\'') => {
                        chars.next();
                        val.push('\'');
                    }
                    Some('\'') => break,
                    Some(c) => val.push(c),
                }
            }
        } else {
            while let Some(&c) = chars.peek() {
                if c.is_whitespace() {
                    break;
                }
                val.push(c);
                chars.next();
            }
        }
        out.push((key, val));
    }
    Ok(out)
}

fn quote(value: &str) -> String {
    if !value.is_empty() && !value.chars().any(|c| c.is_whitespace() || c == '\'') {
        return value.to_string();
    }
    format!("'{}'", value.replace('\'', "''"))
}

/// The `[databases]` entries of `text` named in `databases`, with their host and port
/// (port 5432 when the entry names none, as PgBouncer does).
pub fn endpoints(text: &str, databases: &[String]) -> Result<BTreeMap<String, Endpoint>> {
    let mut found = BTreeMap::new();
    let mut in_databases = false;
    for line in text.lines() {
        let t = line.trim();
        if t.starts_with('[') {
            in_databases = t.eq_ignore_ascii_case("[databases]");
            continue;
        }
        if !in_databases {
            continue;
        }
        let Some((name, at)) = entry(line) else { continue };
        if !databases.contains(&name) {
            continue;
        }
        let pairs = parse_connstr(&line[at..]).with_context(|| format!("the [databases] entry {name:?}"))?;
        let get = |k: &str| pairs.iter().find(|(key, _)| key == k).map(|(_, v)| v.clone());
        let host = get("host").unwrap_or_default();
        let port = match get("port") {
            Some(p) => p
                .parse()
                .map_err(|_| anyhow!("the [databases] entry {name:?} has port {p:?}"))?,
            None => 5432,
        };
        found.insert(name, Endpoint { host, port });
    }
    if let Some(missing) = databases.iter().find(|d| !found.contains_key(*d)) {
        return Err(anyhow!(
            "pgbouncer.ini has no [databases] entry {missing:?} — add it, or fix [switch] pgbouncer_databases"
        ));
    }
    Ok(found)
}

/// `text` with the host and port of the named `[databases]` entries set to `to`;
/// every other line, and the rest of those lines' settings, unchanged.
pub fn rewrite(text: &str, databases: &[String], to: &Endpoint) -> Result<String> {
    endpoints(text, databases)?;
    let mut out = String::with_capacity(text.len() + 64);
    let mut in_databases = false;
    for line in text.split_inclusive('\n') {
        let (body, end) = match line.strip_suffix("\r\n") {
            Some(b) => (b, "\r\n"),
            None => match line.strip_suffix('\n') {
                Some(b) => (b, "\n"),
                None => (line, ""),
            },
        };
        let t = body.trim();
        if t.starts_with('[') {
            in_databases = t.eq_ignore_ascii_case("[databases]");
        } else if in_databases
            && let Some((name, at)) = entry(body)
            && databases.contains(&name)
        {
            let mut pairs = parse_connstr(&body[at..])?;
            for (key, value) in [("host", to.host.clone()), ("port", to.port.to_string())] {
                match pairs.iter_mut().find(|(k, _)| k == key) {
                    Some(pair) => pair.1 = value,
                    None => pairs.push((key.to_string(), value)),
                }
            }
            let value = pairs
                .iter()
                .map(|(k, v)| format!("{k}={}", quote(v)))
                .collect::<Vec<_>>()
                .join(" ");
            out.push_str(&body[..at]);
            out.push_str(&value);
            out.push_str(end);
            continue;
        }
        out.push_str(line);
    }
    Ok(out)
}

/// How pgdr can change `pgbouncer.ini` as the user it runs as.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum WriteMode {
    /// A new file beside it, renamed over it: PgBouncer never reads half a file.
    Replace,
    /// The directory is not pgdr's to write (Debian's `/etc/pgbouncer` is root's) but
    /// the file is: it is rewritten in place, a copy of the old text kept to put back.
    InPlace,
}

/// Find out, changing nothing, whether `path` can be replaced (a file created in its
/// directory and given the file's owner, group and mode) or else written in place.
/// Neither: an error naming both reasons and the ways forward.
pub fn probe(path: &Path) -> Result<WriteMode> {
    let meta = std::fs::metadata(path).map_err(|e| anyhow!("cannot read {}: {e}", path.display()))?;
    if !meta.is_file() {
        return Err(anyhow!("{} is not a file", path.display()));
    }
    let dir = parent(path);
    let replace = (|| -> std::io::Result<()> {
        let tmp = temporary_name(path);
        let f = crate::disk::create_private_file(&tmp)?;
        let kept = std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))
            .and_then(|()| f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777)));
        drop(f);
        std::fs::remove_file(&tmp)?;
        kept
    })();
    let Err(why_not_replace) = replace else {
        return Ok(WriteMode::Replace);
    };
    match std::fs::OpenOptions::new().write(true).open(path) {
        Ok(_) => Ok(WriteMode::InPlace),
        Err(why_not_in_place) => Err(anyhow!(
            "pgdr (uid {}) can neither replace {} (a new file in {} with owner {}:{} and mode {:o}: {why_not_replace}) nor write it in place ({why_not_in_place}) — run pgdr as the file's owner, or give pgdr a [databases] include file of its own (docs/RECOVERY.md: \"PgBouncer as distributions install it\")",
            effective_uid(),
            path.display(),
            dir.display(),
            meta.uid(),
            meta.gid(),
            meta.mode() & 0o7777
        )),
    }
}

fn effective_uid() -> u32 {
    // SAFETY: geteuid has no preconditions and cannot fail.
    unsafe { libc::geteuid() }
}

fn parent(path: &Path) -> &Path {
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p,
        _ => Path::new("."),
    }
}

/// A name of this run's own beside `path`.
fn temporary_name(path: &Path) -> std::path::PathBuf {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    parent(path).join(format!(
        ".{name}.pgdr-{}-{:08x}",
        std::process::id(),
        rand::random::<u32>()
    ))
}

/// Write `text` to `path` the way `mode` says.
pub fn write(path: &Path, text: &str, mode: WriteMode) -> Result<()> {
    match mode {
        WriteMode::Replace => replace_file(path, text),
        WriteMode::InPlace => write_in_place(path, text),
    }
}

/// Replace `path` with `text`: same directory, same owner and mode, fsynced, renamed
/// over the old file, directory fsynced.
pub fn replace_file(path: &Path, text: &str) -> Result<()> {
    let meta = std::fs::metadata(path).with_context(|| format!("reading {}", path.display()))?;
    let dir = parent(path);
    let tmp = temporary_name(path);
    let written = (|| -> std::io::Result<()> {
        let mut f = crate::disk::create_private_file(&tmp)?;
        f.write_all(text.as_bytes())?;
        f.set_permissions(std::fs::Permissions::from_mode(meta.mode() & 0o7777))?;
        std::os::unix::fs::fchown(&f, Some(meta.uid()), Some(meta.gid()))?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)?;
        std::fs::File::open(dir)?.sync_all()
    })();
    if let Err(e) = written {
        let _ = std::fs::remove_file(&tmp);
        return Err(anyhow!("cannot rewrite {}: {e}", path.display()));
    }
    Ok(())
}

/// Overwrite `path` in place (owner, group and mode stay the file's own), fsynced.
/// PgBouncer reads it only on the RELOAD that follows; the caller holds the old text
/// to put back if anything fails.
fn write_in_place(path: &Path, text: &str) -> Result<()> {
    let written = (|| -> std::io::Result<()> {
        let mut f = std::fs::OpenOptions::new().write(true).truncate(true).open(path)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    written.map_err(|e| anyhow!("cannot rewrite {} in place: {e}", path.display()))
}

/// A private copy of the file's old text, kept outside its directory while the file
/// is rewritten in place, so a DBA can put it back by hand if pgdr is killed half-way.
pub fn keep_copy(path: &Path, text: &str) -> Result<std::path::PathBuf> {
    let name = path
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    let copy = std::env::temp_dir().join(format!(
        "pgdr-{name}.{}-{:08x}.orig",
        std::process::id(),
        rand::random::<u32>()
    ));
    let written = (|| -> std::io::Result<()> {
        let mut f = crate::disk::create_private_file(&copy)?;
        f.write_all(text.as_bytes())?;
        f.sync_all()
    })();
    written.map_err(|e| anyhow!("cannot keep a copy of {} in {}: {e}", path.display(), copy.display()))?;
    Ok(copy)
}

#[cfg(test)]
mod tests {
    use super::*;

    const INI: &str = "; comment = keep\n[databases]\napp = host=10.0.0.1 port=5432 dbname=app pool_size=20\n\"other db\"=host=old dbname='my db'\nkeep = host=10.0.0.9\r\n\n[pgbouncer]\nlisten_port = 6432\napp = not a database\n";

    #[test]
    fn only_host_and_port_of_named_entries_change() {
        let to = Endpoint {
            host: "192.168.1.7".into(),
            port: 6543,
        };
        let out = rewrite(INI, &["app".into(), "other db".into()], &to).unwrap();
        assert_eq!(
            out,
            "; comment = keep\n[databases]\napp = host=192.168.1.7 port=6543 dbname=app pool_size=20\n\"other db\"=host=192.168.1.7 dbname='my db' port=6543\nkeep = host=10.0.0.9\r\n\n[pgbouncer]\nlisten_port = 6432\napp = not a database\n"
        );
        let e = endpoints(&out, &["app".into(), "keep".into()]).unwrap();
        assert_eq!(e["app"], to);
        assert_eq!(e["keep"].port, 5432);
    }

    #[test]
    fn pgbouncer_quoting_survives_a_rewrite() {
        // A quote doubled inside quotes, a backslash as itself (PgBouncer's rules).
        let text = "[databases]\napp = host=a password='p\\w ''x''' dbname=app\n";
        let to = Endpoint {
            host: "b".into(),
            port: 7,
        };
        let out = rewrite(text, &["app".into()], &to).unwrap();
        assert_eq!(
            out,
            "[databases]\napp = host=b password='p\\w ''x''' dbname=app port=7\n"
        );
    }

    #[test]
    fn a_missing_entry_is_named() {
        let e = rewrite(
            INI,
            &["nope".into()],
            &Endpoint {
                host: "h".into(),
                port: 1,
            },
        )
        .unwrap_err();
        assert!(format!("{e:#}").contains("\"nope\""), "{e:#}");
        let e = endpoints("[databases]\napp = host='unterminated\n", &["app".into()]).unwrap_err();
        assert!(format!("{e:#}").contains("unterminated"), "{e:#}");
    }
}
