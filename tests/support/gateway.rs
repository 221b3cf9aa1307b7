//! A gateway on the host for the local-cloud tests: its own `betaas-vmd` (on the shared test
//! libvirtd, LXC containers sharing the host's network) and a `betaas-agent` admitted to an
//! instance, each with a log in the gateway's directory.

use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use crate::{bin, wait_until, KillOnDrop, Mosquitto};

/// A new instance's key pair in `root/instance` (for [`HostGw::start`] and `VmClient::admit`).
pub fn instance_keys(root: &Path) -> PathBuf {
    let keys = root.join("instance");
    let st = Command::new(bin("betaas-agent"))
        .args(["instance", "keygen", "--out"])
        .arg(&keys)
        .status()
        .expect("keygen");
    assert!(st.success(), "betaas-agent instance keygen");
    keys
}

pub struct HostGw {
    pub name: String,
    pub dir: PathBuf,
    pub socket: PathBuf,
    pub vmd: Option<KillOnDrop>,
    pub agent: Option<KillOnDrop>,
}

impl HostGw {
    /// Starts gateway `name` under `root`: its vmd (domains named and owned `<tag><name>`, the
    /// built templates in `templates`), admitted with the instance key in `keys`, then its agent
    /// on `broker`. `instance` is the rest of the agent's `[instance]` section (name, timing,
    /// capacity, `[[instance.templates]]`); `keys`, `virt` and `vmd_socket` are set here.
    pub fn start(
        root: &Path,
        name: &str,
        tag: &str,
        templates: &Path,
        broker: &Mosquitto,
        keys: &Path,
        instance: &str,
    ) -> HostGw {
        let dir = root.join(name);
        std::fs::create_dir_all(&dir).expect("gw dir");
        let socket = dir.join("vmd.sock");
        std::fs::write(
            dir.join("vmd.toml"),
            format!(
                "socket = \"{}\"\nowner = \"{tag}{name}\"\nname_prefix = \"{tag}{name}\"\n\
                 state_dir = \"{}\"\ntemplates = [\"{}\"]\narch = \"x86_64\"\naddress = \"127.0.0.1\"\n\
                 shutdown_timeout_s = 10\nidle_destroy_s = 3600\nlibvirt_retry_s = 90\n[probe]\nkinds = [\"lxc\"]\ntimeout_s = 60\n",
                socket.display(),
                dir.join("vms").display(),
                templates.display()
            ),
        )
        .expect("vmd.toml");
        let log = std::fs::File::create(dir.join("vmd.log")).expect("vmd.log");
        let vmd = KillOnDrop(
            Command::new(bin("betaas-vmd"))
                .arg("--config")
                .arg(dir.join("vmd.toml"))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("vmd"),
        );
        let st = Command::new(bin("betaas-agent"))
            .args(["instance", "admit", "--instance-key"])
            .arg(keys.join("instance.key"))
            .args(["--gateway", name, "--out"])
            .arg(dir.join("keys"))
            .status()
            .expect("admit");
        assert!(st.success());
        let toml = format!(
            "gateway_id = \"{name}\"\ndata_dir = \"{d}/data\"\nlog_level = \"info\"\n[mqtt]\nhost = \"127.0.0.1\"\nport = {port}\n\
             [health]\ninterval_secs = 1\n[instance]\nkeys = \"{d}/keys\"\nvirt = \"lxc\"\nvmd_socket = \"{s}\"\n{instance}",
            d = dir.display(),
            port = broker.port,
            s = socket.display(),
        );
        std::fs::write(dir.join("agent.toml"), toml).expect("agent.toml");
        let mut gw = HostGw {
            name: name.to_owned(),
            dir,
            socket,
            vmd: Some(vmd),
            agent: None,
        };
        wait_until(
            &format!("{name}'s vmd socket"),
            Duration::from_secs(120),
            || UnixStream::connect(&gw.socket).ok(),
        );
        gw.spawn_agent();
        gw
    }

    /// (Re)starts the agent, appending to its log.
    pub fn spawn_agent(&mut self) {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.join("agent.log"))
            .expect("agent.log");
        self.agent = Some(KillOnDrop(
            Command::new(bin("betaas-agent"))
                .arg("--config")
                .arg(self.dir.join("agent.toml"))
                .stderr(Stdio::from(log))
                .spawn()
                .expect("agent"),
        ));
    }

    /// The agent's process id (to stop and continue it: a gateway cut off, then back).
    pub fn agent_pid(&self) -> u32 {
        self.agent.as_ref().expect("the agent runs").0.id()
    }

    /// A VM's console log.
    pub fn console(&self, vm: &str) -> PathBuf {
        self.dir.join("vms").join(vm).join("serial.log")
    }
}
