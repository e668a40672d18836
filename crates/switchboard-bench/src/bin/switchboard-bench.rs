//! `switchboard-bench`: the load generator of issue 6.
//!
//! Runs one workload (or `all`) against a target — Switchboard or the naive
//! hub over classic WebSocket, or the raw relay with `--raw` — and prints one
//! JSON result line per workload on stdout, a progress line and a readable
//! table on stderr. `report` turns saved result lines into Markdown.
//!
//! ```text
//! switchboard-bench --target ws://127.0.0.1:8888 --server-pid 1234 dm --pairs 16
//! switchboard-bench --target 127.0.0.1:9000 --raw all
//! switchboard-bench report --results results.jsonl
//! ```

use std::io::Write;
use std::path::PathBuf;
use std::sync::Arc;

use clap::{Parser, Subcommand};
use serde_json::Value;
use switchboard_bench::conn::{Kind, Target};
use switchboard_bench::report;
use switchboard_bench::workloads::{
    self, ChurnParams, Ctx, DmParams, FanoutParams, IdleParams, RttParams, Via,
};

/// Load generator for Switchboard and its reference peers (loopback only).
#[derive(Debug, Parser)]
#[command(version, about)]
struct Cli {
    /// The server: ws://127.0.0.1:PORT (classic protocol, name via ?name=),
    /// or 127.0.0.1:PORT of a raw relay with --raw.
    #[arg(long, default_value = "ws://127.0.0.1:8888", global = true)]
    target: String,
    /// What the target is [default: switchboard, or raw with --raw].
    #[arg(long, value_enum, global = true)]
    kind: Option<Kind>,
    /// The target is the raw TCP relay (same as --kind raw).
    #[arg(long, global = true)]
    raw: bool,
    /// Name to file results under [default: the kind].
    #[arg(long, global = true)]
    label: Option<String>,
    /// The server's PID: CPU time from /proc/PID/stat, RSS from /proc/PID/status.
    #[arg(long, global = true)]
    server_pid: Option<u32>,
    /// Longest any one workload may run, in seconds.
    #[arg(long, default_value_t = 30.0, global = true)]
    max_secs: f64,
    /// Payload bytes per message (the marker plus padding).
    #[arg(long, default_value_t = 80, global = true)]
    size: usize,
    /// Cluster mode (issue 8): `dm` receivers connect here, senders to
    /// --target, so every DM crosses nodes.
    #[arg(long, global = true)]
    receiver_target: Option<String>,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// P pairs, each sender pushing M DMs through a bounded window.
    Dm(DmParams),
    /// C receivers, B broadcasts (operator API, room publish, or "everyone").
    Fanout {
        #[command(flatten)]
        params: FanoutParams,
        /// Ways to broadcast [default: api and room for switchboard, msg otherwise].
        #[arg(long, value_enum)]
        via: Vec<Via>,
    },
    /// K idle connections: connect rate, server RSS per connection, rtt meanwhile.
    Idle {
        #[command(flatten)]
        params: IdleParams,
        #[command(flatten)]
        rtt: RttParams,
    },
    /// One pair ping-ponging DMs; with --under-dm, while a dm load runs.
    Rtt {
        #[command(flatten)]
        params: RttParams,
        /// Also measure while a dm load runs (sized by the dm flags).
        #[arg(long)]
        under_dm: bool,
        #[command(flatten)]
        dm: DmParams,
    },
    /// Clients connecting, sending one DM and disconnecting, continuously.
    Churn(ChurnParams),
    /// Every workload in turn: idle, rtt, dm, rtt under dm, fanout, churn.
    All {
        #[command(flatten)]
        dm: DmParams,
        #[command(flatten)]
        fanout: FanoutParams,
        #[command(flatten)]
        idle: IdleParams,
        #[command(flatten)]
        rtt: RttParams,
        #[command(flatten)]
        churn: ChurnParams,
        /// Messages per pair for the dm load under rtt (also bounded by --send-secs).
        #[arg(long, default_value_t = 5_000_000)]
        rtt_dm_messages: u64,
    },
    /// Markdown tables from saved result lines.
    Report {
        /// Files of JSON result lines.
        #[arg(long, required = true)]
        results: Vec<PathBuf>,
        /// Label whose figures are compared with the issue's targets.
        #[arg(long, default_value = "switchboard")]
        against: String,
    },
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if let Command::Report { results, against } = &cli.command {
        let mut records = Vec::new();
        for path in results {
            for line in std::fs::read_to_string(path)?.lines() {
                if let Ok(value) = serde_json::from_str::<Value>(line) {
                    records.push(value);
                }
            }
        }
        println!("{}", report::markdown(&records));
        // The default, and its `-ephemeral` run if there is one: the issue
        // asks for both modes.
        for label in [against.clone(), format!("{against}-ephemeral")] {
            if records.iter().any(|r| r["target"] == label.as_str()) {
                println!("### Targets: `{label}`\n\n{}", report::targets(&records, &label));
            }
        }
        return Ok(());
    }
    let kind = cli.kind.unwrap_or(if cli.raw { Kind::Raw } else { Kind::Switchboard });
    let target = Target::parse(&cli.target, kind)?;
    let label = cli.label.clone().unwrap_or_else(|| match kind {
        Kind::Switchboard => "switchboard".into(),
        Kind::Naive => "naive-hub".into(),
        Kind::Raw => "raw-relay".into(),
    });
    let mut ctx = Ctx::new(target, label, cli.server_pid, cli.max_secs, cli.size);
    ctx.receiver_target =
        cli.receiver_target.as_deref().map(|r| Target::parse(r, kind)).transpose()?;
    let ctx = Arc::new(ctx);
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let records = tokio::task::LocalSet::new().block_on(&runtime, run(ctx, cli.command))?;
    eprintln!("\n{}", report::markdown(&records));
    Ok(())
}

fn emit(records: &mut Vec<Value>, record: Value) {
    let mut stdout = std::io::stdout().lock();
    let _ = writeln!(stdout, "{record}");
    let _ = stdout.flush();
    records.push(record);
}

fn default_vias(kind: Kind, vias: &[Via]) -> Vec<Via> {
    if !vias.is_empty() {
        return vias.to_vec();
    }
    match kind {
        Kind::Switchboard => vec![Via::Api, Via::Room],
        Kind::Naive | Kind::Raw => vec![Via::Msg],
    }
}

async fn run(ctx: Arc<Ctx>, command: Command) -> anyhow::Result<Vec<Value>> {
    let mut records = Vec::new();
    match command {
        Command::Dm(p) => emit(&mut records, workloads::dm(&ctx, &p, "main").await?),
        Command::Fanout { params, via } => {
            for via in default_vias(ctx.target.kind, &via) {
                emit(&mut records, workloads::fanout(&ctx, &params, via).await?);
            }
        }
        Command::Idle { params, rtt } => {
            for record in workloads::idle(&ctx, &params, &rtt).await? {
                emit(&mut records, record);
            }
        }
        Command::Rtt { params, under_dm, dm } => {
            emit(&mut records, workloads::rtt(&ctx, &params).await?);
            if under_dm {
                for record in workloads::rtt_under_dm(&ctx, &params, &dm).await? {
                    emit(&mut records, record);
                }
            }
        }
        Command::Churn(p) => emit(&mut records, workloads::churn(&ctx, &p).await?),
        Command::All { dm, fanout, idle, rtt, churn, rtt_dm_messages } => {
            // Idle first: the RSS delta is cleanest on a fresh server.
            let steps: [&str; 7] =
                ["idle", "rtt", "dm", "dm_v1", "rtt_under_dm", "fanout", "churn"];
            for step in steps {
                let result: anyhow::Result<Vec<Value>> = match step {
                    "idle" => workloads::idle(&ctx, &idle, &rtt).await,
                    "rtt" => workloads::rtt(&ctx, &rtt).await.map(|r| vec![r]),
                    "dm" => workloads::dm(&ctx, &dm, "main").await.map(|r| vec![r]),
                    // The structured protocol with an ack per message, which
                    // the references do not speak.
                    "dm_v1" if ctx.target.kind == Kind::Switchboard => {
                        let v1 = DmParams { protocol: workloads::Protocol::V1, ..dm.clone() };
                        workloads::dm(&ctx, &v1, "v1_acked").await.map(|r| vec![r])
                    }
                    "dm_v1" => Ok(Vec::new()),
                    "rtt_under_dm" => {
                        let load = DmParams { messages: rtt_dm_messages, ..dm.clone() };
                        workloads::rtt_under_dm(&ctx, &rtt, &load).await
                    }
                    "fanout" => {
                        let mut out = Vec::new();
                        for via in default_vias(ctx.target.kind, &[]) {
                            out.push(workloads::fanout(&ctx, &fanout, via).await);
                        }
                        out.into_iter().collect()
                    }
                    _ => workloads::churn(&ctx, &churn).await.map(|r| vec![r]),
                };
                match result {
                    Ok(list) => list.into_iter().for_each(|r| emit(&mut records, r)),
                    Err(error) => eprintln!("  {step}[{}] failed: {error:#}", ctx.label),
                }
                tokio::time::sleep(std::time::Duration::from_millis(500)).await;
            }
        }
        Command::Report { .. } => {}
    }
    Ok(records)
}
