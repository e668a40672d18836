//! A real `redis-server` for the cluster tests.

use std::net::TcpListener;
use std::process::Stdio;
use std::time::Duration;

use switchboard::config::Config;
use tokio::process::{Child, Command};

use super::process::ServerProcess;
use super::{eventually, test_config, TestServer, WAIT};

/// TTL used by the tests: a dead node's names are freed within ~2 s.
pub const TTL_SECS: u64 = 2;

/// A `redis-server` child on a loopback port of its own.
pub struct Redis {
    port: u16,
    child: Option<Child>,
}

impl Redis {
    pub async fn start() -> Redis {
        let port =
            TcpListener::bind("127.0.0.1:0").expect("bind").local_addr().expect("addr").port();
        let mut redis = Redis { port, child: None };
        redis.spawn().await;
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub async fn spawn(&mut self) {
        let child = Command::new("redis-server")
            .args(["--port", &self.port.to_string(), "--bind", "127.0.0.1"])
            .args(["--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .unwrap_or_else(|e| {
                panic!(
                    "cannot start redis-server ({e}): the cluster tests need a real Redis; \
                     install it with `apt-get install -y redis-server` (.ci/run does)"
                )
            });
        self.child = Some(child);
        let client = redis::Client::open(self.url()).expect("redis url");
        for _ in 0..200 {
            if let Ok(mut conn) = client.get_multiplexed_async_connection().await {
                if redis::cmd("PING").query_async::<String>(&mut conn).await.is_ok() {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
        panic!("redis-server on port {} did not answer PING", self.port);
    }

    /// Kills Redis (as a crash would) and waits until it is gone.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill().await;
        }
    }
}

pub fn node_config(redis: &Redis, id: &str) -> Config {
    Config {
        cluster: Some(redis.url()),
        cluster_node_id: Some(id.to_owned()),
        cluster_ttl_secs: TTL_SECS,
        ..test_config()
    }
}

pub async fn nodes(redis: &Redis, n: usize) -> Vec<TestServer> {
    let mut nodes = Vec::new();
    for i in 1..=n {
        nodes.push(TestServer::start_with(node_config(redis, &format!("n{i}"))).await);
    }
    for node in &nodes {
        let hub = node.hub.clone();
        // Attached (not the single-node bus) and connected: before, a
        // handshake gets 503 (a node must hold a name to number its messages).
        eventually("bus connected", || hub.bus().is_clustered() && hub.bus().healthy()).await;
    }
    nodes
}

/// Waits until every node sees `count` clients cluster-wide.
pub async fn settle(nodes: &[TestServer], count: usize) {
    for node in nodes {
        let hub = node.hub.clone();
        eventually(&format!("{count} clients visible on every node"), || {
            hub.online().len() == count
        })
        .await;
    }
}

/// A node run as the real binary (so a test can kill it with -9), with
/// node id `id`, once its bus is up: before, a handshake gets 503 (issue 7:
/// a node must hold a name's claim to number its deliveries).
pub async fn node_process(redis: &Redis, id: &str) -> ServerProcess {
    let ttl = TTL_SECS.to_string();
    let url = redis.url();
    let node = ServerProcess::start(&[
        "--cluster",
        &url,
        "--cluster-ttl-secs",
        &ttl,
        "--cluster-node-id",
        id,
    ])
    .await;
    let ready = format!("http://{}/readyz", node.addr);
    tokio::time::timeout(WAIT, async {
        while !reqwest::get(&ready).await.is_ok_and(|r| r.status() == 200) {
            tokio::time::sleep(Duration::from_millis(25)).await;
        }
    })
    .await
    .expect("node process ready");
    node
}
