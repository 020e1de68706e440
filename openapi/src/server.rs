//! The listeners: our own accept loop over hyper, because poem's server sets neither a
//! header-read timeout nor a cap on connections, and cannot show a client certificate to
//! a handler.
//!
//! - At most `max_connections` connections are served at once per listener; past that,
//!   accepting pauses and clients wait in the kernel's backlog.
//! - TLS handshakes run in each connection's own task, bounded by the handshake timeout,
//!   so a slow client never holds up accepting. The certificate a mutual-TLS listener
//!   verified is handed to every request of the connection as [`ConnectionInfo`].
//! - A client that does not finish its headers within `header_read_timeout` is cut off,
//!   and so is a new connection (HTTP/1.1 or HTTP/2) that has not started a request by
//!   then; after its first request, a connection that runs no request for `idle_timeout`
//!   is closed ([`idle_watch`]), whatever bytes (HTTP/2 PINGs, say) it sends meanwhile. A
//!   request runs until its answer is written out. hyper has no such limit for HTTP/2, so
//!   idle HTTP/2 connections could otherwise hold every connection slot.
//! - A body the endpoint left unread (a refusal: too large, unauthenticated, unknown
//!   path) is read to its end and discarded before an HTTP/1.1 answer goes out, up to
//!   `drain_limit` bytes and `drain_timeout` ([`Unread`]). A client that writes its whole
//!   body before it reads sees the answer instead of a reset, and the connection stays
//!   usable. Past either bound, after a `408` (the client was too slow already), or when
//!   the client waits for `100 Continue`, the answer says `Connection: close` and the
//!   rest is never read.
//! - On shutdown: stop accepting, let requests in flight finish (bounded by the grace
//!   period), then return so that the caller can flush the store.

use std::{
    convert::Infallible,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc, Mutex, PoisonError,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use bytes::Bytes;
use http_body_util::{BodyExt, combinators::BoxBody};
use hyper::body::{Body as _, Frame, Incoming, SizeHint};
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{
        conn::auto,
        graceful::{GracefulShutdown, Watcher},
    },
};
use poem::{
    Endpoint, Response,
    endpoint::DynEndpoint,
    http::{HeaderValue, StatusCode, Version, header, uri::Scheme},
    web::{LocalAddr, RemoteAddr},
};
use switchboard_core::{metrics::Metrics, peer::ConnectionInfo};
use tokio::{
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::Instant,
};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;

use crate::tls::{TlsSource, identity};

/// The whole service, shareable between connections.
pub type SharedEndpoint = Arc<dyn DynEndpoint<Output = Response>>;

/// Listener settings.
#[derive(Clone, Copy, Debug)]
pub struct ServeOptions {
    /// Most connections served at once.
    pub max_connections: usize,
    /// Time a client has to send its request headers (and a new connection to start its
    /// first request).
    pub header_read_timeout: Duration,
    /// Time a connection may sit with no request running and nothing received.
    pub idle_timeout: Duration,
    /// Time given to requests in flight at shutdown.
    pub shutdown_grace: Duration,
    /// Most bytes of a body the endpoint left unread that are read and discarded so
    /// that an HTTP/1.1 client sees the answer (a few times the body limit).
    pub drain_limit: u64,
    /// Longest reading them may take (switchboard gives `header_read_timeout`).
    pub drain_timeout: Duration,
}

/// One listener: its socket, its name, and its TLS settings if it is not plain HTTP.
pub struct Listener {
    /// The bound socket.
    pub socket: TcpListener,
    /// `main` or the `[listeners.<name>]` name.
    pub name: Arc<str>,
    /// TLS (and client-certificate verification), if any.
    pub tls: Option<Arc<TlsSource>>,
}

/// What every connection of a listener shares.
struct Shared {
    ep: SharedEndpoint,
    first_request: Duration,
    idle: Duration,
    drain_limit: u64,
    drain_timeout: Duration,
    builder: auto::Builder<TokioExecutor>,
    metrics: Arc<Metrics>,
    local: SocketAddr,
    name: Arc<str>,
    tls: Option<Arc<TlsSource>>,
}

/// Serves `ep` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: Listener,
    ep: SharedEndpoint,
    opts: ServeOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let Listener { socket, name, tls } = listener;
    let local = socket
        .local_addr()
        .unwrap_or_else(|_| SocketAddr::from(([0, 0, 0, 0], 0)));
    let permits = Arc::new(Semaphore::new(opts.max_connections));
    let graceful = GracefulShutdown::new();
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(opts.header_read_timeout);
    builder
        .http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(64);
    let shared = Arc::new(Shared {
        ep,
        first_request: opts.header_read_timeout,
        idle: opts.idle_timeout,
        drain_limit: opts.drain_limit,
        drain_timeout: opts.drain_timeout,
        builder,
        metrics,
        local,
        name,
        tls,
    });

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            r = socket.accept() => match r {
                Ok(pair) => pair,
                Err(e) => {
                    // Out of file descriptors and the like: back off, keep serving.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let _ = stream.set_nodelay(true);
        let shared = shared.clone();
        let watcher = graceful.watcher();
        tokio::spawn(async move {
            let _permit = permit;
            shared.metrics.connections.inc();
            connection(&shared, stream, remote, watcher).await;
            shared.metrics.connections.dec();
        });
    }
    drop(socket);
    tracing::info!(listener = %shared.name, "no longer accepting connections; finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!(listener = %shared.name, "all connections closed"),
        () = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!(listener = %shared.name, "shutdown grace period over; closing remaining connections");
        }
    }
}

async fn connection(shared: &Arc<Shared>, stream: TcpStream, remote: SocketAddr, watcher: Watcher) {
    let Some(tls) = &shared.tls else {
        let info = ConnectionInfo {
            listener: shared.name.clone(),
            tls: false,
            peer: None,
        };
        return http(shared, stream, remote, info, Scheme::HTTP, watcher).await;
    };
    let acceptor = TlsAcceptor::from(tls.current());
    match tokio::time::timeout(tls.handshake_timeout(), acceptor.accept(stream)).await {
        Ok(Ok(stream)) => {
            let peer = stream
                .get_ref()
                .1
                .peer_certificates()
                .and_then(|chain| chain.first())
                .map(|leaf| Arc::new(identity(leaf)));
            let info = ConnectionInfo {
                listener: shared.name.clone(),
                tls: true,
                peer,
            };
            http(shared, stream, remote, info, Scheme::HTTPS, watcher).await;
        }
        Ok(Err(e)) => {
            shared.metrics.tls_failures.inc();
            tracing::info!(listener = %shared.name, %remote, error = %e, "TLS handshake failed");
        }
        Err(_) => {
            shared.metrics.tls_failures.inc();
            tracing::info!(listener = %shared.name, %remote, "TLS handshake timed out");
        }
    }
}

async fn http<I>(
    shared: &Arc<Shared>,
    io: I,
    remote: SocketAddr,
    info: ConnectionInfo,
    scheme: Scheme,
    watcher: Watcher,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let activity = Arc::new(Activity::new());
    let idle = idle_watch(activity.clone(), shared.first_request, shared.idle);
    let ep = shared.ep.clone();
    let drain = (shared.drain_limit, shared.drain_timeout);
    let local_addr = LocalAddr(shared.local.into());
    let remote_addr = RemoteAddr(remote.into());
    let service = hyper::service::service_fn(move |req: http_types::Request<Incoming>| {
        let ep = ep.clone();
        let local_addr = local_addr.clone();
        let remote_addr = remote_addr.clone();
        let scheme = scheme.clone();
        let info = info.clone();
        let running = Running::start(activity.clone());
        async move {
            let mut req: poem::Request = (req, local_addr, remote_addr, scheme).into();
            req.extensions_mut().insert(info);
            let unread = Unread::wrap(&mut req);
            let mut resp = ep.get_response(req).await;
            if let Some(unread) = unread {
                // A client too slow to send its body in time is not waited for again.
                let timed_out = resp.status() == StatusCode::REQUEST_TIMEOUT;
                if timed_out || !unread.drain(drain.0, drain.1).await {
                    resp.headers_mut()
                        .insert(header::CONNECTION, HeaderValue::from_static("close"));
                }
            }
            let resp: http_types::Response<_> = resp.into();
            // The request runs until its answer has been written out (or dropped): a
            // long answer to a slow reader is not idleness.
            Ok::<_, Infallible>(resp.map(move |body| {
                body.map_frame(move |frame| {
                    let _running = &running;
                    frame
                })
            }))
        }
    });
    let conn = shared
        .builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    tokio::select! {
        r = watcher.watch(conn) => {
            if let Err(e) = r {
                tracing::debug!(error = %e, "connection ended with an error");
            }
        }
        () = idle => tracing::debug!(%remote, "idle connection closed"),
    }
}

/// An HTTP/1.1 request body, read by the endpoint through this handle, so that the
/// server can finish reading what the endpoint left. hyper closes a connection whose
/// request body was not read; the client's unsent bytes then meet a closed socket, the
/// kernel answers them with a reset, and a client that reads only after writing its whole
/// request (many do) gets the reset, or a TLS EOF, instead of the answer.
#[derive(Clone)]
struct Unread(Arc<Mutex<UnreadState>>);

struct UnreadState {
    body: Option<BoxBody<Bytes, std::io::Error>>,
    /// Whether anyone asked for the body: hyper sends `100 Continue` only then.
    polled: bool,
    /// The client sent `Expect: 100-continue`.
    expects_continue: bool,
}

impl Unread {
    /// Routes `req`'s body through a handle, when it is an HTTP/1 body with bytes to come.
    /// HTTP/2 needs none: an unread stream is reset on its own, the connection lives on.
    fn wrap(req: &mut poem::Request) -> Option<Unread> {
        if req.version() == Version::HTTP_2 {
            return None;
        }
        let body = BoxBody::from(req.take_body());
        if body.is_end_stream() {
            req.set_body(poem::Body::from(body));
            return None;
        }
        let expects_continue = req
            .header(header::EXPECT)
            .is_some_and(|v| v.eq_ignore_ascii_case("100-continue"));
        let unread = Unread(Arc::new(Mutex::new(UnreadState {
            body: Some(body),
            polled: false,
            expects_continue,
        })));
        req.set_body(poem::Body::from(BoxBody::new(unread.clone())));
        Some(unread)
    }

    /// Reads what the endpoint left of the body and discards it, up to `limit` bytes and
    /// `timeout`. True when the body was read to its end (the connection can serve the
    /// next request); false when the rest was left unread and the connection must close.
    async fn drain(self, limit: u64, timeout: Duration) -> bool {
        let (body, polled, expects_continue) = {
            let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
            (s.body.take(), s.polled, s.expects_continue)
        };
        let Some(mut body) = body else { return true };
        if body.is_end_stream() {
            return true;
        }
        // A client waiting for `100 Continue` has not sent its body: never invite it.
        if (expects_continue && !polled) || body.size_hint().lower() > limit {
            return false;
        }
        let deadline = Instant::now() + timeout;
        let mut read = 0u64;
        loop {
            match tokio::time::timeout_at(deadline, body.frame()).await {
                Ok(Some(Ok(frame))) => {
                    read += frame.data_ref().map_or(0, |d| d.len() as u64);
                    if read > limit {
                        return false;
                    }
                }
                Ok(None) => return true,
                Ok(Some(Err(_))) | Err(_) => return false,
            }
        }
    }
}

impl hyper::body::Body for Unread {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let mut s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.polled = true;
        match s.body.as_mut() {
            Some(body) => Pin::new(body).poll_frame(cx),
            None => Poll::Ready(None),
        }
    }

    fn is_end_stream(&self) -> bool {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.body.as_ref().is_none_or(|b| b.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        let s = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        s.body
            .as_ref()
            .map_or_else(|| SizeHint::with_exact(0), |b| b.size_hint())
    }
}

/// What a connection is doing: requests running, whether it has had one, and when one
/// last began or ended (milliseconds since the connection opened). Atomics only: it is
/// touched twice per request.
struct Activity {
    opened: Instant,
    running: AtomicUsize,
    seen: AtomicBool,
    last_ms: AtomicU64,
}

impl Activity {
    fn new() -> Self {
        Activity {
            opened: Instant::now(),
            running: AtomicUsize::new(0),
            seen: AtomicBool::new(false),
            last_ms: AtomicU64::new(0),
        }
    }

    fn touch(&self) {
        let ms = u64::try_from(self.opened.elapsed().as_millis()).unwrap_or(u64::MAX);
        self.last_ms.store(ms, Ordering::Relaxed);
    }

    /// When the connection stops being worth keeping, if no request begins meanwhile.
    fn deadline(&self, first: Duration, idle: Duration) -> Instant {
        let limit = if self.seen.load(Ordering::Relaxed) {
            idle
        } else {
            first
        };
        self.opened + Duration::from_millis(self.last_ms.load(Ordering::Relaxed)) + limit
    }
}

/// A request running on a connection, from its headers to its answer.
struct Running(Arc<Activity>);

impl Running {
    fn start(a: Arc<Activity>) -> Self {
        a.running.fetch_add(1, Ordering::AcqRel);
        a.seen.store(true, Ordering::Relaxed);
        a.touch();
        Running(a)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.touch();
        // Release: whoever sees the count drop also sees the time just written.
        self.0.running.fetch_sub(1, Ordering::Release);
    }
}

/// Ends when the connection has been idle too long: no request running for `first`
/// since it opened (before its first request), or for `idle` since its last request
/// began or its answer was written out. It watches beside the connection, not inside its
/// reads and writes: an HTTP/2 client that floods PINGs, or stops reading so that the
/// server stops reading too, is cut all the same. Its timer moves only when it fires
/// (at least every `min(first, idle)`), so a busy connection costs two atomic updates
/// per request and no timer work.
async fn idle_watch(activity: Arc<Activity>, first: Duration, idle: Duration) {
    // It looks at least this often, so that a limit that became shorter meanwhile (`idle`
    // after a first request, when it is shorter than `first`) is kept within one step.
    let step = first.min(idle);
    let mut next = Instant::now() + step;
    loop {
        tokio::time::sleep_until(next).await;
        let now = Instant::now();
        next = if activity.running.load(Ordering::Acquire) > 0 {
            // A request is running (a slow body, a long answer): look again later.
            now + step
        } else {
            let deadline = activity.deadline(first, idle);
            if deadline <= now {
                return;
            }
            deadline.min(now + step)
        };
    }
}

mod http_types {
    pub use poem::http::{Request, Response};
}
