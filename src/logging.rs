//! Structured logs to stderr (stdout is kept for what the user asked a command to print).
//!
//! Lines are written by a thread of their own, not by the task that logs them: a write to
//! stderr is a system call (two per notification at least), and a slow reader of stderr
//! (a pipe to `tee`, a container's log driver) must not hold up the async threads that
//! answer providers. A line logged when the thread is idle is written at once; while
//! lines keep coming, the thread writes what has queued up every few milliseconds
//! ([`GATHER`]), in one go.
//! Up to [`QUEUED`] lines wait for a slow reader; past that, logging waits for it, as it
//! did before (no line is dropped). [`init`]'s guard writes out what is queued when
//! `serve` ends.

use std::{
    io::{IsTerminal, Write},
    sync::mpsc::{Receiver, SyncSender, sync_channel},
    time::Duration,
};

use switchboard_openapi::config::{LogConfig, LogFormat};
use tracing_subscriber::{EnvFilter, fmt, fmt::MakeWriter};

/// Lines that may wait for the writer thread.
const QUEUED: usize = 16 * 1024;

/// While lines keep coming, the writer writes them this often.
const GATHER: Duration = Duration::from_millis(5);

/// What the writer thread is asked to do.
enum ToWriter {
    Line(Vec<u8>),
    /// Write out and flush everything before this, then say so.
    Flush(SyncSender<()>),
}

/// The subscriber's writer: each line goes to the writer thread in one message.
#[derive(Clone)]
struct Queue(SyncSender<ToWriter>);

/// One line being formatted; sent when the subscriber is done with it.
struct Line<'a> {
    queue: &'a Queue,
    text: Vec<u8>,
}

impl Write for Line<'_> {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.text.extend_from_slice(buf);
        Ok(buf.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl Drop for Line<'_> {
    fn drop(&mut self) {
        if !self.text.is_empty() {
            // The thread is gone only if stderr's writer panicked: the line is lost, as
            // a line to a closed stderr always was.
            let _ = self
                .queue
                .0
                .send(ToWriter::Line(std::mem::take(&mut self.text)));
        }
    }
}

impl<'a> MakeWriter<'a> for Queue {
    type Writer = Line<'a>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            queue: self,
            text: Vec::new(),
        }
    }
}

/// Writes the queued lines to stderr, as many at once as have queued up.
fn write_lines(lines: Receiver<ToWriter>) {
    // Not locked for good: a panic's message goes to stderr too.
    let mut out = std::io::BufWriter::with_capacity(64 << 10, std::io::stderr());
    let handle = |msg: ToWriter, out: &mut std::io::BufWriter<_>| match msg {
        // A closed stderr loses the lines; the work goes on (see `log_internal_errors`).
        ToWriter::Line(text) => {
            let _ = out.write_all(&text);
        }
        ToWriter::Flush(done) => {
            let _ = out.flush();
            let _ = done.send(());
        }
    };
    while let Ok(msg) = lines.recv() {
        handle(msg, &mut out);
        // Busy: the lines of the next moment are written together, and the tasks that log
        // them find nobody to wake (a wake-up per line cost more than the write it saved).
        loop {
            let mut more = false;
            while let Ok(msg) = lines.try_recv() {
                handle(msg, &mut out);
                more = true;
            }
            let _ = out.flush();
            if !more {
                break;
            }
            std::thread::sleep(GATHER);
        }
    }
}

/// Writes out the queued lines when dropped.
pub struct Guard(Option<Queue>);

impl Drop for Guard {
    fn drop(&mut self) {
        if let Some(q) = self.0.take() {
            let (done, flushed) = sync_channel(1);
            if q.0.send(ToWriter::Flush(done)).is_ok() {
                let _ = flushed.recv_timeout(Duration::from_secs(5));
            }
        }
    }
}

/// Installs the global subscriber. `RUST_LOG` wins over `log.level`. Keep the guard until
/// the end: dropping it writes out what is still queued.
pub fn init(cfg: &LogConfig) -> Guard {
    let filter = EnvFilter::try_from_default_env()
        .or_else(|_| EnvFilter::try_new(&cfg.level))
        .unwrap_or_else(|_| EnvFilter::new("info"));
    let (tx, rx) = sync_channel(QUEUED);
    let queue = Queue(tx);
    let writer = std::thread::Builder::new()
        .name("log-writer".into())
        .spawn(move || write_lines(rx));
    let guard = match writer {
        Ok(_) => Guard(Some(queue.clone())),
        // No thread: lines are written by whoever logs them, as they always could be.
        Err(_) => {
            install(cfg, filter, std::io::stderr);
            return Guard(None);
        }
    };
    install(cfg, filter, queue);
    guard
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
