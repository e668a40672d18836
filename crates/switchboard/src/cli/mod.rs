//! The `switchboard connect` terminal client (placeholder until the client library lands).

/// Options of `switchboard connect`.
#[derive(Debug, clap::Args)]
pub struct ConnectArgs {
    /// Server URL, e.g. ws://127.0.0.1:8888
    pub url: String,
    /// Client name.
    #[arg(long)]
    pub name: String,
    /// Print one JSON object per received event.
    #[arg(long)]
    pub json: bool,
}

/// Runs the client.
///
/// # Errors
/// When the connection fails.
pub async fn run(_args: ConnectArgs) -> anyhow::Result<()> {
    anyhow::bail!("not implemented yet")
}
