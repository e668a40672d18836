//! The `switchboard` binary: parses the command line and hands off to the library.

use std::io::IsTerminal;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use anyhow::Context as _;
use clap::{Parser, Subcommand};
use switchboard::config::Config;

/// Switchboard: a real-time messaging hub over WebSocket.
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hub.
    Serve(Box<ServeArgs>),
    /// Connect to a hub as a terminal client.
    Connect(switchboard::cli::ConnectArgs),
}

/// Flags override the config file, which overrides the defaults.
#[derive(Debug, clap::Args)]
struct ServeArgs {
    /// TOML file with any of the options below (underscores for dashes).
    #[arg(long)]
    config: Option<PathBuf>,
    /// Address to listen on [default: 127.0.0.1:8888].
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Require `Authorization: Bearer TOKEN` on /api and /metrics.
    #[arg(long, env = "SWITCHBOARD_ADMIN_TOKEN")]
    admin_token: Option<String>,
    /// Largest message accepted, in bytes [default: 1048576].
    #[arg(long)]
    max_message_bytes: Option<usize>,
    /// Bytes queued per client before it is disconnected [default: 4194304].
    #[arg(long)]
    max_queued_bytes: Option<usize>,
    /// Messages per second per connection, 0 for unlimited [default: 10000].
    #[arg(long)]
    rate_messages_per_sec: Option<u32>,
    /// Bytes per second per connection, 0 for unlimited [default: 16777216].
    #[arg(long)]
    rate_bytes_per_sec: Option<u64>,
    /// Seconds of silence before the server pings a client [default: 30].
    #[arg(long)]
    ping_interval_secs: Option<u64>,
    /// Seconds to wait for an answer to a ping [default: 30].
    #[arg(long)]
    pong_timeout_secs: Option<u64>,
    /// Seconds a client has to complete the handshake [default: 5].
    #[arg(long)]
    handshake_timeout_secs: Option<u64>,
    /// Seconds shutdown waits for queues to drain [default: 5].
    #[arg(long)]
    drain_timeout_secs: Option<u64>,
    /// Most simultaneous connections [default: 20000].
    #[arg(long)]
    max_connections: Option<usize>,
    /// Join a cluster of nodes over Redis, e.g. redis://127.0.0.1:6379 (issue 8).
    #[arg(long, value_name = "REDIS_URL")]
    cluster: Option<String>,
    /// This node's id in the cluster [default: random].
    #[arg(long)]
    cluster_node_id: Option<String>,
    /// Seconds after which a dead node's names are freed [default: 10].
    #[arg(long)]
    cluster_ttl_secs: Option<u64>,
    // --- TLS and conformance (issue 5) ---
    /// PEM certificate chain: serve https and wss (needs --tls-key).
    #[arg(long, value_name = "PEM", requires = "tls_key")]
    tls_cert: Option<PathBuf>,
    /// PEM private key for --tls-cert.
    #[arg(long, value_name = "PEM", requires = "tls_cert")]
    tls_key: Option<PathBuf>,
    /// Serve a plain WebSocket echo at this path (for conformance tests), e.g. /echo.
    #[arg(long, value_name = "PATH")]
    echo_path: Option<String>,
    // --- access control (issue 5); JWT auth is set in the config file's [auth] table ---
    /// Most WebSocket clients at once; more get HTTP 503 [default: 16000].
    #[arg(long)]
    max_clients: Option<usize>,
    /// Most WebSocket clients per remote address, 0 for unlimited; more get 429 [default: 0].
    #[arg(long)]
    max_clients_per_ip: Option<usize>,
    /// Close clients that send no message for this many seconds (4003), 0 for never [default: 0].
    #[arg(long)]
    idle_timeout_secs: Option<u64>,
    /// Believe X-Forwarded-For from this proxy (IP or CIDR; repeat or comma-separate).
    #[arg(long = "trusted-proxy", value_name = "IP_OR_CIDR", value_delimiter = ',')]
    trusted_proxies: Vec<String>,
    /// Allow WebSockets from this browser origin besides the server's own (repeatable; * for any).
    #[arg(long = "allowed-origin", value_name = "ORIGIN", value_delimiter = ',')]
    allowed_origins: Vec<String>,
    // --- durability (issue 7); retention limits are set in the config file ---
    /// Directory of the durable message store [default: ./switchboard-data].
    #[arg(long, value_name = "DIR", conflicts_with = "ephemeral")]
    data_dir: Option<std::path::PathBuf>,
    /// Keep nothing on disk: messages to offline clients are refused.
    #[arg(long)]
    ephemeral: bool,
    /// When store commits are fsynced: full (every group commit), normal, off [default: full].
    #[arg(long, value_name = "POLICY", value_parser = parse_sync)]
    sync: Option<switchboard::store::SyncPolicy>,
    /// Messages each room keeps for joins with `since`, 0 for none [default: 100].
    #[arg(long)]
    room_history: Option<usize>,
}

fn parse_sync(raw: &str) -> Result<switchboard::store::SyncPolicy, String> {
    use switchboard::store::SyncPolicy;
    match raw {
        "full" => Ok(SyncPolicy::Full),
        "normal" => Ok(SyncPolicy::Normal),
        "off" => Ok(SyncPolicy::Off),
        other => Err(format!("expected full, normal or off, got {other:?}")),
    }
}

impl ServeArgs {
    fn into_config(self) -> anyhow::Result<Config> {
        let mut config = match &self.config {
            Some(path) => Config::from_file(path)?,
            None => Config::default(),
        };
        macro_rules! apply {
            ($($field:ident),*) => { $( if let Some(value) = self.$field { config.$field = value; } )* };
        }
        apply!(
            listen,
            max_message_bytes,
            max_queued_bytes,
            rate_messages_per_sec,
            rate_bytes_per_sec,
            ping_interval_secs,
            pong_timeout_secs,
            handshake_timeout_secs,
            drain_timeout_secs,
            max_connections
        );
        if self.admin_token.is_some() {
            config.admin_token = self.admin_token;
        }
        // --- cluster (issue 8) ---
        if self.cluster.is_some() {
            config.cluster = self.cluster;
        }
        if self.cluster_node_id.is_some() {
            config.cluster_node_id = self.cluster_node_id;
        }
        if let Some(ttl) = self.cluster_ttl_secs {
            config.cluster_ttl_secs = ttl;
        }
        // --- TLS and conformance (issue 5) ---
        if self.tls_cert.is_some() {
            config.tls_cert = self.tls_cert;
            config.tls_key = self.tls_key;
        }
        if self.echo_path.is_some() {
            config.echo_path = self.echo_path;
        }
        // --- access control (issue 5) ---
        if let Some(max) = self.max_clients {
            config.max_clients = max;
        }
        if let Some(max) = self.max_clients_per_ip {
            config.max_clients_per_ip = max;
        }
        if let Some(secs) = self.idle_timeout_secs {
            config.idle_timeout_secs = secs;
        }
        if !self.trusted_proxies.is_empty() {
            config.trusted_proxies = self.trusted_proxies;
        }
        if !self.allowed_origins.is_empty() {
            config.allowed_origins = self.allowed_origins;
        }
        // --- durability (issue 7) ---
        if let Some(dir) = self.data_dir {
            config.data_dir = dir;
        }
        if self.ephemeral {
            config.ephemeral = true;
        }
        if let Some(sync) = self.sync {
            config.sync = sync;
        }
        if let Some(keep) = self.room_history {
            config.room_history = keep;
        }
        config.validate()?;
        Ok(config)
    }
}

/// mimalloc instead of the system allocator: per-thread heaps, no arena
/// fragmentation after many connections come and go, and cheap frees of
/// blocks allocated on another thread (the store thread frees what the
/// routers allocated). See docs/performance.md for the measurement.
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() -> ExitCode {
    no_transparent_huge_pages();
    let cli = Cli::parse();
    let result = match cli.command {
        Command::Serve(args) => serve(*args),
        Command::Connect(args) => connect(args),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            // One line, even when a cause (a TOML parse error) spans several.
            let message = format!("{error:#}");
            eprintln!("switchboard: {}", message.split_whitespace().collect::<Vec<_>>().join(" "));
            ExitCode::FAILURE
        }
    }
}

/// Keeps the kernel from backing this process's memory with transparent
/// huge pages, which mimalloc asks for (`madvise`) on the memory it maps.
/// Every new 2 MiB page is zeroed in full when first touched: 15% of the
/// server's CPU while 10,000 clients connect, and idle memory counted in
/// 2 MiB steps (issue 6: 44 against 58 µs per connect, 3.3 against 3.8 KiB
/// per idle connection; docs/performance.md). What mimalloc mapped before
/// `main` keeps its pages; a failure only leaves the default.
fn no_transparent_huge_pages() {
    #[cfg(target_os = "linux")]
    // SAFETY: PR_SET_THP_DISABLE takes integer arguments only and changes a
    // flag of the calling process.
    unsafe {
        libc::prctl(libc::PR_SET_THP_DISABLE, 1, 0, 0, 0);
    }
}

/// The async runtime: tokio's multi-threaded scheduler, one worker per core.
///
/// On one core, the current-thread runtime was measured too (docs/performance.md):
/// 4% less CPU per DM, but operator-API fanout 2-3x slower, because its
/// unbounded FIFO run queue runs all 1,000 woken writers after every POST,
/// one frame and one `write` each, where the multi-threaded worker's bounded
/// local queue lets more broadcasts queue up per writer first.
fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    switchboard::idle::set_thread_idle_hook(return_freed_memory);
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .on_thread_park(switchboard::idle::thread_idle)
        .build()
        .context("cannot start the async runtime")
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .with_writer(std::io::stderr)
        // Colours for a terminal only: a log file or journald gets plain
        // text (and each logged join and leave costs less to format).
        .with_ansi(std::io::stderr().is_terminal())
        .init();
    let config = args.into_config()?;
    runtime()?.block_on(async move {
        tokio::spawn(tick_idle_hook());
        let shutdown = shutdown_signal()?;
        let listener = switchboard::server::bind(config.listen, config.backlog)
            .with_context(|| format!("cannot listen on {}", config.listen))?;
        switchboard::server::run(listener, config, shutdown).await.context("server failed")
    })
}

/// Wakes a runtime worker once a second, so that the idle hook runs (on
/// that worker, and on its next park) even when no client is active: a
/// worker whose last park came too soon after the previous collect would
/// otherwise sleep with a burst's garbage resident until the next event.
async fn tick_idle_hook() {
    let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        return_freed_memory();
    }
}

/// What an idle thread does (`switchboard::idle`): at most once a second,
/// asks mimalloc to give the thread's freed pages back to the OS.
///
/// mimalloc purges lazily, on later allocator calls: after a burst of
/// handshakes (hyper's 8 KiB-plus buffers each) a thread that then goes
/// quiet would keep that memory resident indefinitely. Purging on every
/// free instead (`MIMALLOC_PURGE_DELAY=0`) cost 15-35% of DM throughput.
/// This runs when a runtime worker parks (every worker, whichever runs
/// the sessions) and when the store's writer thread has waited a second
/// for work; a thread that stays busy never parks, and mimalloc purges its
/// pages on its own as it allocates.
fn return_freed_memory() {
    use std::cell::Cell;
    use std::time::{Duration, Instant};
    thread_local! {
        static LAST: Cell<Option<Instant>> = const { Cell::new(None) };
    }
    let now = Instant::now();
    let due = LAST.with(|last| {
        let due = last.get().is_none_or(|at| now.duration_since(at) >= Duration::from_secs(1));
        if due {
            last.set(Some(now));
        }
        due
    });
    if due {
        // SAFETY: mi_collect takes no pointers; it only walks and trims the
        // calling thread's own heap, which mimalloc allows at any time.
        unsafe { libmimalloc_sys::mi_collect(false) };
    }
}

fn connect(args: switchboard::cli::ConnectArgs) -> anyhow::Result<()> {
    runtime()?.block_on(switchboard::cli::run(args))
}

/// Installs the SIGINT and SIGTERM handlers now and returns a future that
/// resolves on either.
///
/// Installed before the server binds, not on the future's first poll: the
/// server announces its address before it first polls this future, and a
/// signal arriving in between would kill the process the default way, with
/// no close frame for the clients already connected.
#[cfg(unix)]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    use tokio::signal::unix::{signal, SignalKind};
    let mut interrupt = signal(SignalKind::interrupt()).context("cannot handle SIGINT")?;
    let mut terminate = signal(SignalKind::terminate()).context("cannot handle SIGTERM")?;
    Ok(async move {
        tokio::select! {
            _ = interrupt.recv() => {}
            _ = terminate.recv() => {}
        }
    })
}

/// Resolves on Ctrl-C.
#[cfg(not(unix))]
fn shutdown_signal() -> anyhow::Result<impl std::future::Future<Output = ()>> {
    Ok(async {
        let _ = tokio::signal::ctrl_c().await;
    })
}
