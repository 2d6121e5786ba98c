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
