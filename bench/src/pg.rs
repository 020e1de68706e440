//! A throw-away PostgreSQL cluster for the benchmark: `initdb` in a temporary directory
//! ([`crate::pgdata`], shared with the tests), started with `pg_ctl` on a free loopback
//! port with PostgreSQL's default durability (fsync on, synchronous commit), stopped when
//! dropped.

use std::{
    path::PathBuf,
    process::{Command, Stdio},
};

use anyhow::{Context, bail};

use crate::pgdata::as_owner;
pub use crate::pgdata::bindir;

/// A running cluster.
pub struct Cluster {
    bin: PathBuf,
    data: PathBuf,
    /// The loopback port it listens on.
    pub port: u16,
    _dir: tempfile::TempDir,
}

fn run(mut c: Command, what: &str) -> anyhow::Result<()> {
    let out = c
        .stdin(Stdio::null())
        .output()
        .with_context(|| format!("cannot run {what}"))?;
    if !out.status.success() {
        bail!(
            "{what} failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

impl Cluster {
    /// Creates and starts a cluster.
    pub fn start(bin: PathBuf) -> anyhow::Result<Cluster> {
        let (dir, data) = crate::pgdata::init(&bin, "switchboard-bench-pg-")?;
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut start = as_owner(&bin.join("pg_ctl"));
        start
            .arg("-D")
            .arg(&data)
            .arg("-l")
            .arg(dir.path().join("postgres.log"))
            .arg("-o")
            .arg(format!(
                "-p {port} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c max_connections=200",
                dir.path().display()
            ))
            .args(["-w", "start"]);
        run(start, "pg_ctl start")?;
        Ok(Cluster {
            bin,
            data,
            port,
            _dir: dir,
        })
    }

    /// Creates a database and returns its URL.
    pub fn database(&self, name: &str) -> anyhow::Result<String> {
        let mut c = Command::new(self.bin.join("createdb"));
        c.args([
            "-h",
            "127.0.0.1",
            "-p",
            &self.port.to_string(),
            "-U",
            "postgres",
            name,
        ]);
        run(c, "createdb")?;
        Ok(format!(
            "postgres://postgres@127.0.0.1:{}/{name}",
            self.port
        ))
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let mut stop = as_owner(&self.bin.join("pg_ctl"));
        stop.arg("-D")
            .arg(&self.data)
            .args(["-m", "fast", "-w", "stop"]);
        let _ = stop.stdout(Stdio::null()).stderr(Stdio::null()).status();
    }
}
