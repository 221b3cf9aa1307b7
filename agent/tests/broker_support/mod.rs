//! Brokers with several nodes for agent/tests/brokers.rs: a real 3-node RabbitMQ cluster
//! (Debian's `rabbitmq-server` with `rabbitmq_mqtt`, started without systemd, loopback only) and,
//! for comparison, one mosquitto behind one TCP relay per "node" (a node stopped = its relay cut).
#![allow(dead_code)]

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_e2e::{wait_until, Mosquitto};

/// The installed version of a Debian package (`dpkg-query`), or "?".
pub fn deb_version(pkg: &str) -> String {
    Command::new("dpkg-query")
        .args(["-W", "-f=${Version}", pkg])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
        .filter(|v| !v.is_empty())
        .unwrap_or_else(|| "?".into())
}

/// A TCP relay in front of a broker: a "node" that can be stopped (every connection closed, new
/// ones refused).
pub struct Relay {
    pub port: u16,
    open: Arc<AtomicBool>,
    conns: Arc<Mutex<Vec<TcpStream>>>,
}

impl Relay {
    pub fn start(target: u16) -> Relay {
        let listener = TcpListener::bind("127.0.0.1:0").expect("relay bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let r = Relay {
            port: listener.local_addr().expect("addr").port(),
            open: Arc::new(AtomicBool::new(true)),
            conns: Arc::new(Mutex::new(Vec::new())),
        };
        let (open, conns) = (r.open.clone(), r.conns.clone());
        std::thread::spawn(move || {
            while open.load(Ordering::SeqCst) {
                let Ok((client, _)) = listener.accept() else {
                    std::thread::sleep(Duration::from_millis(5));
                    continue;
                };
                let Ok(server) = TcpStream::connect(("127.0.0.1", target)) else {
                    continue;
                };
                let _ = client.set_nonblocking(false);
                for (from, to) in [(&client, &server), (&server, &client)] {
                    let (mut a, mut b) = (
                        from.try_clone().expect("clone"),
                        to.try_clone().expect("clone"),
                    );
                    std::thread::spawn(move || {
                        let mut buf = [0u8; 16 * 1024];
                        loop {
                            let n = match a.read(&mut buf) {
                                Ok(0) | Err(_) => break,
                                Ok(n) => n,
                            };
                            if b.write_all(&buf[..n]).is_err() {
                                break;
                            }
                        }
                        let _ = b.shutdown(Shutdown::Both);
                    });
                }
                let mut c = conns.lock().unwrap_or_else(|p| p.into_inner());
                c.push(client);
                c.push(server);
            }
        });
        r
    }

    pub fn cut(&self) {
        self.open.store(false, Ordering::SeqCst);
        for c in self
            .conns
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            let _ = c.shutdown(Shutdown::Both);
        }
    }
}

impl Drop for Relay {
    fn drop(&mut self) {
        self.cut();
    }
}

/// A free loopback port below the ephemeral range (32768–60999 on Linux), so that no outgoing
/// connection (the nodes' own, the CLI's) takes it between the test choosing it and a node
/// binding it.
fn quiet_port() -> u16 {
    loop {
        let port = fastrand::u16(20000..32000);
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

const RMQ_BIN: &str = "/usr/lib/rabbitmq/bin";

/// One node of the cluster.
struct RabbitNode {
    name: String,
    mqtt_port: u16,
    /// `rabbitmq-server` in its own process group (the script runs the Erlang VM as a child).
    child: Option<Child>,
}

/// A RabbitMQ cluster on loopback: each node with its own name, ports, data, logs and config
/// file under one temporary directory, the shared Erlang cookie in the test's `HOME` (that
/// directory), its own epmd port; stopped (SIGKILL to each node's process group, then its epmd)
/// on drop.
pub struct RabbitCluster {
    dir: tempfile::TempDir,
    epmd_port: u16,
    nodes: Vec<RabbitNode>,
}

impl RabbitCluster {
    /// Whether the Debian package's scripts are here.
    pub fn installed() -> bool {
        Path::new(RMQ_BIN).join("rabbitmq-server").exists()
    }

    fn home(&self) -> PathBuf {
        self.dir.path().join("home")
    }

    /// `rabbitmqctl -n <node> args…`, its output; panics on failure.
    fn ctl(&self, node: usize, args: &[&str]) -> String {
        self.try_ctl(node, args).unwrap_or_else(|e| panic!("{e}"))
    }

    /// `rabbitmqctl -n <node> args…`: its output, or why it failed (with the node's log).
    fn try_ctl(&self, node: usize, args: &[&str]) -> Result<String, String> {
        let out = Command::new(Path::new(RMQ_BIN).join("rabbitmqctl"))
            .arg("-n")
            .arg(&self.nodes[node].name)
            .args(args)
            .env("HOME", self.home())
            .env("ERL_EPMD_PORT", self.epmd_port.to_string())
            .env("ERL_EPMD_ADDRESS", "127.0.0.1")
            .stdin(Stdio::null())
            .output()
            .expect("rabbitmqctl");
        if !out.status.success() {
            return Err(format!(
                "rabbitmqctl -n {} {args:?}: {}{}\n--- node log ---\n{}",
                self.nodes[node].name,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr),
                self.node_log(node)
            ));
        }
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    }

    fn node_log(&self, node: usize) -> String {
        std::fs::read_to_string(self.dir.path().join(format!("n{node}")).join("out.log"))
            .unwrap_or_default()
    }

    /// Starts `n` nodes, waits for each, joins nodes 1.. to node 0 (`rabbitmqctl join_cluster`)
    /// and waits for every MQTT listener. A node that fails to boot (a port taken between the test
    /// choosing it and the node binding it) fails the attempt: up to three, each on new ports.
    pub fn start(n: usize) -> RabbitCluster {
        let mut failures = Vec::new();
        for _ in 0..3 {
            match RabbitCluster::start_once(n) {
                Ok(c) => return c,
                Err(e) => {
                    eprintln!("RabbitMQ cluster did not start, trying again on other ports:\n{e}");
                    failures.push(e);
                }
            }
        }
        panic!("RabbitMQ cluster did not start:\n{}", failures.join("\n\n"));
    }

    fn start_once(n: usize) -> Result<RabbitCluster, String> {
        let dir = tempfile::tempdir().expect("tempdir");
        let home = dir.path().join("home");
        std::fs::create_dir_all(&home).expect("home");
        let cookie = home.join(".erlang.cookie");
        std::fs::write(&cookie, format!("BETAAS{:016X}", fastrand::u64(..))).expect("cookie");
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&cookie, std::fs::Permissions::from_mode(0o400))
            .expect("cookie mode");
        let tag = format!("{:x}", fastrand::u32(..));
        let mut c = RabbitCluster {
            dir,
            epmd_port: quiet_port(),
            nodes: Vec::new(),
        };
        for i in 0..n {
            let nd = c.dir.path().join(format!("n{i}"));
            std::fs::create_dir_all(&nd).expect("node dir");
            let (amqp, dist, mqtt) = (quiet_port(), quiet_port(), quiet_port());
            let conf = nd.join("rabbitmq.conf");
            std::fs::write(
                &conf,
                format!(
                    "listeners.tcp.1 = 127.0.0.1:{amqp}\nmqtt.listeners.tcp.1 = 127.0.0.1:{mqtt}\n\
                     mqtt.allow_anonymous = true\n"
                ),
            )
            .expect("rabbitmq.conf");
            let plugins = nd.join("enabled_plugins");
            std::fs::write(&plugins, "[rabbitmq_mqtt].\n").expect("enabled_plugins");
            let name = format!("betaas{i}x{tag}@localhost");
            let log = std::fs::File::create(nd.join("out.log")).expect("out.log");
            let child = Command::new(Path::new(RMQ_BIN).join("rabbitmq-server"))
                .env("HOME", &home)
                .env("ERL_EPMD_PORT", c.epmd_port.to_string())
                .env("ERL_EPMD_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODENAME", &name)
                .env("RABBITMQ_NODE_IP_ADDRESS", "127.0.0.1")
                .env("RABBITMQ_NODE_PORT", amqp.to_string())
                .env("RABBITMQ_DIST_PORT", dist.to_string())
                .env("RABBITMQ_MNESIA_BASE", nd.join("mnesia"))
                .env("RABBITMQ_LOG_BASE", nd.join("log"))
                .env("RABBITMQ_CONFIG_FILE", &conf)
                .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
                .env(
                    "RABBITMQ_SERVER_ADDITIONAL_ERL_ARGS",
                    "-kernel inet_dist_use_interface {127,0,0,1}",
                )
                .stdin(Stdio::null())
                .stdout(log.try_clone().expect("dup"))
                .stderr(log)
                .process_group(0)
                .spawn()
                .expect("rabbitmq-server (installed by image/host-deps.sh)");
            c.nodes.push(RabbitNode {
                name,
                mqtt_port: mqtt,
                child: Some(child),
            });
        }
        for i in 0..n {
            // Registered with epmd first (await_startup gives up on a node epmd does not know).
            let short = c.nodes[i].name.split('@').next().expect("name").to_owned();
            let end = Instant::now() + Duration::from_secs(90);
            loop {
                let names = Command::new("epmd")
                    .args(["-port", &c.epmd_port.to_string(), "-names"])
                    .output()
                    .map(|o| String::from_utf8_lossy(&o.stdout).into_owned())
                    .unwrap_or_default();
                if names.contains(&format!("name {short} ")) {
                    break;
                }
                let exited = c.nodes[i]
                    .child
                    .as_mut()
                    .and_then(|ch| ch.try_wait().ok().flatten());
                if exited.is_some() || Instant::now() > end {
                    return Err(format!(
                        "node {i} did not start ({exited:?}):\n{}",
                        c.node_log(i)
                    ));
                }
                std::thread::sleep(Duration::from_millis(200));
            }
            c.try_ctl(i, &["await_startup", "--timeout", "120"])?;
        }
        for i in 1..n {
            let first = c.nodes[0].name.clone();
            c.try_ctl(i, &["stop_app"])?;
            c.try_ctl(i, &["join_cluster", &first])?;
            c.try_ctl(i, &["start_app"])?;
        }
        let status = c.try_ctl(0, &["cluster_status", "--formatter", "json"])?;
        let v: serde_json::Value = serde_json::from_str(&status).expect("cluster_status json");
        let running = v["running_nodes"].as_array().map_or(0, Vec::len);
        if running != n {
            return Err(format!("not every node runs in the cluster: {status}"));
        }
        for node in &c.nodes {
            let port = node.mqtt_port;
            wait_until("the MQTT listener", Duration::from_secs(30), || {
                TcpStream::connect(("127.0.0.1", port)).ok()
            });
        }
        Ok(c)
    }

    pub fn mqtt_ports(&self) -> Vec<u16> {
        self.nodes.iter().map(|n| n.mqtt_port).collect()
    }

    /// Stops node `i` (`rabbitmqctl stop`: the node leaves, its clients are disconnected).
    pub fn stop(&mut self, i: usize) {
        self.ctl(i, &["stop"]);
        if let Some(mut child) = self.nodes[i].child.take() {
            if betaas_e2e::terminate(&mut child, Duration::from_secs(20)).is_none() {
                kill_group(&mut child);
            }
        }
    }
}

fn kill_group(child: &mut Child) {
    let _ = Command::new("kill")
        .args(["-KILL", "--", &format!("-{}", child.id())])
        .status();
    let _ = child.kill();
    let _ = child.wait();
}

impl Drop for RabbitCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                kill_group(&mut child);
            }
        }
        // The Erlang VM started epmd on our port as a daemon: stop it once no node is left.
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            let ok = Command::new("epmd")
                .args(["-port", &self.epmd_port.to_string(), "-kill"])
                .env("ERL_EPMD_PORT", self.epmd_port.to_string())
                .output()
                .map(|o| String::from_utf8_lossy(&o.stdout).contains("Killed"))
                .unwrap_or(true);
            if ok || TcpStream::connect(("127.0.0.1", self.epmd_port)).is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
    }
}

/// The broker under test, with three nodes the agents can be told about.
pub enum Cluster {
    /// One mosquitto; each node is a relay to it.
    Mosquitto {
        broker: Mosquitto,
        relays: Vec<Relay>,
    },
    Rabbit(RabbitCluster),
}

impl Cluster {
    pub fn mosquitto(n: usize) -> Cluster {
        let broker = Mosquitto::start();
        let relays = (0..n).map(|_| Relay::start(broker.port)).collect();
        Cluster::Mosquitto { broker, relays }
    }

    pub fn name(&self) -> String {
        match self {
            Cluster::Mosquitto { relays, .. } => format!(
                "mosquitto {} (1 node, {} relays)",
                deb_version("mosquitto"),
                relays.len()
            ),
            Cluster::Rabbit(c) => format!(
                "RabbitMQ {} ×{}",
                deb_version("rabbitmq-server"),
                c.nodes.len()
            ),
        }
    }

    /// The MQTT port of each node.
    pub fn ports(&self) -> Vec<u16> {
        match self {
            Cluster::Mosquitto { relays, .. } => relays.iter().map(|r| r.port).collect(),
            Cluster::Rabbit(c) => c.mqtt_ports(),
        }
    }

    /// A client handle on node `i` (for mosquitto_sub / mosquitto_pub).
    pub fn node(&self, i: usize) -> Mosquitto {
        Mosquitto::external("127.0.0.1", self.ports()[i])
    }

    pub fn stop(&mut self, i: usize) {
        match self {
            Cluster::Mosquitto { relays, .. } => relays[i].cut(),
            Cluster::Rabbit(c) => c.stop(i),
        }
    }
}
