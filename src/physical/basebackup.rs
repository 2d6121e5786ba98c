//! The `--method basebackup` fallback, for a data directory that is not local:
//! `pg_basebackup -Ft -D -` streamed as one object through the pipeline. While it
//! streams, a tar observer keeps the two small members pgdr needs (backup_label and
//! PostgreSQL's own backup_manifest, with SHA-256 of every file); a restore unpacks the
//! tar and checks it with `pg_verifybackup`.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use serde::Deserialize;

/// Members kept in memory as they stream past.
const WATCHED: &[&str] = &["backup_label", "backup_manifest"];
/// Largest watched member kept (a manifest of a huge cluster is a few MB).
const MAX_KEPT: u64 = 256 << 20;

#[derive(Debug, Default, Clone)]
pub struct Captured {
    pub backup_label: Option<String>,
    pub backup_manifest: Option<String>,
}

enum State {
    Header(Vec<u8>),
    /// Inside a member: bytes of content left, then padding left.
    Content {
        left: u64,
        pad: u64,
        keep: Option<(String, Vec<u8>)>,
    },
}

/// A `Read` that passes a tar stream through unchanged and captures watched members.
pub struct TarObserver<R> {
    inner: R,
    state: State,
    captured: Arc<Mutex<Captured>>,
}

impl<R: Read> TarObserver<R> {
    pub fn new(inner: R) -> (TarObserver<R>, Arc<Mutex<Captured>>) {
        let captured = Arc::new(Mutex::new(Captured::default()));
        (
            TarObserver {
                inner,
                state: State::Header(Vec::with_capacity(512)),
                captured: captured.clone(),
            },
            captured,
        )
    }

    fn see(&mut self, mut data: &[u8]) {
        while !data.is_empty() {
            match &mut self.state {
                State::Header(buf) => {
                    let take = (512 - buf.len()).min(data.len());
                    buf.extend_from_slice(&data[..take]);
                    data = &data[take..];
                    if buf.len() == 512 {
                        let header = std::mem::take(buf);
                        self.state = parse_header(&header);
                    }
                }
                State::Content { left, pad, keep } => {
                    if *left > 0 {
                        let take = (*left).min(data.len() as u64) as usize;
                        if let Some((_, kept)) = keep {
                            kept.extend_from_slice(&data[..take]);
                        }
                        *left -= take as u64;
                        data = &data[take..];
                        continue;
                    }
                    let take = (*pad).min(data.len() as u64) as usize;
                    *pad -= take as u64;
                    data = &data[take..];
                    if *pad == 0 {
                        if let Some((name, kept)) = keep.take() {
                            let text = String::from_utf8_lossy(&kept).into_owned();
                            let mut c = self.captured.lock().expect("capture lock");
                            match name.as_str() {
                                "backup_label" => c.backup_label = Some(text),
                                _ => c.backup_manifest = Some(text),
                            }
                        }
                        self.state = State::Header(Vec::with_capacity(512));
                    }
                }
            }
        }
    }
}

fn octal(field: &[u8]) -> u64 {
    let text = String::from_utf8_lossy(field);
    u64::from_str_radix(text.trim_matches(|c: char| c == '\0' || c == ' '), 8).unwrap_or(0)
}

fn parse_header(h: &[u8]) -> State {
    if h.iter().all(|b| *b == 0) {
        // End-of-archive blocks: treat as empty headers.
        return State::Header(Vec::with_capacity(512));
    }
    let name_end = h[..100].iter().position(|b| *b == 0).unwrap_or(100);
    let name = String::from_utf8_lossy(&h[..name_end])
        .trim_start_matches("./")
        .to_string();
    let size = octal(&h[124..136]);
    let pad = (512 - size % 512) % 512;
    let keep =
        (WATCHED.contains(&name.as_str()) && size <= MAX_KEPT).then(|| (name, Vec::with_capacity(size as usize)));
    if size == 0 {
        return State::Header(Vec::with_capacity(512));
    }
    State::Content { left: size, pad, keep }
}

impl<R: Read> Read for TarObserver<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.see(&buf[..n]);
        Ok(n)
    }
}

/// The parts of PostgreSQL's backup_manifest pgdr uses.
#[derive(Debug, Deserialize)]
pub struct PgManifest {
    #[serde(rename = "Files")]
    pub files: Vec<PgManifestFile>,
    #[serde(rename = "WAL-Ranges")]
    pub wal_ranges: Vec<PgWalRange>,
}

#[derive(Debug, Deserialize)]
pub struct PgManifestFile {
    #[serde(rename = "Path")]
    pub path: String,
    #[serde(rename = "Size")]
    pub size: u64,
    #[serde(rename = "Checksum", default)]
    pub checksum: String,
}

#[derive(Debug, Deserialize)]
pub struct PgWalRange {
    #[serde(rename = "Timeline")]
    pub timeline: u32,
    #[serde(rename = "Start-LSN")]
    pub start_lsn: String,
    #[serde(rename = "End-LSN")]
    pub end_lsn: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, body: &[u8]) -> Vec<u8> {
        let mut h = vec![0u8; 512];
        h[..name.len()].copy_from_slice(name.as_bytes());
        let size = format!("{:011o}\0", body.len());
        h[124..136].copy_from_slice(size.as_bytes());
        h[156] = b'0';
        let mut out = h;
        out.extend_from_slice(body);
        out.resize(out.len().div_ceil(512) * 512, 0);
        out
    }

    #[test]
    fn captures_watched_members_across_any_read_size() {
        let mut tar = member("PG_VERSION", b"15\n");
        tar.extend(member(
            "backup_label",
            b"START WAL LOCATION: 0/2000028 (file 000000010000000000000002)\n",
        ));
        tar.extend(member("base/1/1259", &vec![7u8; 9000]));
        tar.extend(member("backup_manifest", b"{\"x\":1}"));
        tar.extend(vec![0u8; 1024]);
        for chunk in [1, 7, 511, 512, 4096] {
            let (mut obs, cap) = TarObserver::new(io::Cursor::new(tar.clone()));
            let mut out = Vec::new();
            let mut buf = vec![0u8; chunk];
            loop {
                let n = obs.read(&mut buf).unwrap();
                if n == 0 {
                    break;
                }
                out.extend_from_slice(&buf[..n]);
            }
            assert_eq!(out, tar, "passes bytes through unchanged");
            let c = cap.lock().unwrap();
            assert!(c.backup_label.as_deref().unwrap().contains("000000010000000000000002"));
            assert_eq!(c.backup_manifest.as_deref(), Some("{\"x\":1}"));
        }
    }
}
