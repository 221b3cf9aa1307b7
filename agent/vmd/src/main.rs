//! `betaas-vmd [--config FILE] [--socket PATH]`: the VM manager daemon.

use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use betaas_vmd::config::Config;
use betaas_vmd::manager::Manager;
use betaas_vmd::server;
use clap::Parser;

#[derive(Parser)]
#[command(
    name = "betaas-vmd",
    version,
    about = "BETaaS VM manager: templates -> libvirt domains, served on a Unix socket"
)]
struct Args {
    /// TOML configuration (defaults apply when the file is absent).
    #[arg(long, default_value = "/etc/betaas/vmd.toml")]
    config: PathBuf,
    /// Overrides the config's `socket`.
    #[arg(long)]
    socket: Option<PathBuf>,
}

fn main() -> ExitCode {
    // BETAAS_VMD_DEBUG=1 logs every request.
    let level = if std::env::var_os("BETAAS_VMD_DEBUG").is_some() {
        tracing::Level::DEBUG
    } else {
        tracing::Level::INFO
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_max_level(level)
        .init();
    let args = Args::parse();
    let mut cfg = if args.config.exists() {
        match Config::load(&args.config) {
            Ok(c) => c,
            Err(e) => {
                eprintln!("betaas-vmd: {e}");
                return ExitCode::from(2);
            }
        }
    } else {
        Config::default()
    };
    for w in &cfg.warnings {
        tracing::warn!("{w}");
    }
    if let Some(s) = args.socket {
        cfg.socket = s;
    }
    if let Err(e) = std::fs::create_dir_all(&cfg.state_dir) {
        eprintln!("betaas-vmd: {}: {e}", cfg.state_dir.display());
        return ExitCode::from(1);
    }
    let (limits, owner) = match server::Limits::from_config(&cfg) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("betaas-vmd: {}: {e}", args.config.display());
            return ExitCode::from(2);
        }
    };
    let listener = match server::bind(&cfg.socket, cfg.socket_mode, owner) {
        Ok(l) => l,
        Err(e) => {
            eprintln!("betaas-vmd: cannot listen on {}: {e}", cfg.socket.display());
            return ExitCode::from(1);
        }
    };
    let interval = Duration::from_secs(cfg.reap_interval_s);
    let supervise = Duration::from_millis(cfg.supervise_interval_ms);
    let probe_at_start = cfg.probe.at_start;
    let mut mgr = Manager::new(cfg);
    // Adopt what we made before a restart; libvirtd being down is not fatal (retried per request).
    if let Err(e) = mgr.refresh() {
        tracing::warn!(error = %e, "initial reconcile failed; will retry on each request");
    }
    tracing::info!(
        vms = mgr.list().map(|v| v.len()).unwrap_or(0),
        "registry after adoption"
    );
    let mgr = Arc::new(Mutex::new(mgr));
    // Ready to accept before probing: the probe boots guests for seconds, requests queue meanwhile.
    eprintln!(
        "betaas-vmd: listening on {}",
        server::lock(&mgr).config().socket.display()
    );
    if probe_at_start {
        let m = mgr.clone();
        std::thread::spawn(move || {
            if let Err(e) = server::lock(&m).probe(false) {
                tracing::warn!(error = %e, "capability probe failed");
            }
        });
    }
    server::reaper(mgr.clone(), interval);
    server::supervisor(mgr.clone(), supervise);
    server::serve(listener, mgr, limits);
    ExitCode::SUCCESS
}
