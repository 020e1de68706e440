//! What the benchmark's and the tests' throw-away PostgreSQL clusters share: finding
//! PostgreSQL's programs, running them as `nobody` when we are root (PostgreSQL refuses to
//! run as root), and `initdb` in a fresh temporary directory. Each then starts the server
//! its own way: the benchmark with `pg_ctl` and PostgreSQL's default durability, stopped
//! when dropped; the tests once per test process, under a watchdog, without fsync.
//!
//! One file, compiled into both: `bench/src/pg.rs` and `tests/it/pg.rs` (through
//! `#[path]`).

use std::{
    io,
    path::{Path, PathBuf},
    process::{Command, Stdio},
};

/// The directory of PostgreSQL's programs: `pg_config --bindir`, or the newest Debian
/// install; `None` when PostgreSQL is not installed.
pub fn bindir() -> Option<PathBuf> {
    if let Ok(out) = Command::new("pg_config").arg("--bindir").output() {
        let p = PathBuf::from(String::from_utf8_lossy(&out.stdout).trim());
        if p.join("initdb").is_file() {
            return Some(p);
        }
    }
    let mut found: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    found.retain(|p| p.join("initdb").is_file());
    found.sort();
    found.pop()
}

/// Whether this process runs as root.
pub fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| String::from_utf8_lossy(&o.stdout).trim() == "0")
}

/// `program`, as `nobody` when we are root.
pub fn as_owner(program: &Path) -> Command {
    if is_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "nobody", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    }
}

/// A new cluster's files: a temporary directory (named `prefix…`, owned by whoever runs
/// the server) holding `data`, made by `initdb` with a `postgres` superuser trusted from
/// loopback. Returns the directory and the path of `data`.
pub fn init(bin: &Path, prefix: &str) -> io::Result<(tempfile::TempDir, PathBuf)> {
    let dir = tempfile::Builder::new().prefix(prefix).tempdir()?;
    let data = dir.path().join("data");
    std::fs::create_dir(&data)?;
    if is_root() {
        let out = Command::new("id").args(["-u", "nobody"]).output()?;
        let uid: u32 = String::from_utf8_lossy(&out.stdout)
            .trim()
            .parse()
            .map_err(|_| io::Error::other("no uid for the nobody user"))?;
        for p in [dir.path(), data.as_path()] {
            std::os::unix::fs::chown(p, Some(uid), None)?;
        }
    }
    let out = as_owner(&bin.join("initdb"))
        .arg("-D")
        .arg(&data)
        // Only initdb's own writes go unsynced; the server's durability is its settings'.
        .args(["-U", "postgres", "--auth=trust", "-E", "UTF8", "--no-sync"])
        .stdin(Stdio::null())
        .output()?;
    if !out.status.success() {
        return Err(io::Error::other(format!(
            "initdb failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )));
    }
    Ok((dir, data))
}
