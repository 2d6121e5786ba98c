//! `pgdr report`: the recoverability window, gaps, archive and copy health, backups,
//! drills and what expire would remove, from the repositories alone.

use std::io::Write;

use anyhow::{Context, Result};

use super::Ctx;
use crate::cli::ReportArgs;
use crate::exit::Exit;

pub async fn run(ctx: &Ctx, args: ReportArgs) -> Result<Exit> {
    let report = crate::report::build(&ctx.config).await;
    let Some(path) = args.html else {
        ctx.print_report(&report);
        return Ok(Exit::Success);
    };
    let html = crate::report::html::render(&report).context("rendering the report page")?;
    if path.as_os_str() == "-" {
        print!("{html}");
        return Ok(Exit::Success);
    }
    // Whole or not at all: a page being read while it is written is never half.
    let dir = match path.parent() {
        Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
        _ => std::path::PathBuf::from("."),
    };
    let mut tmp = tempfile::NamedTempFile::new_in(&dir)
        .with_context(|| format!("cannot write the report into {}", dir.display()))?;
    tmp.write_all(html.as_bytes())
        .and_then(|_| tmp.as_file().sync_all())
        .with_context(|| format!("cannot write the report into {}", dir.display()))?;
    {
        use std::os::unix::fs::PermissionsExt;
        let _ = tmp.as_file().set_permissions(std::fs::Permissions::from_mode(0o644));
    }
    tmp.persist(&path)
        .map_err(|e| e.error)
        .with_context(|| format!("cannot write {}", path.display()))?;
    if ctx.json {
        println!("{}", serde_json::json!({"html": path, "bytes": html.len()}));
    } else {
        println!("wrote {} ({} bytes)", path.display(), html.len());
    }
    Ok(Exit::Success)
}
