//! `switchboard connect` as a real child process: write stdin lines, read
//! stdout lines, close stdin and collect the exit.

use std::process::Stdio;

use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader, Lines};
use tokio::process::{Child, ChildStdin, ChildStdout, Command};

use super::{TestServer, WAIT};

/// Most output lines a test looks through for the one it expects.
pub const MAX_LINES: usize = 10_000;

pub struct Cli {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    pub stdout: Lines<BufReader<ChildStdout>>,
}

impl Cli {
    pub fn spawn(url: &str, name: &str, extra: &[&str]) -> Cli {
        let mut child = Command::new(env!("CARGO_BIN_EXE_switchboard"))
            .args(["connect", url, "--name", name])
            .args(extra)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn switchboard connect");
        let stdin = child.stdin.take();
        let stdout = BufReader::new(child.stdout.take().expect("stdout")).lines();
        Cli { child, stdin, stdout }
    }

    /// Spawns and waits until the CLI reports its connection.
    pub async fn connected(server: &TestServer, name: &str, extra: &[&str]) -> Cli {
        let mut cli = Cli::spawn(&server.base_ws(), name, extra);
        let json = extra.contains(&"--json");
        cli.expect_line("connected", |line| {
            if json {
                line.contains(r#""type":"connected""#)
            } else {
                line.starts_with("* connected as")
            }
        })
        .await;
        cli
    }

    pub async fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin open");
        stdin.write_all(format!("{line}\n").as_bytes()).await.expect("write stdin");
        stdin.flush().await.expect("flush stdin");
    }

    /// Reads stdout until a line matches; panics on timeout or end of output.
    pub async fn expect_line(&mut self, what: &str, mut check: impl FnMut(&str) -> bool) -> String {
        let deadline = tokio::time::Instant::now() + WAIT;
        for _ in 0..MAX_LINES {
            match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) if check(&line) => return line,
                Ok(Ok(Some(_))) => continue,
                Ok(other) => panic!("output ended while waiting for {what}: {other:?}"),
                Err(_) => panic!("timed out waiting for {what}"),
            }
        }
        panic!("no {what} in {MAX_LINES} lines");
    }

    /// Closes stdin and waits for the exit; returns the exit code, the rest
    /// of stdout and all of stderr.
    pub async fn finish(mut self) -> (Option<i32>, Vec<String>, String) {
        drop(self.stdin.take());
        let mut rest = Vec::new();
        let deadline = tokio::time::Instant::now() + WAIT * 3;
        for _ in 0..MAX_LINES {
            match tokio::time::timeout_at(deadline, self.stdout.next_line()).await {
                Ok(Ok(Some(line))) => rest.push(line),
                Ok(_) => break,
                Err(_) => panic!("output did not end in time"),
            }
        }
        let status = tokio::time::timeout_at(deadline, self.child.wait())
            .await
            .expect("exit in time")
            .expect("wait");
        let mut stderr = String::new();
        if let Some(mut pipe) = self.child.stderr.take() {
            let _ = tokio::time::timeout(WAIT, pipe.read_to_string(&mut stderr)).await;
        }
        (status.code(), rest, stderr)
    }
}
