//! Test harness: real PostgreSQL clusters (initdb in a temp dir, a free port, run as
//! the `postgres` OS user when the tests run as root), a real S3-compatible server
//! (moto) on 127.0.0.1, and the real `pgdr` binary with a clean environment.
//! Anything missing fails the test loudly; nothing is skipped.

#![allow(dead_code)]

pub mod faults;

use std::ffi::OsStr;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

pub const PGDR: &str = env!("CARGO_BIN_EXE_pgdr");

pub fn is_root() -> bool {
    unsafe { libc::geteuid() == 0 }
}

/// uid/gid of the `postgres` OS user, looked up once. `getpwnam` shares one static
/// buffer between threads: tests running in parallel read each other's half-written
/// entries, and a directory meant for postgres went to root (EACCES at server start).
pub fn postgres_ids() -> (u32, u32) {
    static IDS: OnceLock<(u32, u32)> = OnceLock::new();
    *IDS.get_or_init(|| {
        let mut pwd: libc::passwd = unsafe { std::mem::zeroed() };
        let mut buf = vec![0 as libc::c_char; 16 * 1024];
        let mut found: *mut libc::passwd = std::ptr::null_mut();
        let rc = unsafe { libc::getpwnam_r(c"postgres".as_ptr(), &mut pwd, buf.as_mut_ptr(), buf.len(), &mut found) };
        assert!(
            rc == 0 && !found.is_null(),
            "the tests run as root, so PostgreSQL must run as the `postgres` OS user, which does not exist — run scripts/install-deps.sh"
        );
        (pwd.pw_uid, pwd.pw_gid)
    })
}

/// PostgreSQL's server binaries; panics with the fix when they are missing.
pub fn pg_bin() -> PathBuf {
    static BIN: OnceLock<PathBuf> = OnceLock::new();
    BIN.get_or_init(|| {
        let mut candidates = Vec::new();
        if let Ok(dir) = std::env::var("PGDR_TEST_PG_BIN") {
            candidates.push(PathBuf::from(dir));
        }
        if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
            candidates.push(PathBuf::from(String::from_utf8_lossy(&out.stdout).trim()));
        }
        if let Ok(entries) = std::fs::read_dir("/usr/lib/postgresql") {
            let mut dirs: Vec<_> = entries.flatten().map(|e| e.path().join("bin")).collect();
            dirs.sort();
            candidates.extend(dirs.into_iter().rev());
        }
        candidates
            .into_iter()
            .find(|d| d.join("initdb").is_file() && d.join("postgres").is_file())
            .expect("PostgreSQL server binaries (initdb, postgres) not found — run scripts/install-deps.sh or set PGDR_TEST_PG_BIN")
    })
    .clone()
}

/// A port for a test's server. Taken below the kernel's ephemeral range (32768 and
/// up, where every outgoing connection also takes its local port, so a port handed
/// out from there can be gone before the server binds it), walking a range from a
/// place of this process's own, each one checked free on 127.0.0.1 and handed out
/// once.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    const LOW: u32 = 15000;
    const SPAN: u32 = 17000;
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id() * 397) % SPAN,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..SPAN {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {LOW}..{}", LOW + SPAN);
}

/// A private directory that the `postgres` user can use too.
pub struct TestDir {
    pub dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        let dir = tempfile::Builder::new().prefix("pgdr-test-").tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: impl AsRef<Path>) -> PathBuf {
        self.dir.path().join(p)
    }
}

/// Hand `path` to the `postgres` user (when the tests run as root).
pub fn chown_postgres(path: &Path) {
    if is_root() {
        let (uid, gid) = postgres_ids();
        std::os::unix::fs::chown(path, Some(uid), Some(gid)).unwrap();
    }
}

/// Create a directory that the `postgres` user owns.
pub fn pg_owned_dir(path: &Path) -> PathBuf {
    std::fs::create_dir(path).unwrap();
    chown_postgres(path);
    path.to_path_buf()
}

/// Only what a server process needs from the environment.
pub fn hermetic(cmd: &mut Command) -> &mut Command {
    cmd.env_clear()
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("LC_ALL", "C.UTF-8")
        .env("HOME", "/tmp")
        // The AWS credential chain must never reach for instance metadata (a network
        // address outside this machine) when a test leaves credentials out.
        .env("AWS_EC2_METADATA_DISABLED", "true")
}

/// Start a data directory with pg_ctl (as postgres, hermetic), listening on
/// 127.0.0.1:`port` and a socket in `sock`; returns whether pg_ctl succeeded.
/// `env` is what the server needs beyond `hermetic` (S3 credentials for wal-fetch).
pub fn pg_ctl_start(data: &Path, port: u16, sock: &Path, log: &Path, env: &[(&str, &str)]) -> bool {
    let mut cmd = Command::new(pg_bin().join("pg_ctl"));
    hermetic(&mut cmd);
    cmd.envs(env.iter().copied());
    cmd.arg("-D")
        .arg(data)
        .arg("-l")
        .arg(log)
        .args(["-w", "-t", "60", "-o"])
        .arg(format!("-p {port} -k {} -c listen_addresses=127.0.0.1", sock.display()))
        .arg("start")
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_postgres(&mut cmd);
    cmd.status().map(|s| s.success()).unwrap_or(false)
}

pub fn pg_ctl_stop(data: &Path) {
    let mut cmd = Command::new(pg_bin().join("pg_ctl"));
    cmd.arg("-D")
        .arg(data)
        .args(["-m", "immediate", "stop"])
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    as_postgres(&mut cmd);
    let _ = cmd.status();
}

/// Wait until the server on `port` has left recovery (promoted); panics after 60 s.
pub fn wait_promoted(port: u16, log: &Path) {
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let out = psql_at(port, "postgres", "SELECT pg_is_in_recovery()");
        if out.status.success() && String::from_utf8_lossy(&out.stdout).trim() == "f" {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "the server did not promote: {}",
            std::fs::read_to_string(log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn as_postgres(cmd: &mut Command) -> &mut Command {
    if is_root() {
        let (uid, gid) = postgres_ids();
        cmd.uid(uid).gid(gid);
        cmd.env("HOME", "/tmp");
    }
    cmd
}

/// Kill the child when the thread that spawned it dies (the test's thread).
fn die_with_parent(cmd: &mut Command) {
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
}

/// A PostgreSQL cluster of the test's own.
pub struct Cluster {
    pub dir: TestDir,
    pub port: u16,
    pub data: PathBuf,
    server: Option<Child>,
}

impl Cluster {
    pub fn start() -> Cluster {
        Cluster::start_with(&[])
    }

    /// `settings` are extra `-c name=value` server settings.
    pub fn start_with(settings: &[&str]) -> Cluster {
        let mut cluster = Cluster::init();
        cluster.launch(settings);
        cluster
    }

    /// initdb only; `launch` starts it.
    pub fn init() -> Cluster {
        let dir = TestDir::new();
        let data = dir.join("data");
        pg_owned_dir(&data);
        pg_owned_dir(&dir.join("sock"));
        let out = as_postgres(Command::new(pg_bin().join("initdb")).args([
            "-D",
            data.to_str().unwrap(),
            "-U",
            "postgres",
            "-A",
            "trust",
            "-E",
            "UTF8",
            "--locale=C.UTF-8",
            "--no-sync",
        ]))
        .output()
        .unwrap();
        assert!(
            out.status.success(),
            "initdb failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Cluster {
            port: 0,
            data,
            dir,
            server: None,
        }
    }

    /// Append settings to postgresql.auto.conf (before `launch`, or then restart).
    pub fn configure(&self, lines: &[String]) {
        let path = self.data.join("postgresql.auto.conf");
        let mut text = std::fs::read_to_string(&path).unwrap_or_default();
        for l in lines {
            text.push_str(l);
            text.push('\n');
        }
        std::fs::write(&path, text).unwrap();
        chown_postgres(&path);
    }

    pub fn launch(&mut self, settings: &[&str]) {
        for attempt in 0..5 {
            // A relaunch keeps its port (configurations point at it).
            let port = if attempt == 0 && self.port != 0 {
                self.port
            } else {
                free_port()
            };
            let mut cmd = Command::new(pg_bin().join("postgres"));
            // A cleared environment: the server's archive_command (pgdr wal-push) must
            // not pick up a developer's PGDR_*/AWS_* and archive test WAL into a real
            // repository.
            hermetic(&mut cmd);
            cmd.arg("-D")
                .arg(&self.data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(self.dir.join("sock"))
                .args([
                    "-c",
                    "listen_addresses=127.0.0.1",
                    "-c",
                    "fsync=off",
                    "-c",
                    "max_connections=40",
                ]);
            for s in settings {
                cmd.args(["-c", s]);
            }
            let log = std::fs::File::create(self.dir.join("server.log")).unwrap();
            chown_postgres(&self.dir.join("server.log"));
            cmd.stdout(Stdio::null()).stderr(log);
            as_postgres(&mut cmd);
            die_with_parent(&mut cmd);
            let mut child = cmd.spawn().expect("cannot start postgres");
            let deadline = Instant::now() + Duration::from_secs(30);
            loop {
                if let Ok(Some(_)) = child.try_wait() {
                    break; // port race or failure: try another port
                }
                let ready = Command::new(pg_bin().join("pg_isready"))
                    .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-q"])
                    .status()
                    .map(|s| s.success())
                    .unwrap_or(false);
                if ready {
                    self.port = port;
                    self.server = Some(child);
                    return;
                }
                assert!(Instant::now() < deadline, "postgres did not start: {}", self.log());
                std::thread::sleep(Duration::from_millis(100));
            }
        }
        panic!("postgres would not start: {}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("server.log")).unwrap_or_default()
    }

    /// Stop the server (fast shutdown).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.server.take() {
            unsafe { libc::kill(child.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = child.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = child.kill();
            let _ = child.wait();
        }
    }

    pub fn url(&self, db: &str) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/{db}", self.port)
    }

    /// Run SQL through psql; returns trimmed unaligned output. Panics on error.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = self.psql_output(db, sql);
        assert!(
            out.status.success(),
            "psql failed on {db}: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn psql_output(&self, db: &str, sql: &str) -> Output {
        psql_at(self.port, db, sql)
    }

    pub fn pgbench_init(&self, db: &str, scale: u32) {
        let out = Command::new(pg_bin().join("pgbench"))
            .args([
                "-i",
                "-q",
                "-s",
                &scale.to_string(),
                "-h",
                "127.0.0.1",
                "-U",
                "postgres",
            ])
            .args(["-p", &self.port.to_string(), db])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "pgbench -i failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// Ordered content hash of every user table in `db`, and of its large objects:
    /// `schema.table=md5` lines, sorted.
    pub fn content_hashes(&self, db: &str) -> Vec<String> {
        content_hashes_at(self.port, db)
    }

    /// Non-system roles with their attributes, sorted.
    pub fn roles(&self) -> String {
        self.psql(
            "postgres",
            "SELECT string_agg(format('%s:%s:%s:%s', rolname, rolcanlogin, rolcreatedb, rolconnlimit), ',' ORDER BY rolname) \
             FROM pg_roles WHERE rolname NOT LIKE 'pg\\_%'",
        )
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        self.stop();
    }
}

/// Run SQL through psql against 127.0.0.1:`port` as postgres.
/// Ordered content hash of every user table in `db` of the server on 127.0.0.1:`port`,
/// and of its large objects.
pub fn content_hashes_at(port: u16, db: &str) -> Vec<String> {
    let psql = |db: &str, sql: &str| {
        let out = psql_at(port, db, sql);
        assert!(
            out.status.success(),
            "psql failed on {db}: {}\nSQL: {sql}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    };
    let tables = psql(
        db,
        "SELECT quote_ident(n.nspname) || '.' || quote_ident(c.relname) FROM pg_class c \
         JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.relkind = 'r' \
         AND n.nspname NOT IN ('pg_catalog', 'information_schema') AND n.nspname NOT LIKE 'pg_toast%' ORDER BY 1",
    );
    let mut out = Vec::new();
    for table in tables.lines().filter(|l| !l.is_empty()) {
        let hash = psql(
            db,
            &format!(
                "SELECT count(*) || ':' || coalesce(md5(string_agg(t::text, '|' ORDER BY t::text)), '-') FROM {table} t"
            ),
        );
        out.push(format!("{table}={hash}"));
    }
    let lo = psql(
        db,
        "SELECT coalesce(string_agg(loid || ':' || h, ',' ORDER BY loid), 'none') FROM \
         (SELECT loid, md5(string_agg(data, ''::bytea ORDER BY pageno)) h FROM pg_largeobject GROUP BY loid) s",
    );
    out.push(format!("largeobjects={lo}"));
    out
}

pub fn psql_at(port: u16, db: &str, sql: &str) -> Output {
    let mut child = Command::new(pg_bin().join("psql"))
        .args([
            "-X",
            "-q",
            "-A",
            "-t",
            "-v",
            "ON_ERROR_STOP=1",
            "-h",
            "127.0.0.1",
            "-U",
            "postgres",
        ])
        .args(["-p", &port.to_string(), "-d", db])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child.stdin.take().unwrap().write_all(sql.as_bytes()).unwrap();
    child.wait_with_output().unwrap()
}

/// Fill `db` with pgbench data plus a table of every common type and a large object.
pub fn load_sample(cluster: &Cluster, db: &str) {
    cluster.psql("postgres", &format!("CREATE DATABASE {db}"));
    cluster.pgbench_init(db, 1);
    cluster.psql(
        db,
        r#"
        CREATE SCHEMA app;
        CREATE TABLE app."All Types" (
            id serial PRIMARY KEY, t text, b bytea, j jsonb, n numeric(20,6), ts timestamptz,
            ints int[], texts text[], d date, u uuid, f float8, flag boolean);
        INSERT INTO app."All Types" (t, b, j, n, ts, ints, texts, d, u, f, flag)
        SELECT 'zeile ' || i || ' — Grüße, 日本語, emoji 🐘',
               decode(md5(i::text), 'hex') || '\x00ff'::bytea,
               jsonb_build_object('i', i, 'nested', jsonb_build_object('a', ARRAY[i, i+1]), 's', 'ü'),
               i * 3.141592, timestamptz '2026-01-01 00:00:00+00' + i * interval '17 minutes',
               ARRAY[i, -i, NULL], ARRAY['x' || i, NULL, 'quote"d'], date '2026-01-01' + i,
               md5(i::text)::uuid, i / 7.0, i % 2 = 0
        FROM generate_series(1, 2000) i;
        INSERT INTO app."All Types" (t) VALUES (NULL);
        SELECT lo_from_bytea(0, convert_to(repeat('large object payload ', 5000), 'UTF8'));
        CREATE INDEX ON app."All Types" (ts);
        "#,
    );
}

/// The shared moto S3 server of this test binary.
pub struct S3Server {
    pub port: u16,
}

/// moto's server command: the entry point, or the module when pip's script directory
/// is not on PATH.
fn moto_command() -> Vec<String> {
    match which("moto_server") {
        Some(p) => vec![p.display().to_string()],
        None => {
            let has_module = Command::new("python3")
                .args(["-c", "import moto.server"])
                .status()
                .is_ok_and(|s| s.success());
            assert!(
                has_module,
                "moto_server not found — the S3 tests need it: run scripts/install-deps.sh (pip install 'moto[server]>=5.2.5')"
            );
            vec!["python3".into(), "-m".into(), "moto.server".into()]
        }
    }
}

fn spawn_moto(port: u16) -> std::process::Child {
    spawn_moto_with(port, &[])
}

fn spawn_moto_with(port: u16, extra: &[&OsStr]) -> std::process::Child {
    let moto = moto_command();
    let mut cmd = Command::new(&moto[0]);
    cmd.args(&moto[1..])
        .args(["-H", "127.0.0.1", "-p", &port.to_string()])
        .args(extra)
        .stdout(Stdio::null())
        .stderr(Stdio::null());
    die_with_parent(&mut cmd);
    cmd.spawn().expect("cannot start moto_server")
}

fn wait_listening(port: u16) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline, "moto_server did not start on port {port}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

pub fn s3() -> &'static S3Server {
    static SERVER: OnceLock<S3Server> = OnceLock::new();
    SERVER.get_or_init(|| {
        let port = free_port();
        let (tx, rx) = std::sync::mpsc::channel();
        // A thread that lives as long as the test process owns the server, so it dies
        // with the process (PDEATHSIG follows the spawning thread).
        std::thread::spawn(move || {
            let child = spawn_moto(port);
            tx.send(()).unwrap();
            let _keep = child;
            loop {
                std::thread::park();
            }
        });
        rx.recv().unwrap();
        wait_listening(port);
        S3Server { port }
    })
}

/// An S3 server of one test's own (a region that the test can take down), started
/// from the calling thread and killed when dropped or stopped.
pub struct OwnS3 {
    pub server: S3Server,
    child: Option<std::process::Child>,
}

impl OwnS3 {
    pub fn start() -> OwnS3 {
        OwnS3::start_on(free_port())
    }

    /// On a given port (a region coming back where it was).
    pub fn start_on(port: u16) -> OwnS3 {
        let child = spawn_moto(port);
        wait_listening(port);
        OwnS3 {
            server: S3Server { port },
            child: Some(child),
        }
    }

    /// The whole server goes away (its data too: moto keeps everything in memory).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// An S3 server of one test's own behind TLS, with the certificate and key given
/// (signed by a CA the test made); killed when dropped.
pub struct TlsS3 {
    pub port: u16,
    child: std::process::Child,
}

impl TlsS3 {
    pub fn start(cert: &Path, key: &Path) -> TlsS3 {
        let port = free_port();
        let child = spawn_moto_with(port, &["-c".as_ref(), cert.as_os_str(), "-k".as_ref(), key.as_os_str()]);
        wait_listening(port);
        TlsS3 { port, child }
    }

    pub fn endpoint(&self) -> String {
        format!("https://127.0.0.1:{}", self.port)
    }

    /// Create bucket `name`, trusting `ca` (curl, unsigned: moto accepts it).
    pub fn create_bucket(&self, name: &str, ca: &Path) {
        let out = Command::new("curl")
            .args(["-sS", "-f", "-X", "PUT", "--cacert"])
            .arg(ca)
            .arg(format!("{}/{name}", self.endpoint()))
            .output()
            .expect("curl is needed to create a bucket over TLS");
        assert!(
            out.status.success(),
            "creating bucket {name} over TLS failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for TlsS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for OwnS3 {
    fn drop(&mut self) {
        self.stop();
    }
}

impl S3Server {
    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    /// Create a fresh bucket (moto accepts unsigned requests).
    pub fn bucket(&self) -> String {
        let name = format!("pgdr-{:016x}", rand::random::<u64>());
        self.create_bucket(&name);
        name
    }

    pub fn create_bucket(&self, name: &str) {
        let status = self.raw("PUT", &format!("/{name}"));
        assert!(status.starts_with("HTTP/1.1 200"), "creating bucket failed: {status}");
    }

    fn raw(&self, method: &str, path: &str) -> String {
        let mut s = TcpStream::connect(("127.0.0.1", self.port)).unwrap();
        write!(
            s,
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1:{}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n",
            self.port
        )
        .unwrap();
        let mut reply = String::new();
        let _ = s.read_to_string(&mut reply);
        reply
    }
}

pub fn which(tool: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path).map(|d| d.join(tool)).find(|p| p.is_file())
}

pub const TEST_AWS_KEY: &str = "AKIAPGDRTEST";
pub const TEST_AWS_SECRET: &str = "pgdr-test-secret-key-never-logged";

pub enum RepoKind {
    Local,
    S3,
}

/// One pgdr setup: a config file, a key, a repository (local dir or S3 bucket).
pub struct Pgdr {
    pub dir: TestDir,
    pub config: PathBuf,
    pub key_file: PathBuf,
    pub repo_dir: Option<PathBuf>,
    pub extra_env: Vec<(String, String)>,
    /// Run pgdr as the `postgres` OS user (physical backups, WAL), when root.
    pub as_postgres: bool,
    /// Give pgdr the test's S3 credentials in `AWS_*` (false: it must find them
    /// through the credential chain, e.g. profiles in `$HOME/.aws`).
    pub aws_env: bool,
}

impl Pgdr {
    pub fn new(cluster: &Cluster, kind: RepoKind) -> Pgdr {
        let dir = TestDir::new();
        let key_file = dir.join("repo.key");
        let (repo_section, repo_dir) = match kind {
            RepoKind::Local => {
                let repo = dir.join("repo");
                (format!("url = \"file://{}\"\n", repo.display()), Some(repo))
            }
            RepoKind::S3 => {
                let server = s3();
                let bucket = server.bucket();
                (
                    format!(
                        "url = \"s3://{bucket}/backups\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\ns3_part_size = 5242880\n",
                        server.endpoint()
                    ),
                    None,
                )
            }
        };
        let config = dir.join("pgdr.toml");
        std::fs::write(
            &config,
            format!(
                "cluster = \"test\"\n\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\n\n[repository]\n{repo_section}key_file = \"{}\"\ncompress_threads = 2\n",
                cluster.url("postgres"),
                pg_bin().display(),
                key_file.display()
            ),
        )
        .unwrap();
        Pgdr::initialised(dir, config, key_file, repo_dir, false)
    }

    /// A setup whose config file is written: generate its key and `pgdr init`.
    pub fn initialised(
        dir: TestDir,
        config: PathBuf,
        key_file: PathBuf,
        repo_dir: Option<PathBuf>,
        as_postgres: bool,
    ) -> Pgdr {
        Pgdr::initialised_with(dir, config, key_file, repo_dir, as_postgres, true)
    }

    /// As `initialised`; `aws_env: false` leaves `AWS_*` credentials out, so pgdr must
    /// find them through the credential chain (profiles in `$HOME/.aws`).
    pub fn initialised_with(
        dir: TestDir,
        config: PathBuf,
        key_file: PathBuf,
        repo_dir: Option<PathBuf>,
        as_postgres: bool,
        aws_env: bool,
    ) -> Pgdr {
        let pgdr = Pgdr {
            dir,
            config,
            key_file,
            repo_dir,
            extra_env: Vec::new(),
            as_postgres,
            aws_env,
        };
        let out = pgdr.run(&["init", "--generate-key", pgdr.key_file.to_str().unwrap()]);
        assert_success(&out, "pgdr init");
        pgdr
    }

    /// The pgdr command with a clean environment: nothing from the developer's
    /// PGDR_*, AWS_* or PG* variables leaks in.
    pub fn command(&self, args: &[impl AsRef<OsStr>]) -> Command {
        let mut cmd = Command::new(PGDR);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_default())
            .env("HOME", self.dir.path())
            .env("RUST_BACKTRACE", "1")
            .env("PGDR_CONFIG", &self.config)
            .env("AWS_EC2_METADATA_DISABLED", "true");
        if self.aws_env {
            cmd.env("AWS_ACCESS_KEY_ID", TEST_AWS_KEY)
                .env("AWS_SECRET_ACCESS_KEY", TEST_AWS_SECRET);
        }
        cmd.envs(self.extra_env.iter().map(|(k, v)| (k, v)))
            .args(args)
            .stdin(Stdio::null());
        if self.as_postgres {
            as_postgres(&mut cmd);
            cmd.env("HOME", self.dir.path());
        }
        cmd
    }

    pub fn run(&self, args: &[impl AsRef<OsStr>]) -> Output {
        self.command(args).output().unwrap()
    }

    /// Run and expect success; returns stdout.
    pub fn ok(&self, args: &[impl AsRef<OsStr>]) -> String {
        let out = self.run(args);
        let what = args
            .iter()
            .map(|a| a.as_ref().to_string_lossy().into_owned())
            .collect::<Vec<_>>()
            .join(" ");
        assert_success(&out, &format!("pgdr {what}"));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    pub fn list_json(&self) -> Vec<serde_json::Value> {
        let out = self.ok(&["list", "--json"]);
        serde_json::from_str::<serde_json::Value>(&out)
            .unwrap()
            .as_array()
            .unwrap()
            .clone()
    }

    /// Set a key in the config file's [repository] section (appends an override).
    pub fn set_env(&mut self, key: &str, value: &str) {
        self.extra_env.push((key.to_string(), value.to_string()));
    }
}

pub fn assert_success(out: &Output, what: &str) {
    assert!(
        out.status.success(),
        "{what} failed ({}):\nstdout: {}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert_clean_stderr(out);
}

/// No panic, no backtrace, ever.
pub fn assert_clean_stderr(out: &Output) {
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        !stderr.contains("panicked") && !stderr.contains("stack backtrace") && !stderr.contains("RUST_BACKTRACE"),
        "pgdr panicked or printed a backtrace:\n{stderr}"
    );
}

/// A failure must be: the documented exit code, one line on stderr, mentioning
/// `needle`. Returns that line.
pub fn assert_fails(out: &Output, code: i32, needle: &str) -> String {
    assert_clean_stderr(out);
    let stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
    assert_eq!(
        out.status.code(),
        Some(code),
        "expected exit {code}, got {:?}\nstdout: {}\nstderr: {stderr}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout)
    );
    let lines: Vec<&str> = stderr.lines().filter(|l| !l.trim().is_empty()).collect();
    assert_eq!(lines.len(), 1, "expected one error line, got:\n{stderr}");
    assert!(
        lines[0].to_lowercase().contains(&needle.to_lowercase()),
        "error line does not mention {needle:?}: {}",
        lines[0]
    );
    lines[0].to_string()
}

/// All stored files of a local repository.
pub fn repo_files(root: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&dir) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// A cluster that archives its WAL with `pgdr wal-push` into a local repository, and
/// the pgdr setup that goes with it; pgdr runs as `postgres`, as on a database host.
pub struct Archiving {
    pub cluster: Cluster,
    pub pgdr: Pgdr,
}

impl Archiving {
    pub fn start() -> Archiving {
        Archiving::start_with(RepoKind::Local)
    }

    pub fn start_with(kind: RepoKind) -> Archiving {
        let dir = TestDir::new();
        chown_postgres(dir.path());
        let config = dir.join("pgdr.toml");
        let key_file = dir.join("repo.key");
        let spool = dir.join("spool");
        pg_owned_dir(&spool);
        let mut cluster = Cluster::init();
        let mut env = String::new();
        let repo_dir;
        let repo_section = match kind {
            RepoKind::Local => {
                let repo = dir.join("repo");
                pg_owned_dir(&repo);
                repo_dir = Some(repo.clone());
                format!("url = \"file://{}\"\n", repo.display())
            }
            RepoKind::S3 => {
                let server = s3();
                repo_dir = None;
                // Credentials from a file, as on a real host: never on a command line.
                let creds = dir.join("aws-credentials");
                std::fs::write(
                    &creds,
                    format!(
                        "[default]\naws_access_key_id = {TEST_AWS_KEY}\naws_secret_access_key = {TEST_AWS_SECRET}\n"
                    ),
                )
                .unwrap();
                chown_postgres(&creds);
                env = format!(
                    "AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE=/dev/null ",
                    creds.display()
                );
                format!(
                    "url = \"s3://{}/wal\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\n",
                    server.bucket(),
                    server.endpoint()
                )
            }
        };
        cluster.configure(&[
            "archive_mode = on".to_string(),
            format!(
                "archive_command = '{env}{PGDR} --config {} wal-push %p'",
                config.display()
            ),
            "wal_level = replica".to_string(),
        ]);
        cluster.launch(&[]);
        std::fs::write(
            &config,
            format!(
                "cluster = \"test\"\n\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\ndata_dir = \"{}\"\n\n[repository]\n{repo_section}key_file = \"{}\"\n\n[wal]\nspool_dir = \"{}\"\narchive_timeout = 60\n",
                cluster.url("postgres"),
                pg_bin().display(),
                cluster.data.display(),
                key_file.display(),
                spool.display()
            ),
        )
        .unwrap();
        let pgdr = Pgdr::initialised(dir, config, key_file, repo_dir, is_root());
        Archiving { cluster, pgdr }
    }

    /// Force a segment switch and wait until that segment is archived.
    pub fn switch_and_wait(&self) -> String {
        let seg = self
            .cluster
            .psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.cluster.psql("postgres", "SELECT pg_switch_wal()");
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let archived = self.cluster.psql(
                "postgres",
                "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
            );
            if archived.as_str() >= seg.as_str() && !archived.is_empty() {
                return seg;
            }
            assert!(
                Instant::now() < deadline,
                "segment {seg} was not archived: {}",
                self.cluster.log()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// A restored data directory, started by `pgdr restore --start`; stopped on drop.
pub struct Restored {
    pub dir: TestDir,
    pub data: PathBuf,
    pub port: u16,
    pub output: String,
}

impl Restored {
    /// Write a little (a switch of an idle segment does nothing), switch, and wait
    /// until this server has archived that segment.
    pub fn switch_and_wait(&self) -> String {
        self.psql(
            "postgres",
            "CREATE TABLE IF NOT EXISTS pgdr_test_w (x int); INSERT INTO pgdr_test_w VALUES (1)",
        );
        let seg = self.psql("postgres", "SELECT pg_walfile_name(pg_current_wal_lsn())");
        self.psql("postgres", "SELECT pg_switch_wal()");
        let deadline = Instant::now() + Duration::from_secs(60);
        while self.psql(
            "postgres",
            "SELECT coalesce(last_archived_wal, '') FROM pg_stat_archiver",
        ) < seg
        {
            assert!(Instant::now() < deadline, "{seg} was not archived");
            std::thread::sleep(Duration::from_millis(50));
        }
        seg
    }

    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = psql_at(self.port, db, sql);
        assert!(
            out.status.success(),
            "psql on restored copy failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }

    pub fn stop(&self) {
        let mut cmd = Command::new(pg_bin().join("pg_ctl"));
        cmd.arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "stop"])
            .stdout(Stdio::null())
            .stderr(Stdio::null());
        as_postgres(&mut cmd);
        let _ = cmd.status();
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        self.stop();
    }
}

impl Pgdr {
    /// The same repository seen through a second config that may point elsewhere.
    pub fn clone_setup(&self) -> Pgdr {
        let dir = TestDir::new();
        let config = dir.join("pgdr.toml");
        std::fs::copy(&self.config, &config).unwrap();
        Pgdr {
            dir,
            config,
            key_file: self.key_file.clone(),
            repo_dir: self.repo_dir.clone(),
            extra_env: vec![],
            as_postgres: self.as_postgres,
            aws_env: self.aws_env,
        }
    }

    /// `pgdr restore --kind physical --to <new dir> --start` plus `args`: by default a
    /// copy that does not archive its new timeline into the repository.
    pub fn restore_started(&self, args: &[&str]) -> Restored {
        self.restore_started_with(args)
    }

    /// As `restore_started`, but the copy is the new primary (`--archive`): it keeps
    /// archiving, its new timeline too.
    pub fn restore_started_archiving(&self, args: &[&str]) -> Restored {
        let mut all = vec!["--archive"];
        all.extend_from_slice(args);
        self.restore_started_with(&all)
    }

    fn restore_started_with(&self, args: &[&str]) -> Restored {
        let dir = TestDir::new();
        let data = dir.join("data");
        let sock = dir.join("sock");
        pg_owned_dir(&sock);
        chown_postgres(dir.path());
        let port = free_port();
        let mut all: Vec<String> = [
            "restore",
            "--kind",
            "physical",
            "--to",
            data.to_str().unwrap(),
            "--start",
        ]
        .iter()
        .map(|s| s.to_string())
        .collect();
        all.extend([
            "--port".to_string(),
            port.to_string(),
            "--socket-dir".to_string(),
            sock.display().to_string(),
        ]);
        all.extend(args.iter().map(|s| s.to_string()));
        let out = self.run(&all);
        if !out.status.success() {
            // The restored server's own account of why it stopped, for the failure.
            let log = std::fs::read_to_string(data.join("pgdr-recovery.log")).unwrap_or_default();
            let tail: Vec<&str> = log.lines().rev().take(25).collect();
            eprintln!(
                "pgdr-recovery.log (last lines):\n{}",
                tail.into_iter().rev().collect::<Vec<_>>().join("\n")
            );
        }
        let restored = Restored {
            dir,
            data,
            port,
            output: String::from_utf8_lossy(&out.stdout).into_owned(),
        };
        assert_success(&out, &format!("pgdr {}", all.join(" ")));
        restored
    }
}

/// Run `cmd` to its end, but kill it and fail the test if it runs past `secs` (a
/// command that hangs is the defect some tests look for).
pub fn output_within(cmd: &mut Command, secs: u64) -> Output {
    let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::piped()).spawn().unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(secs);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            let _ = child.kill();
            let out = child.wait_with_output().unwrap();
            panic!("still running after {secs} s: {}", String::from_utf8_lossy(&out.stderr));
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    child.wait_with_output().unwrap()
}

/// A real PgBouncer of the test's own (run as `postgres`: it refuses root), on a free
/// 127.0.0.1 port, trusting the `postgres` user, with `postgres` as its admin.
pub struct PgBouncer {
    pub dir: TestDir,
    pub ini: PathBuf,
    /// The `[databases]` include file (`BouncerLayout::DebianWithInclude`).
    pub include: Option<PathBuf>,
    logs: PathBuf,
    pub port: u16,
    child: std::process::Child,
}

/// Where a test's PgBouncer keeps its files.
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum BouncerLayout {
    /// Everything in a directory `postgres` owns.
    Owned,
    /// As Debian's package: the directory belongs to root (0755), `pgbouncer.ini` to
    /// `postgres:postgres` 0640; logs and pid elsewhere.
    Debian,
    /// As Debian's, with `pgbouncer.ini` root's (0644) and the `[databases]` section in
    /// an include file in a directory `postgres` owns (`include` holds its path).
    DebianWithInclude,
}

impl PgBouncer {
    /// `databases`: (name, server port) entries on 127.0.0.1; `pool_mode`: transaction
    /// or session.
    pub fn start(databases: &[(&str, u16)], pool_mode: &str) -> PgBouncer {
        PgBouncer::start_in(databases, pool_mode, BouncerLayout::Owned)
    }

    /// As `start`, with the files laid out as `layout` says.
    pub fn start_in(databases: &[(&str, u16)], pool_mode: &str, layout: BouncerLayout) -> PgBouncer {
        let bin = which("pgbouncer")
            .or_else(|| Some(PathBuf::from("/usr/sbin/pgbouncer")).filter(|p| p.exists()))
            .expect("pgbouncer not found — run scripts/install-deps.sh (Debian package pgbouncer)");
        let dir = TestDir::new();
        // The directory of pgbouncer.ini: the test's own (postgres's), or root's.
        let etc = if layout == BouncerLayout::Owned {
            chown_postgres(dir.path());
            dir.path().to_path_buf()
        } else {
            let etc = dir.join("etc-pgbouncer");
            std::fs::create_dir(&etc).unwrap();
            std::fs::set_permissions(&etc, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
            pg_owned_dir(&dir.join("log"));
            etc
        };
        let logs = if layout == BouncerLayout::Owned {
            dir.path().to_path_buf()
        } else {
            dir.join("log")
        };
        let port = free_port();
        let users = etc.join("userlist.txt");
        std::fs::write(&users, "\"postgres\" \"\"\n").unwrap();
        let mut entries = String::from("[databases]\n");
        for (name, server) in databases {
            entries.push_str(&format!("{name} = host=127.0.0.1 port={server} dbname={name}\n"));
        }
        let mut text = String::from("; the test's PgBouncer\n");
        let mut include = None;
        if layout == BouncerLayout::DebianWithInclude {
            let own = pg_owned_dir(&etc.join("pgdr"));
            let file = own.join("databases.ini");
            std::fs::write(&file, &entries).unwrap();
            chown_postgres(&file);
            text.push_str(&format!("%include {}\n", file.display()));
            include = Some(file);
        } else {
            text.push_str(&entries);
        }
        text.push_str(&format!(
            "\n[pgbouncer]\nlisten_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\nauth_type = trust\nauth_file = {}\nadmin_users = postgres\npool_mode = {pool_mode}\nlogfile = {}\npidfile = {}\nignore_startup_parameters = extra_float_digits\n",
            users.display(),
            logs.join("pgbouncer.log").display(),
            logs.join("pgbouncer.pid").display()
        ));
        let ini = etc.join("pgbouncer.ini");
        std::fs::write(&ini, text).unwrap();
        chown_postgres(&users);
        match layout {
            BouncerLayout::DebianWithInclude => {
                std::fs::set_permissions(&ini, std::os::unix::fs::PermissionsExt::from_mode(0o644)).unwrap();
            }
            BouncerLayout::Debian => {
                chown_postgres(&ini);
                std::fs::set_permissions(&ini, std::os::unix::fs::PermissionsExt::from_mode(0o640)).unwrap();
            }
            BouncerLayout::Owned => chown_postgres(&ini),
        }
        let mut cmd = Command::new(bin);
        hermetic(&mut cmd);
        cmd.arg(&ini).stdout(Stdio::null()).stderr(Stdio::null());
        as_postgres(&mut cmd);
        die_with_parent(&mut cmd);
        let child = cmd.spawn().expect("cannot start pgbouncer");
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(Instant::now() < deadline, "pgbouncer did not start on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        PgBouncer {
            dir,
            ini,
            include,
            logs,
            port,
            child,
        }
    }

    /// The file pgdr rewrites: the include file where there is one.
    pub fn databases_file(&self) -> &Path {
        self.include.as_deref().unwrap_or(&self.ini)
    }

    /// The admin console URL (no password: trust).
    pub fn admin_url(&self) -> String {
        format!("postgresql://postgres@127.0.0.1:{}/pgbouncer", self.port)
    }

    /// Run SQL through PgBouncer on database `db`.
    pub fn psql(&self, db: &str, sql: &str) -> Output {
        psql_at(self.port, db, sql)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.logs.join("pgbouncer.log")).unwrap_or_default()
    }
}

impl Drop for PgBouncer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl S3Server {
    /// Keys in `bucket` under `prefix` (moto answers unsigned listings).
    pub fn keys(&self, bucket: &str, prefix: &str) -> Vec<String> {
        let reply = self.raw("GET", &format!("/{bucket}?list-type=2&max-keys=1000&prefix={prefix}"));
        reply
            .split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }
}
