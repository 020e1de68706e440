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
//!   is closed ([`IdleIo`]), whatever bytes (HTTP/2 PINGs, say) it sends meanwhile. hyper has no such limit for
//!   HTTP/2, so idle HTTP/2 connections could otherwise hold every connection slot.
//! - On shutdown: stop accepting, let requests in flight finish (bounded by the grace
//!   period), then return so that the caller can flush the store.

use std::{
    convert::Infallible,
    future::Future,
    io,
    net::SocketAddr,
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    task::{Context, Poll},
    time::Duration,
};

use hyper::body::Incoming;
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
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use switchboard_core::{metrics::Metrics, peer::ConnectionInfo};
use tokio::{
    io::{AsyncRead, AsyncWrite, ReadBuf},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
    time::{Instant, Sleep},
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
    let io = IdleIo {
        inner: io,
        activity: activity.clone(),
        first: shared.first_request,
        idle: shared.idle,
        sleep: Box::pin(tokio::time::sleep(shared.first_request)),
    };
    let ep = shared.ep.clone();
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
            let _running = running;
            let mut req: poem::Request = (req, local_addr, remote_addr, scheme).into();
            req.extensions_mut().insert(info);
            let resp: http_types::Response<_> = ep.get_response(req).await.into();
            Ok::<_, Infallible>(resp)
        }
    });
    let conn = shared
        .builder
        .serve_connection(TokioIo::new(io), service)
        .into_owned();
    if let Err(e) = watcher.watch(conn).await {
        tracing::debug!(error = %e, "connection ended with an error");
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
        a.running.fetch_add(1, Ordering::Relaxed);
        a.seen.store(true, Ordering::Relaxed);
        a.touch();
        Running(a)
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        self.0.touch();
        self.0.running.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The connection's stream, ending it (as if the client had closed it) once it has been
/// idle too long: no request running for `first` since it opened (before its first
/// request) or for `idle` since its last request began or ended. Bytes that start no
/// request do not count.
///
/// The timer is moved later only when it fires (then it looks at what happened
/// meanwhile), and earlier only when a shorter limit applies, so a busy connection costs
/// two atomic updates per request and no timer work.
struct IdleIo<I> {
    inner: I,
    activity: Arc<Activity>,
    first: Duration,
    idle: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl<I: AsyncRead + Unpin> AsyncRead for IdleIo<I> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = &mut *self;
        // Bytes alone do not count as activity: an HTTP/2 client sending PINGs, or a
        // trickle of bytes, and never a request, would otherwise hold its slot.
        if let Poll::Ready(r) = Pin::new(&mut this.inner).poll_read(cx, buf) {
            return Poll::Ready(r);
        }
        if this.activity.running.load(Ordering::Relaxed) == 0 {
            // A limit shorter than the one armed (idle after a request, when `idle` is
            // shorter than `first`) takes effect at once; a later one waits for the timer.
            let deadline = this.activity.deadline(this.first, this.idle);
            if deadline < this.sleep.deadline() {
                this.sleep.as_mut().reset(deadline);
            }
        }
        while this.sleep.as_mut().poll(cx).is_ready() {
            let now = Instant::now();
            let deadline = if this.activity.running.load(Ordering::Relaxed) > 0 {
                // A request is running (a slow body, a long answer): look again later.
                now + this.idle
            } else {
                this.activity.deadline(this.first, this.idle)
            };
            if deadline <= now {
                // Idle too long: the end of the stream, as if the client had left.
                return Poll::Ready(Ok(()));
            }
            this.sleep.as_mut().reset(deadline);
        }
        Poll::Pending
    }
}

impl<I: AsyncWrite + Unpin> AsyncWrite for IdleIo<I> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

mod http_types {
    pub use poem::http::{Request, Response};
}
