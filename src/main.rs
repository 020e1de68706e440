//! `switchboard`: the command line. A thin layer over `switchboard-openapi` (the server)
//! and the plugins; it parses arguments, sets up logging and the runtime, and maps errors
//! to exit codes (0 success, 1 failure, 2 usage).
#![forbid(unsafe_code)]

/// `println!`, except that a closed stdout (`switchboard openapi | head`) ends the
/// process quietly instead of panicking.
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout().lock(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

/// A line for whoever started the server: a closed stdout must not stop a server.
macro_rules! say {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!`, with [`out!`]'s handling of a closed stdout.
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = write!(std::io::stdout().lock(), $($arg)*) {
            crate::stdout_failed(&e);
        }
    }};
}

mod admin_cli;
mod logging;
mod pki;
mod routes_cli;
mod services_spec;
mod simulate;
mod store_cli;

use std::{path::PathBuf, process::ExitCode};

use anyhow::Context;
use clap::{Parser, Subcommand, ValueEnum};
use switchboard_openapi::{
    app::{self, App},
    config::Config,
};
use tokio_util::sync::CancellationToken;

/// Receives card-issuing and compliance webhooks, proves them genuine, records each exactly
/// once and routes it.
/// mimalloc: under concurrent ingest, glibc's malloc spent a quarter of the CPU in
/// arena locking and consolidation (see ARCHITECTURE.md, "Performance").
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[derive(Parser)]
#[command(name = "switchboard", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Without a configuration file, listens on 127.0.0.1:8080 with its
    /// data in ./data and development secrets.
    Serve {
        /// The TOML configuration file.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Print the OpenAPI spec (the one `/openapi.json` serves).
    Openapi {
        /// Output format.
        #[arg(long, value_enum, default_value_t = Format::Json)]
        format: Format,
        /// Describe the paths of this configuration instead of the defaults.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
        /// Print instead the calls the default routes make to your internal services
        /// (`customers`, `cards`, `compliance`): what to build or mock them from.
        #[arg(long)]
        services: bool,
    },
    /// Validate a configuration file: keys, values and that every secret can be read.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
    },
    /// Send a correctly authenticated sample notification to a running switchboard.
    Simulate(simulate::Args),
    /// The built-in certificate authority: create it, sign a provider's CSR, issue client
    /// certificates.
    #[command(subcommand)]
    Ca(pki::CaCommand),
    /// TLS certificates for switchboard's own listeners.
    #[command(subcommand)]
    Tls(pki::TlsCommand),
    /// JWE keys (RSA) for encrypted requests.
    #[command(subcommand)]
    Keys(pki::KeysCommand),
    /// Stored events (through the running server's admin API): list, show, replay.
    Events {
        #[command(subcommand)]
        command: admin_cli::EventsCommand,
        #[command(flatten)]
        conn: admin_cli::Conn,
    },
    /// Deliveries of the outbox (through the admin API): list, show, replay.
    Deliveries {
        #[command(subcommand)]
        command: admin_cli::DeliveriesCommand,
        #[command(flatten)]
        conn: admin_cli::Conn,
    },
    /// Run the route tests (`*.test.toml` beside the scripts); exits non-zero on failure.
    Test {
        /// The routes directory (default: `routes.dir`).
        dir: Option<PathBuf>,
        /// The configuration (for `routes.*` limits).
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: Option<PathBuf>,
    },
    /// Bring the PostgreSQL store's schema up to date (`store.backend = "postgres"`); the
    /// server also does this at start-up.
    Migrate {
        /// The TOML configuration file.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
    },
    /// The store: copy an embedded store into PostgreSQL.
    #[command(subcommand)]
    Store(store_cli::StoreCommand),
    /// Write out a new installation: a configuration, the default routes with their tests,
    /// an admin token, a CA, a server certificate and a JWE key.
    Init {
        /// Where (default: the current directory).
        #[arg(default_value = ".")]
        dir: PathBuf,
        /// Overwrite existing files.
        #[arg(long)]
        force: bool,
    },
    /// A route worker: `serve` starts these itself and speaks to them over stdin and
    /// stdout (see `switchboard_core::route::worker`).
    #[command(name = "route-worker", hide = true)]
    RouteWorker,
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

fn main() -> ExitCode {
    // No transparent huge pages: mimalloc asks for them on its arenas, and the kernel then
    // backs every touched 2 MiB of them, which took an idle server from ~33 MB to ~88 MB
    // resident (`bench/wrk.sh` prints the idle RSS). Set before the runtime's threads
    // allocate; a kernel without the call keeps its default.
    #[cfg(target_os = "linux")]
    let _ = nix::sys::prctl::set_thp_disable(true);
    let cli = Cli::parse();
    if let Command::RouteWorker = cli.command {
        // No logging, no runtime: the worker only runs scripts, and its parent logs.
        return ExitCode::from(switchboard_core::route::worker::main());
    }
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Nobody reads our output any more (a closed pipe): stop, as other command-line tools do.
/// Any other failure to write is reported.
fn stdout_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("error: cannot write to stdout: {e}");
    std::process::exit(1);
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config: path } => {
            let config = Config::load(path.as_deref())?;
            let _log = logging::init(&config.log);
            runtime()?.block_on(serve(config)).map_err(|e| match &path {
                // Errors that name a setting (a secret that cannot be read, a weak key)
                // also name the file it is in.
                Some(p)
                    if e.downcast_ref::<switchboard_openapi::Error>()
                        .is_some_and(|e| {
                            matches!(
                                e,
                                switchboard_openapi::Error::Config(_)
                                    | switchboard_openapi::Error::Plugin(_)
                            )
                        }) =>
                {
                    anyhow::anyhow!("{}: {e}", p.display())
                }
                _ => e,
            })
        }
        Command::Openapi {
            format,
            config,
            services,
        } => {
            let config = Config::load(config.as_deref())?;
            let spec = if services {
                services_spec::spec(&config)?
            } else {
                app::spec(&config)
            };
            match format {
                Format::Json => out_part!("{}", app::spec_json(&spec)),
                Format::Yaml => out_part!("{}", app::spec_yaml(&spec)),
            }
            Ok(())
        }
        Command::Check { config: path } => check(&path),
        Command::Simulate(args) => runtime()?.block_on(simulate::run(args)),
        Command::Ca(c) => pki::ca(c),
        Command::Tls(c) => pki::tls(c),
        Command::Keys(c) => pki::keys(c),
        Command::Events { command, conn } => runtime()?.block_on(admin_cli::events(command, conn)),
        Command::Deliveries { command, conn } => {
            runtime()?.block_on(admin_cli::deliveries(command, conn))
        }
        Command::Test { dir, config } => routes_cli::test(dir, config.as_deref()),
        Command::Init { dir, force } => routes_cli::init(&dir, force),
        Command::Migrate { config } => runtime()?.block_on(store_cli::migrate(&config)),
        Command::Store(c) => runtime()?.block_on(store_cli::run(c)),
        Command::RouteWorker => Ok(()),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    // What serve writes (the store holds OTPs and card data in clear; development
    // secrets) is its owner's alone.
    #[cfg(unix)]
    rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o077));
    let app = App::build(config).await?;
    if let Some(dev) = app.dev.as_ref().filter(|d| d.generated) {
        // Printed to the terminal once, never to the log.
        say!("{}", dev.banner());
    }
    app.report();
    let listeners = app.bind().await?;
    // Further listeners first: the main line is what scripts wait for.
    let main = switchboard_openapi::config::MAIN_LISTENER;
    for b in listeners.iter().filter(|b| &*b.listener.name != main) {
        tracing::info!(listener = %b.listener.name, url = %b.url, "listening");
        say!("switchboard listener {} on {}", b.listener.name, b.url);
    }
    for b in listeners.iter().filter(|b| &*b.listener.name == main) {
        tracing::info!(listener = %b.listener.name, url = %b.url, "listening");
        say!("switchboard listening on {}", b.url);
        say!("  docs: {}/docs", b.url);
    }
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    app.run(listeners, shutdown).await?;
    Ok(())
}

async fn wait_for_signal(shutdown: CancellationToken) {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => tracing::info!("Ctrl-C: shutting down"),
                    _ = term.recv() => tracing::info!("SIGTERM: shutting down"),
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGTERM");
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
    shutdown.cancel();
}

fn check(path: &std::path::Path) -> anyhow::Result<()> {
    let config = Config::load(Some(path))?;
    let at = |e: &dyn std::fmt::Display| format!("{}: {e}", path.display());
    let limits = switchboard_plugins::http::Limits {
        body: config.server.body_limit.as_usize(),
        json_depth: config.server.json_max_depth,
    };
    let mut providers = Vec::new();
    for p in config.providers.iter() {
        let built = p.build(limits).map_err(|e| anyhow::anyhow!(at(&e)))?;
        providers.push((built.info, p.check_notes()));
    }
    let mut tls = Vec::new();
    if let Some(t) = &config.server.tls {
        tls.push((switchboard_openapi::config::MAIN_LISTENER.to_owned(), t));
    }
    tls.extend(config.listeners.iter().map(|(n, l)| (n.clone(), &l.tls)));
    for (name, t) in &tls {
        switchboard_openapi::tls::TlsSource::load(name, t)
            .map_err(|e| anyhow::anyhow!(at(&format!("TLS of listener {name}: {e}"))))?;
    }
    if let Some(t) = &config.admin.token {
        t.resolve()
            .map_err(|m| anyhow::anyhow!(at(&format!("admin.token: {m}"))))?;
    }
    out!("{}: OK", path.display());
    out!("  listen       {}", config.server.listen);
    match config.store.backend {
        switchboard_core::config::StoreBackend::Sled => {
            out!("  store        sled in {}", config.store.path.display())
        }
        switchboard_core::config::StoreBackend::Postgres => {
            let status = runtime()?
                .block_on(switchboard_postgres::schema_status(&config.store))
                .map_err(|e| anyhow::anyhow!(at(&format!("store: {e}"))))?;
            out!("  store        postgres: {}", store_cli::describe(&status));
        }
    }
    for (name, t) in &tls {
        let mode = if t.client_ca.is_some() {
            "mutual TLS"
        } else {
            "TLS"
        };
        out!(
            "  listener     {name}: {mode}, certificate {}",
            t.cert.display()
        );
    }
    for (p, notes) in providers {
        let paths: Vec<&str> = p.endpoints.iter().map(|e| e.path.as_str()).collect();
        let listener = config.listener_of(&p.name);
        if p.client_certificates {
            let mutual = tls
                .iter()
                .any(|(n, t)| n == listener && t.client_ca.is_some());
            if mutual {
                out!(
                    "  {:<12} {} paths on listener {listener} (mutual TLS; {} JWE key(s))",
                    p.name,
                    paths.len(),
                    p.credentials
                );
            } else {
                out!(
                    "  {:<12} not on a mutual-TLS listener: every request will be refused with 401",
                    p.name
                );
            }
        } else if p.credentials == 0 {
            out!(
                "  {:<12} {} (no secret configured: {})",
                p.name,
                paths.join(", "),
                unconfigured(&config)
            );
        } else {
            out!(
                "  {:<12} {} ({} credential(s))",
                p.name,
                paths.join(", "),
                p.credentials
            );
        }
        for note in notes {
            out!("  {:<12} {note}", "");
        }
    }
    if config.admin.token.is_none() {
        out!(
            "  admin        no token configured: {}",
            unconfigured(&config)
        );
    }
    Ok(())
}

fn unconfigured(config: &Config) -> &'static str {
    if config.dev.secrets && config.server.listen.ip().is_loopback() {
        "development secrets will be generated"
    } else {
        "every request will be refused with 401"
    }
}
