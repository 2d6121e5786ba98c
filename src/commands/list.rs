//! `pgdr list`: complete backups, newest first. A backup without a manifest does not
//! exist here (`pgdr check` reports those as orphans).

use anyhow::Result;
use serde_json::json;

use super::Ctx;
use crate::cli::ListArgs;
use crate::exit::Exit;
use crate::progress::human_bytes;
use crate::repo::Repo;

pub async fn run(ctx: &Ctx, _args: ListArgs) -> Result<Exit> {
    let repo = Repo::open(&ctx.config).await?;
    // One listing of backups/ gives both the manifests and the keep marks.
    let scan = crate::repo::catalog::scan(&repo.storage).await?;
    let (manifests, damaged) = crate::repo::catalog::load_scanned_all(&repo.storage, &repo.keys, &scan).await?;
    let keep = scan.keep;
    let verified = crate::repo::verification::latest_reports(&repo)
        .await
        .unwrap_or_default();
    let verdict = |label: &crate::repo::BackupLabel| {
        verified.get(label).map(|r| {
            format!(
                "{} {}",
                if r.ok { "ok" } else { "FAILED" },
                r.finished.format("%Y-%m-%d")
            )
        })
    };
    if ctx.json {
        let rows: Vec<_> = manifests
            .iter()
            .map(|m| {
                json!({
                    "label": m.label,
                    "kind": m.kind,
                    "tags": m.tags,
                    "start_time": m.start_time,
                    "stop_time": m.stop_time,
                    "pg_version": m.pg_version,
                    "stored_bytes": m.stored_size(),
                    "plain_bytes": m.plain_size(),
                    "databases": m.databases.iter().map(|d| &d.name).collect::<Vec<_>>(),
                    "keep": keep.contains(&m.label),
                    "verification": verified.get(&m.label).map(|r| json!({"ok": r.ok, "finished": r.finished})),
                })
            })
            .chain(damaged.iter().map(|d| json!({"label": d.label, "damaged": d.why})))
            .collect();
        ctx.print_json(&json!(rows));
        return Ok(Exit::Success);
    }
    for d in &damaged {
        println!(
            "DAMAGED {}: {} — it cannot be restored; `pgdr cat {}/manifest.json` shows what is there",
            d.label, d.why, d.label
        );
    }
    if manifests.is_empty() {
        println!("no backups in {} yet — run `pgdr backup`", repo.storage.describe());
        return Ok(Exit::Success);
    }
    println!(
        "{:<20} {:<9} {:<20} {:>10}  {:<18} {:<24} TAGS",
        "LABEL", "KIND", "TIME (UTC)", "SIZE", "VERIFIED", "DATABASES"
    );
    for m in &manifests {
        let mut dbs = m
            .databases
            .iter()
            .map(|d| d.name.as_str())
            .collect::<Vec<_>>()
            .join(",");
        if dbs.chars().count() > 24 {
            dbs = format!("{}…", dbs.chars().take(23).collect::<String>());
        }
        if m.databases.is_empty() {
            dbs = "(whole cluster)".into();
        }
        let mut tags = m.tags.clone();
        if keep.contains(&m.label) {
            tags.insert(0, "[keep]".into());
        }
        println!(
            "{:<20} {:<9} {:<20} {:>10}  {:<18} {:<24} {}",
            m.label.as_str(),
            m.kind.to_string(),
            m.start_time.format("%Y-%m-%d %H:%M:%S").to_string(),
            human_bytes(m.stored_size()),
            verdict(&m.label).unwrap_or_else(|| "-".into()),
            dbs,
            tags.join(",")
        );
    }
    Ok(Exit::Success)
}
