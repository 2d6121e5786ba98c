//! `pgdr standby create`: flags → [`StandbyOptions`], the standby, its report.

use anyhow::Result;

use super::Ctx;
use crate::cli::{StandbyArgs, StandbyCommand};
use crate::exit::Exit;
use crate::failover::standby::{self, StandbyOptions};
use crate::restore::physical::Listen;

pub async fn run(ctx: &Ctx, args: StandbyArgs) -> Result<Exit> {
    let StandbyCommand::Create(args) = args.command;
    let to = std::path::absolute(&args.to).unwrap_or(args.to);
    let opts = StandbyOptions {
        to,
        primary: args.primary.parse()?,
        slot: args.slot,
        listen: Listen {
            port: args.port,
            addresses: args.listen.unwrap_or_else(|| "127.0.0.1".to_string()),
            socket_dir: args.socket_dir,
            scratch_hba: false,
        },
        backup: args.backup,
        jobs: args
            .jobs
            .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(2)),
    };
    let json = ctx.json;
    let report = standby::create(&ctx.config, &opts, &mut |line| {
        if !json {
            println!("{line}");
        }
    })
    .await?;
    ctx.print_report(&report);
    Ok(Exit::Success)
}
