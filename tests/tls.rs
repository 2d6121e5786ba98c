//! Certificate verification on pgdr's own PostgreSQL connection (issue 14):
//! `sslmode=verify-full` checks the server's certificate against `sslrootcert` and the
//! host name; `verify-ca` checks only the chain. A certificate from another CA, or a
//! host name the certificate does not name, is refused with one clear line before
//! anything is written. The certificates are made by the test (openssl).

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

use common::*;

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .current_dir(dir)
        .args(args)
        .output()
        .expect("openssl is needed for the TLS test (scripts/install-deps.sh installs it)");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA named `name` in `dir`: `<name>.crt`, `<name>.key`.
fn make_ca(dir: &Path, name: &str) -> PathBuf {
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-days",
            "2",
            "-keyout",
            &format!("{name}.key"),
            "-out",
            &format!("{name}.crt"),
            "-subj",
            &format!("/CN=pgdr test {name}"),
            "-addext",
            "basicConstraints=critical,CA:TRUE",
            "-addext",
            "keyUsage=critical,keyCertSign,cRLSign",
        ],
    );
    dir.join(format!("{name}.crt"))
}

/// A server certificate for 127.0.0.1 only, signed by the CA `ca`.
fn make_server_cert(dir: &Path, ca: &str) -> (PathBuf, PathBuf) {
    openssl(
        dir,
        &[
            "req",
            "-newkey",
            "rsa:2048",
            "-nodes",
            "-keyout",
            "server.key",
            "-out",
            "server.csr",
            "-subj",
            "/CN=127.0.0.1",
        ],
    );
    std::fs::write(
        dir.join("server.ext"),
        "subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n",
    )
    .unwrap();
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            &format!("{ca}.crt"),
            "-CAkey",
            &format!("{ca}.key"),
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "server.ext",
        ],
    );
    let (crt, key) = (dir.join("server.crt"), dir.join("server.key"));
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&key, std::fs::Permissions::from_mode(0o600)).unwrap();
    chown_postgres(&key);
    chown_postgres(&crt);
    (crt, key)
}

fn set_url(pgdr: &Pgdr, url: &str) {
    let text = std::fs::read_to_string(&pgdr.config).unwrap();
    let start = text.find("url = \"postgresql").unwrap();
    let end = start + text[start..].find('\n').unwrap();
    std::fs::write(
        &pgdr.config,
        format!("{}url = \"{url}\"{}", &text[..start], &text[end..]),
    )
    .unwrap();
}

#[test]
fn verify_full_and_verify_ca_check_the_server_certificate() {
    let certs = TestDir::new();
    chown_postgres(certs.path());
    let ca = make_ca(certs.path(), "ca");
    let other_ca = make_ca(certs.path(), "other");
    let (crt, key) = make_server_cert(certs.path(), "ca");
    let cluster = Cluster::start_with(&[
        "listen_addresses=localhost",
        "ssl=on",
        &format!("ssl_cert_file={}", crt.display()),
        &format!("ssl_key_file={}", key.display()),
        "log_connections=on",
    ]);
    load_sample(&cluster, "shop");
    let url = |host: &str, mode: &str, root: &Path| {
        format!(
            "postgresql://postgres@{host}:{}/postgres?sslmode={mode}&sslrootcert={}",
            cluster.port,
            root.display()
        )
    };

    // verify-full against the right CA and the name in the certificate: a backup, and a
    // restore that matches. pgdr's own connections were encrypted.
    let pgdr = Pgdr::new(&cluster, RepoKind::Local);
    set_url(&pgdr, &url("127.0.0.1", "verify-full", &ca));
    pgdr.ok(&["backup", "--database", "shop"]);
    pgdr.ok(&["restore", "--database", "shop", "--to-database", "shop_copy"]);
    assert_eq!(cluster.content_hashes("shop_copy"), cluster.content_hashes("shop"));
    let log = cluster.log();
    assert!(
        log.lines()
            .any(|l| l.contains("application_name=pgdr") && l.contains("SSL enabled")),
        "pgdr's connection was not encrypted:\n{log}"
    );
    let backups = pgdr.list_json().len();

    // The certificate names 127.0.0.1, not localhost: verify-full refuses, verify-ca
    // (the chain only) accepts.
    set_url(&pgdr, &url("localhost", "verify-full", &ca));
    let line = assert_fails(&pgdr.run(&["backup", "--database", "shop"]), 1, "certificate");
    assert!(line.contains("host name"), "{line}");
    set_url(&pgdr, &url("localhost", "verify-ca", &ca));
    pgdr.ok(&["backup", "--database", "shop"]);

    // Another CA signed nothing here: refused in both modes, nothing written.
    for mode in ["verify-full", "verify-ca"] {
        set_url(&pgdr, &url("127.0.0.1", mode, &other_ca));
        assert_fails(&pgdr.run(&["backup", "--database", "shop"]), 1, "certificate");
    }
    assert_eq!(pgdr.list_json().len(), backups + 1);

    // No root certificate to check against: a configuration error naming sslrootcert.
    set_url(&pgdr, &url("127.0.0.1", "verify-full", &certs.join("missing.crt")));
    assert_fails(&pgdr.run(&["backup", "--database", "shop"]), 2, "sslrootcert");
}

/// Issue 28: an S3 store behind a private certificate authority (MinIO, Ceph, on
/// premises). `[repository] ca_file` names the CA: the DBA's commands, the server's
/// `archive_command` (wal-push and its pusher) and a restored server's
/// `restore_command` (wal-fetch) all trust it, and nothing else. Before, the AWS SDK
/// trusted only the system's roots (or `SSL_CERT_FILE`, which `restore --start`
/// dropped from the server's environment): every segment failed TLS and recovery
/// stopped. Without `ca_file`, or with another CA, one line names `ca_file`.
#[test]
fn an_s3_store_behind_a_private_ca_is_trusted_through_ca_file() {
    let certs = TestDir::new();
    chown_postgres(certs.path());
    let ca = make_ca(certs.path(), "ca");
    let other_ca = make_ca(certs.path(), "other");
    let (crt, key) = make_server_cert(certs.path(), "ca");
    chown_postgres(&ca);
    chown_postgres(&other_ca);
    let s3 = TlsS3::start(&crt, &key);
    let bucket = format!("pgdr-{:016x}", rand::random::<u64>());
    s3.create_bucket(&bucket, &ca);

    // A cluster archiving into that store: only ca_file makes its certificate trusted.
    let dir = TestDir::new();
    chown_postgres(dir.path());
    let config = dir.join("pgdr.toml");
    let key_file = dir.join("repo.key");
    let spool = dir.join("spool");
    pg_owned_dir(&spool);
    let creds = dir.join("aws-credentials");
    std::fs::write(
        &creds,
        format!("[default]\naws_access_key_id = {TEST_AWS_KEY}\naws_secret_access_key = {TEST_AWS_SECRET}\n"),
    )
    .unwrap();
    chown_postgres(&creds);
    let mut cluster = Cluster::init();
    cluster.configure(&[
        "archive_mode = on".to_string(),
        format!(
            "archive_command = 'AWS_SHARED_CREDENTIALS_FILE={} AWS_CONFIG_FILE=/dev/null {PGDR} --config {} wal-push %p'",
            creds.display(),
            config.display()
        ),
        "wal_level = replica".to_string(),
    ]);
    cluster.launch(&[]);
    let (url, data) = (cluster.url("postgres"), cluster.data.clone());
    let endpoint = s3.endpoint();
    let repository = |ca_line: &str| {
        format!(
            "cluster = \"test\"\n\n[postgres]\nurl = \"{}\"\nbin_dir = \"{}\"\ndata_dir = \"{}\"\n\n[repository]\nurl = \"s3://{bucket}/wal\"\nendpoint = \"{}\"\nregion = \"us-east-1\"\nforce_path_style = true\nkey_file = \"{}\"\n{ca_line}\n[wal]\nspool_dir = \"{}\"\narchive_timeout = 60\n",
            url,
            pg_bin().display(),
            data.display(),
            endpoint,
            key_file.display(),
            spool.display()
        )
    };
    std::fs::write(&config, repository(&format!("ca_file = \"{}\"\n", ca.display()))).unwrap();
    let pgdr = Pgdr::initialised(dir, config.clone(), key_file.clone(), None, is_root());
    let a = Archiving { cluster, pgdr };

    // A physical backup, rows after it, archived: all over TLS.
    a.cluster.psql(
        "postgres",
        "CREATE TABLE ledger AS SELECT g AS id, md5(g::text) AS note FROM generate_series(1, 5000) g",
    );
    a.pgdr.ok(&["backup", "--kind", "physical"]);
    a.cluster.psql(
        "postgres",
        "INSERT INTO ledger SELECT g, md5(g::text) FROM generate_series(5001, 7000) g",
    );
    a.switch_and_wait();
    let want = a.cluster.psql(
        "postgres",
        "SELECT count(*), md5(string_agg(note, ',' ORDER BY id)) FROM ledger",
    );

    // The restored server's restore_command reads every segment through the CA.
    let restored = a.pgdr.restore_started(&["--target", "latest"]);
    assert_eq!(
        restored.psql(
            "postgres",
            "SELECT count(*), md5(string_agg(note, ',' ORDER BY id)) FROM ledger"
        ),
        want,
        "the copy did not replay the archived WAL over TLS:\n{}",
        restored.output
    );
    restored.stop();

    // Without ca_file, or with another CA: one line naming ca_file, nothing written.
    let listed = a.pgdr.list_json().len();
    std::fs::write(&config, repository("")).unwrap();
    assert_fails(&a.pgdr.run(&["backup", "--kind", "physical"]), 1, "ca_file");
    std::fs::write(&config, repository(&format!("ca_file = \"{}\"\n", other_ca.display()))).unwrap();
    assert_fails(&a.pgdr.run(&["backup", "--kind", "physical"]), 1, "ca_file");
    // A file that holds no certificate is the configuration's mistake.
    std::fs::write(&config, repository(&format!("ca_file = \"{}\"\n", creds.display()))).unwrap();
    assert_fails(&a.pgdr.run(&["list"]), 2, "ca_file");
    std::fs::write(&config, repository(&format!("ca_file = \"{}\"\n", ca.display()))).unwrap();
    assert_eq!(a.pgdr.list_json().len(), listed, "a refused backup wrote something");
}
