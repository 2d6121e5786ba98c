//! `pgdr restore --kind physical --to DIR`: flags → [`PhysicalRestoreOptions`], the
//! plan (printed), the restore, its report.

use anyhow::Result;

use crate::cli::{RestoreArgs, TargetKeyword};
use crate::commands::Ctx;
use crate::exit::Exit;
use crate::restore::physical::{self, Listen, PhysicalRestoreOptions, TargetTimeline};
use crate::restore::target::{Target, TargetSpec};
use crate::usage;

pub async fn run(ctx: &Ctx, args: RestoreArgs) -> Result<Exit> {
    let dir = args
        .to
        .clone()
        .ok_or_else(|| usage!("a physical restore needs --to DIR, the data directory to create"))?;
    let target = Target::parse(&TargetSpec {
        time: args.target_time.as_deref(),
        lsn: args.target_lsn.as_deref(),
        xid: args.target_xid.as_deref(),
        name: args.target_name.as_deref(),
        immediate: args.target == Some(TargetKeyword::Immediate),
    })?;
    let start = match (args.start, args.port) {
        (false, _) => None,
        (true, None) => {
            return Err(usage!(
                "--start needs --port P, so the restored server does not collide with a running one"
            ));
        }
        (true, Some(port)) => Some(Listen {
            port,
            addresses: args.listen.clone().unwrap_or_else(|| "127.0.0.1".to_string()),
            socket_dir: args.socket_dir.clone(),
            scratch_hba: args.scratch_hba,
        }),
    };
    let opts = PhysicalRestoreOptions {
        backup: args.backup,
        to: std::path::absolute(&dir).unwrap_or(dir),
        target,
        action: args.target_action,
        exclusive: args.target_exclusive,
        timeline: args
            .target_timeline
            .as_deref()
            .map(str::parse)
            .transpose()?
            .unwrap_or(TargetTimeline::Latest),
        standby: args.standby,
        primary_conninfo: args.primary_conninfo,
        primary_slot_name: None,
        delta: args.delta,
        tablespace_map: if args.no_tablespaces {
            return Err(crate::usage!(
                "--no-tablespaces is for logical restores: a physical restore keeps its tablespaces (move them with --tablespace-map OID=DIR)"
            ));
        } else {
            physical::parse_tablespace_map(&args.tablespace_map)?
        },
        archive: args.archive,
        declare: true,
        jobs: args
            .jobs
            .map(|j| j as usize)
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
        start,
    };
    let plan = physical::plan(&ctx.config, &opts).await?;
    if !ctx.json {
        println!("{plan}");
    }
    let json = ctx.json;
    let report = physical::execute(&ctx.config, &opts, plan, &mut |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    if ctx.json {
        ctx.print_json(&serde_json::to_value(&report).expect("report serialises"));
    }
    Ok(Exit::Success)
}
