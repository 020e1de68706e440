//! Structured logs to stderr (stdout is kept for what the user asked a command to print).
//!
//! Lines are written by a thread of their own, not by the task that logs them: a write to
//! stderr is a system call (two per notification at least), and a slow reader of stderr
//! (a pipe to `tee`, a container's log driver) must not hold up the async threads that
//! answer providers. A task appends its line to a shared buffer; the thread writes the
//! buffer out: at once when it was idle, and while lines keep coming every few
//! milliseconds ([`GATHER`]), all of them in one write, with nobody to wake. Up to
//! [`PENDING`] bytes wait for a slow reader; past that, logging waits for it, as it did
//! before (no line is dropped). [`init`]'s guard writes out what is pending when `serve`
//! ends, and a panic writes it out before its message. What is pending when the process
//! is killed (`kill -9`, an abort) is lost: at most the last [`GATHER`] of lines.

use std::{
    io::{IsTerminal, Write},
    sync::{Arc, Condvar, Mutex, MutexGuard},
    time::Duration,
};

use switchboard_openapi::config::{LogConfig, LogFormat};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter};

/// Bytes of lines that may wait for the writer thread.
const PENDING: usize = 1 << 20;

/// While lines keep coming, the writer writes them this often.
const GATHER: Duration = Duration::from_millis(5);

/// The lines waiting for the writer thread.
#[derive(Default)]
struct Pending {
    text: Vec<u8>,
    /// The writer waits for lines (and is to be woken for the next one).
    idle: bool,
    /// Writes handed over so far, and written out so far (for [`Guard`]).
    taken: u64,
    written: u64,
}

#[derive(Default)]
struct Shared {
    pending: Mutex<Pending>,
    /// Lines came (for an idle writer), or a write ended (for those waiting on it).
    changed: Condvar,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Pending> {
        self.pending.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The subscriber's writer.
#[derive(Clone, Default)]
struct Queue(Arc<Shared>);

impl Write for &Queue {
    /// One whole line: the subscriber formats a line, then writes it in one call.
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        let shared = &self.0;
        let mut p = shared.lock();
        while p.text.len() >= PENDING {
            p = shared.changed.wait(p).unwrap_or_else(|e| e.into_inner());
        }
        p.text.extend_from_slice(buf);
        if p.idle {
            p.idle = false;
            shared.changed.notify_all();
        }
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = &'a Queue;

    fn make_writer(&'a self) -> Self::Writer {
        self
    }
}

/// Writes the pending lines to stderr until the process ends.
fn write_lines(shared: Arc<Shared>) {
    let mut out = std::io::stderr();
    let mut batch = Vec::new();
    loop {
        let upto = {
            let mut p = shared.lock();
            while p.text.is_empty() {
                p.idle = true;
                p = shared.changed.wait(p).unwrap_or_else(|e| e.into_inner());
            }
            std::mem::swap(&mut p.text, &mut batch);
            p.taken += 1;
            p.taken
        };
        write_out(&mut out, &batch);
        batch.clear();
        shared.lock().written = upto;
        shared.changed.notify_all();
        // Busy: the lines of the next moment are written together.
        std::thread::sleep(GATHER);
    }
}

/// Writes `bytes` to stderr. A closed stderr loses them; the work goes on (see
/// `log_internal_errors`). A non-blocking one that is full is waited for.
fn write_out(out: &mut impl Write, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        match out.write(bytes) {
            Ok(0) => return,
            Ok(n) => bytes = &bytes[n..],
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
            Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(_) => return,
        }
    }
}

/// Before a panic's message: the lines logged before it, so that they come first. (Only
/// if no one holds the buffer: the panic may have come from inside it.)
fn flush_before_panics(shared: Arc<Shared>) {
    let message = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        if let Ok(mut p) = shared.pending.try_lock() {
            let text = std::mem::take(&mut p.text);
            write_out(&mut std::io::stderr(), &text);
        }
        message(info);
    }));
}

/// Writes out the pending lines when dropped.
pub struct Guard(Option<Queue>);

impl Drop for Guard {
    fn drop(&mut self) {
        let Some(q) = self.0.take() else { return };
        let shared = &q.0;
        let p = shared.lock();
        // Everything pending now is in the next write the thread takes.
        let target = if p.text.is_empty() {
            p.taken
        } else {
            p.taken + 1
        };
        let _ = shared
            .changed
            .wait_timeout_while(p, Duration::from_secs(5), |p| p.written < target);
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`. Keep the guard until
/// the end: dropping it writes out what is still pending.
pub fn init(cfg: &LogConfig) -> Guard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let queue = Queue::default();
    let shared = queue.0.clone();
    let writer = std::thread::Builder::new()
        .name("log-writer".into())
        // It only copies bytes: a small stack, so that it costs an idle server little.
        .stack_size(64 << 10)
        .spawn(move || write_lines(shared));
    if writer.is_err() {
        // No thread: lines are written by whoever logs them, as they always could be.
        install(cfg, filter, std::io::stderr);
        return Guard(None);
    }
    flush_before_panics(queue.0.clone());
    install(cfg, filter, queue.clone());
    Guard(Some(queue))
}

fn install<W>(cfg: &LogConfig, filter: EnvFilter, writer: W)
where
    W: for<'a> MakeWriter<'a> + Send + Sync + 'static,
{
    let builder = fmt()
        .with_env_filter(filter)
        .with_writer(writer)
        .with_ansi(std::io::stderr().is_terminal())
        // A closed stderr (`serve 2>&1 | tee log` whose reader died) must not turn every
        // log line into a panic in the task that logs it (the router, the deliverer):
        // the lines are lost, the work goes on.
        .log_internal_errors(false);
    match cfg.format {
        LogFormat::Text => builder.init(),
        LogFormat::Json => builder.json().flatten_event(true).init(),
    }
}
