//! A throw-away PostgreSQL cluster for the tests: `initdb` in a temporary directory, the
//! server on a free loopback port, one fresh database per test directory. Started once per
//! test process, the first time a test asks for it, and stopped when the process exits (a
//! watchdog shell waits for the test process to go away). PostgreSQL refuses to run as
//! root, so as root it runs as `nobody` (`runuser` for initdb, `setpriv` for the server).
//! What this shares with the benchmark's cluster (finding PostgreSQL, `initdb`) is
//! `bench/src/pgdata.rs`.
//!
//! `SWITCHBOARD_TEST_STORE=postgres` runs every test's server on PostgreSQL instead of the
//! embedded store (`.ci/run` runs the black-box suite that way as well).

use std::{
    path::PathBuf,
    process::{Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use crate::servers::free_port;

/// Whether this test run puts every server on PostgreSQL.
pub fn everywhere() -> bool {
    std::env::var("SWITCHBOARD_TEST_STORE").is_ok_and(|v| v == "postgres")
}

pub struct Cluster {
    port: u16,
    bin: PathBuf,
    _dir: tempfile::TempDir,
    /// The watchdog shell: it outlives this process on purpose, to stop the server.
    _watchdog: std::process::Child,
}

static CLUSTER: OnceLock<Cluster> = OnceLock::new();
static DATABASES: AtomicUsize = AtomicUsize::new(0);

#[path = "../../bench/src/pgdata.rs"]
mod pgdata;
use pgdata::is_root;

impl Cluster {
    fn start() -> Cluster {
        let bin = pgdata::bindir().expect(
            "PostgreSQL is not installed (Debian: apt-get install postgresql; .ci/run does it)",
        );
        let (dir, data) = pgdata::init(&bin, "switchboard-pg-").expect("initdb");
        let port = free_port();
        let log = dir.path().join("postgres.log");
        // The server lives as long as this test process: the shell waits for its parent
        // (us) to go away, then stops it fast and removes the cluster.
        // As root, the server runs as nobody through setpriv, which becomes it (so `$pg` is
        // the server itself); the shell stays ours, so that it may watch our pid.
        let owner = if is_root() {
            "setpriv --reuid=nobody --regid=nogroup --clear-groups "
        } else {
            ""
        };
        let postgres = format!(
            "{owner}{} -D {} -p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} \
             -c max_connections=400 -c fsync=off -c full_page_writes=off",
            bin.join("postgres").display(),
            data.display(),
            dir.path().display(),
        );
        let watchdog = format!(
            "{postgres} >{log} 2>&1 & pg=$!; \
             while kill -0 {parent} 2>/dev/null; do sleep 1; done; \
             kill -INT $pg; sleep 5; kill -KILL $pg 2>/dev/null; rm -rf {dir}",
            log = log.display(),
            parent = std::process::id(),
            dir = dir.path().display(),
        );
        let mut sh = Command::new("sh");
        sh.args(["-c", &watchdog]);
        let shell_log = std::fs::File::create(dir.path().join("watchdog.log")).expect("a log file");
        let watchdog = sh
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(shell_log)
            .spawn()
            .expect("start postgres");
        let dir_path = dir.path().to_path_buf();
        let cluster = Cluster {
            port,
            bin,
            _dir: dir,
            _watchdog: watchdog,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !cluster.ready() {
            assert!(
                Instant::now() < deadline,
                "PostgreSQL did not start; its log:\n{}\nthe watchdog's:\n{}",
                std::fs::read_to_string(&log).unwrap_or_default(),
                std::fs::read_to_string(dir_path.join("watchdog.log")).unwrap_or_default()
            );
            std::thread::sleep(Duration::from_millis(100));
        }
        cluster
    }

    fn ready(&self) -> bool {
        Command::new(self.bin.join("pg_isready"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status()
            .is_ok_and(|s| s.success())
    }

    /// Runs SQL as the superuser.
    pub fn psql(&self, db: &str, sql: &str) -> String {
        let out = Command::new(self.bin.join("psql"))
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-U",
                "postgres",
            ])
            .args(["-d", db, "-v", "ON_ERROR_STOP=1", "-At", "-c", sql])
            .output()
            .expect("psql");
        assert!(
            out.status.success(),
            "psql {sql}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        String::from_utf8_lossy(&out.stdout).trim().to_owned()
    }

    /// A new, empty database; its URL.
    pub fn database(&self) -> String {
        let name = format!(
            "t{}_{}",
            std::process::id(),
            DATABASES.fetch_add(1, Ordering::SeqCst)
        );
        self.psql("postgres", &format!("CREATE DATABASE {name}"));
        self.url(&name)
    }

    pub fn url(&self, db: &str) -> String {
        format!(
            "postgres://postgres@127.0.0.1:{}/{db}?sslmode=disable",
            self.port
        )
    }
}

/// The cluster of this test process, started on first use.
pub fn cluster() -> &'static Cluster {
    CLUSTER.get_or_init(Cluster::start)
}

/// The `[store]` lines of a server on the database at `url`, with a short lease (3 s) so
/// that a killed instance's work is taken over quickly.
pub fn store_lines(url: &str) -> String {
    format!("backend = \"postgres\"\nurl = \"{url}\"\npool_size = 8\nlease = \"3s\"\n")
}
