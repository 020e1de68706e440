//! Assembly: configuration in, a running service out.

use std::sync::Arc;

use poem::{EndpointExt, Route, endpoint::make_sync, middleware::CatchPanic, web::Html};
use poem_openapi::OpenApiService;
use serde_json::Value;
use switchboard_core::{
    ingest::{Ingestor, run_sweeper},
    metrics::Metrics,
    store::Store,
};
use switchboard_plugins::{
    http::{Ctx, Limits},
    providers::{
        ProviderInfo,
        pomelo::{self, PomeloApi},
        verifyvasp::{self, VerifyVaspApi},
    },
};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    Error, Result,
    admin::AdminApi,
    config::Config,
    devsecrets,
    front::{Front, RouteTable, SYSTEM_PATHS},
    server::{ServeOptions, SharedEndpoint, serve},
    system::SystemApi,
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
pub type Apis = (PomeloApi, VerifyVaspApi, AdminApi, SystemApi);

const DESCRIPTION: &str = "switchboard receives notifications from card-issuing, tokenization and \
compliance providers, proves each one genuine, records it exactly once and hands it to a route \
script.\n\nEvery provider endpoint answers a repeat of a notification exactly like the first \
and stores it once. An answer in the 2xx range is only given once the notification is on disk. \
The spec is also served at `/openapi.json` and `/openapi.yaml`, and browsable at `/docs`.";

fn service(apis: Apis) -> OpenApiService<Apis, ()> {
    OpenApiService::new(apis, "switchboard", env!("CARGO_PKG_VERSION")).description(DESCRIPTION)
}

/// The spec as served for `cfg`: providers' paths as configured.
pub fn spec(cfg: &Config) -> Value {
    let apis = (
        pomelo::describe(&cfg.providers.pomelo),
        verifyvasp::describe(&cfg.providers.verifyvasp),
        AdminApi::new(None, false),
        SystemApi,
    );
    let infos = vec![pomelo_info(cfg), verifyvasp_info(cfg)];
    served_spec(&service(apis), &RouteTable::new(&infos))
}

fn pomelo_info(cfg: &Config) -> ProviderInfo {
    ProviderInfo {
        name: pomelo::NAME,
        credentials: 0,
        endpoints: vec![switchboard_plugins::providers::EndpointInfo {
            canonical: pomelo::config::DEFAULT_PATH,
            path: cfg.providers.pomelo.path.clone(),
        }],
    }
}

fn verifyvasp_info(cfg: &Config) -> ProviderInfo {
    ProviderInfo {
        name: verifyvasp::NAME,
        credentials: 0,
        endpoints: vec![switchboard_plugins::providers::EndpointInfo {
            canonical: verifyvasp::config::DEFAULT_PATH,
            path: cfg.providers.verifyvasp.path.clone(),
        }],
    }
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

/// A built server, ready to serve.
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
    endpoint: SharedEndpoint,
}

impl App {
    /// Builds the server from `config`: fills development secrets, resolves every secret,
    /// opens the store. Must run inside a Tokio runtime.
    pub fn build(mut config: Config) -> Result<App> {
        config.validate()?;
        let dev = devsecrets::apply(&mut config)?;
        let (pomelo_api, pomelo_info) = pomelo::build(&config.providers.pomelo)?;
        let (vasp_api, vasp_info) = verifyvasp::build(&config.providers.verifyvasp)?;
        let admin_token = config
            .admin
            .token
            .as_ref()
            .map(|t| {
                t.resolve()
                    .map_err(|m| Error::Config(format!("admin.token: {m}")))
            })
            .transpose()?;
        let providers = vec![pomelo_info, vasp_info];

        let metrics = Metrics::shared();
        let store = Store::open(&config.store)?;
        let ingest = Ingestor::new(store.clone(), metrics.clone(), &config.store);
        let ctx = Ctx {
            ingest,
            limits: Limits {
                body: config.server.body_limit.as_usize(),
                json_depth: config.server.json_max_depth,
            },
        };

        let svc = service((
            pomelo_api,
            vasp_api,
            AdminApi::new(admin_token, config.admin.reveal_secrets),
            SystemApi,
        ));
        let table = Arc::new(RouteTable::new(&providers));
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
            endpoint: Arc::from(front.map_to_response().boxed()),
        })
    }

    /// The service as one endpoint (for tests and benchmarks that serve it themselves).
    pub fn endpoint(&self) -> SharedEndpoint {
        self.endpoint.clone()
    }

    /// Logs what a user must know at start-up: unconfigured providers, development secrets.
    pub fn report(&self) {
        for p in &self.providers {
            if p.credentials == 0 {
                tracing::warn!(
                    provider = p.name,
                    "no secret configured: every request to this provider is refused with 401"
                );
            } else {
                tracing::info!(provider = p.name, credentials = p.credentials, paths = ?p.endpoints.iter().map(|e| e.path.as_str()).collect::<Vec<_>>(), "provider ready");
            }
        }
        if self.config.admin.token.is_none() {
            tracing::warn!("no admin.token configured: the admin API refuses every request");
        }
        if let Some(dev) = &self.dev {
            tracing::warn!(file = %dev.path.display(), filled = ?dev.filled, "using development secrets; configure real ones for production");
        }
    }

    /// Binds the listener.
    pub async fn bind(&self) -> Result<TcpListener> {
        TcpListener::bind(self.config.server.listen)
            .await
            .map_err(|source| Error::Io {
                context: format!("cannot listen on {}", self.config.server.listen),
                source,
            })
    }

    /// Serves until `shutdown` is cancelled, then finishes requests in flight and flushes
    /// the store.
    pub async fn run(self, listener: TcpListener, shutdown: CancellationToken) -> Result<()> {
        let sweeper = tokio::spawn(run_sweeper(self.store.clone(), self.config.store.clone()));
        let opts = ServeOptions {
            max_connections: self.config.server.max_connections,
            header_read_timeout: self.config.server.header_read_timeout.get(),
            shutdown_grace: self.config.server.shutdown_grace.get(),
        };
        serve(
            listener,
            self.endpoint.clone(),
            opts,
            self.metrics.clone(),
            shutdown,
        )
        .await;
        sweeper.abort();
        self.store.flush().await?;
        tracing::info!("store flushed; bye");
        Ok(())
    }
}
