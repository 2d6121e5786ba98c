//! The drill's configuration, derived from the real one: the real repositories in
//! areas of the drill's own, the scratch production, the drill's PgBouncer.

use super::*;

/// The drill's configuration file: the real repositories (and copies), each in an
/// area of the drill's own; the scratch production; the drill's PgBouncer. Nothing
/// else of the real configuration (no notifications, hooks, checks or schedule).
pub(super) fn drill_config_table(
    config: &Config,
    user: &toml::Table,
    cluster: &str,
    env: &Env,
    port: u16,
) -> Result<toml::Table> {
    use toml::Value;
    let mut t = toml::Table::new();
    t.insert("cluster".into(), Value::String(cluster.into()));
    let mut pg = toml::Table::new();
    pg.insert("url".into(), Value::String(env.url(port, "postgres")));
    pg.insert(
        "data_dir".into(),
        Value::String(env.path("production").display().to_string()),
    );
    if let Some(bin) = &config.postgres.bin_dir {
        pg.insert("bin_dir".into(), Value::String(bin.display().to_string()));
    }
    t.insert("postgres".into(), Value::Table(pg));
    let mut repo = user
        .get("repository")
        .and_then(Value::as_table)
        .cloned()
        .ok_or_else(|| crate::usage!("the configuration has no [repository]"))?;
    if let Some(k) = &config.repository.key_file {
        repo.insert(
            "key_file".into(),
            Value::String(std::path::absolute(k).unwrap_or(k.clone()).display().to_string()),
        );
    }
    t.insert("repository".into(), Value::Table(repo));
    let mut wal = user.get("wal").and_then(Value::as_table).cloned().unwrap_or_default();
    wal.insert(
        "spool_dir".into(),
        Value::String(env.path("spool").display().to_string()),
    );
    t.insert("wal".into(), Value::Table(wal));
    let mut switch = toml::Table::new();
    switch.insert(
        "pgbouncer_admin_url".into(),
        Value::String(env.url(env.bouncer_port, "pgbouncer")),
    );
    switch.insert(
        "pgbouncer_ini".into(),
        Value::String(env.path("pgbouncer/pgbouncer.ini").display().to_string()),
    );
    switch.insert(
        "pgbouncer_databases".into(),
        Value::Array(vec![Value::String("postgres".into())]),
    );
    t.insert("switch".into(), Value::Table(switch));
    Ok(t)
}

pub(super) fn write_config(path: &Path, table: &toml::Table) -> Result<()> {
    let text = format!(
        "# pgdr drill: scratch configuration, removed with the drill\n{}",
        toml::to_string(table).context("writing the drill configuration")?
    );
    std::fs::write(path, text).with_context(|| format!("writing {}", path.display()))?;
    chown_postgres(path)
}
