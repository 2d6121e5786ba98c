//! What can be wrong with the repository as the DBA set it up, as types: the verbs
//! and `exit.rs` match on them (all are the DBA's to fix: exit 2) instead of each
//! layer deciding exit codes with strings.

use super::BackupKind;

#[derive(Debug, thiserror::Error)]
pub enum RepoError {
    #[error(
        "no repository key: set [repository] key_file or PGDR_KEY (create one with `pgdr init --generate-key FILE`)"
    )]
    NoKey,
    #[error("no pgdr repository for cluster {cluster:?} at {place} — run `pgdr init` first")]
    NotInitialised { cluster: String, place: String },
    /// A configured copy that `pgdr copy` has not filled yet.
    #[error(
        "the copy {name:?} at {place} holds nothing of cluster {cluster:?} yet — run `pgdr copy --to {name}` first"
    )]
    CopyEmpty {
        name: String,
        cluster: String,
        place: String,
    },
    #[error(
        "the repository key (id {ours}) is not the key of the repository at {place} (id {theirs}) — check key_file / PGDR_KEY"
    )]
    WrongKey {
        ours: String,
        place: String,
        theirs: String,
    },
    #[error(
        "the repository key (id {ours}) was retired by `pgdr key rotate` on {when}; the repository at {place} now uses key id {current} — install that key as key_file on this host (the old one stays in the key file's .retired/ directory to decrypt what it encrypted)"
    )]
    KeyRetired {
        ours: String,
        when: chrono::DateTime<chrono::Utc>,
        current: String,
        place: String,
    },
    #[error(
        "the repository at {place} belongs to the cluster with system identifier {repo}, but the server has {server} — point [repository] url or cluster at this server's repository"
    )]
    WrongCluster {
        place: String,
        repo: String,
        server: String,
    },
    /// A `--backup` selector that names nothing (or the wrong kind); the text says
    /// what to do instead.
    #[error("{why}")]
    NoSuchBackup { why: String, kind: Option<BackupKind> },
    /// A WAL segment a recovery needs is not in the archive. Not the DBA's setup:
    /// the operation failed (exit 1), and `pgdr check` lists every gap.
    #[error("WAL gap: segment {segment} is missing from {place}/wal — {consequence}")]
    WalGap {
        segment: String,
        place: String,
        consequence: String,
    },
}

impl RepoError {
    /// Whether the DBA's setup or input is what is wrong (exit 2), as opposed to
    /// the repository's contents (exit 1).
    pub fn is_setup(&self) -> bool {
        !matches!(self, RepoError::WalGap { .. })
    }
}
