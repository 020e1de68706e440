//! The frames the server and a route worker exchange over the worker's stdin and stdout:
//! a 4-byte big-endian length, then that many bytes of JSON.
//!
//! ```text
//! server                                   worker
//!   Setup(routes config, service names) ──▶
//!                                     ◀── Ready
//!   Runs(scripts, [event, limits], ...) ──▶
//!                                           for each run, in order:
//!                                     ◀── Lookup(service, method, path, body, timeout)
//!   Answer(JSON | error)                ──▶      (as many as the script makes)
//!                                     ◀── Output(print | debug | internal, text)
//!                                     ◀── Done(actions | failure)
//! ```
//!
//! Several runs go in one frame when the router has several events waiting: one write
//! and one wake-up of the worker for all of them, instead of one each. The worker answers
//! each run before it starts the next, so when it dies, the runs before have their
//! answers in the pipe, the run it died in is the one without, and the runs after never
//! started.
//!
//! The worker gets no secret and no URL: only the names of the services, and the answers
//! the server fetched for it. Frames from a worker are untrusted: their size is capped and
//! their JSON is read with serde_json's nesting limit.

use std::{
    io::{self, Read, Write},
    time::Duration,
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};
use serde_json::Value;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::{LookupError, Method, RunFailure, RunLimits, api::Output};
use crate::{config::RoutesConfig, outbox::ActionSpec};

/// Largest frame either side accepts (a run's event and script one way, its actions the
/// other).
pub const MAX_FRAME: usize = 64 << 20;

/// What a worker needs to build its engine.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Setup {
    /// The sandbox's limits and the memory cap.
    pub routes: RoutesConfig,
    /// The names of the configured services (never their URLs or credentials).
    pub services: Vec<String>,
}

/// From the server to a worker.
#[derive(Debug, Serialize, Deserialize)]
pub enum ToWorker {
    /// The first frame.
    Setup(Setup),
    /// Run these, one after the other, in order: a [`FromWorker::Done`] for each, written
    /// before the next starts (so a crash is told apart: every run before it has its
    /// answer in the pipe).
    Runs {
        /// The scripts of the runs, each once.
        scripts: Vec<ScriptText>,
        /// The runs.
        runs: Vec<RunSpec>,
    },
    /// The answer to the run's last lookup.
    Answer(Result<Value, LookupError>),
}

/// A script of a [`ToWorker::Runs`] frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct ScriptText {
    /// Its path, for messages (`pomelo/tokenization_otp.rhai`).
    pub name: String,
    /// Its text (the worker keeps compiled scripts by the text's hash).
    pub source: String,
}

/// One run of a [`ToWorker::Runs`] frame.
#[derive(Debug, Serialize, Deserialize)]
pub struct RunSpec {
    /// Its script: an index into the frame's `scripts`.
    pub script: usize,
    /// The event as scripts see it ([`super::ScriptEvent`]), as JSON text: the worker
    /// reads it straight into the script's value.
    pub event: Box<serde_json::value::RawValue>,
    /// Values to mask in output and failures.
    pub secrets: Vec<String>,
    /// The run's limits.
    pub limits: RunLimits,
    /// Services this run may call beyond the configured ones (a try's typed-in answers).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub services: Vec<String>,
}

/// From a worker to the server.
#[derive(Debug, Serialize, Deserialize)]
pub enum FromWorker {
    /// The engine is built; runs may come.
    Ready,
    /// A lookup for the run; the worker waits for its [`ToWorker::Answer`].
    Lookup {
        /// Service name.
        service: String,
        /// GET or POST.
        method: Method,
        /// Path under the service.
        path: String,
        /// JSON body of a POST.
        body: Option<Value>,
        /// What is left of the run's lookup budget, at most one lookup's timeout.
        timeout: Duration,
    },
    /// A line of output (masked).
    Output {
        /// print, debug or an internal error.
        kind: Output,
        /// The text.
        text: String,
    },
    /// The run ended.
    Done(Result<Vec<ActionSpec>, RunFailure>),
}

/// A frame's bytes: its length, then its JSON. `InvalidData` when it is over the limit.
pub fn encode(msg: &impl Serialize) -> io::Result<Vec<u8>> {
    let mut buf = vec![0u8; 4];
    serde_json::to_writer(&mut buf, msg).map_err(io::Error::other)?;
    let len = buf.len() - 4;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    buf[..4].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_be_bytes());
    Ok(buf)
}

fn length(header: [u8; 4]) -> io::Result<usize> {
    let len = u32::from_be_bytes(header) as usize;
    if len > MAX_FRAME {
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("a frame of {len} bytes is over the limit of {MAX_FRAME}"),
        ));
    }
    Ok(len)
}

fn decode<T: DeserializeOwned>(body: &[u8]) -> io::Result<T> {
    serde_json::from_slice(body).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
}

/// Writes one frame and flushes.
pub fn write_frame(w: &mut impl Write, msg: &impl Serialize) -> io::Result<()> {
    w.write_all(&encode(msg)?)?;
    w.flush()
}

/// Reads one frame; `None` at a clean end of the stream (before a frame starts).
pub fn read_frame<T: DeserializeOwned>(r: &mut impl Read) -> io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header) {
        Ok(()) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let mut body = vec![0u8; length(header)?];
    r.read_exact(&mut body)?;
    decode(&body).map(Some)
}

/// Writes one frame and flushes (the server's side).
pub async fn write_frame_async(
    w: &mut (impl AsyncWrite + Unpin),
    msg: &impl Serialize,
) -> io::Result<()> {
    write_encoded_async(w, &encode(msg)?).await
}

/// Writes one frame made by [`encode`] and flushes (the server's side).
pub async fn write_encoded_async(
    w: &mut (impl AsyncWrite + Unpin),
    frame: &[u8],
) -> io::Result<()> {
    w.write_all(frame).await?;
    w.flush().await
}

/// Reads one frame (the server's side); `None` at a clean end of the stream.
pub async fn read_frame_async<T: DeserializeOwned>(
    r: &mut (impl AsyncRead + Unpin),
) -> io::Result<Option<T>> {
    let mut header = [0u8; 4];
    match r.read_exact(&mut header).await {
        Ok(_) => {}
        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(None),
        Err(e) => return Err(e),
    }
    let len = length(header)?;
    let mut body = Vec::new();
    // Grown as bytes arrive, not allocated up front from what the worker claims.
    r.take(len as u64).read_to_end(&mut body).await?;
    if body.len() < len {
        return Err(io::ErrorKind::UnexpectedEof.into());
    }
    decode(&body).map(Some)
}

/// How deeply `v` nests (a scalar is 0).
pub fn json_depth(v: &Value) -> usize {
    match v {
        Value::Array(a) => 1 + a.iter().map(json_depth).max().unwrap_or(0),
        Value::Object(m) => 1 + m.values().map(json_depth).max().unwrap_or(0),
        _ => 0,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_and_oversized_ones_are_refused() {
        let mut buf = Vec::new();
        write_frame(&mut buf, &FromWorker::Ready).unwrap();
        write_frame(
            &mut buf,
            &FromWorker::Output {
                kind: Output::Print,
                text: "hi\n".into(),
            },
        )
        .unwrap();
        let mut r = &buf[..];
        assert!(matches!(
            read_frame::<FromWorker>(&mut r).unwrap(),
            Some(FromWorker::Ready)
        ));
        assert!(matches!(
            read_frame::<FromWorker>(&mut r).unwrap(),
            Some(FromWorker::Output { text, .. }) if text == "hi\n"
        ));
        assert!(read_frame::<FromWorker>(&mut r).unwrap().is_none());

        let huge = (MAX_FRAME as u32 + 1).to_be_bytes();
        assert!(read_frame::<FromWorker>(&mut &huge[..]).is_err());
        let cut = [0, 0, 0, 10, b'{'];
        assert!(read_frame::<FromWorker>(&mut &cut[..]).is_err());
    }

    #[test]
    fn depth_counts_levels() {
        assert_eq!(json_depth(&serde_json::json!(1)), 0);
        assert_eq!(json_depth(&serde_json::json!([[1], {"a": [2]}])), 3);
    }
}
