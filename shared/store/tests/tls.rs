//! PostgreSQL over TLS, for real: `sslmode=require` against the machine's PostgreSQL
//! (Debian's snakeoil certificate), and `verify-full` / `verify-ca` against a private
//! PostgreSQL 15 whose certificate comes from a CA made in the test. Every case checks the
//! session's real transport in `pg_stat_ssl`, not the configured wish.

#![allow(clippy::unwrap_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use fleet_store::{Store, StoreError, StoreOptions};
use fleet_test_support::tls::TestCa;

/// The private server's port (this branch's test range 31000-31999).
const PRIVATE_PG_PORT: u16 = 31432;
const PG_BIN: &str = "/usr/lib/postgresql/15/bin";

fn opts(ca_file: Option<&Path>) -> StoreOptions {
    StoreOptions {
        ca_file: ca_file.map(Path::to_path_buf),
        ..common::opts()
    }
}

/// `url` with one more query parameter.
fn with_param(url: &str, kv: &str) -> String {
    let sep = if url.contains('?') { '&' } else { '?' };
    format!("{url}{sep}{kv}")
}

/// Connects and asks the server whether this session is encrypted.
async fn session_ssl(url: &str, ca_file: Option<&Path>) -> Result<bool, StoreError> {
    let store = Store::connect(Some(url), Path::new("unused"), opts(ca_file)).await?;
    let row = store
        .query_one(
            "SELECT ssl FROM pg_stat_ssl WHERE pid = pg_backend_pid()",
            &[],
        )
        .await?;
    row.get::<bool>("ssl")
}

fn assert_config_error(r: Result<bool, StoreError>, needles: &[&str]) -> String {
    let e = r.expect_err("connecting must fail");
    assert!(
        matches!(e, StoreError::Config(_)) && !e.is_transient(),
        "a TLS refusal must be a configuration error, not retried: {e:?}"
    );
    let text = e.to_string();
    eprintln!("as expected: {text}");
    for n in needles {
        assert!(text.contains(n), "error should mention `{n}`: {text}");
    }
    text
}

#[tokio::test]
async fn require_encrypts_against_the_machines_postgres_and_disable_does_not() {
    let base = fleet_test_support::postgres_url();
    assert!(
        session_ssl(&with_param(&base, "sslmode=require"), None)
            .await
            .unwrap(),
        "sslmode=require must give a TLS session"
    );
    // The default (prefer) encrypts when the server offers TLS.
    assert!(session_ssl(&base, None).await.unwrap());
    assert!(
        !session_ssl(&with_param(&base, "sslmode=disable"), None)
            .await
            .unwrap()
    );
}

#[tokio::test]
async fn verify_full_rejects_the_snakeoil_certificate_with_a_clear_error() {
    let dir = test_dir("snakeoil");
    let ca = TestCa::new("fleet test CA (not the snakeoil issuer)")
        .write(&dir)
        .unwrap();
    let url = with_param(&fleet_test_support::postgres_url(), "sslmode=verify-full");
    assert_config_error(
        session_ssl(&url, Some(&ca)).await,
        &["certificate was rejected", "FLEET_DATABASE_CA_FILE"],
    );
    // Without any CA, verify-full is refused before connecting.
    assert_config_error(session_ssl(&url, None).await, &["FLEET_DATABASE_CA_FILE"]);
    let _ = std::fs::remove_dir_all(&dir);
}

/// One private server for every case below (starting one takes seconds).
#[tokio::test]
async fn private_postgres_plaintext_then_verify_full_with_a_generated_ca() {
    let dir = test_dir("private-pg");
    let ca = TestCa::new("fleet test CA");
    let ca_file = ca.write(&dir.join("client")).unwrap();
    let pg = PrivatePg::start(&dir, PRIVATE_PG_PORT);
    let localhost = format!("postgres://postgres@localhost:{PRIVATE_PG_PORT}/postgres");

    // 1. TLS off on the server: the default keeps working (plaintext), require says why not.
    assert!(!session_ssl(&localhost, None).await.unwrap());
    assert_config_error(
        session_ssl(&with_param(&localhost, "sslmode=require"), None).await,
        &["does not offer TLS", "sslmode"],
    );

    // 2. TLS on, with a certificate for localhost and 127.0.0.1 from the test CA.
    let cert = ca.issue(&["localhost", "127.0.0.1"]);
    let (crt, key) = cert.write(&dir.join("server"), "server").unwrap();
    pg.enable_ssl(&crt, &key).await;

    let full = with_param(&localhost, "sslmode=verify-full");
    assert!(session_ssl(&full, Some(&ca_file)).await.unwrap());
    let by_ip = format!(
        "postgres://postgres@127.0.0.1:{PRIVATE_PG_PORT}/postgres?sslmode=verify-full&sslrootcert={}",
        ca_file.display()
    );
    assert!(
        session_ssl(&by_ip, None).await.unwrap(),
        "sslrootcert= in the URL"
    );
    // The default now encrypts too.
    assert!(session_ssl(&localhost, None).await.unwrap());

    // 3. A name the certificate does not carry: verify-full refuses, verify-ca accepts.
    let other_name = format!("postgres://postgres@127.0.0.2:{PRIVATE_PG_PORT}/postgres");
    assert_config_error(
        session_ssl(
            &with_param(&other_name, "sslmode=verify-full"),
            Some(&ca_file),
        )
        .await,
        &["does not name the host", "verify-ca"],
    );
    assert!(
        session_ssl(
            &with_param(&other_name, "sslmode=verify-ca"),
            Some(&ca_file)
        )
        .await
        .unwrap()
    );

    // 4. The wrong CA: a clear configuration error, not an endless retry.
    let wrong = TestCa::new("some other CA")
        .write(&dir.join("wrong"))
        .unwrap();
    assert_config_error(
        session_ssl(&full, Some(&wrong)).await,
        &["certificate was rejected", "FLEET_DATABASE_CA_FILE"],
    );
    drop(pg);
    let _ = std::fs::remove_dir_all(&dir);
}

/// A fresh directory under cargo's target/tmp, traversable by the postgres user; under the
/// system temp directory when an ancestor of target/ is closed to others (a clone in /root).
fn test_dir(tag: &str) -> PathBuf {
    let mut tmp = PathBuf::from(env!("CARGO_TARGET_TMPDIR"));
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        let closed = tmp
            .ancestors()
            .skip(1)
            .any(|a| std::fs::metadata(a).is_ok_and(|m| m.permissions().mode() & 0o001 == 0));
        if closed {
            tmp = std::env::temp_dir().join("fleet-store-tls");
        }
    }
    let dir = tmp.join(fleet_test_support::unique_prefix(tag));
    std::fs::create_dir_all(&dir).unwrap();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        for d in [&tmp, &dir] {
            std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755)).unwrap();
        }
    }
    dir
}

/// A PostgreSQL 15 cluster of this test, run as the `postgres` user on loopback; stopped
/// (immediately) when dropped, also when the test panics.
struct PrivatePg {
    data: PathBuf,
}

/// Runs `cmd` as the postgres user; panics with its output on failure.
fn as_postgres(args: &[&str]) {
    let out = Command::new("runuser")
        .args(["-u", "postgres", "--"])
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run runuser (needs root): {e}"));
    assert!(
        out.status.success(),
        "{args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

impl PrivatePg {
    fn start(dir: &Path, port: u16) -> PrivatePg {
        let data = dir.join("data");
        let chown = Command::new("chown")
            .args(["-R", "postgres:postgres"])
            .arg(dir)
            .status()
            .unwrap();
        assert!(chown.success());
        let initdb = format!("{PG_BIN}/initdb");
        let data_s = data.to_str().unwrap();
        as_postgres(&[
            &initdb,
            "-D",
            data_s,
            "-A",
            "trust",
            "-U",
            "postgres",
            "--no-sync",
            "--no-instructions",
        ]);
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1,127.0.0.2'\nunix_socket_directories = '{}'\nfsync = off\nssl = off\n",
            data.display()
        );
        std::fs::write(data.join("postgresql.auto.conf"), conf).unwrap();
        // initdb trusts 127.0.0.1/32 only; the name-mismatch case connects via 127.0.0.2.
        let hba = data.join("pg_hba.conf");
        let mut rules = std::fs::read_to_string(&hba).unwrap();
        rules.push_str("\nhost all all 127.0.0.0/8 trust\n");
        std::fs::write(&hba, rules).unwrap();
        let pg = PrivatePg { data: data.clone() };
        as_postgres(&[
            &format!("{PG_BIN}/pg_ctl"),
            "-D",
            data_s,
            "-l",
            &format!("{data_s}/server.log"),
            "-w",
            "-t",
            "30",
            "start",
        ]);
        pg
    }

    /// Turns TLS on with `crt`/`key` (a reload, as an operator would).
    async fn enable_ssl(&self, crt: &Path, key: &Path) {
        let chown = Command::new("chown")
            .arg("postgres:postgres")
            .arg(crt)
            .arg(key)
            .status()
            .unwrap();
        assert!(chown.success());
        let url =
            format!("postgres://postgres@127.0.0.1:{PRIVATE_PG_PORT}/postgres?sslmode=disable");
        let admin = Store::connect(Some(&url), Path::new("unused"), opts(None))
            .await
            .unwrap();
        for sql in [
            format!("ALTER SYSTEM SET ssl_cert_file = '{}'", crt.display()),
            format!("ALTER SYSTEM SET ssl_key_file = '{}'", key.display()),
            "ALTER SYSTEM SET ssl = on".to_owned(),
        ] {
            admin.execute(&sql, &[]).await.unwrap();
        }
        let reloaded = admin.query_one("SELECT pg_reload_conf() AS ok", &[]).await;
        assert!(reloaded.unwrap().get::<bool>("ok").unwrap());
        // The postmaster applies the reload asynchronously; new sessions see it shortly.
        fleet_test_support::wait_for("ssl = on after reload", Duration::from_secs(10), || {
            let admin = admin.clone();
            async move {
                admin
                    .query_one("SHOW ssl", &[])
                    .await
                    .ok()
                    .and_then(|r| r.get::<String>("ssl").ok())
                    .is_some_and(|v| v == "on")
            }
        })
        .await;
    }
}

impl Drop for PrivatePg {
    fn drop(&mut self) {
        let _ = Command::new("runuser")
            .args(["-u", "postgres", "--"])
            .arg(format!("{PG_BIN}/pg_ctl"))
            .arg("-D")
            .arg(&self.data)
            .args(["-m", "immediate", "-w", "-t", "20", "stop"])
            .output();
    }
}
