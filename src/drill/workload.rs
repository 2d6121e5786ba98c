//! The drill's client: a row through PgBouncer every few milliseconds, each
//! acknowledged commit recorded for the RPO.

use super::*;

/// A commit log kept by the client: (id, when it was acknowledged, the server's WAL
/// insert position just after: the commit record lies before it).
pub(super) type Acks = Arc<Mutex<Vec<(i64, DateTime<Utc>, Lsn)>>>;

/// Insert a row through PgBouncer every few milliseconds, recording each commit the
/// server acknowledged; reconnect after errors (the server died, PgBouncer moved).
pub(super) fn start_writer(bouncer: PgTarget, acks: Acks, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let mut n: i64 = 0;
        let mut client: Option<tokio_postgres::Client> = None;
        while !stop.load(Ordering::SeqCst) {
            if client.is_none() {
                match tokio::time::timeout(Duration::from_secs(3), bouncer.connect(Some("postgres"))).await {
                    Ok(Ok(c)) => client = Some(c),
                    _ => {
                        tokio::time::sleep(Duration::from_millis(100)).await;
                        continue;
                    }
                }
            }
            n += 1;
            let c = client.as_ref().expect("connected");
            let sql = format!("INSERT INTO drill_acks (id) VALUES ({n})");
            match tokio::time::timeout(Duration::from_secs(40), c.simple_query(&sql)).await {
                Ok(Ok(_)) => {
                    let at = Utc::now();
                    let lsn = tokio::time::timeout(
                        Duration::from_secs(5),
                        hash(c, "SELECT pg_current_wal_insert_lsn()::text"),
                    )
                    .await
                    .ok()
                    .and_then(|r| r.ok())
                    .and_then(|l| l.parse::<Lsn>().ok())
                    // Unknown: counted as past anything archived.
                    .unwrap_or(Lsn(u64::MAX));
                    acks.lock().expect("ack log").push((n, at, lsn));
                }
                _ => {
                    client = None;
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
}
