//! The listener: our own accept loop over hyper, because poem's server sets neither a
//! header-read timeout nor a cap on connections.
//!
//! - At most `max_connections` connections are served at once; past that, accepting
//!   pauses and clients wait in the kernel's backlog.
//! - A client that does not finish its headers within `header_read_timeout` is cut off.
//! - On shutdown: stop accepting, let requests in flight finish (bounded by the grace
//!   period), then return so that the caller can flush the store.

use std::{convert::Infallible, net::SocketAddr, sync::Arc, time::Duration};

use hyper::body::Incoming;
use hyper_util::{
    rt::{TokioExecutor, TokioIo, TokioTimer},
    server::{conn::auto, graceful::GracefulShutdown},
};
use poem::{
    Endpoint, Response,
    endpoint::DynEndpoint,
    http::uri::Scheme,
    web::{LocalAddr, RemoteAddr},
};
use switchboard_core::metrics::Metrics;
use tokio::{net::TcpListener, sync::Semaphore};
use tokio_util::sync::CancellationToken;

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

/// Serves `ep` on `listener` until `shutdown` is cancelled, then drains.
pub async fn serve(
    listener: TcpListener,
    ep: SharedEndpoint,
    opts: ServeOptions,
    metrics: Arc<Metrics>,
    shutdown: CancellationToken,
) {
    let local = listener
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
    let builder = Arc::new(builder);

    loop {
        let permit = tokio::select! {
            p = permits.clone().acquire_owned() => match p {
                Ok(p) => p,
                Err(_) => break,
            },
            () = shutdown.cancelled() => break,
        };
        let (stream, remote) = tokio::select! {
            r = listener.accept() => match r {
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
        let ep = ep.clone();
        let local_addr = LocalAddr(local.into());
        let remote_addr = RemoteAddr(remote.into());
        let service = hyper::service::service_fn(move |req: http_request::Request<Incoming>| {
            let ep = ep.clone();
            let local_addr = local_addr.clone();
            let remote_addr = remote_addr.clone();
            async move {
                let req: poem::Request = (req, local_addr, remote_addr, Scheme::HTTP).into();
                let resp: http_request::Response<_> = ep.get_response(req).await.into();
                Ok::<_, Infallible>(resp)
            }
        });
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        let conn = graceful.watch(conn);
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let _permit = permit;
            metrics.connections.inc();
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, "connection ended with an error");
            }
            metrics.connections.dec();
        });
    }
    drop(listener);
    tracing::info!("no longer accepting connections; finishing requests in flight");
    tokio::select! {
        () = graceful.shutdown() => tracing::info!("all connections closed"),
        () = tokio::time::sleep(opts.shutdown_grace) => {
            tracing::warn!("shutdown grace period over; closing remaining connections");
        }
    }
}

mod http_request {
    pub use poem::http::{Request, Response};
}
