//! `pgdr cat KEY`: any stored object's plaintext on stdout — the emergency exit, e.g.
//! `pgdr cat LABEL/databases/app.dump | pg_restore -d app`.

use anyhow::Result;

use super::Ctx;
use crate::cli::CatArgs;
use crate::exit::Exit;
use crate::pipeline;
use crate::repo::{self, layout};
use crate::storage;
use crate::usage;

pub async fn run(ctx: &Ctx, args: CatArgs) -> Result<Exit> {
    let key = layout::user_key(&args.key).map_err(|e| usage!("{e}"))?;
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
            if crate::storage::is_not_found(&e) {
                usage!("{key} does not exist in {}", storage.describe())
            } else {
                e
            }
        })?;
    Ok(Exit::Success)
}
