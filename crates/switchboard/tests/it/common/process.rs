//! The real `switchboard` binary as a child process, for tests that need
//! signals, a separate address space (RSS), or the CLI.

use std::net::SocketAddr;
use std::process::Stdio;
use std::time::Duration;

use tokio::io::{AsyncBufReadExt, BufReader};
use tokio::process::{Child, Command};

/// A `switchboard serve` child listening on a port it chose itself.
pub struct ServerProcess {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: tokio::sync::mpsc::UnboundedReceiver<String>,
}

impl ServerProcess {
    /// Starts `switchboard serve --listen 127.0.0.1:0 EXTRA...` and waits for its
    /// "listening" log line to learn the port.
    pub async fn start(extra: &[&str]) -> ServerProcess {
        ServerProcess::spawn(Command::new(env!("CARGO_BIN_EXE_switchboard")), extra).await
    }

    async fn spawn(mut command: Command, extra: &[&str]) -> ServerProcess {
        // Issue 7: a store of its own unless the test chose one (or none).
        let own_store = !extra.iter().any(|arg| *arg == "--data-dir" || *arg == "--ephemeral");
        let data_dir = own_store.then(super::temp_data_dir);
        let mut child = command
            .args(["serve", "--listen", "127.0.0.1:0"])
            .args(
                data_dir
                    .iter()
                    .flat_map(|dir| [std::ffi::OsStr::new("--data-dir"), dir.as_os_str()]),
            )
            .args(extra)
            .env("RUST_LOG", "info")
            .env("NO_COLOR", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard");
        let stderr = child.stderr.take().expect("stderr");
        let (tx, mut log) = tokio::sync::mpsc::unbounded_channel();
        tokio::spawn(async move {
            let mut lines = BufReader::new(stderr).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let _ = tx.send(line);
            }
        });
        let addr = tokio::time::timeout(Duration::from_secs(30), async {
            while let Some(line) = log.recv().await {
                if let Some(rest) = line.split("addr=").nth(1) {
                    if line.contains("listening") {
                        return rest.split_whitespace().next().and_then(|a| a.parse().ok());
                    }
                }
            }
            None
        })
        .await
        .expect("server start timed out")
        .expect("server printed its address");
        ServerProcess { child, addr, log }
    }

    pub fn pid(&self) -> u32 {
        self.child.id().expect("pid")
    }

    /// Resident set size of the server, in KiB, from /proc.
    pub fn rss_kib(&self) -> u64 {
        let status =
            std::fs::read_to_string(format!("/proc/{}/status", self.pid())).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.split_whitespace().next())
            .and_then(|v| v.parse().ok())
            .expect("VmRSS")
    }

    pub fn ws_url(&self, name: &str) -> String {
        format!("ws://{}/?name={}", self.addr, super::urlencode(name))
    }

    pub fn http(&self, path: &str) -> String {
        format!("http://{}{}", self.addr, path)
    }

    /// Sends a signal by name (TERM, INT, KILL) with kill(1).
    pub async fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .arg(format!("-{name}"))
            .arg(self.pid().to_string())
            .status()
            .await
            .expect("kill");
        assert!(status.success());
    }

    /// Waits for the process to exit and returns its exit code.
    pub async fn wait(mut self) -> Option<i32> {
        tokio::time::timeout(Duration::from_secs(30), self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait")
            .code()
    }
}
