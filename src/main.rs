//! The `weir` command line.
#![forbid(unsafe_code)]

/// jemalloc, with a background thread that hands freed pages back to the OS within a second
/// even when Weir is idle (settings baked in at build time: `.cargo/config.toml`). With glibc's
/// malloc, 10,000 idle keep-alive connections cost ~11-14 KiB each and RSS stayed ~100 MiB
/// up after they closed (benches/compare.sh).
#[cfg(all(unix, not(target_env = "musl")))]
#[global_allocator]
static GLOBAL: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::io::IsTerminal;
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
    /// How logs are written to stderr: `text` for people (coloured only when stderr is a
    /// terminal), `json` for log pipelines (one JSON object per line).
    #[arg(long, global = true, value_enum, default_value_t = LogFormat::Text, env = "WEIR_LOG_FORMAT")]
    log_format: LogFormat,
    #[command(subcommand)]
    command: Command,
}

/// The `--log-format` choices.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line: `timestamp`, `level`, `target`, `message` and the event's
    /// fields at the top level.
    Json,
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
        /// Keep the split and its history in this directory, so a restarted demo resumes
        /// where it was. Default: a temporary directory removed at exit.
        #[arg(long)]
        state_dir: Option<PathBuf>,
        /// Make the v2 backends answer this share of requests with 500 (0–1, e.g. 0.1): a bad
        /// canary, to watch a rollout roll it back.
        #[arg(long, default_value_t = 0.0, value_parser = fraction)]
        fail_v2: f64,
    },
    /// Run Weir with a config file.
    Serve {
        /// Path of the TOML config.
        #[arg(long, short, env = "WEIR_CONFIG")]
        config: PathBuf,
        /// Keep the split and its history in this directory (overrides `[state] dir`).
        #[arg(long, env = "WEIR_STATE_DIR")]
        state_dir: Option<PathBuf>,
    },
    /// Validate a config file and print every problem with its line:column.
    Check {
        /// Path of the TOML config.
        #[arg(long, short)]
        config: PathBuf,
    },
    /// Ask a running Weir to drain and exit, as SIGTERM does (a Kubernetes preStop hook).
    Shutdown {
        /// Its admin API address.
        #[arg(long, default_value = "127.0.0.1:9901")]
        admin: SocketAddr,
        /// Return only once it stopped answering (its drain delay and grace period are over).
        #[arg(long)]
        wait: bool,
        /// Give up waiting after this long.
        #[arg(long, default_value = "120s", value_parser = humantime::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Steer a running Weir through its admin API: split, promote, rollback, history,
    /// rollouts, cluster (`weir ctl --help`).
    Ctl {
        #[command(flatten)]
        target: weir::ctl::Target,
        #[command(subcommand)]
        command: weir::ctl::Command,
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
        /// Answer this share of requests with 500 (0–1), evenly spread.
        #[arg(long, default_value_t = 0.0, value_parser = fraction)]
        fail: f64,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    init_logs(cli.log_format);
    match run(cli.command) {
        Ok(code) => code,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Logs go to stderr, filtered by `RUST_LOG` (default `info`, rustls's own at `error`). Colour codes only when stderr
/// is a terminal (and `NO_COLOR` is unset): in a file, a pipe or a cluster's log collector
/// they are noise in every line.
fn init_logs(format: LogFormat) {
    // rustls warns on every handshake of a client that sends an IP address as SNI (wrk,
    // many health checkers): a client's quirk, not an operator's concern, and a log line per
    // handshake. Weir logs what matters of a handshake itself.
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info,rustls=error".into());
    let logs = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Text => {
            let colour = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            logs.with_ansi(colour).init();
        }
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn run(command: Command) -> Result<ExitCode> {
    match command {
        Command::Check { config } => Ok(match Config::load(&config) {
            Ok(c) if c.admin.tokens_file.is_some() && weir::control::admin::auth::Auth::new(&c.admin).is_err() => {
                eprintln!("{}", weir::control::admin::auth::Auth::new(&c.admin).unwrap_err());
                ExitCode::FAILURE
            }
            Ok(c) => {
                println!("{}: ok ({} app(s), {} listener(s))", config.display(), c.apps.len(), c.listeners.len());
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("{e}");
                ExitCode::FAILURE
            }
        }),
        Command::Serve { config: path, state_dir } => {
            let mut config = Config::load(&path)?;
            if let Some(dir) = state_dir {
                anyhow::ensure!(
                    config.state.kubernetes.is_none(),
                    "--state-dir cannot be used with [state.kubernetes] in {}",
                    path.display()
                );
                config.state.dir = Some(dir);
            }
            runtime(config.runtime.worker_threads)?.block_on(serve(config, Some(path), None))
        }
        Command::Demo { listen, admin, ephemeral_backends, state_dir, fail_v2 } => runtime(0)?.block_on(async move {
            let mut config = Config::parse(weir::demo::DEMO_CONFIG, "config/demo.toml")?;
            // The demo keeps its state like any Weir; by default in a temporary directory.
            let temp = match state_dir {
                Some(dir) => {
                    config.state.dir = Some(dir);
                    None
                }
                None => {
                    let temp = tempfile::Builder::new().prefix("weir-demo-state-").tempdir()?;
                    config.state.dir = Some(temp.path().to_path_buf());
                    Some(temp)
                }
            };
            config.admin.addr = admin;
            for l in config.listeners.values_mut() {
                l.addr = listen;
            }
            let backends = CancellationToken::new();
            weir::demo::start_backends(&mut config, ephemeral_backends, fail_v2, &backends).await?;
            let code = serve(config, None, Some(weir::demo::banner)).await;
            backends.cancel();
            drop(temp);
            code
        }),
        Command::Shutdown { admin, wait, timeout } => runtime(1)?.block_on(shutdown(admin, wait, timeout)),
        Command::Ctl { target, command } => runtime(1)?.block_on(weir::ctl::run(target, command)),
        Command::Backend { addr, name, version, delay, record_ids, fail } => runtime(0)?.block_on(async move {
            let cancel = CancellationToken::new();
            let options = weir::demo::BackendOptions { delay, record_ids, fail };
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
    let signal = tokio::select! {
        signal = shutdown_signal() => signal?,
        () = running.shutdown_requested() => Signal::Terminate,
    };
    reloads.abort();
    match signal {
        Signal::Terminate => running.terminate().await,
        Signal::Interrupt => {
            tracing::info!("shutting down: in-flight requests finish, no drain delay (SIGINT)");
            running.shutdown().await
        }
    }
    tracing::info!("stopped");
    Ok(ExitCode::SUCCESS)
}

/// `weir shutdown`: `POST /shutdown` to the admin API, then (with `wait`) polls until it no
/// longer accepts connections.
async fn shutdown(admin: SocketAddr, wait: bool, timeout: std::time::Duration) -> Result<ExitCode> {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let ask = async {
        let mut conn = tokio::net::TcpStream::connect(admin).await?;
        let req = format!("POST /shutdown HTTP/1.1\r\nHost: {admin}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
        conn.write_all(req.as_bytes()).await?;
        let mut answer = Vec::new();
        conn.read_to_end(&mut answer).await?;
        Ok::<_, std::io::Error>(String::from_utf8_lossy(&answer).into_owned())
    };
    let answer = tokio::time::timeout(std::time::Duration::from_secs(10), ask)
        .await
        .context("the admin API did not answer within 10 s")?
        .with_context(|| format!("asking {admin} to shut down"))?;
    let status = answer.split_whitespace().nth(1).unwrap_or("");
    anyhow::ensure!(status == "202", "POST /shutdown answered {:?}", answer.lines().next().unwrap_or(""));
    eprintln!("weir at {admin} is draining");
    if !wait {
        return Ok(ExitCode::SUCCESS);
    }
    let deadline = tokio::time::Instant::now() + timeout;
    while tokio::time::Instant::now() < deadline {
        if tokio::net::TcpStream::connect(admin).await.is_err() {
            eprintln!("weir at {admin} has stopped");
            return Ok(ExitCode::SUCCESS);
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    anyhow::bail!("weir at {admin} still answers after {timeout:?}")
}

/// Which signal asked Weir to stop.
enum Signal {
    /// SIGTERM (Kubernetes, systemd, docker stop): drain first.
    Terminate,
    /// SIGINT (Ctrl-C): stop without the drain delay.
    Interrupt,
}

/// Resolves on SIGTERM or SIGINT.
async fn shutdown_signal() -> Result<Signal> {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    Ok(tokio::select! {
        _ = term.recv() => Signal::Terminate,
        r = tokio::signal::ctrl_c() => {
            r?;
            Signal::Interrupt
        }
    })
}

/// A share between 0 and 1.
fn fraction(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(f) if (0.0..=1.0).contains(&f) => Ok(f),
        _ => Err(format!("{text:?} is not a share between 0 and 1 (e.g. 0.1)")),
    }
}
