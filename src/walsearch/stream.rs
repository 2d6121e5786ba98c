//! Archived WAL, streamed through `pg_waldump`: segments are fetched from the
//! repository (decrypted and decompressed on the way) into a private directory a
//! batch at a time, read by PostgreSQL's own `pg_waldump`, and removed again, so the
//! disk used stays bounded whatever the window.
//!
//! Every segment of a batch is named under one timeline (the followed one): the
//! segments of its ancestors up to each switch point are what PostgreSQL itself
//! replays, and pg_waldump checks page headers, not file names. Batches overlap by one
//! segment, so a record that crosses from one batch into the next is read whole by the
//! second; records already read are skipped by LSN.

use std::io::{BufRead, Read, Seek};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{Context, Result, anyhow};
use chrono::{DateTime, Utc};

use super::waldump::{self, Record};
use crate::pipeline::{self, Keyring};
use crate::postgres::{Lsn, Segment, TimelineId, WalFile};
use crate::repo::layout;
use crate::storage::DynStorage;

/// Segments per pg_waldump run (with 16 MiB segments, at most 2 × 8 on disk).
pub const BATCH: usize = 8;

/// What to read: archived segment names in replay order, with their numbers.
pub struct Plan {
    pub files: Vec<(String, u64)>,
    /// The timeline every file is named under for pg_waldump.
    pub timeline: TimelineId,
    pub start: Lsn,
    pub segment_size: u64,
}

/// The resource managers wal-search reads (the others only cost parsing time).
pub const SEARCH_RMGRS: &[&str] = &["Transaction", "Storage", "Heap", "Heap2", "XLOG"];

#[derive(Debug, Default, Clone, serde::Serialize)]
pub struct Scanned {
    pub segments: usize,
    pub bytes: u64,
    pub records: u64,
    /// The last record read.
    pub last_lsn: Option<Lsn>,
}

pub struct Reader<'a> {
    pub storage: &'a DynStorage,
    pub keys: &'a Keyring,
    pub pg_waldump: PathBuf,
    pub work: &'a Path,
    /// Only records of these resource managers (empty: all of them).
    pub rmgrs: &'a [&'a str],
}

impl Reader<'_> {
    /// Read every record of the plan, in order, into `feed`. The next batch is
    /// fetched while pg_waldump reads this one.
    pub async fn scan(&self, plan: &Plan, mut feed: impl FnMut(Lsn, Record, &Path)) -> Result<Scanned> {
        self.scan_lines(plan, |lsn, line| {
            if let Some(record) = waldump::parse(line) {
                let file = self.local(plan, lsn.0 / plan.segment_size);
                feed(lsn, record, &file);
            }
        })
        .await
    }

    /// Where segment `number` of the plan is read from.
    fn local(&self, plan: &Plan, number: u64) -> PathBuf {
        self.work.join(
            Segment {
                timeline: plan.timeline,
                number,
            }
            .name(plan.segment_size),
        )
    }

    /// Every record line pg_waldump prints for the plan, in order, once each.
    pub async fn scan_lines(&self, plan: &Plan, mut feed: impl FnMut(Lsn, &str)) -> Result<Scanned> {
        let mut scanned = Scanned::default();
        let n = plan.files.len();
        if n == 0 {
            return Ok(scanned);
        }
        let local = |number: u64| self.local(plan, number);
        let batch_end = |i: usize| (i + BATCH - 1).min(n - 1);
        let wanted = |from: usize, to: usize| -> Vec<(String, PathBuf)> {
            plan.files[from..=to]
                .iter()
                .map(|(name, number)| (name.clone(), local(*number)))
                .collect()
        };
        // The next batch is fetched into a directory of its own while pg_waldump reads
        // this one (it looks at other files of its directory), and moved in after.
        let staging = self.work.join("next");
        std::fs::create_dir_all(&staging).with_context(|| format!("creating {}", staging.display()))?;
        let staged = |files: Vec<(String, PathBuf)>| -> Vec<(String, PathBuf)> {
            files
                .into_iter()
                .map(|(name, dest)| {
                    let file = dest.file_name().map(|f| staging.join(f)).unwrap_or(dest);
                    (name, file)
                })
                .collect()
        };
        let mut last_seen = Lsn(0);
        let mut i = 0;
        let mut j = batch_end(0);
        scanned.bytes += fetch_all(self.storage.clone(), self.keys.clone(), wanted(0, j)).await?;
        scanned.segments += j + 1;
        loop {
            // The next batch starts with this one's last segment, already here.
            let next = (j < n - 1).then(|| {
                let to = batch_end(j);
                let files = staged(wanted(j + 1, to));
                (
                    to,
                    tokio::spawn(fetch_all(self.storage.clone(), self.keys.clone(), files)),
                )
            });
            let first = plan.files[i].1;
            let last = plan.files[j].1;
            let seg_start = |number: u64| Lsn(number * plan.segment_size);
            let start = if i == 0 {
                plan.start.max(seg_start(first))
            } else {
                seg_start(first)
            };
            let end = seg_start(last + 1);
            let read = tokio::task::block_in_place(|| {
                if start >= end {
                    return Ok(());
                }
                run_waldump(
                    &self.pg_waldump,
                    self.work,
                    plan.timeline,
                    self.rmgrs,
                    (start, end),
                    |line| {
                        let Some(lsn) = waldump::lsn_of(line) else {
                            return;
                        };
                        if lsn <= last_seen {
                            return;
                        }
                        last_seen = lsn;
                        scanned.records += 1;
                        feed(lsn, line);
                    },
                )
            });
            for (_, number) in &plan.files[i..j] {
                let _ = std::fs::remove_file(local(*number));
            }
            let fetched = match next {
                Some((to, task)) => {
                    let fetched = task.await.map_err(|e| anyhow!("fetching WAL: {e}"));
                    Some((to, fetched))
                }
                None => None,
            };
            read?;
            if last_seen.0 > 0 {
                scanned.last_lsn = Some(last_seen);
            }
            let Some((to, fetched)) = fetched else {
                let _ = std::fs::remove_file(local(plan.files[j].1));
                break;
            };
            scanned.bytes += fetched??;
            scanned.segments += to - j;
            for (_, number) in &plan.files[j + 1..=to] {
                let file = local(*number);
                let from = file.file_name().map(|f| staging.join(f)).unwrap_or_default();
                std::fs::rename(&from, &file).with_context(|| format!("moving {} into place", from.display()))?;
            }
            i = j;
            j = to;
        }
        Ok(scanned)
    }
}

/// Fetch segments from the repository, four at a time; their total size.
async fn fetch_all(storage: DynStorage, keys: Keyring, files: Vec<(String, PathBuf)>) -> Result<u64> {
    use futures::stream::{self, StreamExt, TryStreamExt};
    let sizes: Vec<u64> = stream::iter(files)
        .map(|(name, dest)| {
            let storage = storage.clone();
            let keys = keys.clone();
            async move { fetch(&storage, &keys, &name, &dest).await }
        })
        .buffer_unordered(4)
        .try_collect()
        .await?;
    Ok(sizes.iter().sum())
}

/// One segment from the repository to `dest`, authenticated; its size.
async fn fetch(storage: &DynStorage, keys: &Keyring, name: &str, dest: &Path) -> Result<u64> {
    let key = layout::wal_file(&WalFile::Segment(name.to_string()));
    let out = std::fs::File::create(dest).map_err(|e| anyhow!("cannot create {}: {e}", dest.display()))?;
    let (_, plain, _) = pipeline::load_to_writer(storage, &key, out, keys, pipeline::Verify::Authenticated, None)
        .await
        .with_context(|| format!("fetching WAL segment {name}"))?;
    Ok(plain.size)
}

/// Run pg_waldump over `[start, end)` in `dir`, calling `line` for each output line.
fn run_waldump(
    tool: &Path,
    dir: &Path,
    tli: TimelineId,
    rmgrs: &[&str],
    (start, end): (Lsn, Lsn),
    mut line: impl FnMut(&str),
) -> Result<()> {
    let mut cmd = Command::new(tool);
    cmd.arg("--path")
        .arg(dir)
        .arg(format!("--timeline={tli}"))
        .arg(format!("--start={start}"))
        .arg(format!("--end={end}"));
    for rmgr in rmgrs {
        cmd.arg(format!("--rmgr={rmgr}"));
    }
    // Commit times in UTC; nothing else of pgdr's environment is needed.
    cmd.env_clear()
        .env("TZ", "UTC")
        .env("LC_ALL", "C")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = cmd.spawn().map_err(|e| anyhow!("cannot run {}: {e}", tool.display()))?;
    let stderr = child.stderr.take().expect("piped");
    let errors = std::thread::spawn(move || {
        let mut text = String::new();
        let _ = std::io::BufReader::new(stderr).take(64 << 10).read_to_string(&mut text);
        text
    });
    let stdout = child.stdout.take().expect("piped");
    let mut reader = std::io::BufReader::with_capacity(1 << 20, stdout);
    let mut buf = Vec::with_capacity(512);
    loop {
        buf.clear();
        match reader.read_until(b'\n', &mut buf) {
            Ok(0) => break,
            Ok(_) => line(String::from_utf8_lossy(&buf).trim_end()),
            Err(e) => return Err(anyhow!("reading pg_waldump's output: {e}")),
        }
    }
    let status = child.wait()?;
    let errors = errors.join().unwrap_or_default();
    if !status.success() {
        let last = errors
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no message");
        return Err(anyhow!("pg_waldump failed reading WAL from {start} to {end}: {last}"));
    }
    Ok(())
}

/// The time a restore point was made, read from its record (`xl_restore_point`:
/// the time, then the name) in the segment file that holds it. pg_waldump prints only
/// the name. `None` unless the record is exactly what the name says.
pub fn restore_point_time(segment: &Path, lsn: Lsn, segment_size: u64, name: &str) -> Option<DateTime<Utc>> {
    const PAGE: u64 = 8192;
    let offset = lsn.0 % segment_size;
    let mut file = std::fs::File::open(segment).ok()?;
    file.seek(std::io::SeekFrom::Start(offset)).ok()?;
    let mut raw = vec![0u8; (2 * PAGE) as usize];
    let got = file.read(&mut raw).ok()?;
    raw.truncate(got);
    // The record's bytes, skipping the next page's header if it crosses one.
    let to_boundary = (PAGE - offset % PAGE) as usize;
    let mut bytes: Vec<u8> = raw.iter().take(to_boundary).copied().collect();
    if raw.len() > to_boundary {
        let header = if (offset + to_boundary as u64).is_multiple_of(segment_size) {
            40
        } else {
            24
        };
        bytes.extend(raw.iter().skip(to_boundary + header).copied());
    }
    // XLogRecord (24 bytes): rmid at 17 (0 = XLOG), info at 16 (0x70 = RESTORE_POINT);
    // then the short main-data header (0xFF, length 72) and the data.
    if bytes.len() < 26 + 72 || bytes[17] != 0 || bytes[16] & 0xF0 != 0x70 || bytes[24] != 0xFF || bytes[25] != 72 {
        return None;
    }
    let stamp = i64::from_le_bytes(bytes[26..34].try_into().ok()?);
    let stored = &bytes[34..34 + 64];
    let stored = &stored[..stored.iter().position(|b| *b == 0).unwrap_or(64)];
    if stored != name.as_bytes() {
        return None;
    }
    // PostgreSQL counts microseconds from 2000-01-01.
    DateTime::from_timestamp_micros(stamp.checked_add(946_684_800_000_000)?)
}
