//! Free space where pgdr writes locally: the temp directory and a local repository.

use super::{CheckReport, Status};
use crate::config::{Config, RepoUrl};
use crate::progress::human_bytes;

/// Below this, free space is reported as a failure.
const MIN_FREE: u64 = 1 << 30;

/// Disk space where pgdr writes locally.
pub(super) fn checks(config: &Config, report: &mut CheckReport) {
    let mut places = vec![("temp", std::env::temp_dir())];
    if let Ok(RepoUrl::Local(path)) = config.repository.parsed_url() {
        places.push(("repository disk", path));
    }
    for (name, path) in places {
        match crate::disk::free_bytes(&path) {
            Some(free) if free >= MIN_FREE => report.add(
                Status::Ok,
                name,
                format!("{} free at {}", human_bytes(free), path.display()),
            ),
            Some(free) => report.add(
                Status::Fail,
                name,
                format!(
                    "only {} free at {} (want at least {})",
                    human_bytes(free),
                    path.display(),
                    human_bytes(MIN_FREE)
                ),
            ),
            None => report.add(
                Status::Fail,
                name,
                format!("cannot read free space at {}", path.display()),
            ),
        }
    }
}
