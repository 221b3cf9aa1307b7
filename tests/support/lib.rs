//! Helpers for the end-to-end tests: a real mosquitto, a subscriber, the firmware under QEMU, QMP.
//! Each helper kills exactly the process it started when dropped, and every wait is bounded.

use serde_json::Value;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc::{self, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

pub mod app;
pub mod bigdata;
pub mod gateway;
pub mod libvirtd;

/// Seeds this thread's `fastrand` for a test whose inputs are random, from `TEST_SEED` if set,
/// else at random, and prints the seed: `TEST_SEED=<seed>` repeats a failing run's inputs
/// (those drawn on this thread).
pub fn seeded() -> u64 {
    let seed = std::env::var("TEST_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| fastrand::u64(..));
    fastrand::seed(seed);
    eprintln!("TEST_SEED={seed}");
    seed
}

/// The repository root (this crate lives in `tests/`).
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_owned()
}

pub fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind an ephemeral port");
    l.local_addr().expect("local addr").port()
}

/// Waits until `f` returns Some, polling every 50 ms, or panics with `what` after `timeout`.
pub fn wait_until<T>(what: &str, timeout: Duration, mut f: impl FnMut() -> Option<T>) -> T {
    let end = Instant::now() + timeout;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < end,
            "timed out after {timeout:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A binary of this workspace, built by `cargo build --workspace --bins` into
/// `$CARGO_TARGET_DIR/debug` (`target/debug` without it).
pub fn bin(name: &str) -> PathBuf {
    let p = std::env::var_os("CARGO_TARGET_DIR")
        .map_or(repo().join("target"), PathBuf::from)
        .join("debug")
        .join(name);
    assert!(
        p.exists(),
        "{} missing: `cargo build --workspace --bins` (make test and make test-e2e do)",
        p.display()
    );
    p
}

/// The sha256 of a file as `sha256sum` prints it (hex).
pub fn sha256_hex(p: &Path) -> String {
    let out = Command::new("sha256sum")
        .arg(p)
        .output()
        .expect("sha256sum runs");
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Serves one file over HTTP/1.0 on 127.0.0.1 (the guest reaches it at 10.0.2.2) from a thread,
/// for as long as the test runs; returns the port. Every GET gets the whole file.
pub fn serve_file(path: &Path) -> u16 {
    use std::io::Read;
    let listener = std::net::TcpListener::bind("0.0.0.0:0").expect("bind");
    let port = listener.local_addr().expect("addr").port();
    let path = path.to_owned();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(mut c) = conn else { continue };
            let mut buf = [0u8; 4096];
            let _ = c.read(&mut buf);
            let body = std::fs::read(&path).unwrap_or_default();
            let head = format!(
                "HTTP/1.0 200 OK\r\nContent-Type: application/octet-stream\r\nContent-Length: {}\r\n\r\n",
                body.len()
            );
            let _ = c
                .write_all(head.as_bytes())
                .and_then(|()| c.write_all(&body));
        }
    });
    port
}

/// The sha256 (hex) of `len` bytes of a file from byte `start` (a partition of a disk image).
pub fn range_sha256(p: &Path, start: u64, len: u64) -> String {
    let out = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "dd if=\"$0\" bs=1M iflag=skip_bytes,count_bytes skip={start} count={len} status=none | sha256sum"
        ))
        .arg(p)
        .output()
        .expect("dd | sha256sum runs");
    assert!(out.status.success(), "reading {} failed", p.display());
    String::from_utf8_lossy(&out.stdout)
        .split_whitespace()
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// Writes `toml` to `dir/agent.toml` and starts the agent binary `bin` on it (stderr to null);
/// killed on drop.
/// A client of an instance (`betaas-agent instance admit --client`), sending signed VM requests
/// the way an application or an operator does: with `betaas-agent vm request|release`.
pub struct VmClient {
    pub keys: PathBuf,
    pub instance: String,
    pub broker: String,
}

impl VmClient {
    /// Admits client `name` with the instance key `instance_key` into `out`.
    pub fn admit(
        instance_key: &Path,
        instance: &str,
        name: &str,
        out: &Path,
        broker: &Mosquitto,
    ) -> VmClient {
        let st = Command::new(bin("betaas-agent"))
            .args(["instance", "admit", "--instance-key"])
            .arg(instance_key)
            .args(["--client", name, "--out"])
            .arg(out)
            .status()
            .expect("betaas-agent instance admit --client");
        assert!(st.success(), "instance admit --client {name}");
        VmClient {
            keys: out.to_owned(),
            instance: instance.to_owned(),
            broker: format!("{}:{}", broker.host, broker.port),
        }
    }

    /// `vm request` (or `vm release` with `["--vm", VM, "--target", CLOUD]`) to `gateway` with
    /// request id `id`; returns the result the CLI printed and its exit code.
    pub fn run(
        &self,
        verb: &str,
        gateway: &str,
        id: &str,
        args: &[&str],
        timeout_s: u64,
    ) -> (Value, i32) {
        let out = Command::new(bin("betaas-agent"))
            .args([
                "vm",
                verb,
                "--mqtt",
                &self.broker,
                "--instance",
                &self.instance,
                "--keys",
            ])
            .arg(&self.keys)
            .args([
                "--gateway",
                gateway,
                "--id",
                id,
                "--timeout",
                &timeout_s.to_string(),
            ])
            .args(args)
            .output()
            .expect("betaas-agent vm");
        let text = String::from_utf8_lossy(&out.stdout);
        let v = serde_json::from_str(text.trim()).unwrap_or_else(|e| {
            panic!(
                "vm {verb}: not one JSON line ({e}): {text}\n{}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
        (v, out.status.code().unwrap_or(-1))
    }

    /// A signed request for `template`: the result object.
    pub fn request(&self, gateway: &str, id: &str, template: &str, timeout_s: u64) -> Value {
        self.run("request", gateway, id, &["--template", template], timeout_s)
            .0
    }
}

pub fn spawn_agent(bin: impl AsRef<std::ffi::OsStr>, dir: &Path, toml: &str) -> KillOnDrop {
    std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
    KillOnDrop(
        Command::new(bin)
            .arg("--config")
            .arg(dir.join("agent.toml"))
            .stderr(Stdio::null())
            .spawn()
            .expect("agent"),
    )
}

/// The VMs a `betaas-vmd` listening on `socket` manages (its answer to `List`).
pub fn vmd_list(socket: &Path) -> Vec<betaas_proto::VmInfo> {
    let s = UnixStream::connect(socket).expect("vmd socket");
    match betaas_proto::blocking::Client::new(s)
        .call(&betaas_proto::Request::List)
        .expect("list")
    {
        betaas_proto::Response::Vms(v) => v,
        other => panic!("list answered {other:?}"),
    }
}

/// mosquitto drops QoS 1 messages for a subscriber more than 1000 behind (its default): a backlog
/// drained after minutes of outage outruns a test's subscriber on a loaded machine, and the test
/// would count the broker's drops as the agent's losses. The observer's queue is unbounded.
const OBSERVER_QUEUE: &str = "max_queued_messages 0\n";

/// A real mosquitto on a loopback port (QEMU's user network reaches it as 10.0.2.2:port), or an
/// external broker the caller names.
pub struct Mosquitto {
    pub host: String,
    pub port: u16,
    child: Option<Child>,
    _dir: Option<tempfile::TempDir>,
}

impl Mosquitto {
    /// Starts mosquitto on a free port.
    pub fn start() -> Mosquitto {
        Mosquitto::start_on(free_port())
    }

    /// A broker this process does not own (`BROKER=host:port`).
    pub fn external(host: &str, port: u16) -> Mosquitto {
        Mosquitto {
            host: host.to_owned(),
            port,
            child: None,
            _dir: None,
        }
    }

    /// Whether something already listens on `port` on loopback.
    pub fn port_in_use(port: u16) -> bool {
        TcpStream::connect(("127.0.0.1", port)).is_ok()
    }

    pub fn start_on(port: u16) -> Mosquitto {
        Mosquitto::start_with(port, "")
    }

    /// Starts mosquitto on `port` with extra configuration lines.
    pub fn start_with(port: u16, extra_conf: &str) -> Mosquitto {
        let dir = tempfile::tempdir().expect("tempdir");
        let conf = dir.path().join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence false\n{OBSERVER_QUEUE}{extra_conf}"
            ),
        )
        .expect("write mosquitto.conf");
        Mosquitto::launch(&conf, port, Some(dir))
    }

    fn launch(conf: &Path, port: u16, dir: Option<tempfile::TempDir>) -> Mosquitto {
        let child = Command::new("mosquitto")
            .arg("-c")
            .arg(conf)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto (installed by image/host-deps.sh)");
        wait_until("mosquitto to listen", Duration::from_secs(10), || {
            TcpStream::connect(("127.0.0.1", port)).ok()
        });
        Mosquitto {
            host: "127.0.0.1".into(),
            port,
            child: Some(child),
            _dir: dir,
        }
    }

    /// Subscribes with mosquitto_sub; every message arrives as (topic, payload). Returns once the
    /// subscription is active (a retained marker message has come back through it).
    pub fn subscribe(&self, filter: &str) -> Subscriber {
        self.subscribe_with(&[filter], &[])
    }

    /// Like [`Mosquitto::subscribe`], with a persistent session (`-c -i client_id`): QoS 1
    /// messages published while this client is away are queued by the broker for the next
    /// subscriber with the same id.
    pub fn subscribe_session(&self, filter: &str, client_id: &str) -> Subscriber {
        self.subscribe_with(&[filter], &["-c", "-i", client_id])
    }

    /// Subscribes to several filters at once (one SUBSCRIBE); `session`: a persistent session id.
    pub fn subscribe_filters(&self, filters: &[&str], session: Option<&str>) -> Subscriber {
        match session {
            Some(id) => self.subscribe_with(filters, &["-c", "-i", id]),
            None => self.subscribe_with(filters, &[]),
        }
    }

    /// The retained marker is subscribed last, so every filter's retained messages come first.
    fn subscribe_with(&self, filters: &[&str], extra: &[&str]) -> Subscriber {
        const READY: &str = "betaas-e2e/ready";
        let port = self.port.to_string();
        let ok = Command::new("mosquitto_pub")
            .args([
                "-h", &self.host, "-p", &port, "-t", READY, "-r", "-q", "1", "-m", "1",
            ])
            .status()
            .expect("run mosquitto_pub");
        assert!(ok.success(), "mosquitto_pub failed");
        let mut child = Command::new("mosquitto_sub")
            .args(["-h", &self.host, "-p", &port])
            .args(filters.iter().flat_map(|f| ["-t", f]))
            .args(["-t", READY, "-v", "-q", "1"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start mosquitto_sub");
        let out = child.stdout.take().expect("piped stdout");
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            // Lossy: a binary payload (instance bus messages) must not end the reader.
            for line in BufReader::new(out).split(b'\n').map_while(Result::ok) {
                let line = String::from_utf8_lossy(&line);
                let (topic, payload) = line.split_once(' ').unwrap_or((&line, ""));
                // mosquitto_sub -v prints a zero-length payload (a retained-message removal) as "(null)".
                let payload = if payload == "(null)" { "" } else { payload };
                if tx.send((topic.to_owned(), payload.to_owned())).is_err() {
                    break;
                }
            }
        });
        let mut sub = Subscriber {
            child,
            rx,
            early: Vec::new(),
        };
        let mut early = Vec::new();
        sub.wait_for("the subscription", Duration::from_secs(10), |t, p| {
            if t == READY {
                return Some(());
            }
            early.push((t.to_owned(), p.to_owned()));
            None
        });
        sub.early = early;
        sub
    }
}

impl Drop for Mosquitto {
    fn drop(&mut self) {
        if let Some(child) = self.child.as_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

pub struct Subscriber {
    child: Child,
    rx: Receiver<(String, String)>,
    /// Messages that arrived before the subscription was known to be active (retained ones).
    early: Vec<(String, String)>,
}

impl Subscriber {
    /// The messages that came before the subscription was known to be active: the retained
    /// messages of the filters (not yet consumed by `wait_for`/`next`).
    pub fn early(&self) -> &[(String, String)] {
        &self.early
    }

    /// Returns the first message for which `f` returns Some, skipping others, or panics after `timeout`.
    pub fn wait_for<T>(
        &mut self,
        what: &str,
        timeout: Duration,
        mut f: impl FnMut(&str, &str) -> Option<T>,
    ) -> T {
        while !self.early.is_empty() {
            let (topic, payload) = self.early.remove(0);
            if let Some(v) = f(&topic, &payload) {
                return v;
            }
        }
        let end = Instant::now() + timeout;
        loop {
            let left = end.saturating_duration_since(Instant::now());
            match self.rx.recv_timeout(left) {
                Ok((topic, payload)) => {
                    if let Some(v) = f(&topic, &payload) {
                        return v;
                    }
                }
                Err(RecvTimeoutError::Timeout) => {
                    panic!("timed out after {timeout:?} waiting for {what}")
                }
                Err(RecvTimeoutError::Disconnected) => panic!("subscriber died waiting for {what}"),
            }
        }
    }
}

impl Subscriber {
    /// The next message within `timeout`, if any.
    pub fn next(&mut self, timeout: Duration) -> Option<(String, String)> {
        if !self.early.is_empty() {
            return Some(self.early.remove(0));
        }
        self.rx.recv_timeout(timeout).ok()
    }
}

impl Drop for Subscriber {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The firmware image of one board booted under QEMU through its generated `run-qemu.sh`, on a
/// private copy of the image, with a provisioned agent config, a QMP socket and the serial console
/// captured in `console.log`.
pub struct Qemu {
    child: Child,
    pub dir: tempfile::TempDir,
    qmp: Option<Qmp>,
    board: String,
    /// The serial console's input (the board's getty): [`Qemu::shell`] types into it.
    console_in: Option<std::process::ChildStdin>,
    logged_in: bool,
    shell_seq: u32,
}

impl Qemu {
    pub fn boot(board: &str, agent_toml: &str) -> Qemu {
        Qemu::boot_with(board, agent_toml, &[])
    }

    /// Boots with extra QEMU arguments (e.g. another `-device`).
    pub fn boot_with(board: &str, agent_toml: &str, extra: &[&str]) -> Qemu {
        let dir = tempfile::tempdir().expect("tempdir");
        Qemu::start(board, agent_toml, extra, &[], dir, false)
    }

    /// Boots with `run-qemu.sh` settings in the environment (`PROVISION=DIR`, `HOSTFWD=...`).
    pub fn boot_env(board: &str, agent_toml: &str, env: &[(&str, &str)]) -> Qemu {
        let dir = tempfile::tempdir().expect("tempdir");
        Qemu::start(board, agent_toml, &[], env, dir, false)
    }

    /// Boots the same disk again after [`Qemu::kill`] (a power cut): the data partition is kept.
    pub fn reboot(mut self, agent_toml: &str) -> Qemu {
        self.kill();
        let board = self.board.clone();
        let dir = std::mem::replace(&mut self.dir, tempfile::tempdir().expect("tempdir"));
        Qemu::start(&board, agent_toml, &[], &[], dir, true)
    }

    fn start(
        board: &str,
        agent_toml: &str,
        extra: &[&str],
        env: &[(&str, &str)],
        dir: tempfile::TempDir,
        keep: bool,
    ) -> Qemu {
        let script = repo().join("out").join(board).join("run-qemu.sh");
        assert!(
            script.exists(),
            "{} missing: run `make image BOARD={board}` (make test does)",
            script.display()
        );
        let toml = dir.path().join("agent.toml");
        std::fs::write(&toml, agent_toml).expect("write agent.toml");
        let sock = dir.path().join("qmp.sock");
        let log = std::fs::File::create(dir.path().join("console.log")).expect("console.log");
        let child = Command::new(&script)
            .env("AGENT_TOML", &toml)
            .env("IMAGE_COPY", dir.path().join("sdcard.img"))
            .env("KEEP_IMAGE", if keep { "1" } else { "0" })
            .envs(env.iter().copied())
            .args(extra)
            .arg("-qmp")
            .arg(format!("unix:{},server=on,wait=off", sock.display()))
            .stdin(Stdio::piped())
            .stdout(log.try_clone().expect("dup log"))
            .stderr(log)
            .spawn()
            .expect("start run-qemu.sh");
        let mut child = child;
        let console_in = child.stdin.take();
        let mut vm = Qemu {
            child,
            dir,
            qmp: None,
            board: board.to_owned(),
            console_in,
            logged_in: false,
            shell_seq: 0,
        };
        let qmp = wait_until("QMP socket", Duration::from_secs(30), || {
            Qmp::connect(&sock).ok()
        });
        vm.qmp = Some(qmp);
        vm
    }

    pub fn qmp(&mut self) -> &mut Qmp {
        self.qmp.as_mut().expect("connected at boot")
    }

    pub fn console(&self) -> String {
        String::from_utf8_lossy(
            &std::fs::read(self.dir.path().join("console.log")).unwrap_or_default(),
        )
        .into_owned()
    }

    fn type_line(&mut self, line: &str) {
        let w = self.console_in.as_mut().expect("console input");
        w.write_all(line.as_bytes())
            .and_then(|()| w.write_all(b"\n"))
            .and_then(|()| w.flush())
            .expect("type on the serial console");
    }

    /// Runs `cmd` in a root shell on the serial console (logging in at the board's getty first)
    /// and returns what it printed and its exit status. The end marker is computed by the shell
    /// (`$((…))`), so the echo of the typed line never matches it.
    pub fn shell(&mut self, cmd: &str, timeout: Duration) -> (String, i32) {
        if !self.logged_in {
            wait_until(
                "the console's login prompt",
                Duration::from_secs(300),
                || self.console().contains("login:").then_some(()),
            );
            let at = self.console().len();
            self.type_line("root");
            // login flushes what was typed before the shell starts: wait for the shell's banner.
            wait_until("the root shell", Duration::from_secs(60), || {
                self.console()
                    .get(at..)
                    .is_some_and(|t| t.contains("built-in shell"))
                    .then_some(())
            });
            std::thread::sleep(Duration::from_millis(500));
            self.logged_in = true;
            // Quiet kernel messages on the console: they would interleave with the output.
            self.type_line("dmesg -n 1; stty -echo 2>/dev/null");
        }
        self.shell_seq += 1;
        let n = 1000 + self.shell_seq;
        let start = self.console().len();
        self.type_line(&format!(
            "echo \"@@BEGIN$((0+{n}))@@\"; {cmd}; echo \"@@END$((0+{n})) $?@@\""
        ));
        let (begin, end) = (format!("@@BEGIN{n}@@"), format!("@@END{n} "));
        wait_until(&format!("`{cmd}` on the console"), timeout, || {
            let text = self.console();
            let text = text.get(start..)?;
            let b = text.find(&begin)? + begin.len();
            let e = b + text[b..].find(&end)?;
            let rc: String = text[e + end.len()..]
                .chars()
                .take_while(|c| c.is_ascii_digit())
                .collect();
            let rc = rc.parse().ok()?;
            text[e + end.len()..].contains("@@").then(|| {
                (
                    text[b..e]
                        .trim_matches(|c| c == '\r' || c == '\n')
                        .replace('\r', ""),
                    rc,
                )
            })
        })
    }

    /// Waits up to `timeout` for QEMU to stop by itself: the guest rebooted (run-qemu.sh passes
    /// `-no-reboot`, so a reset ends QEMU). True if it did.
    pub fn wait_exit(&mut self, timeout: Duration) -> bool {
        let end = Instant::now() + timeout;
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return true;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        false
    }

    /// Stops QEMU at once (like pulling the power).
    pub fn kill(&mut self) {
        if let Some(q) = self.qmp.as_mut() {
            let _ = q.execute("quit", serde_json::json!({}));
        }
        let end = Instant::now() + Duration::from_secs(5);
        while Instant::now() < end {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Qemu {
    fn drop(&mut self) {
        self.kill();
        if std::thread::panicking() {
            let console = self.console();
            let tail: Vec<&str> = console.lines().rev().take(60).collect();
            eprintln!("--- last console lines ---");
            for l in tail.iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

/// A minimal QEMU Machine Protocol client (JSON lines over a Unix socket).
pub struct Qmp {
    reader: BufReader<UnixStream>,
    writer: UnixStream,
}

impl Qmp {
    pub fn connect(path: &Path) -> std::io::Result<Qmp> {
        let s = UnixStream::connect(path)?;
        s.set_read_timeout(Some(Duration::from_secs(10)))?;
        let mut q = Qmp {
            reader: BufReader::new(s.try_clone()?),
            writer: s,
        };
        let mut greeting = String::new();
        q.reader.read_line(&mut greeting)?;
        q.execute("qmp_capabilities", serde_json::json!({}))
            .map_err(std::io::Error::other)?;
        Ok(q)
    }

    /// Runs a command and returns its `return` value; an `error` reply is an Err.
    pub fn execute(
        &mut self,
        cmd: &str,
        args: serde_json::Value,
    ) -> Result<serde_json::Value, String> {
        let req = serde_json::json!({"execute": cmd, "arguments": args});
        writeln!(self.writer, "{req}").map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            let n = self
                .reader
                .read_line(&mut line)
                .map_err(|e| e.to_string())?;
            if n == 0 {
                return Err("QMP closed".into());
            }
            let v: serde_json::Value = serde_json::from_str(&line).map_err(|e| e.to_string())?;
            if let Some(r) = v.get("return") {
                return Ok(r.clone());
            }
            if let Some(e) = v.get("error") {
                return Err(e.to_string());
            }
            // An asynchronous event: skip it.
        }
    }
}

/// A child process killed (SIGKILL) and reaped when this goes out of scope, e.g. an agent under test.
pub struct KillOnDrop(pub Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Sends SIGTERM to `pid` and waits (bounded) for `child` to exit; SIGKILL if it does not.
pub fn terminate(child: &mut Child, timeout: Duration) -> Option<std::process::ExitStatus> {
    let _ = Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status();
    let end = Instant::now() + timeout;
    while Instant::now() < end {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    let _ = child.kill();
    let _ = child.wait();
    None
}

impl Mosquitto {
    /// Starts mosquitto on `port` with persistence in `dir` (which outlives the broker) and no
    /// limit on messages queued for offline persistent sessions, so a broker stopped with
    /// [`Mosquitto::stop`] and started again on the same `dir` keeps its sessions and queues.
    pub fn start_persistent(port: u16, dir: &Path) -> Mosquitto {
        let conf = dir.join("mosquitto.conf");
        std::fs::write(
            &conf,
            format!(
                "listener {port} 127.0.0.1\nallow_anonymous true\npersistence true\n\
                 persistence_location {}/\nmax_queued_messages 0\n\
                 # As root mosquitto would switch to `mosquitto`, who cannot write a tempdir.\n\
                 user root\n",
                dir.display()
            ),
        )
        .expect("write mosquitto.conf");
        Mosquitto::launch(&conf, port, None)
    }

    /// Stops the broker cleanly (SIGTERM: it closes connections and saves its persistence).
    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            terminate(&mut child, Duration::from_secs(10));
        }
    }
}

impl Mosquitto {
    /// Publishes one binary message (a signed request) with mosquitto_pub (QoS 1), from stdin.
    pub fn publish_bytes(&self, topic: &str, payload: &[u8]) {
        use std::io::Write;
        let mut child = Command::new("mosquitto_pub")
            .args([
                "-h",
                &self.host,
                "-p",
                &self.port.to_string(),
                "-q",
                "1",
                "-t",
                topic,
                "-s",
            ])
            .stdin(Stdio::piped())
            .spawn()
            .expect("run mosquitto_pub");
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(payload)
            .expect("write payload");
        let st = child.wait().expect("mosquitto_pub");
        assert!(st.success(), "mosquitto_pub {topic} failed");
    }

    /// Publishes one message with mosquitto_pub (QoS 1).
    pub fn publish(&self, topic: &str, payload: &str) {
        self.publish_bytes(topic, payload.as_bytes());
    }
}
