//! Throwaway TLS servers for the engines' TLS tests: a test CA and
//! certificates made with rcgen, a PostgreSQL cluster that only accepts TLS,
//! and a redis-server with only a TLS port. Each runs as a child process on a
//! free loopback port in a temporary directory and is stopped by its own PID
//! when dropped. Missing server binaries skip the test, or fail it when `CI`
//! is set.

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use rcgen::{BasicConstraints, CertificateParams, CertifiedIssuer, DnType, IsCa, KeyPair};

/// How long a test server may take to accept connections.
const START_TIMEOUT: Duration = Duration::from_secs(30);

/// A CA, a server certificate it signed for `localhost` only (so a
/// connection to `127.0.0.1` is a hostname mismatch), a client certificate it
/// signed, and a second CA that signed nothing the servers use.
pub(crate) struct TestPki {
    pub(crate) dir: tempfile::TempDir,
    pub(crate) ca: PathBuf,
    pub(crate) other_ca: PathBuf,
    pub(crate) server_cert: PathBuf,
    pub(crate) server_key: PathBuf,
    pub(crate) client_cert: PathBuf,
    pub(crate) client_key: PathBuf,
}

impl TestPki {
    /// Certificates for a client whose certificate names `client_name` (its
    /// CN, which PostgreSQL's `cert` authentication takes as the user).
    pub(crate) fn new(client_name: &str) -> TestPki {
        let dir = tempfile::tempdir().expect("temp dir");
        let write = |name: &str, text: String| {
            let path = dir.path().join(name);
            std::fs::write(&path, text).expect("write a test certificate");
            path
        };
        let ca = new_ca("Pulse test CA");
        let other = new_ca("Some other CA");
        let server_key = KeyPair::generate().expect("key");
        let server = CertificateParams::new(vec!["localhost".to_string()])
            .expect("params")
            .signed_by(&server_key, &ca)
            .expect("server certificate");
        let client_key = KeyPair::generate().expect("key");
        let mut client_params = CertificateParams::new(Vec::<String>::new()).expect("params");
        client_params
            .distinguished_name
            .push(DnType::CommonName, client_name);
        let client = client_params
            .signed_by(&client_key, &ca)
            .expect("client certificate");
        TestPki {
            ca: write("ca.crt", ca.pem()),
            other_ca: write("other-ca.crt", other.pem()),
            server_cert: write("server.crt", server.pem()),
            server_key: write("server.key", server_key.serialize_pem()),
            client_cert: write("client.crt", client.pem()),
            client_key: write("client.key", client_key.serialize_pem()),
            dir,
        }
    }
}

fn new_ca(name: &str) -> CertifiedIssuer<'static, KeyPair> {
    let mut params = CertificateParams::new(Vec::<String>::new()).expect("CA params");
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.distinguished_name.push(DnType::CommonName, name);
    CertifiedIssuer::self_signed(params, KeyPair::generate().expect("CA key")).expect("CA")
}

/// `None` after [`pulse_core::test_policy::skip_or_fail`] for a missing `what`.
fn skip_or_fail(what: &str) -> Option<std::convert::Infallible> {
    pulse_core::test_policy::skip_or_fail(&format!("{what} is missing"), "install it");
    None
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free loopback port")
        .port()
}

/// Waits until something accepts TCP connections on `port`.
fn wait_for_port(port: u16, what: &str, child: &mut Option<&mut Child>) {
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let deadline = Instant::now() + START_TIMEOUT;
    while TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_err() {
        if let Some(child) = child.as_mut()
            && let Ok(Some(status)) = child.try_wait()
        {
            panic!("{what} exited before accepting connections: {status}");
        }
        assert!(
            Instant::now() < deadline,
            "{what} did not start within {START_TIMEOUT:?}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A PostgreSQL cluster of its own (`initdb`) on a free port that accepts
/// only TLS connections: `trust` for every user over TLS, except that the
/// user `pulse_mtls` must present a client certificate from the test CA.
pub(crate) struct PgTls {
    pub(crate) port: u16,
    bin: PathBuf,
    data: PathBuf,
    as_postgres: bool,
}

/// The user the cluster only admits with a client certificate.
pub(crate) const PG_CERT_USER: &str = "pulse_mtls";

impl PgTls {
    pub(crate) fn start(pki: &TestPki) -> Option<PgTls> {
        let Some(bin) = std::fs::read_dir("/usr/lib/postgresql")
            .ok()
            .and_then(|dirs| dirs.flatten().map(|d| d.path().join("bin")).max())
            .filter(|bin| bin.join("initdb").exists())
        else {
            skip_or_fail("PostgreSQL's server binaries (/usr/lib/postgresql/<major>/bin/initdb)")?;
            return None;
        };
        // initdb refuses to run as root: the cluster then belongs to `postgres`.
        let as_postgres = std::fs::metadata("/proc/self").is_ok_and(|m| m.uid() == 0);
        let root = pki.dir.path();
        let data = root.join("pgdata");
        let port = free_port();
        let pg = PgTls {
            port,
            bin,
            data: data.clone(),
            as_postgres,
        };
        if as_postgres {
            let id = |flag: &str| -> u32 {
                let out = Command::new("id")
                    .args([flag, "postgres"])
                    .output()
                    .expect("id");
                String::from_utf8_lossy(&out.stdout)
                    .trim()
                    .parse()
                    .expect("postgres's id")
            };
            let (uid, gid) = (id("-u"), id("-g"));
            for entry in std::fs::read_dir(root).expect("pki dir").flatten() {
                std::os::unix::fs::chown(entry.path(), Some(uid), Some(gid)).expect("chown");
            }
            std::os::unix::fs::chown(root, Some(uid), Some(gid)).expect("chown");
        }
        std::fs::set_permissions(
            &pki.server_key,
            std::os::unix::fs::PermissionsExt::from_mode(0o600),
        )
        .expect("key mode");
        pg.run(
            "initdb",
            &["-D", path(&data), "-A", "trust", "-U", "postgres"],
        );
        let conf = format!(
            "port = {port}\nlisten_addresses = '127.0.0.1'\nunix_socket_directories = '{dir}'\n\
             ssl = on\nssl_cert_file = '{cert}'\nssl_key_file = '{key}'\nssl_ca_file = '{ca}'\n\
             fsync = off\n",
            dir = root.display(),
            cert = pki.server_cert.display(),
            key = pki.server_key.display(),
            ca = pki.ca.display(),
        );
        append(&data.join("postgresql.conf"), &conf);
        std::fs::write(
            data.join("pg_hba.conf"),
            format!(
                "local all all trust\n\
                 hostssl all {PG_CERT_USER} 127.0.0.1/32 cert\n\
                 hostssl all all 127.0.0.1/32 trust\n\
                 hostnossl all all 0.0.0.0/0 reject\n"
            ),
        )
        .expect("pg_hba.conf");
        let log = root.join("postgres.log");
        pg.run(
            "pg_ctl",
            &[
                "-D",
                path(&data),
                "-l",
                path(&log),
                "-w",
                "-t",
                "30",
                "start",
            ],
        );
        wait_for_port(port, "PostgreSQL", &mut None);
        pg.run(
            "psql",
            &[
                "-h",
                path(root),
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-c",
                &format!("CREATE ROLE {PG_CERT_USER} LOGIN SUPERUSER"),
                "postgres",
            ],
        );
        Some(pg)
    }

    fn run(&self, tool: &str, args: &[&str]) {
        let program = self.bin.join(tool);
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(&program);
            c
        } else {
            Command::new(&program)
        };
        let out = command
            .args(args)
            .stdin(Stdio::null())
            .output()
            .unwrap_or_else(|e| panic!("{tool}: {e}"));
        assert!(
            out.status.success(),
            "{tool} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgTls {
    fn drop(&mut self) {
        let program = self.bin.join("pg_ctl");
        let mut command = if self.as_postgres {
            let mut c = Command::new("runuser");
            c.args(["-u", "postgres", "--"]).arg(program);
            c
        } else {
            Command::new(program)
        };
        let _ = command
            .args(["-D", path(&self.data), "-m", "immediate", "-w", "stop"])
            .output();
    }
}

/// A redis-server listening only on a TLS port, with the test CA's server
/// certificate, a password for the default user and an ACL user `pulse`.
pub(crate) struct RedisTls {
    pub(crate) port: u16,
    child: Child,
}

/// The passwords of the test Redis (its `default` user and the ACL user `pulse`).
pub(crate) const REDIS_PASSWORD: &str = "test-password";

impl RedisTls {
    /// With `client_certs`, clients must present a certificate from the test CA.
    pub(crate) fn start(pki: &TestPki, client_certs: bool) -> Option<RedisTls> {
        if Command::new("redis-server")
            .arg("--version")
            .output()
            .is_err()
        {
            skip_or_fail("redis-server")?;
            return None;
        }
        let port = free_port();
        let dir = pki.dir.path().join(format!("redis-{port}"));
        std::fs::create_dir_all(&dir).expect("redis dir");
        let mut child = Command::new("redis-server")
            .args([
                "--port",
                "0",
                "--tls-port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
            ])
            .arg("--tls-cert-file")
            .arg(&pki.server_cert)
            .arg("--tls-key-file")
            .arg(&pki.server_key)
            .arg("--tls-ca-cert-file")
            .arg(&pki.ca)
            .args([
                "--tls-auth-clients",
                if client_certs { "yes" } else { "no" },
            ])
            .args(["--requirepass", REDIS_PASSWORD])
            .args([
                "--user",
                "pulse",
                "on",
                &format!(">{REDIS_PASSWORD}"),
                "~*",
                "&*",
                "+@all",
            ])
            .args(["--save", "", "--appendonly", "no"])
            .arg("--dir")
            .arg(&dir)
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server");
        wait_for_port(port, "redis-server", &mut Some(&mut child));
        Some(RedisTls { port, child })
    }
}

impl Drop for RedisTls {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn path(p: &Path) -> &str {
    p.to_str().expect("a UTF-8 temp path")
}

fn append(file: &Path, text: &str) {
    use std::io::Write;
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .open(file)
        .expect("open for append");
    f.write_all(text.as_bytes()).expect("append");
}
