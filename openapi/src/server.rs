//! The listeners: our own accept loop over hyper, because poem's server sets neither a
//! header-read timeout nor a cap on connections, and cannot show a client certificate to
//! a handler.
//!
//! - At most `max_connections` connections are served at once per listener; past that,
//!   accepting pauses and clients wait in the kernel's backlog.
//! - TLS handshakes run in each connection's own task, bounded by the handshake timeout,
//!   so a slow client never holds up accepting. The certificate a mutual-TLS listener
//!   verified is handed to every request of the connection as [`ConnectionInfo`].
//! - A client that does not finish its headers within `header_read_timeout` is cut off.
//! - On shutdown: stop accepting, let requests in flight finish (bounded by the grace
//!   period), then return so that the caller can flush the store.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

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
    io::{AsyncRead, AsyncWrite},
    net::{TcpListener, TcpStream},
    sync::Semaphore,
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
    /// Time a client has to send its request headers.
    pub header_read_timeout: Duration,
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
    let ep = shared.ep.clone();
    let local_addr = LocalAddr(shared.local.into());
    let remote_addr = RemoteAddr(remote.into());
    let service = hyper::service::service_fn(move |req: http_types::Request<Incoming>| {
        let ep = ep.clone();
        let local_addr = local_addr.clone();
        let remote_addr = remote_addr.clone();
        let scheme = scheme.clone();
        let info = info.clone();
        async move {
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

mod http_types {
    pub use poem::http::{Request, Response};
}
