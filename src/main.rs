//! The `weir` command line.
#![forbid(unsafe_code)]

/// jemalloc, with a background thread that hands freed pages back to the OS within a second
/// even when Weir is idle (settings baked in at build time: `.cargo/config.toml`). With glibc's
/// malloc, 10,000 idle keep-alive connections cost ~11-14 KiB each and RSS stayed ~100 MiB
/// up after they closed (benches/compare.sh).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use tokio_util::sync::CancellationToken;
use weir::Config;

#[derive(Parser)]
#[command(
    name = "weir",
    version,
    about = "Split HTTP traffic between versions of an app: canary and blue/green, atomically."
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run Weir in front of built-in v1/v2 demo backends (split 90/10).
    Demo {
        /// Traffic listener address.
        #[arg(long, default_value = "127.0.0.1:8080")]
        listen: SocketAddr,
        /// Admin API address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Bind the demo backends to free ports instead of 127.0.0.1:18081-18084.
        #[arg(long)]
        ephemeral_backends: bool,
    },
    /// Run Weir with a config file.
    Serve {
        /// Path of the TOML config.
        #[arg(long, short, env = "WEIR_CONFIG")]
        config: PathBuf,
    },
    /// Validate a config file and print every problem with its line:column.
    Check {
        /// Path of the TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Run a demo backend on one or more addresses (for benchmarks and your own experiments).
    Backend {
        /// Address to listen on (repeat for several).
        #[arg(long, required = true)]
        addr: Vec<SocketAddr>,
        /// Name it reports as `Host:`.
        #[arg(long, default_value = "backend")]
        name: String,
        /// Version it reports.
        #[arg(long, default_value = "v1")]
        version: String,
        /// How long every response waits before its head, e.g. `3s` (a slow endpoint).
        #[arg(long, default_value = "0s", value_parser = humantime::parse_duration)]
        delay: std::time::Duration,
        /// Remember each request's `x-request-id` and list them at `/__weir/ids` (to find
        /// requests sent twice; memory grows with every request).
        #[arg(long)]
        record_ids: bool,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .init();
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(match Config::load(&config) {
            Ok(c) => {
                println!("{}: ok ({} app(s), {} listener(s))", config.display(), c.apps.len(), c.listeners.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }),
        Command::Serve { config: path } => {
            let config = Config::load(&path)?;
            runtime(config.runtime.worker_threads)?.block_on(serve(config, Some(path), None))
        }
        Command::Demo { listen, admin, ephemeral_backends } => runtime(0)?.block_on(async move {
            let mut config = Config::parse(weir::demo::DEMO_CONFIG, "config/demo.toml")?;
            config.admin.addr = admin;
            for l in config.listeners.values_mut() {
                l.addr = listen;
            }
            let backends = CancellationToken::new();
            weir::demo::start_backends(&mut config, ephemeral_backends, &backends).await?;
            let code = serve(config, None, Some(weir::demo::banner)).await;
            backends.cancel();
            code
        }),
        Command::Backend { addr, name, version, delay, record_ids } => runtime(0)?.block_on(async move {
            let cancel = CancellationToken::new();
            let options = weir::demo::BackendOptions { delay, record_ids };
            for addr in addr {
                let bound =
                    weir::demo::spawn_backend_with(addr, &name, &version, options.clone(), cancel.clone()).await?;
                println!("backend {name} ({version}) on http://{bound}");
            }
            shutdown_signal().await?;
            cancel.cancel();
            Ok(ExitCode::SUCCESS)
        }),
    }
}

fn runtime(workers: usize) -> Result<tokio::runtime::Runtime> {
    // One worker: a current-thread runtime does the same work without the multi-thread
    // scheduler's cross-thread wakeups and work-stealing queues (measured in benches/).
    let mut b = if workers == 1 {
        tokio::runtime::Builder::new_current_thread()
    } else {
        let mut b = tokio::runtime::Builder::new_multi_thread();
        if workers > 0 {
            b.worker_threads(workers);
        }
        b
    };
    b.enable_all().build().context("starting the async runtime")
}

type Banner = fn(SocketAddr, SocketAddr) -> String;

async fn serve(config: Config, path: Option<PathBuf>, banner: Option<Banner>) -> Result<ExitCode> {
    let running = weir::server::start_with(config, path).await?;
    if let Some(banner) = banner {
        let traffic = *running.listeners.values().next().context("no listener")?;
        println!("{}", banner(traffic, running.admin));
    }
    // SIGHUP reloads the config file through the same control task as `POST /reload`.
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup())?;
    let control = running.control.clone();
    let reloads = tokio::spawn(async move {
        while hup.recv().await.is_some() {
            tracing::info!("SIGHUP: reloading the config file");
            match control.reload().await {
                Ok(done) => tracing::info!(revisions = ?done.revisions, "reload applied"),
                Err(e) => tracing::error!("reload refused: {e}"),
            }
        }
    });
    shutdown_signal().await?;
    reloads.abort();
    tracing::info!("shutting down: draining in-flight requests");
    running.shutdown().await;
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// Resolves on SIGTERM (Kubernetes) or SIGINT (Ctrl-C).
async fn shutdown_signal() -> Result<()> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = term.recv() => {}
        r = tokio::signal::ctrl_c() => r?,
    }
    Ok(())
}
