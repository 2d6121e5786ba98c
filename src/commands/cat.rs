//! `pgdr cat KEY`: any stored object's plaintext on stdout — the emergency exit, e.g.
//! `pgdr cat LABEL/databases/app.dump | pg_restore -d app`.

use anyhow::Result;

use super::Ctx;
use crate::cli::CatArgs;
use crate::exit::Exit;
use crate::pipeline;
use crate::repo::{self, BackupLabel, layout};
use crate::storage::{self, ObjectKey};
use crate::usage;

/// `LABEL/...` is short for `backups/LABEL/...`.
fn object_key(raw: &str) -> Result<ObjectKey> {
    let raw = raw.trim_start_matches('/');
    let labelled = raw
        .split_once('/')
        .and_then(|(first, rest)| first.parse::<BackupLabel>().ok().map(|l| (l, rest)));
    let full = match labelled {
        Some((label, rest)) => {
            if rest.is_empty() {
                return Err(usage!("{raw} is a backup, not an object; try {label}/manifest.json"));
            }
            layout::backup_object(&label, rest)
                .map_err(|e| usage!("{e:#} — see `pgdr cat {label}/manifest.json` for its objects"))?
        }
        _ if raw.parse::<BackupLabel>().is_ok() => {
            return Err(usage!("{raw} is a backup, not an object; try {raw}/manifest.json"));
        }
        _ => ObjectKey::new(raw).map_err(|e| usage!("{e} — keys are like backups/LABEL/manifest.json or wal/…"))?,
    };
    Ok(full)
}

pub async fn run(ctx: &Ctx, args: CatArgs) -> Result<Exit> {
    let key = object_key(&args.key)?;
    let storage = storage::open(&ctx.config.repository, &ctx.config.cluster).await?;
    if key == layout::repo_info() {
        // The one plaintext object.
        let data = storage.get(&key).await?;
        use std::io::Write;
        std::io::stdout().write_all(&data)?;
        return Ok(Exit::Success);
    }
    let keys = repo::bound_keyring(&ctx.config, &storage).await?;
    let stdout = std::io::stdout();
    pipeline::load_to_writer(&storage, &key, stdout, &keys, pipeline::Verify::Authenticated, None)
        .await
        .map_err(|e| {
            if crate::exit::is_not_found(&e) {
                usage!("{key} does not exist in {}", storage.describe())
            } else {
                e
            }
        })?;
    Ok(Exit::Success)
}
