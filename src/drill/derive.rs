//! The drill's configuration, derived from the real one: the real repositories in
//! areas of the drill's own, the scratch production, the drill's PgBouncer.

use super::*;
use crate::config::{PostgresConfig, SwitchConfig, WalConfig};

/// The drill's configuration: the real repositories (and copies) as the
/// configuration file names them, each in an area of the drill's own (`cluster`);
/// the scratch production on `port`; the drill's PgBouncer. Nothing else of the real
/// configuration: no notifications, hooks, checks, retention or schedule, and no
/// `PGDR_*` override (nothing in the environment may point a drill at production).
pub(super) fn drill_config(file: &Config, cluster: &str, env: &Env, port: u16) -> Config {
    let mut repository = file.repository.clone();
    // The drill's pgdr children run in another directory.
    let absolute = |k: &mut Option<PathBuf>| {
        if let Some(path) = k {
            *path = std::path::absolute(&*path).unwrap_or(path.clone());
        }
    };
    absolute(&mut repository.key_file);
    for copy in &mut repository.copies {
        absolute(&mut copy.key_file);
    }
    let mut config = Config::new(repository);
    config.cluster = cluster.to_string();
    config.postgres = PostgresConfig {
        url: Some(env.url(port, "postgres")),
        data_dir: Some(env.path("production")),
        bin_dir: file.postgres.bin_dir.clone(),
        ..PostgresConfig::default()
    };
    config.wal = WalConfig {
        spool_dir: Some(env.path("spool")),
        ..file.wal.clone()
    };
    config.switch = SwitchConfig {
        pgbouncer_admin_url: Some(env.url(env.bouncer_port, "pgbouncer")),
        pgbouncer_ini: Some(env.path("pgbouncer/pgbouncer.ini")),
        pgbouncer_databases: vec!["postgres".into()],
        ..SwitchConfig::default()
    };
    config
}

/// Write the drill's configuration file, readable by the postgres OS user alone (the
/// drill's servers archive with it).
pub(super) fn write_config(path: &Path, config: &Config) -> Result<()> {
    let text = format!(
        "# pgdr drill: scratch configuration, removed with the drill\n{}",
        config.to_toml()?
    );
    // Rewritten when a region drill loses the primary region.
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => {
            return Err(anyhow!("replacing {}: {e}", path.display()));
        }
        _ => {}
    }
    crate::disk::write_private_file(path, &text)
}
