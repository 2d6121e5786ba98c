//! Injecting each scenario's failure into the scratch production, and what the
//! failure left for the measurement.

use super::*;

/// What the failure left for the measurement.
pub(super) struct Injected {
    pub(super) failure_at: DateTime<Utc>,
    pub(super) t_fail: Instant,
    pub(super) inputs: BTreeMap<String, String>,
    /// Commits acknowledged before this moment must survive.
    pub(super) keep_before: DateTime<Utc>,
    /// For a lost server: the end of the last segment it had archived; commits
    /// before it must survive.
    pub(super) archived_until: Option<Lsn>,
    /// (check name, SQL giving a hash, expected value) to compare after recovery,
    /// against the server the service runs on afterwards.
    pub(super) expect: Vec<(String, String, String)>,
}

pub(super) async fn hash(client: &tokio_postgres::Client, sql: &str) -> Result<String> {
    let rows = client.simple_query(sql).await?;
    Ok(rows
        .iter()
        .find_map(|m| match m {
            tokio_postgres::SimpleQueryMessage::Row(r) => Some(r.get(0).unwrap_or("NULL").to_string()),
            _ => None,
        })
        .unwrap_or_default())
}

pub(super) const LEDGER: &str =
    "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM drill_ledger t WHERE id <= 100000";
pub(super) const LEDGER_AFTER: &str =
    "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM drill_ledger t WHERE id > 100000";
pub(super) const ARCHIVE: &str = "SELECT md5(string_agg(t::text, ',' ORDER BY id)) FROM drill_archive t";

pub(super) async fn server_time(client: &tokio_postgres::Client) -> Result<DateTime<Utc>> {
    let text = hash(
        client,
        "SELECT to_char(clock_timestamp() AT TIME ZONE 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.US\"Z\"')",
    )
    .await?;
    Ok(DateTime::parse_from_rfc3339(&text)
        .map_err(|e| anyhow!("server time {text:?}: {e}"))?
        .with_timezone(&Utc))
}

/// The failure as a power cut would do it: SIGKILL to the postmaster's whole process
/// group (pg_ctl starts it as a session leader), so no backend, archiver or
/// archive_command it started lives on; then wait until the group is gone.
pub(super) async fn kill_postmaster(data: &Path) -> Result<()> {
    let text = std::fs::read_to_string(data.join("postmaster.pid")).context("reading postmaster.pid")?;
    let pid: i32 = text
        .lines()
        .next()
        .unwrap_or("")
        .trim()
        .parse()
        .context("postmaster.pid")?;
    if pid <= 1 {
        return Err(anyhow!("postmaster.pid names pid {pid}: not a server to kill"));
    }
    // SAFETY: getpgid and kill have no memory-safety preconditions.
    let group = unsafe { libc::getpgid(pid) };
    let target = if group == pid { -pid } else { pid };
    unsafe { libc::kill(target, libc::SIGKILL) };
    let deadline = Instant::now() + Duration::from_secs(10);
    // kill(target, 0) fails (ESRCH) once no process of the group is left.
    while unsafe { libc::kill(target, 0) } == 0 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    if unsafe { libc::kill(target, 0) } == 0 {
        return Err(anyhow!(
            "the scratch production (pid {pid}) did not die within 10 s of SIGKILL"
        ));
    }
    Ok(())
}

/// The end of the newest WAL segment of timeline `tli` in the repository the
/// recovery reads (`copy`, or the primary one), listed now.
pub(super) async fn archived_until(
    config_file: &Path,
    copy: Option<&str>,
    tli: u32,
    segment_size: u64,
) -> Result<Option<Lsn>> {
    let mut config = Config::load_file(config_file)?;
    if let Some(c) = copy {
        config.select_repository(c)?;
    }
    let repo = crate::repo::Repo::open(&config).await?;
    let listing = crate::repo::archive::list(&repo.storage).await?;
    Ok(listing
        .newest_segment(tli, segment_size)
        .map(|s| s.next().start_lsn(segment_size)))
}

/// Inject the scenario's failure into the running scratch production.
pub(super) async fn inject(
    scenario: Scenario,
    env: &Env,
    prod: &PgTarget,
    production: &Path,
    config_file: &Path,
    copy: Option<&str>,
) -> Result<Injected> {
    let c = prod.connect(Some("postgres")).await?;
    match scenario {
        Scenario::DatabaseCorruption | Scenario::DataLoss => bad_write(scenario, env, &c, production).await,
        Scenario::DatabaseFailure | Scenario::RegionFailure => lost_server(env, c, production, config_file, copy).await,
    }
}

/// Bad data written over good (corruption), or rows and a table deleted (loss): the
/// recovery goes back to a moment before, by the server's clock.
async fn bad_write(scenario: Scenario, env: &Env, c: &tokio_postgres::Client, production: &Path) -> Result<Injected> {
    let mut inputs = BTreeMap::new();
    let free = || free_port().map(|p| p.to_string());
    let ledger = hash(c, LEDGER).await?;
    let archive = hash(c, ARCHIVE).await?;
    // The failure point: a moment before the bad transaction, by the server's clock.
    let target = server_time(c).await?;
    tokio::time::sleep(Duration::from_millis(1000)).await;
    let failure_at = Utc::now();
    let t_fail = Instant::now();
    let mut expect = vec![(
        "drill_ledger as it was before the failure".to_string(),
        LEDGER.to_string(),
        ledger,
    )];
    if scenario == Scenario::DatabaseCorruption {
        c.batch_execute("UPDATE drill_ledger SET amount = -amount, note = 'corrupted' WHERE id % 2 = 0")
            .await?;
        inputs.insert("data_dir".into(), env.path("new").display().to_string());
        inputs.insert("port".into(), free()?);
        inputs.insert("listen".into(), "127.0.0.1".into());
        inputs.insert("old_data_dir".into(), production.display().to_string());
    } else {
        c.batch_execute(
            "DELETE FROM drill_ledger WHERE id % 3 = 0;
             DROP TABLE drill_archive;
             INSERT INTO drill_ledger SELECT g, g, 'written after the loss' FROM generate_series(100001, 100050) g;",
        )
        .await?;
        let after = hash(c, LEDGER_AFTER).await?;
        expect.push((
            "drill_archive, dropped, is back whole".to_string(),
            ARCHIVE.to_string(),
            archive,
        ));
        expect.push((
            "rows written after the loss are kept".to_string(),
            LEDGER_AFTER.to_string(),
            after,
        ));
        inputs.insert("tables".into(), "public.drill_ledger,public.drill_archive".into());
        inputs.insert("database".into(), "postgres".into());
        inputs.insert("scratch_dir".into(), env.path("scratch").display().to_string());
    }
    inputs.insert(
        "target_time".into(),
        target.to_rfc3339_opts(chrono::SecondsFormat::Micros, true),
    );
    // The WAL past the failure point is archived before recovery starts, as
    // archive_timeout would do.
    crate::postgres::server::archive_current_wal(c).await?;
    Ok(Injected {
        failure_at,
        t_fail,
        inputs,
        keep_before: target,
        archived_until: None,
        expect,
    })
}

/// The primary killed as a power cut would (and, for a region, its repository gone):
/// the recovery makes a new primary from what the archive holds.
async fn lost_server(
    env: &Env,
    c: tokio_postgres::Client,
    production: &Path,
    config_file: &Path,
    copy: Option<&str>,
) -> Result<Injected> {
    let mut inputs = BTreeMap::new();
    let free = || free_port().map(|p| p.to_string());
    let ledger = hash(&c, LEDGER).await?;
    // Let the workload run across an archive_timeout cycle, so that the
    // archive holds acknowledged commits the recovery must bring back.
    let writing = hash(&c, "SELECT pg_walfile_name(pg_current_wal_insert_lsn())").await?;
    let deadline = Instant::now() + Duration::from_secs(120);
    loop {
        let last = hash(&c, "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver").await?;
        if last.get(..24).is_some_and(|l| l >= writing.as_str()) {
            break;
        }
        if Instant::now() > deadline {
            return Err(anyhow!(
                "the segment {writing} was not archived within 120 s: archiving is broken"
            ));
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // And some more commits that only the server has.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let segment_size: u64 = hash(&c, "SELECT setting FROM pg_settings WHERE name = 'wal_segment_size'")
        .await?
        .parse()
        .unwrap_or(16 * 1024 * 1024);
    let tli: u32 = hash(&c, "SELECT timeline_id::text FROM pg_control_checkpoint()")
        .await?
        .parse()
        .unwrap_or(1);
    let failure_at = Utc::now();
    let t_fail = Instant::now();
    drop(c);
    kill_postmaster(production).await?;
    // What the recovery can have: read from its repository once nothing of the
    // killed server (an archive_command half-way) can add to it.
    let archived_until = archived_until(config_file, copy, tli, segment_size).await?;
    std::fs::remove_dir_all(production).with_context(|| format!("deleting {}", production.display()))?;
    if copy.is_some() {
        // The primary region's repository is gone too: the drill's configuration
        // now points it nowhere; only the copy can serve.
        let mut lost = Config::load_file(config_file)?;
        if lost.repository.url.starts_with("s3://") {
            lost.repository.endpoint = Some("http://127.0.0.1:9".into());
        } else {
            lost.repository.url = format!("file://{}", env.path("lost-region").display());
        }
        // Keep the original to remove the drill's areas afterwards.
        std::fs::copy(config_file, config_file.with_extension("toml.orig"))?;
        write_config(config_file, &lost)?;
    }
    inputs.insert("data_dir".into(), env.path("new").display().to_string());
    // The drill killed and deleted production itself: its word is proof.
    inputs.insert("old_primary_is_down".into(), "yes".into());
    inputs.insert("port".into(), free()?);
    inputs.insert("listen".into(), "127.0.0.1".into());
    inputs.insert("standby_data_dir".into(), env.path("standby").display().to_string());
    inputs.insert("standby_port".into(), free()?);
    let expect = vec![("drill_ledger intact".to_string(), LEDGER.to_string(), ledger)];
    Ok(Injected {
        failure_at,
        t_fail,
        inputs,
        keep_before: failure_at,
        archived_until,
        expect,
    })
}
