//! `switchboard`: the command line. A thin layer over `switchboard-openapi` (the server)
//! and the plugins; it parses arguments, sets up logging and the runtime, and maps errors
//! to exit codes (0 success, 1 failure, 2 usage).
#![forbid(unsafe_code)]

mod logging;
mod simulate;

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
    },
    /// Validate a configuration file: keys, values and that every secret can be read.
    Check {
        /// The TOML configuration file.
        #[arg(long, short, env = "SWITCHBOARD_CONFIG")]
        config: PathBuf,
    },
    /// Send a correctly authenticated sample notification to a running switchboard.
    Simulate(simulate::Args),
}

#[derive(Clone, Copy, ValueEnum)]
enum Format {
    Json,
    Yaml,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match run(cli.command) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("cannot start the async runtime")
}

fn run(command: Command) -> anyhow::Result<()> {
    match command {
        Command::Serve { config } => {
            let config = Config::load(config.as_deref())?;
            logging::init(&config.log);
            runtime()?.block_on(serve(config))
        }
        Command::Openapi { format, config } => {
            let config = Config::load(config.as_deref())?;
            let spec = app::spec(&config);
            match format {
                Format::Json => print!("{}", app::spec_json(&spec)),
                Format::Yaml => print!("{}", app::spec_yaml(&spec)),
            }
            Ok(())
        }
        Command::Check { config: path } => check(&path),
        Command::Simulate(args) => runtime()?.block_on(simulate::run(args)),
    }
}

async fn serve(config: Config) -> anyhow::Result<()> {
    let app = App::build(config)?;
    if let Some(dev) = app.dev.as_ref().filter(|d| d.generated) {
        // Printed to the terminal once, never to the log.
        println!("{}", dev.banner());
    }
    app.report();
    let listener = app.bind().await?;
    let addr = listener.local_addr().context("listener address")?;
    tracing::info!(%addr, "listening");
    println!("switchboard listening on http://{addr}");
    println!("  docs: http://{addr}/docs");
    let shutdown = CancellationToken::new();
    tokio::spawn(wait_for_signal(shutdown.clone()));
    app.run(listener, shutdown).await?;
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
    let (_, pomelo) = switchboard_plugins::providers::pomelo::build(&config.providers.pomelo)
        .map_err(|e| anyhow::anyhow!(at(&e)))?;
    let (_, vasp) = switchboard_plugins::providers::verifyvasp::build(&config.providers.verifyvasp)
        .map_err(|e| anyhow::anyhow!(at(&e)))?;
    if let Some(t) = &config.admin.token {
        t.resolve()
            .map_err(|m| anyhow::anyhow!(at(&format!("admin.token: {m}"))))?;
    }
    println!("{}: OK", path.display());
    println!("  listen       {}", config.server.listen);
    println!("  data         {}", config.store.path.display());
    for p in [pomelo, vasp] {
        let paths: Vec<&str> = p.endpoints.iter().map(|e| e.path.as_str()).collect();
        if p.credentials == 0 {
            println!(
                "  {:<12} {} (no secret configured: {})",
                p.name,
                paths.join(", "),
                unconfigured(&config)
            );
        } else {
            println!(
                "  {:<12} {} ({} credential(s))",
                p.name,
                paths.join(", "),
                p.credentials
            );
        }
    }
    if config.admin.token.is_none() {
        println!(
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
