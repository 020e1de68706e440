//! Assembly: configuration in, a running service out.

use std::sync::Arc;

use poem::{EndpointExt, Route, endpoint::make_sync, middleware::CatchPanic, web::Html};
use poem_openapi::OpenApiService;
use serde_json::Value;
use switchboard_core::{
    delivery::Deliverer,
    ingest::{Ingestor, run_sweeper},
    metrics::Metrics,
    route::{
        engine,
        router::Router,
        scripts::{Scripts, Source},
    },
    store::Store,
};
use switchboard_plugins::{
    channels,
    http::{Ctx, Limits},
    providers::{
        ProviderInfo,
        pomelo::{self, PomeloApi},
        verestro::{self, VerestroApi},
        verifyvasp::{self, VerifyVaspApi},
    },
    services::Services,
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    admin::AdminApi,
    config::{Config, MAIN_LISTENER, TlsConfig},
    devsecrets,
    front::{Front, RouteTable, SYSTEM_PATHS},
    server::{Listener, ServeOptions, SharedEndpoint, serve},
    system::SystemApi,
    tls::TlsSource,
};

/// Path prefixes switchboard serves itself; no provider may be configured under them.
pub const RESERVED_PREFIXES: &[&str] = &[
    "/admin",
    "/docs",
    "/openapi.json",
    "/openapi.yaml",
    "/healthz",
    "/readyz",
    "/metrics",
];

/// Every API in the spec, in the order they are documented.
pub type Apis = (PomeloApi, VerifyVaspApi, VerestroApi, AdminApi, SystemApi);

const DESCRIPTION: &str = "switchboard receives notifications from card-issuing, tokenization and \
compliance providers, proves each one genuine, records it exactly once and hands it to a route \
script.\n\nEvery provider endpoint answers a repeat of a notification exactly like the first \
and stores it once. An answer in the 2xx range is only given once the notification is on disk. \
Verestro's endpoints are served on a mutual-TLS listener: its client certificate must chain to \
the listener's CA (OpenAPI 3.0 has no security scheme for this). \
The spec is also served at `/openapi.json` and `/openapi.yaml`, and browsable at `/docs`.";

fn service(apis: Apis) -> OpenApiService<Apis, ()> {
    OpenApiService::new(apis, "switchboard", env!("CARGO_PKG_VERSION")).description(DESCRIPTION)
}

/// Every provider's endpoints as `cfg` configures them (no secrets needed).
pub fn provider_infos(cfg: &Config) -> Vec<ProviderInfo> {
    vec![
        pomelo::info(&cfg.providers.pomelo, 0),
        verestro::info(&cfg.providers.verestro, 0),
        verifyvasp::info(&cfg.providers.verifyvasp, 0),
    ]
}

fn route_table(cfg: &Config, infos: &[ProviderInfo]) -> RouteTable {
    RouteTable::new(infos, |p| cfg.listener_of(p).to_owned())
}

/// The spec as served for `cfg`: providers' paths as configured.
pub fn spec(cfg: &Config) -> Value {
    let apis = (
        pomelo::describe(&cfg.providers.pomelo),
        verifyvasp::describe(&cfg.providers.verifyvasp),
        verestro::describe(&cfg.providers.verestro),
        AdminApi::new(None, false),
        SystemApi,
    );
    served_spec(&service(apis), &route_table(cfg, &provider_infos(cfg)))
}

/// The service's spec with declared paths renamed to configured ones.
pub fn served_spec<T: poem_openapi::OpenApi>(
    svc: &OpenApiService<T, ()>,
    table: &RouteTable,
) -> Value {
    let mut spec: Value = serde_json::from_str(&svc.spec()).unwrap_or(Value::Null);
    let renames = table.renames();
    if let Some(paths) = spec.get_mut("paths").and_then(Value::as_object_mut) {
        let old = std::mem::take(paths);
        for (k, v) in old {
            let key = renames.get(k.as_str()).cloned().unwrap_or(k);
            paths.insert(key, v);
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

/// The docs page: Swagger UI with its assets embedded in the binary (nothing is loaded
/// from a CDN), showing the served spec, with the online validator badge turned off.
fn docs_html<T: poem_openapi::OpenApi>(svc: &OpenApiService<T, ()>, served: &Value) -> String {
    let html = svc.swagger_ui_html();
    let declared = svc.spec();
    html.replacen(
        &declared,
        &serde_json::to_string(served).unwrap_or_default(),
        1,
    )
    .replacen(
        "SwaggerUIBundle({",
        "SwaggerUIBundle({\n        validatorUrl: null,",
        1,
    )
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

/// What admin endpoints need beyond the store: the scripts and the parsing limits (to
/// parse a quarantined body again on replay).
#[derive(Clone)]
pub struct AdminCtx {
    /// The route scripts.
    pub scripts: Arc<Scripts>,
    /// Body and JSON limits.
    pub limits: Limits,
    /// Verestro's keys and encryption policy: a body quarantined because it could not be
    /// decrypted is decrypted on replay; plaintext where encryption is required stays out.
    pub verestro: switchboard_plugins::providers::verestro::Replay,
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
    pub fn build(mut config: Config) -> Result<App> {
        config.validate()?;
        let dev = devsecrets::apply(&mut config)?;
        let (pomelo_api, pomelo_info) = pomelo::build(&config.providers.pomelo)?;
        let (vasp_api, vasp_info) = verifyvasp::build(&config.providers.verifyvasp)?;
        let (verestro_api, verestro_info) = verestro::build(&config.providers.verestro)?;
        let admin_token = config
            .admin
            .token
            .as_ref()
            .map(|t| {
                t.resolve()
                    .map_err(|m| Error::Config(format!("admin.token: {m}")))
            })
            .transpose()?;
        let providers = vec![pomelo_info, verestro_info, vasp_info];

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
        let store = Store::open(&config.store)?;
        let ingest = Ingestor::new(store.clone(), metrics.clone(), &config.store);
        let limits = Limits {
            body: config.server.body_limit.as_usize(),
            json_depth: config.server.json_max_depth,
        };
        let ctx = Ctx { ingest, limits };
        let router = Router::new(
            store.clone(),
            scripts.clone(),
            Arc::new(services),
            &config.routes,
            metrics.clone(),
        );
        let deliverer = Deliverer::new(
            store.clone(),
            channels,
            config.delivery.clone(),
            metrics.clone(),
        );
        let admin_ctx = AdminCtx {
            scripts: scripts.clone(),
            limits,
            verestro: verestro_api.replay(),
        };

        let svc = service((
            pomelo_api,
            vasp_api,
            verestro_api,
            AdminApi::new(admin_token, config.admin.reveal_secrets),
            SystemApi,
        ));
        let table = Arc::new(route_table(&config, &providers));
        let spec = served_spec(&svc, &table);
        let json = spec_json(&spec);
        let yaml = spec_yaml(&spec);
        let docs = docs_html(&svc, &spec);
        let route = Route::new()
            .at(
                "/openapi.json",
                make_sync(move |_| {
                    poem::Response::builder()
                        .content_type("application/json")
                        .body(json.clone())
                }),
            )
            .at(
                "/openapi.yaml",
                make_sync(move |_| {
                    poem::Response::builder()
                        .content_type("application/yaml")
                        .body(yaml.clone())
                }),
            )
            .at("/docs", make_sync(move |_| Html(docs.clone())))
            .nest("/", svc)
            .with(CatchPanic::new())
            .data(ctx)
            .data(admin_ctx)
            .data(store.clone())
            .data(metrics.clone())
            .map_to_response();
        let front = Front {
            inner: route,
            table,
            metrics: metrics.clone(),
            request_timeout: config.server.request_timeout.get(),
        };
        debug_assert!(SYSTEM_PATHS.iter().all(|p| RESERVED_PREFIXES.contains(p)));
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
            let listener = self.config.listener_of(p.name);
            let paths: Vec<&str> = p.endpoints.iter().map(|e| e.path.as_str()).collect();
            if p.client_certificates {
                let mutual = self.tls_of(listener).is_some_and(|t| t.mutual());
                if mutual {
                    tracing::info!(
                        provider = p.name,
                        listener,
                        jwe_keys = p.credentials,
                        "provider ready behind mutual TLS"
                    );
                } else {
                    tracing::warn!(
                        provider = p.name,
                        listener,
                        "not served on a mutual-TLS listener: every request is refused with 401 (see `[listeners.*]` with `tls.client_ca`)"
                    );
                }
            } else if p.credentials == 0 {
                tracing::warn!(
                    provider = p.name,
                    "no secret configured: every request to this provider is refused with 401"
                );
            } else {
                tracing::info!(provider = p.name, listener, credentials = p.credentials, paths = ?paths, "provider ready");
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

    /// Serves until `shutdown` is cancelled, then finishes requests in flight and flushes
    /// the store. TLS files are reloaded when they change and on SIGHUP.
    pub async fn run(self, listeners: Vec<Bound>, shutdown: CancellationToken) -> Result<()> {
        let app = Arc::new(self);
        let sweeper = tokio::spawn(run_sweeper(app.store.clone(), app.config.store.clone()));
        let reloader = tokio::spawn(watch_tls(app.clone()));
        let scripts = tokio::spawn(watch_scripts(app.clone()));
        let router = tokio::spawn(app.router.clone().run());
        let deliverer = tokio::spawn(app.deliverer.clone().run());
        let opts = ServeOptions {
            max_connections: app.config.server.max_connections,
            header_read_timeout: app.config.server.header_read_timeout.get(),
            idle_timeout: app.config.server.idle_timeout.get(),
            shutdown_grace: app.config.server.shutdown_grace.get(),
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
        sweeper.abort();
        reloader.abort();
        scripts.abort();
        router.abort();
        deliverer.abort();
        app.store.flush().await?;
        tracing::info!("store flushed; bye");
        Ok(())
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
        let _ = tokio::task::spawn_blocking(move || scripts.reload_and_log()).await;
    }
}

fn changed(app: &App) {
    for (_, t) in &app.tls {
        t.reload_if_changed();
    }
}
