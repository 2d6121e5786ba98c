//! `pgdr init`: create this cluster's repository (repo.json), optionally with a newly
//! generated key file.

use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use anyhow::{Context, Result};
use serde_json::json;

use super::Ctx;
use crate::cli::InitArgs;
use crate::exit::Exit;
use crate::pipeline::{Keyring, RepoKey};
use crate::postgres::{PgTarget, server};
use crate::repo::{self, RepoInfo, info};
use crate::storage::{self, StorageError};
use crate::usage;

/// Write a new key to `path` with mode 0600; never replaces an existing file (a lost
/// key is lost backups).
fn write_key_file(path: &Path) -> Result<RepoKey> {
    let text = RepoKey::generate_hex();
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
        .map_err(|e| {
            if e.kind() == std::io::ErrorKind::AlreadyExists {
                usage!(
                    "{} already exists; pgdr never overwrites a key file — choose another path",
                    path.display()
                )
            } else {
                usage!("cannot create the key file {}: {e}", path.display())
            }
        })?;
    file.write_all(format!("{text}\n").as_bytes())?;
    file.sync_all()?;
    RepoKey::from_hex(&text, "the generated key")
}

pub fn generate_only(args: &InitArgs, json: bool) -> Result<Exit> {
    let path = args.generate_key.as_ref().expect("checked by caller");
    let key = write_key_file(path)?;
    if json {
        println!("{}", json!({"key_file": path, "key_id": key.id().to_hex()}));
    } else {
        println!(
            "wrote a new repository key to {} (key id {}); keep a copy somewhere safe, then set [repository] key_file and run `pgdr init` again",
            path.display(),
            key.id().to_hex()
        );
    }
    Ok(Exit::Success)
}

pub async fn run(ctx: &Ctx, args: InitArgs) -> Result<Exit> {
    let config = &ctx.config;
    let keys = match &args.generate_key {
        Some(path) => {
            let generated = write_key_file(path)?;
            if config.repository.key_file.as_deref().is_some_and(|k| k != path)
                || std::env::var_os("PGDR_KEY").is_some()
            {
                return Err(usage!(
                    "wrote {}, but the configuration names another key; set [repository] key_file = {:?} and run `pgdr init` again",
                    path.display(),
                    path.display()
                ));
            }
            Keyring::new(generated)
        }
        None => repo::load_keyring(config)?,
    };
    let target = PgTarget::from_config(config.postgres.url.as_deref())?;
    let client = target.connect(None).await?;
    let server = server::server_info(&client).await?;
    let storage = storage::open(&config.repository, &config.cluster).await?;
    let key_id = keys.primary().id().to_hex();
    let lock = match args.object_lock {
        Some(days) => Some(object_lock(config, &storage, days, args.object_lock_mode).await?),
        None => None,
    };

    let existing = info::read(&storage).await?;
    let (created, info) = match existing {
        Some(existing) => {
            if existing.system_identifier != server.system_identifier {
                return Err(usage!(
                    "{} already belongs to the cluster with system identifier {} (this server: {}) — use another cluster name or repository",
                    storage.describe(),
                    existing.system_identifier,
                    server.system_identifier
                ));
            }
            if existing.key_id != key_id {
                return Err(usage!(
                    "{} is already initialised with another key (id {}) — check key_file / PGDR_KEY",
                    storage.describe(),
                    existing.key_id
                ));
            }
            (false, existing)
        }
        None => {
            let info = RepoInfo {
                format: info::REPO_FORMAT,
                cluster: config.cluster.clone(),
                system_identifier: server.system_identifier.clone(),
                pg_major: server.major(),
                key_id,
                created: chrono::Utc::now(),
                retired_keys: Vec::new(),
                ignores_if_none_match: Some(
                    !info::probe_conditional_put(&storage)
                        .await
                        .with_context(|| format!("writing a probe into {}", storage.describe()))?,
                ),
            };
            match info::create(&storage, &info).await {
                Ok(()) => {}
                Err(StorageError::AlreadyExists(_)) => {
                    return Err(usage!(
                        "{} was initialised concurrently — run `pgdr init` again",
                        storage.describe()
                    ));
                }
                Err(e) => return Err(e).context("writing repo.json"),
            }
            (true, info)
        }
    };
    if ctx.json {
        ctx.print_json(&json!({
            "repository": storage.describe(),
            "created": created,
            "cluster": info.cluster,
            "system_identifier": info.system_identifier,
            "pg_major": info.pg_major,
            "key_id": info.key_id,
            "object_lock": lock,
        }));
    } else if created {
        println!(
            "initialised {} for cluster {:?} (system identifier {}, PostgreSQL {})",
            storage.describe(),
            info.cluster,
            info.system_identifier,
            server.version
        );
    } else {
        println!(
            "{} is already initialised for this cluster; nothing to do",
            storage.describe()
        );
    }
    if let Some(lock) = &lock
        && !ctx.json
    {
        println!(
            "Object Lock: every object version is kept {} days ({}); `pgdr expire` removes versions once that has passed",
            lock.days, lock.mode
        );
    }
    Ok(Exit::Success)
}

/// Turn S3 Object Lock on (or check it is on) with a default retention of `days`.
async fn object_lock(
    config: &crate::config::Config,
    storage: &storage::DynStorage,
    days: u32,
    mode: crate::cli::LockModeArg,
) -> Result<storage::ObjectLock> {
    if !matches!(config.repository.parsed_url()?, crate::config::RepoUrl::S3 { .. }) {
        return Err(usage!(
            "--object-lock needs an S3 repository (a local directory cannot lock its files against its own root)"
        ));
    }
    if days == 0 {
        return Err(usage!("--object-lock takes a number of days, at least 1"));
    }
    let want = storage::ObjectLock {
        mode: match mode {
            crate::cli::LockModeArg::Compliance => storage::LockMode::Compliance,
            crate::cli::LockModeArg::Governance => storage::LockMode::Governance,
        },
        days,
    };
    if let Some(storage::Versioning { lock: Some(have) }) = storage.versioning().await? {
        if have == want {
            return Ok(have);
        }
        if have.mode == storage::LockMode::Compliance && want.mode == storage::LockMode::Governance {
            return Err(usage!(
                "the bucket already locks objects in COMPLIANCE mode for {} days; pgdr will not weaken it to GOVERNANCE",
                have.days
            ));
        }
    }
    storage
        .enable_object_lock(&want)
        .await
        .map_err(|e| usage!("cannot turn on Object Lock: {e}"))?;
    Ok(want)
}
