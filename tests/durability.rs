//! A power cut on the local repository (issue 14). No device-mapper (dm-flakey,
//! dm-log-writes) or LazyFS is available on these machines, so instead of cutting the
//! power this test records every file-system call `pgdr wal-push` makes (strace) and
//! replays them against the rule a power cut enforces: only what was fsynced survives.
//! For each segment wal-push acknowledged (exit 0) it must have
//! - written the object's bytes to a temporary file and fsynced that file before
//!   linking or renaming it into place (else a power cut can publish a torn file);
//! - fsynced the directory after the link or rename (else the name can vanish);
//! - fsynced the parent of every directory it created on the way (else the
//!   directory, and the segment in it, can vanish).
//!
//! The checker is itself checked: the same trace with the directory fsyncs removed,
//! or with the file's fsync moved after the publication, must be refused.

mod common;

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

#[derive(Debug, Clone)]
enum Event {
    Write(PathBuf),
    Sync(PathBuf),
    /// A name made to point at a file: link or rename (`from` → `to`).
    Publish {
        from: PathBuf,
        to: PathBuf,
    },
    Mkdir(PathBuf),
}

/// The quoted strings and `fd</path>` annotations of a call's arguments, in order.
fn args_of(call: &str) -> Vec<String> {
    let mut out = Vec::new();
    let b = call.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'"' => {
                let end = call[i + 1..].find('"').map(|e| i + 1 + e).unwrap_or(b.len());
                out.push(call[i + 1..end].to_string());
                i = end + 1;
            }
            b'<' => {
                let end = call[i + 1..].find('>').map(|e| i + 1 + e).unwrap_or(b.len());
                out.push(format!("<{}", &call[i + 1..end]));
                i = end + 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// A path argument: absolute as given, or relative to the directory fd before it.
fn resolve(args: &[String], i: usize) -> Option<PathBuf> {
    let p = args.get(i)?;
    if p.starts_with('/') {
        return Some(PathBuf::from(p));
    }
    let base = args[..i].iter().rev().find_map(|a| a.strip_prefix('<'))?;
    Some(Path::new(base).join(p))
}

/// strace -f output (with -y) into events in completion order. Calls split across
/// threads (`<unfinished ...>` / `<... resumed>`) are joined and placed where they end.
fn parse(trace: &str) -> Vec<Event> {
    let mut pending: HashMap<String, String> = HashMap::new();
    let mut events = Vec::new();
    for line in trace.lines() {
        let Some((pid, rest)) = line.split_once(' ') else {
            continue;
        };
        let rest = rest.trim_start();
        let call = if let Some(head) = rest.strip_suffix("<unfinished ...>") {
            pending.insert(pid.to_string(), head.to_string());
            continue;
        } else if rest.starts_with("<... ") {
            let Some(head) = pending.remove(pid) else { continue };
            let tail = rest.split_once("resumed>").map(|(_, t)| t).unwrap_or("");
            format!("{head}{tail}")
        } else {
            rest.to_string()
        };
        let Some((name, _)) = call.split_once('(') else {
            continue;
        };
        let Some((_, ret)) = call.rsplit_once(") = ") else {
            continue;
        };
        if ret.starts_with('-') {
            continue;
        }
        let args = args_of(&call);
        let path = |i: usize| resolve(&args, i);
        let event = match name {
            "write" | "pwrite64" | "writev" | "pwritev" | "pwritev2" => args
                .first()
                .and_then(|a| a.strip_prefix('<'))
                .map(|p| Event::Write(p.into())),
            "fsync" | "fdatasync" => args
                .first()
                .and_then(|a| a.strip_prefix('<'))
                .map(|p| Event::Sync(p.into())),
            "link" | "rename" => Some(Event::Publish {
                from: path(0).unwrap(),
                to: path(1).unwrap(),
            }),
            "linkat" | "renameat" | "renameat2" => {
                // dirfd, "old", dirfd, "new": the quoted ones are the names.
                let quoted: Vec<usize> = (0..args.len()).filter(|&i| !args[i].starts_with('<')).collect();
                Some(Event::Publish {
                    from: path(quoted[0]).unwrap(),
                    to: path(quoted[1]).unwrap(),
                })
            }
            "mkdir" => path(0).map(Event::Mkdir),
            "mkdirat" => {
                let i = (0..args.len()).find(|&i| !args[i].starts_with('<')).unwrap();
                path(i).map(Event::Mkdir)
            }
            _ => None,
        };
        events.extend(event);
    }
    events
}

/// Would `object` survive a power cut right after the traced process exited?
fn survives(events: &[Event], object: &Path) -> Result<(), String> {
    let at = |pred: &dyn Fn(&Event) -> bool| events.iter().rposition(pred);
    let published = at(&|e| matches!(e, Event::Publish { to, .. } if to == object))
        .ok_or_else(|| format!("{} was never linked or renamed into place", object.display()))?;
    let Event::Publish { from, .. } = &events[published] else {
        unreachable!()
    };
    let before = &events[..published];
    let last_write = before
        .iter()
        .rposition(|e| matches!(e, Event::Write(p) if p == from))
        .ok_or_else(|| format!("nothing was written to {}", from.display()))?;
    before[last_write..]
        .iter()
        .position(|e| matches!(e, Event::Sync(p) if p == from))
        .ok_or_else(|| {
            format!(
                "{} was not fsynced between its last write and its publication as {}",
                from.display(),
                object.display()
            )
        })?;
    let dir = object.parent().unwrap();
    events[published..]
        .iter()
        .position(|e| matches!(e, Event::Sync(p) if p == dir))
        .ok_or_else(|| {
            format!(
                "{} was not fsynced after {} appeared in it",
                dir.display(),
                object.display()
            )
        })?;
    for (i, e) in events.iter().enumerate() {
        if let Event::Mkdir(d) = e
            && object.starts_with(d)
        {
            let parent = d.parent().unwrap();
            events[i..]
                .iter()
                .position(|e| matches!(e, Event::Sync(p) if p == parent))
                .ok_or_else(|| format!("{} was created but {} not fsynced after", d.display(), parent.display()))?;
        }
    }
    Ok(())
}

#[test]
fn acknowledged_segments_survive_a_power_cut() {
    let a = Archiving::start();
    let c = &a.cluster;
    // A whole segment of this cluster, under names no other pgdr process knows (the
    // pusher PostgreSQL's archiving started stores only what pg_wal marks ready), so
    // the traced wal-push stores each itself; the first creates its log directory.
    let seg = a.switch_and_wait();
    let work = TestDir::new();
    // wal-push runs as the repository's owner, as archive_command does (as root it is
    // refused: it would leave root's directories in postgres's repository).
    chown_postgres(work.path());
    let paths: Vec<(String, PathBuf)> = ["00000001000000AA00000001", "00000001000000AA00000002"]
        .iter()
        .map(|name| {
            let copy = work.join(name);
            std::fs::copy(c.data.join("pg_wal").join(&seg), &copy).unwrap();
            chown_postgres(&copy);
            (name.to_string(), copy)
        })
        .collect();
    let fresh = paths[0].0.clone();

    let area = a.pgdr.repo_dir.clone().unwrap().join("test");
    for (seg, path) in &paths {
        let trace = work.join(format!("{seg}.strace"));
        let probe = a.pgdr.command(&["wal-push", path.to_str().unwrap()]);
        let mut cmd = Command::new("strace");
        cmd.args(["-f", "-qq", "-y", "-s", "0", "-o"]).arg(&trace);
        cmd.args([
            "-e",
            "trace=write,pwrite64,writev,pwritev,pwritev2,fsync,fdatasync,link,linkat,rename,renameat,renameat2,mkdir,mkdirat",
        ]);
        cmd.arg(probe.get_program()).args(probe.get_args());
        cmd.env_clear();
        for (k, v) in probe.get_envs() {
            if let Some(v) = v {
                cmd.env(k, v);
            }
        }
        as_postgres(&mut cmd);
        let out = cmd.output().expect("strace is needed for the power-cut test");
        assert_success(&out, &format!("wal-push {seg} under strace"));
        let raw = std::fs::read_to_string(&trace).unwrap();
        let events = parse(&raw);
        let object = area.join("wal").join(&seg[..16]).join(seg);
        assert!(object.exists(), "{} not stored", object.display());
        if let Err(e) = survives(&events, &object) {
            let tail: Vec<&str> = raw.lines().rev().take(40).collect();
            panic!("{seg}: an acknowledged segment would not survive a power cut: {e}\n{events:#?}\n{tail:#?}");
        }
        println!("{seg}: {events:#?}");
        if *seg == fresh {
            assert!(
                events
                    .iter()
                    .any(|e| matches!(e, Event::Mkdir(d) if d.ends_with("00000001000000AA"))),
                "the new log directory was not created by this push: {events:#?}"
            );
        }

        // The checker refuses what a power cut would break.
        let no_dir_sync: Vec<Event> = events
            .iter()
            .filter(|e| !matches!(e, Event::Sync(p) if p.is_dir()))
            .cloned()
            .collect();
        assert!(
            survives(&no_dir_sync, &object).is_err(),
            "the checker missed a missing directory fsync"
        );
        let (published, from) = events
            .iter()
            .enumerate()
            .find_map(|(i, e)| match e {
                Event::Publish { from, to } if *to == object => Some((i, from.clone())),
                _ => None,
            })
            .unwrap();
        let mut late_sync = events.clone();
        late_sync.insert(published + 1, Event::Sync(from.clone()));
        late_sync.retain({
            let mut seen = 0;
            move |e| {
                if matches!(e, Event::Sync(p) if *p == from) {
                    seen += 1;
                    // Keep only the one after the publication.
                    return seen == 2 || !matches!(e, Event::Sync(_));
                }
                true
            }
        });
        assert!(
            survives(&late_sync, &object).is_err(),
            "the checker missed an fsync after publication"
        );
    }
}
