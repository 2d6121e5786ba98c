//! PgBouncer's admin console, driven for real: `PAUSE` with a timeout of pgdr's own
//! (PAUSE has none, and in session pooling it waits for every client to leave:
//! pgbouncer issue 715), `RELOAD`, `RESUME`, and what held a pause that timed out.
//! The console speaks only the simple query protocol.

use std::time::Duration;

use anyhow::{Context, Result, anyhow};
use tokio_postgres::{Client, SimpleQueryMessage};

use crate::postgres::PgTarget;

pub struct Admin {
    target: PgTarget,
    client: Client,
}

/// The rows of an admin command, as column → value maps.
async fn rows(client: &Client, sql: &str) -> Result<Vec<std::collections::HashMap<String, String>>> {
    let messages = client
        .simple_query(sql)
        .await
        .with_context(|| format!("PgBouncer: {sql}"))?;
    Ok(messages
        .into_iter()
        .filter_map(|m| match m {
            SimpleQueryMessage::Row(row) => Some(
                row.columns()
                    .iter()
                    .enumerate()
                    .map(|(i, c)| (c.name().to_string(), row.get(i).unwrap_or_default().to_string()))
                    .collect(),
            ),
            _ => None,
        })
        .collect())
}

impl Admin {
    /// Connect to the admin console (`[switch] pgbouncer_admin_url`; the password from
    /// the URL's environment or `.pgpass`, never the command line).
    pub async fn connect(url: &str) -> Result<Admin> {
        let target =
            PgTarget::from_config(Some(url)).map_err(|e| crate::usage!("[switch] pgbouncer_admin_url: {e:#}"))?;
        let client = target
            .connect(Some("pgbouncer"))
            .await
            .with_context(|| format!("connecting to PgBouncer's admin console at {}", target.describe()))?;
        Ok(Admin { target, client })
    }

    pub fn describe(&self) -> String {
        self.target.describe()
    }

    async fn command(&self, sql: &str) -> Result<()> {
        self.client
            .simple_query(sql)
            .await
            .map_err(|e| anyhow!("PgBouncer refused `{sql}`: {}", crate::postgres::conn::one_line(&e)))?;
        Ok(())
    }

    /// `PAUSE db`, waiting at most `wait`. On time-out the pause is cancelled (`RESUME`
    /// from a second connection) and the error names what held it.
    pub async fn pause(&self, db: &str, wait: Duration) -> Result<()> {
        let sql = format!("PAUSE {}", ident(db));
        // The connection that can undo it is opened first: once paused, a full
        // max_client_conn must not keep pgdr from resuming.
        let other = Admin::connect_again(&self.target).await?;
        match tokio::time::timeout(wait, self.command(&sql)).await {
            Ok(r) => r,
            Err(_) => {
                let held = other
                    .holders(db)
                    .await
                    .unwrap_or_else(|e| format!("(cannot tell: {e:#})"));
                other.resume(db).await?;
                Err(anyhow!(
                    "PAUSE {db} did not complete within {} s: {held} — PgBouncer waits for them to finish (in session pooling, for the clients to disconnect); it was resumed on the old settings",
                    wait.as_secs()
                ))
            }
        }
    }

    /// A second console connection (the first may be waiting on a PAUSE).
    pub async fn another(&self) -> Result<Admin> {
        Admin::connect_again(&self.target).await
    }

    async fn connect_again(target: &PgTarget) -> Result<Admin> {
        let client = target
            .connect(Some("pgbouncer"))
            .await
            .with_context(|| format!("connecting again to PgBouncer's admin console at {}", target.describe()))?;
        Ok(Admin {
            target: target.clone(),
            client,
        })
    }

    pub async fn resume(&self, db: &str) -> Result<()> {
        self.command(&format!("RESUME {}", ident(db))).await
    }

    pub async fn reload(&self) -> Result<()> {
        self.command("RELOAD").await
    }

    /// `SHOW VERSION`: e.g. "PgBouncer 1.18.0".
    pub async fn version(&self) -> Result<String> {
        let rows = rows(&self.client, "SHOW VERSION").await?;
        rows.first()
            .and_then(|r| r.get("version"))
            .cloned()
            .ok_or_else(|| anyhow!("PgBouncer answered SHOW VERSION with no version"))
    }

    /// Where PgBouncer now sends `db` (host, port), from `SHOW DATABASES`.
    pub async fn target_of(&self, db: &str) -> Result<(String, u16)> {
        let rows = rows(&self.client, "SHOW DATABASES").await?;
        let row = rows
            .iter()
            .find(|r| r.get("name").map(String::as_str) == Some(db))
            .ok_or_else(|| anyhow!("PgBouncer does not know database {db:?}"))?;
        let host = row.get("host").cloned().unwrap_or_default();
        let port = row.get("port").and_then(|p| p.parse().ok()).unwrap_or(0);
        Ok((host, port))
    }

    /// The clients of `db` holding server connections, as a sentence.
    async fn holders(&self, db: &str) -> Result<String> {
        let clients = rows(&self.client, "SHOW CLIENTS").await?;
        let holding: Vec<String> = clients
            .iter()
            .filter(|c| c.get("database").map(String::as_str) == Some(db))
            .filter(|c| c.get("state").map(String::as_str) == Some("active"))
            .map(|c| {
                format!(
                    "{}@{}:{} (connected since {})",
                    c.get("user").map(String::as_str).unwrap_or("?"),
                    c.get("addr").map(String::as_str).unwrap_or("?"),
                    c.get("port").map(String::as_str).unwrap_or("?"),
                    c.get("connect_time").map(String::as_str).unwrap_or("?")
                )
            })
            .collect();
        Ok(if holding.is_empty() {
            "no client holds a server connection now".to_string()
        } else {
            format!(
                "{} client(s) still hold server connections: {}",
                holding.len(),
                holding.join(", ")
            )
        })
    }
}

/// A database name for the admin console (quoted when it is not a plain word).
fn ident(db: &str) -> String {
    if !db.is_empty() && db.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
        db.to_string()
    } else {
        format!("\"{}\"", db.replace('"', "\"\""))
    }
}
