//! Where a repository is: its URL parsed (`file://` or `s3://`), and the settings of
//! a copy derived from the primary's.

use std::path::PathBuf;

use anyhow::Result;

use super::RepositoryConfig;
use crate::usage;

/// A parsed repository URL.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum RepoUrl {
    Local(PathBuf),
    S3 { bucket: String, prefix: String },
}

impl RepositoryConfig {
    pub fn parsed_url(&self) -> Result<RepoUrl> {
        parse_repo_url(&self.url)
    }

    /// The settings of copy `name`: its place, endpoint and credentials; the key, the
    /// compression and the S3 tuning of this repository unless it sets its own.
    pub fn copy(&self, name: &str) -> Result<RepositoryConfig> {
        let Some(copy) = self.copies.iter().find(|c| c.name == name) else {
            let known: Vec<&str> = self.copies.iter().map(|c| c.name.as_str()).collect();
            return Err(usage!(
                "there is no repository copy named {name:?} — {}",
                if known.is_empty() {
                    "add a [[repository.copies]] entry with that name".to_string()
                } else {
                    format!("the configured copies are {}", known.join(", "))
                }
            ));
        };
        Ok(RepositoryConfig {
            url: copy.url.clone(),
            endpoint: copy.endpoint.clone(),
            region: copy.region.clone(),
            force_path_style: copy.force_path_style,
            key_file: copy.key_file.clone().or_else(|| self.key_file.clone()),
            profile: copy.profile.clone(),
            ca_file: copy.ca_file.clone(),
            copies: Vec::new(),
            ..self.clone()
        })
    }
}

pub fn parse_repo_url(url: &str) -> Result<RepoUrl> {
    if let Some(path) = url.strip_prefix("file://") {
        if !path.starts_with('/') {
            return Err(usage!(
                "repository.url {url:?} must name an absolute path, e.g. file:///var/lib/pgdr/repo"
            ));
        }
        return Ok(RepoUrl::Local(PathBuf::from(path)));
    }
    if let Some(rest) = url.strip_prefix("s3://") {
        let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
        if bucket.is_empty() {
            return Err(usage!("repository.url {url:?} has no bucket, e.g. s3://backups/prod"));
        }
        return Ok(RepoUrl::S3 {
            bucket: bucket.to_string(),
            prefix: prefix.trim_matches('/').to_string(),
        });
    }
    Err(usage!(
        "repository.url {url:?} is not supported: use file:///path or s3://bucket/prefix"
    ))
}
