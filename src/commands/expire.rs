//! `pgdr expire [--dry-run]`: apply `[retention]` — remove what the rules let go,
//! report what was removed and what was kept and why. Also sets and clears the
//! permanent keep mark (`--keep LABEL`, `--unkeep LABEL`).

use anyhow::{Context, Result};
use chrono::Utc;
use serde_json::json;

use super::Ctx;
use crate::cli::ExpireArgs;
use crate::exit::Exit;
use crate::postgres::WalFile;
use crate::repo::{BackupLabel, Repo, archive, catalog, layout, retention};
use crate::storage::dry_run::DryRun;
use crate::storage::{DynStorage, ObjectKey, Refused};
use crate::usage;

pub async fn run(ctx: &Ctx, args: ExpireArgs) -> Result<Exit> {
    let repo = Repo::open(&ctx.config).await?;
    if !args.keep.is_empty() || !args.unkeep.is_empty() {
        return mark(ctx, &repo, &args).await;
    }
    let scan = catalog::scan(&repo.storage).await?;
    let (manifests, damaged) = catalog::load_scanned_all(&repo.storage, &repo.keys, &scan).await?;
    let listing = archive::list(&repo.storage).await?;
    let mut plan = retention::plan(&ctx.config.retention, &manifests, &scan.keep, &listing, Utc::now());
    // What WAL a backup with an unreadable manifest needs is unknown: keep all of it,
    // and the backup itself, until it is repaired or removed by hand.
    if !damaged.is_empty() {
        for d in &damaged {
            eprintln!(
                "pgdr: warning: backup {} has a damaged manifest ({}); it is kept, and no WAL is removed while it is there",
                d.label, d.why
            );
        }
        plan.wal_remove.clear();
    }

    // A dry run takes the same path against a store that records deletes instead.
    let target: DynStorage = if args.dry_run {
        std::sync::Arc::new(DryRun::new(repo.storage.clone()))
    } else {
        repo.storage.clone()
    };
    let mut removed_backups = Vec::new();
    let mut refused: Vec<Refused> = Vec::new();
    for decision in plan.backups.iter().filter(|d| !d.keep) {
        // The manifest goes first: a backup interrupted half-way through its
        // removal is an orphan, never a "complete" backup with holes.
        let manifest_key = layout::manifest(&decision.label);
        refused.extend(target.delete(std::slice::from_ref(&manifest_key)).await?);
        let rest: Vec<ObjectKey> = scan
            .objects
            .get(&decision.label)
            .map(|keys| keys.iter().filter(|k| **k != manifest_key).cloned().collect())
            .unwrap_or_default();
        refused.extend(target.delete(&rest).await?);
        removed_backups.push(decision.label.clone());
    }
    let keys: Vec<ObjectKey> = plan
        .wal_remove
        .iter()
        .filter_map(|name| WalFile::parse(name))
        .map(|f| layout::wal_file(&f))
        .collect();
    let before = refused.len();
    refused.extend(target.delete(&keys).await.context("removing expired WAL")?);
    // Reported as removed only when it was (a dry run removes nothing).
    let wal_removed = if args.dry_run {
        0
    } else {
        keys.len() - (refused.len() - before)
    };

    if ctx.json {
        ctx.print_json(&json!({
            "dry_run": args.dry_run,
            "backups": plan.backups.iter().map(|d| json!({
                "label": d.label, "kind": d.kind, "keep": d.keep, "reason": d.reason,
            })).collect::<Vec<_>>(),
            "wal_anchor": plan.wal_anchor,
            "wal_to_remove": plan.wal_remove.len(),
            "wal_removed": wal_removed,
            "left_in_place": refused.iter().map(|r| json!({"key": r.key.to_string(), "reason": r.reason})).collect::<Vec<_>>(),
        }));
        return Ok(Exit::Success);
    }
    let verb = if args.dry_run { "would remove" } else { "removed" };
    for d in &plan.backups {
        println!(
            "{} {} {:<9} {}",
            if d.keep { "keep  " } else { "remove" },
            d.label,
            d.kind.to_string(),
            d.reason
        );
    }
    match &plan.wal_anchor {
        Some(anchor) => println!(
            "WAL: {verb} {} segment(s); point-in-time recovery reaches back to {anchor}",
            if args.dry_run {
                plan.wal_remove.len()
            } else {
                wal_removed
            }
        ),
        None => println!("WAL: kept (no physical backup to anchor it)"),
    }
    if !args.dry_run {
        println!("{verb} {} backup(s)", removed_backups.len());
    }
    for r in &refused {
        println!(
            "left in place: {} ({}) — protected by the store (e.g. S3 Object Lock)",
            r.key, r.reason
        );
    }
    Ok(Exit::Success)
}

async fn mark(ctx: &Ctx, repo: &Repo, args: &ExpireArgs) -> Result<Exit> {
    let manifests = repo.manifests().await?;
    for raw in args.keep.iter().chain(&args.unkeep) {
        let label: BackupLabel = raw.parse().map_err(|e: String| usage!("{e}"))?;
        if !manifests.iter().any(|m| m.label == label) {
            return Err(usage!("backup {label} does not exist — see `pgdr list`"));
        }
    }
    for raw in &args.keep {
        let label: BackupLabel = raw.parse().expect("checked");
        crate::repo::retention::set_keep(repo, &label).await?;
        if !ctx.json {
            println!("{label} is marked keep: expire will never remove it");
        }
    }
    for raw in &args.unkeep {
        let label: BackupLabel = raw.parse().expect("checked");
        crate::repo::retention::clear_keep(repo, &label).await?;
        if !ctx.json {
            println!("{label} is no longer marked keep");
        }
    }
    if ctx.json {
        ctx.print_json(&json!({"keep": args.keep, "unkeep": args.unkeep}));
    }
    Ok(Exit::Success)
}
