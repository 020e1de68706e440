//! Assembly: configuration in, a running service out.

use std::sync::{Arc, OnceLock};

use bytes::Bytes;
use poem::{EndpointExt, Route, endpoint::make_sync, middleware::CatchPanic};
use poem_openapi::OpenApiService;
use serde_json::Value;
use switchboard_core::{
    delivery::Deliverer,
    ingest::{Ingestor, run_sweeper},
    metrics::Metrics,
    route::{
        Lookup, engine,
        router::Router,
        scripts::{Scripts, Source},
    },
    store::Store,
};
use switchboard_plugins::{
    channels,
    http::{Ctx, Limits},
    providers::{ProviderInfo, Reparsers},
    services::Services,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    admin::{AdminApi, AdminBodyLimit},
    auth::AdminAuth,
    config::{Config, MAIN_LISTENER, TlsConfig},
    console::Console,
    ctx::AdminCtx,
    devsecrets,
    front::{Front, RouteTable},
    server::{Listener, ServeOptions, SharedEndpoint, serve},
    system::SystemApi,
    tls::TlsSource,
};

/// switchboard's own APIs. The providers' operations are merged into their spec (each
/// provider documents its own, [`switchboard_plugins::providers::Provider::spec`]), after
/// them, in the registry's order.
pub type Apis = (AdminApi, SystemApi);

const DESCRIPTION: &str = "switchboard receives notifications from card-issuing, tokenization and \
compliance providers, proves each one genuine, records it exactly once and hands it to a route \
script.\n\nEvery provider endpoint answers a repeat of a notification exactly like the first \
and stores it once. An answer in the 2xx range is only given once the notification is on disk. \
Verestro's endpoints are served on a mutual-TLS listener: its client certificate must chain to \
the listener's CA (OpenAPI 3.0 has no security scheme for this). \
The spec is also served at `/openapi.json` and `/openapi.yaml`, and browsable at `/docs`.";

/// switchboard's own API; the admin API shows secret values unmasked when
/// `reveal_secrets`.
fn service(reveal_secrets: bool) -> OpenApiService<Apis, ()> {
    let apis = (AdminApi::new(reveal_secrets), SystemApi);
    OpenApiService::new(apis, "switchboard", env!("CARGO_PKG_VERSION")).description(DESCRIPTION)
}

fn route_table(cfg: &Config, infos: &[ProviderInfo]) -> RouteTable {
    RouteTable::new(infos, |p| cfg.listener_of(p).to_owned())
}

/// The spec as served for `cfg`: every provider's operations, at their paths as
/// configured, then switchboard's own.
pub fn spec(cfg: &Config) -> Value {
    let providers: Vec<Value> = cfg.providers.iter().map(|p| p.spec()).collect();
    served_spec(
        &service(false),
        &providers,
        &route_table(cfg, &cfg.provider_infos()),
    )
}

/// The service's spec with the providers' operations merged in (paths first, in order;
/// tags, schemas and security schemes by name) and declared paths renamed to configured
/// ones.
pub fn served_spec<T: poem_openapi::OpenApi>(
    svc: &OpenApiService<T, ()>,
    providers: &[Value],
    table: &RouteTable,
) -> Value {
    let mut spec: Value = serde_json::from_str(&svc.spec()).unwrap_or(Value::Null);
    let renames = table.renames();
    let own = spec
        .get_mut("paths")
        .and_then(Value::as_object_mut)
        .map(std::mem::take)
        .unwrap_or_default();
    let mut paths = serde_json::Map::new();
    for (k, v) in providers
        .iter()
        .filter_map(|p| p.get("paths").and_then(Value::as_object))
        .flat_map(|m| m.clone())
        .chain(own)
    {
        let key = renames.get(k.as_str()).cloned().unwrap_or(k);
        paths.insert(key, v);
    }
    spec["paths"] = Value::Object(paths);
    let mut tags: Vec<Value> = spec["tags"].as_array().cloned().unwrap_or_default();
    for p in providers {
        for t in p["tags"].as_array().into_iter().flatten() {
            if !tags.iter().any(|o| o["name"] == t["name"]) {
                tags.push(t.clone());
            }
        }
    }
    tags.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    spec["tags"] = Value::Array(tags);
    for section in ["schemas", "securitySchemes"] {
        let mut merged: std::collections::BTreeMap<String, Value> = spec["components"][section]
            .as_object()
            .map(|m| m.clone().into_iter().collect())
            .unwrap_or_default();
        for p in providers {
            if let Some(m) = p["components"][section].as_object() {
                merged.extend(m.clone());
            }
        }
        if !merged.is_empty() {
            spec["components"][section] = Value::Object(merged.into_iter().collect());
        }
    }
    spec
}

/// The spec as pretty JSON, exactly as `/openapi.json` serves it and `openapi/openapi.json`
/// holds it.
pub fn spec_json(spec: &Value) -> String {
    let mut s = serde_json::to_string_pretty(spec).unwrap_or_default();
    s.push('\n');
    s
}

/// The spec as YAML.
pub fn spec_yaml(spec: &Value) -> String {
    serde_yaml::to_string(spec).unwrap_or_default()
}

/// The served spec and the documents made from it: `/openapi.json`, `/openapi.yaml` and
/// the docs page (Swagger UI with its assets embedded in the binary, nothing loaded from a
/// CDN, showing the served spec, with the online validator badge turned off).
///
/// Each is made on its first request and shared by every later one, not made at start-up:
/// the docs page carries Swagger UI's 1.6 MB of script and style, and an idle server that
/// nobody browses should hold neither it (3.4 MB of heap when it was built eagerly) nor
/// the binary's pages it is copied from. Until then only the compact spec is kept.
struct SpecPages {
    reveal_secrets: bool,
    /// The served spec, as compact JSON.
    compact: String,
    json: OnceLock<Bytes>,
    yaml: OnceLock<Bytes>,
    docs: OnceLock<Bytes>,
}

impl SpecPages {
    fn new(reveal_secrets: bool, served: &Value) -> Self {
        SpecPages {
            reveal_secrets,
            compact: serde_json::to_string(served).unwrap_or_default(),
            json: OnceLock::new(),
            yaml: OnceLock::new(),
            docs: OnceLock::new(),
        }
    }

    fn spec(&self) -> Value {
        serde_json::from_str(&self.compact).unwrap_or(Value::Null)
    }

    fn json(&self) -> Bytes {
        let page = || Bytes::from(spec_json(&self.spec()));
        self.json.get_or_init(page).clone()
    }

    fn yaml(&self) -> Bytes {
        let page = || Bytes::from(spec_yaml(&self.spec()));
        self.yaml.get_or_init(page).clone()
    }

    fn docs(&self) -> Bytes {
        let page = || {
            // Swagger UI's page shows the spec of the service it is asked of: the declared
            // one, replaced here by the served one.
            let svc = service(self.reveal_secrets);
            let html = svc
                .swagger_ui_html()
                .replacen(&svc.spec(), &self.compact, 1)
                .replacen(
                    "SwaggerUIBundle({",
                    "SwaggerUIBundle({\n        validatorUrl: null,",
                    1,
                );
            Bytes::from(html)
        };
        self.docs.get_or_init(page).clone()
    }
}

/// An endpoint answering with one of `pages`' documents.
fn spec_page(
    pages: Arc<SpecPages>,
    content_type: &'static str,
    page: fn(&SpecPages) -> Bytes,
) -> impl poem::Endpoint {
    make_sync(move |_| {
        poem::Response::builder()
            .content_type(content_type)
            .body(page(&pages))
    })
}

/// A built server, ready to bind and serve.
pub struct App {
    /// The configuration, with development secrets filled in.
    pub config: Config,
    /// What the providers reported.
    pub providers: Vec<ProviderInfo>,
    /// Development secrets that were applied, if any.
    pub dev: Option<devsecrets::Applied>,
    /// The store.
    pub store: Store,
    /// Metrics.
    pub metrics: Arc<Metrics>,
    /// TLS of each listener that has it, by listener name.
    tls: Vec<(String, Arc<TlsSource>)>,
    /// The route scripts.
    pub scripts: Arc<Scripts>,
    router: Arc<Router>,
    deliverer: Arc<Deliverer>,
    endpoint: SharedEndpoint,
}

/// Where route scripts come from: the configured directory if it exists, otherwise the
/// defaults embedded in the binary.
pub fn script_source(cfg: &Config) -> Source {
    if cfg.routes.dir.is_dir() {
        Source::Dir(cfg.routes.dir.clone())
    } else {
        Source::Embedded(crate::routes::EMBEDDED)
    }
}

/// A bound listener and the URL it answers at.
pub struct Bound {
    /// The listener.
    pub listener: Listener,
    /// `http://addr` or `https://addr`.
    pub url: String,
}

impl App {
    /// Builds the server from `config`: fills development secrets, resolves every secret,
    /// loads TLS material, opens the store. Must run inside a Tokio runtime.
    pub async fn build(mut config: Config) -> Result<App> {
        config.validate()?;
        let dev = devsecrets::apply(&mut config)?;
        let limits = Limits {
            body: config.server.body_limit.as_usize(),
            json_depth: config.server.json_max_depth,
        };
        let mut built = Vec::new();
        for p in config.providers.iter() {
            built.push(p.build(limits)?);
        }
        let admin_token = config
            .admin
            .token
            .as_ref()
            .map(|t| {
                t.resolve()
                    .map_err(|m| Error::Config(format!("admin.token: {m}")))
            })
            .transpose()?;
        let providers: Vec<ProviderInfo> = built.iter().map(|b| b.info.clone()).collect();

        let mut tls = Vec::new();
        if let Some(t) = &config.server.tls {
            tls.push((
                MAIN_LISTENER.to_owned(),
                load_tls("server.tls", MAIN_LISTENER, t)?,
            ));
        }
        for (name, l) in &config.listeners {
            tls.push((
                name.clone(),
                load_tls(&format!("listeners.{name}.tls"), name, &l.tls)?,
            ));
        }

        let services = Services::new(&config.services)?;
        let channels = channels::build(&config.channels, services.clone())?;
        let engine = Arc::new(engine::build(&config.routes));
        let scripts = Scripts::load(engine, script_source(&config));

        let metrics = Metrics::shared();
        let store = crate::storage::open(&config.store).await?;
        store.time_flushes(metrics.store_flush_seconds.clone());
        let ingest = Ingestor::new(store.clone(), metrics.clone(), &config.store);
        let ctx = Ctx { ingest, limits };
        let lookups: Arc<dyn Lookup> = Arc::new(services);
        let router = Router::new(
            store.clone(),
            scripts.clone(),
            lookups.clone(),
            &config.routes,
            metrics.clone(),
        );
        let deliverer = Deliverer::new(
            store.clone(),
            channels,
            config.delivery.clone(),
            metrics.clone(),
        );
        let mut reparsers = Reparsers::default();
        let mut route = Route::new();
        let mut fragments = Vec::new();
        for (p, b) in config.providers.iter().zip(built) {
            reparsers.insert(&b.info.name, b.reparse);
            fragments.push(p.spec());
            let endpoint: Arc<_> = Arc::new(b.endpoint);
            for e in &b.info.endpoints {
                route = route.at(e.canonical.as_str(), endpoint.clone());
            }
        }
        let admin_ctx = AdminCtx {
            scripts: scripts.clone(),
            providers: reparsers,
            routes: config.routes.clone(),
            lookups,
            router: router.clone(),
        };

        let svc = service(config.admin.reveal_secrets);
        let table = Arc::new(route_table(&config, &providers));
        let spec = served_spec(&svc, &fragments, &table);
        let pages = Arc::new(SpecPages::new(config.admin.reveal_secrets, &spec));
        let route = route
            .at(
                "/openapi.json",
                spec_page(pages.clone(), "application/json", SpecPages::json),
            )
            .at(
                "/openapi.yaml",
                spec_page(pages.clone(), "application/yaml", SpecPages::yaml),
            )
            .at(
                "/docs",
                spec_page(pages.clone(), "text/html; charset=utf-8", SpecPages::docs),
            )
            .nest("/", svc)
            .with(CatchPanic::new())
            .data(ctx)
            .data(admin_ctx)
            .data(AdminAuth(admin_token.clone()))
            .data(store.clone())
            .data(metrics.clone())
            .map_to_response();
        let route = AdminBodyLimit {
            inner: Console::new(route, admin_token.clone(), config.server.tls.is_some()),
            limit: limits.body,
        };
        let front = Front {
            inner: route,
            table,
            metrics: metrics.clone(),
            request_timeout: config.server.request_timeout.get(),
        };
        Ok(App {
            config,
            providers,
            dev,
            store,
            metrics,
            tls,
            scripts,
            router,
            deliverer,
            endpoint: Arc::from(front.map_to_response().boxed()),
        })
    }

    /// The service as one endpoint (for tests and benchmarks that serve it themselves).
    pub fn endpoint(&self) -> SharedEndpoint {
        self.endpoint.clone()
    }

    fn tls_of(&self, listener: &str) -> Option<&Arc<TlsSource>> {
        self.tls.iter().find(|(n, _)| n == listener).map(|(_, t)| t)
    }

    /// Logs what a user must know at start-up: unconfigured providers, providers that need a
    /// mutual-TLS listener and lack one, development secrets.
    pub fn report(&self) {
        for p in &self.providers {
            let listener = self.config.listener_of(&p.name);
            let paths: Vec<&str> = p.endpoints.iter().map(|e| e.path.as_str()).collect();
            if p.client_certificates {
                let mutual = self.tls_of(listener).is_some_and(|t| t.mutual());
                if mutual {
                    tracing::info!(
                        provider = %p.name,
                        listener,
                        jwe_keys = p.credentials,
                        "provider ready behind mutual TLS"
                    );
                } else {
                    tracing::warn!(
                        provider = %p.name,
                        listener,
                        "not served on a mutual-TLS listener: every request is refused with 401 (see `[listeners.*]` with `tls.client_ca`)"
                    );
                }
            } else if p.credentials == 0 {
                tracing::warn!(
                    provider = %p.name,
                    "no secret configured: every request to this provider is refused with 401"
                );
            } else {
                tracing::info!(provider = %p.name, listener, credentials = p.credentials, paths = ?paths, "provider ready");
            }
        }
        if self.config.admin.token.is_none() {
            tracing::warn!("no admin.token configured: the admin API refuses every request");
        }
        if let Some(dev) = &self.dev {
            tracing::warn!(file = %dev.path.display(), filled = ?dev.filled, "using development secrets; configure real ones for production");
        }
        match self.scripts.source() {
            Source::Dir(d) => {
                tracing::info!(dir = %d.display(), scripts = self.scripts.names().len(), "route scripts loaded (watched for changes)")
            }
            Source::Embedded(_) => {
                tracing::info!(dir = %self.config.routes.dir.display(), scripts = self.scripts.names().len(), "no routes directory: using the default routes built in (`switchboard init` writes them out)")
            }
        }
        for (channel, how) in channels::describe(&self.config.channels) {
            tracing::info!(channel, how = %how, "channel");
        }
        let services: Vec<&String> = self.config.services.keys().collect();
        tracing::info!(?services, "named services");
    }

    /// Binds every listener: `[server]` first, then `[listeners.*]`.
    pub async fn bind(&self) -> Result<Vec<Bound>> {
        let mut out = Vec::new();
        let mut all = vec![(MAIN_LISTENER.to_owned(), self.config.server.listen)];
        all.extend(
            self.config
                .listeners
                .iter()
                .map(|(n, l)| (n.clone(), l.listen)),
        );
        for (name, addr) in all {
            let socket = TcpListener::bind(addr).await.map_err(|source| Error::Io {
                context: format!("cannot listen on {addr}"),
                source,
            })?;
            let local = socket.local_addr().map_err(|source| Error::Io {
                context: "listener address".into(),
                source,
            })?;
            let tls = self.tls_of(&name).cloned();
            let url = format!("{}://{local}", if tls.is_some() { "https" } else { "http" });
            out.push(Bound {
                listener: Listener {
                    socket,
                    name: Arc::from(name.as_str()),
                    tls,
                },
                url,
            });
        }
        Ok(out)
    }

    /// Reloads TLS material and route scripts now (SIGHUP).
    pub fn reload(&self) {
        self.reload_tls();
        self.scripts.reload_and_log();
    }

    /// Reloads every listener's TLS material now.
    pub fn reload_tls(&self) {
        for (name, t) in &self.tls {
            if let Err(e) = t.reload() {
                tracing::error!(listener = %name, error = %e, "TLS reload failed; keeping the previous certificates");
            }
        }
    }

    /// Serves until `shutdown` is cancelled, then stops in order, all within
    /// `server.shutdown_grace`: the listeners stop accepting and finish their requests;
    /// at the same moment no route run and no delivery attempt starts any more, and those
    /// in flight finish and are recorded (past the grace period, runs are ended with their
    /// events left in the inbox, and sends are handed back to the next start); the store
    /// is flushed last, once nothing writes to it any more. TLS files are reloaded when
    /// they change and on SIGHUP.
    pub async fn run(self, listeners: Vec<Bound>, shutdown: CancellationToken) -> Result<()> {
        let app = Arc::new(self);
        // An event type a body chooses (VerifyVASP's `callbackType`) becomes a metric label
        // only when its provider documents it.
        for p in app.config.providers.iter() {
            if let Some(types) = p.event_types() {
                app.metrics.declare_event_types(p.name(), types);
            }
        }
        let grace = app.config.server.shutdown_grace.get();
        let checker = tokio::spawn(check_store(app.store.clone()));
        let sweeper = tokio::spawn(run_sweeper(app.store.clone(), app.config.store.clone()));
        let reloader = tokio::spawn(watch_tls(app.clone()));
        let scripts = tokio::spawn(watch_scripts(app.clone()));
        let router = tokio::spawn(app.router.clone().run(shutdown.clone(), grace));
        let deliverer = tokio::spawn(app.deliverer.clone().run(shutdown.clone(), grace));
        let opts = ServeOptions {
            max_connections: app.config.server.max_connections,
            header_read_timeout: app.config.server.header_read_timeout.get(),
            idle_timeout: app.config.server.idle_timeout.get(),
            shutdown_grace: grace,
            drain_limit: 4 * app.config.server.body_limit.as_usize() as u64,
            drain_timeout: app.config.server.header_read_timeout.get(),
        };
        let mut servers = Vec::new();
        for b in listeners {
            servers.push(tokio::spawn(serve(
                b.listener,
                app.endpoint.clone(),
                opts,
                app.metrics.clone(),
                shutdown.clone(),
            )));
        }
        for s in servers {
            let _ = s.await;
        }
        let _ = router.await;
        let _ = deliverer.await;
        for task in [sweeper, reloader, scripts, checker] {
            task.abort();
            let _ = task.await;
        }
        app.store.flush().await?;
        tracing::info!("store flushed; bye");
        Ok(())
    }
}

/// The start-up consistency check of the store, beside serving (it reads every event
/// after a crash, and nothing after a graceful stop).
async fn check_store(store: Store) {
    let started = std::time::Instant::now();
    match store.consistency_check().await {
        Ok(r) if r.inbox_added + r.inbox_removed > 0 => tracing::warn!(
            put_back = r.inbox_added,
            removed = r.inbox_removed,
            took = ?started.elapsed(),
            "the store's inbox was mended at start-up"
        ),
        Ok(_) => tracing::debug!(took = ?started.elapsed(), "the store's inbox is consistent"),
        Err(e) => tracing::error!(error = %e, "the start-up consistency check failed"),
    }
}

fn load_tls(key: &str, name: &str, cfg: &TlsConfig) -> Result<Arc<TlsSource>> {
    TlsSource::load(name, cfg).map_err(|e| Error::Config(format!("{key}: {e}")))
}

/// Reloads TLS material when its files change (polled) and on SIGHUP.
async fn watch_tls(app: Arc<App>) {
    let mut tick = tokio::time::interval(app.config.server.tls_reload_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    #[cfg(unix)]
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    loop {
        #[cfg(unix)]
        {
            let sighup = async {
                match hup.as_mut() {
                    Some(h) => {
                        h.recv().await;
                    }
                    None => std::future::pending::<()>().await,
                }
            };
            tokio::select! {
                _ = tick.tick() => changed(&app),
                () = sighup => {
                    tracing::info!("SIGHUP: reloading TLS certificates and route scripts");
                    app.reload();
                }
            }
        }
        #[cfg(not(unix))]
        {
            tick.tick().await;
            changed(&app);
        }
    }
}

/// Reloads route scripts when they change (polled).
async fn watch_scripts(app: Arc<App>) {
    if !matches!(app.scripts.source(), Source::Dir(_)) {
        return;
    }
    let mut tick = tokio::time::interval(app.config.routes.reload_interval.get());
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let scripts = app.scripts.clone();
        let _ = tokio::task::spawn_blocking(move || scripts.reload_settled_and_log()).await;
    }
}

fn changed(app: &App) {
    for (_, t) in &app.tls {
        t.reload_if_changed();
    }
}
