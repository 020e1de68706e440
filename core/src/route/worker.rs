//! The route worker: a child process of `serve`, the same binary started as
//! `switchboard route-worker`, that runs scripts one at a time and nothing else.
//!
//! It reads [`proto::ToWorker`] frames on stdin and answers on stdout. Before it builds
//! its engine it limits itself: its address space to `routes.worker_memory`
//! (`RLIMIT_AS`), no core dumps (`RLIMIT_CORE` 0), no descriptor but its three pipes
//! (inherited ones closed, `RLIMIT_NOFILE` at three), and on Linux it dies with its parent
//! (`PR_SET_PDEATHSIG`). It holds no secret and opens no connection: the server started it
//! with an empty environment and performs its lookups for it. Scripts run on a thread with
//! a large stack; whatever still crashes there (an allocation over the cap, a stack
//! overflow) ends this process only, and the server starts another.

use std::{
    collections::{HashMap, HashSet},
    io::{self, BufWriter},
    sync::Arc,
    time::Duration,
};

use serde_json::Value;
use sha2::{Digest, Sha256};

use super::{
    LookupError, Method, RUN_STACK, RunFailure, ScriptEvent,
    api::{self, Host, Output},
    engine,
    proto::{self, FromWorker, Setup, ToWorker},
};

/// Compiled scripts kept by a worker (by the hash of their text).
const CACHED_SCRIPTS: usize = 256;

/// The hidden subcommand that starts a worker.
pub const SUBCOMMAND: &str = "route-worker";

/// Runs the worker until its stdin closes. Returns the process's exit code.
pub fn main() -> u8 {
    close_inherited();
    // Stdin is buffered inside std: later locks see what this one read ahead.
    let setup: Setup = match proto::read_frame::<ToWorker>(&mut io::stdin().lock()) {
        Ok(Some(ToWorker::Setup(s))) => s,
        Ok(None) => return 0,
        _ => {
            eprintln!("route worker: the first frame must be the setup");
            return 2;
        }
    };
    if let Err(e) = limit_self(setup.routes.worker_memory.0) {
        eprintln!("route worker: cannot limit itself: {e}");
        return 2;
    }
    let runner = std::thread::Builder::new()
        .name("route-run".into())
        .stack_size(RUN_STACK)
        .spawn(move || serve(setup));
    let runner = match runner {
        Ok(r) => r,
        Err(e) => {
            eprintln!("route worker: cannot start its thread: {e}");
            return 2;
        }
    };
    // From here on nothing opens a file or a socket.
    no_more_files();
    match runner.join() {
        Ok(Ok(())) => 0,
        Ok(Err(e)) => {
            eprintln!("route worker: {e}");
            1
        }
        Err(_) => 1,
    }
}

/// Closes every descriptor but stdin, stdout and stderr: whatever the server inherited
/// from whoever started it (the server's own are close-on-exec) stays out of reach.
#[cfg(target_os = "linux")]
fn close_inherited() {
    let fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().to_str()?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    for fd in fds.into_iter().filter(|fd| *fd > 2) {
        // The directory's own descriptor is already closed: EBADF, ignored.
        let _ = nix::unistd::close(fd);
    }
}

#[cfg(not(target_os = "linux"))]
fn close_inherited() {}

/// Memory cap, no core dumps, death with the parent.
#[cfg(unix)]
fn limit_self(memory: u64) -> nix::Result<()> {
    use nix::sys::resource::{Resource, setrlimit};
    setrlimit(Resource::RLIMIT_CORE, 0, 0)?;
    setrlimit(Resource::RLIMIT_AS, memory, memory)?;
    #[cfg(target_os = "linux")]
    nix::sys::prctl::set_pdeathsig(nix::sys::signal::Signal::SIGKILL)?;
    Ok(())
}

#[cfg(not(unix))]
fn limit_self(_memory: u64) -> Result<(), std::convert::Infallible> {
    Ok(())
}

#[cfg(unix)]
fn no_more_files() {
    use nix::sys::resource::{Resource, setrlimit};
    // stdin, stdout and stderr are open: no descriptor beyond them can be made.
    let _ = setrlimit(Resource::RLIMIT_NOFILE, 3, 3);
}

#[cfg(not(unix))]
fn no_more_files() {}

fn serve(setup: Setup) -> io::Result<()> {
    let engine = engine::build(&setup.routes);
    let services: Arc<HashSet<String>> = Arc::new(setup.services.into_iter().collect());
    let mut cache: HashMap<[u8; 32], Arc<rhai::AST>> = HashMap::new();
    let mut out = BufWriter::new(io::stdout().lock());
    proto::write_frame(&mut out, &FromWorker::Ready)?;
    drop(out);
    loop {
        let frame = {
            let mut input = io::stdin().lock();
            proto::read_frame::<ToWorker>(&mut input)?
        };
        let Some(frame) = frame else { return Ok(()) };
        let ToWorker::Runs { scripts, runs } = frame else {
            return Err(io::Error::new(io::ErrorKind::InvalidData, "expected runs"));
        };
        // Compiled once per frame (or found in the cache), when a run first needs it.
        let mut compiled: Vec<Option<Result<Arc<rhai::AST>, RunFailure>>> =
            scripts.iter().map(|_| None).collect();
        for run in runs {
            let Some(slot) = compiled.get_mut(run.script) else {
                return Err(io::Error::new(io::ErrorKind::InvalidData, "no such script"));
            };
            let ast = slot
                .get_or_insert_with(|| compile(&engine, &mut cache, &scripts[run.script].source))
                .clone();
            let result = ast.and_then(|ast| {
                let event = ScriptEvent::read(run.event.get())?;
                let host = Pipe {
                    services: services.clone(),
                    extra: run.services,
                };
                api::execute(
                    &engine,
                    &ast,
                    event,
                    run.secrets,
                    &run.limits,
                    Box::new(host),
                )
            });
            // Written before the next run starts: see the protocol.
            let mut out = BufWriter::new(io::stdout().lock());
            proto::write_frame(&mut out, &FromWorker::Done(result))?;
        }
    }
}

/// A script's compiled form, from the cache (by the hash of its text) or compiled now.
fn compile(
    engine: &rhai::Engine,
    cache: &mut HashMap<[u8; 32], Arc<rhai::AST>>,
    source: &str,
) -> Result<Arc<rhai::AST>, RunFailure> {
    let hash: [u8; 32] = Sha256::digest(source.as_bytes()).into();
    if let Some(ast) = cache.get(&hash) {
        return Ok(ast.clone());
    }
    let ast = engine
        .compile(source)
        .map(Arc::new)
        .map_err(|e| RunFailure {
            message: format!("the script does not compile: {e}"),
            retryable: false,
        })?;
    if cache.len() >= CACHED_SCRIPTS {
        cache.clear();
    }
    cache.insert(hash, ast.clone());
    Ok(ast)
}

/// Lookups and output through the server.
struct Pipe {
    services: Arc<HashSet<String>>,
    /// Services of this run only.
    extra: Vec<String>,
}

impl Pipe {
    fn send(&self, msg: &FromWorker) -> io::Result<()> {
        let mut out = BufWriter::new(io::stdout().lock());
        proto::write_frame(&mut out, msg)
    }
}

impl Host for Pipe {
    fn configured(&self, service: &str) -> bool {
        self.services.contains(service) || self.extra.iter().any(|s| s == service)
    }

    fn lookup(
        &mut self,
        service: &str,
        method: Method,
        path: &str,
        body: Option<Value>,
        timeout: Duration,
    ) -> Result<Value, LookupError> {
        let asked = self.send(&FromWorker::Lookup {
            service: service.to_owned(),
            method,
            path: path.to_owned(),
            body,
            timeout,
        });
        let answer = asked.and_then(|()| proto::read_frame::<ToWorker>(&mut io::stdin().lock()));
        match answer {
            Ok(Some(ToWorker::Answer(r))) => r,
            // The server went away or spoke out of turn: nothing sensible is left to do.
            _ => std::process::exit(3),
        }
    }

    fn output(&mut self, kind: Output, text: &str) {
        if self
            .send(&FromWorker::Output {
                kind,
                text: text.to_owned(),
            })
            .is_err()
        {
            std::process::exit(3);
        }
    }
}
