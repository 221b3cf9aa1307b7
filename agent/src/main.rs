//! `betaas-agent`: the BETaaS gateway agent.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

use betaas_agent::config::{Config, LogLevel};
use betaas_agent::{agent, commands};

#[derive(Parser)]
#[command(name = "betaas-agent", version, about = "BETaaS gateway agent")]
struct Cli {
    /// The agent's TOML configuration.
    #[arg(long, short, default_value = "/etc/betaas/agent.toml", global = true)]
    config: PathBuf,
    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand)]
enum Command {
    /// Run the agent (the default).
    Run,
    /// Check the configuration and exit: 0 when valid, 2 with the error otherwise.
    CheckConfig,
    /// Forecast a series with Holt's method (needs no configuration).
    Forecast(commands::forecast::ForecastArgs),
    /// Replay an allocation scenario and compare policies (needs no configuration).
    Simulate(commands::simulate::SimulateArgs),
    /// Instance keys: `keygen` makes the instance key pair, `admit` a gateway's or a client's key
    /// and credential.
    #[command(subcommand)]
    Instance(InstanceCommand),
    /// Signed VM requests from a client: prints the gateway's result as one JSON line
    /// (exit 0 local/remote/released, 1 cancel or timeout, 2 usage or key error).
    #[command(subcommand)]
    Vm(VmCommand),
    /// Signed firmware update: the gateway downloads the RAUC bundle at --url, installs it into the
    /// other A/B slot and reboots; prints its result as one JSON line (exit 0 installed).
    Update(commands::vm::UpdateArgs),
}

#[derive(Subcommand)]
enum VmCommand {
    /// Asks a gateway to run a template.
    Request(commands::vm::RequestArgs),
    /// Asks a gateway to release a VM (stopped, kept for reuse).
    Release(commands::vm::ReleaseArgs),
}

#[derive(Subcommand)]
enum InstanceCommand {
    /// Writes instance.key (0600, keep it off the gateways) and instance.pub into DIR.
    Keygen {
        #[arg(long)]
        out: PathBuf,
    },
    /// Writes gateway.key (0600), credential and instance.pub for GATEWAY into DIR: copy DIR to the
    /// gateway's /etc/betaas/instance. With --client NAME instead: client.key (0600), credential
    /// and instance.pub for an application or operator that sends signed VM requests
    /// (`betaas-agent vm request --keys DIR`); a client is not a member.
    Admit {
        #[arg(long)]
        instance_key: PathBuf,
        #[arg(long, required_unless_present = "client", conflicts_with = "client")]
        gateway: Option<String>,
        #[arg(long)]
        client: Option<String>,
        #[arg(long)]
        out: PathBuf,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // These need no configuration file: they run before it is loaded.
    match &command {
        Command::Forecast(args) => return commands::forecast::run(args),
        Command::Simulate(args) => return commands::simulate::run(args),
        Command::Vm(VmCommand::Request(args)) => return commands::vm::request(args),
        Command::Vm(VmCommand::Release(args)) => return commands::vm::release(args),
        Command::Update(args) => return commands::vm::update(args),
        Command::Instance(cmd) => {
            let done = match cmd {
                InstanceCommand::Keygen { out } => betaas_agent::instance::keygen(out),
                InstanceCommand::Admit {
                    instance_key,
                    gateway: Some(gateway),
                    out,
                    ..
                } => betaas_agent::instance::admit(instance_key, gateway, out),
                InstanceCommand::Admit {
                    instance_key,
                    client: Some(client),
                    out,
                    ..
                } => betaas_agent::instance::admit_client(instance_key, client, out),
                InstanceCommand::Admit { .. } => Err("admit needs --gateway or --client".into()),
            };
            return match done {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("betaas-agent: {e}");
                    ExitCode::from(2)
                }
            };
        }
        Command::Run | Command::CheckConfig => {}
    }
    let config = match Config::load(&cli.config) {
        Ok(c) => c,
        Err(e) => {
            eprintln!("betaas-agent: config error: {e}");
            return ExitCode::from(2);
        }
    };
    match command {
        Command::Forecast(_)
        | Command::Simulate(_)
        | Command::Instance(_)
        | Command::Vm(_)
        | Command::Update(_) => {
            ExitCode::SUCCESS // ran above
        }
        Command::CheckConfig => {
            // Then every file it names (keys, TLS, password, cloud credentials): all problems.
            let problems = config.check_files(&cli.config);
            for e in &problems {
                eprintln!("betaas-agent: config error: {e}");
            }
            if !problems.is_empty() {
                return ExitCode::from(2);
            }
            println!(
                "{}: ok ({} things)",
                cli.config.display(),
                config.things.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(config.log_level, config.api.as_ref().map(|a| a.log_lines));
            let rt = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("betaas-agent: cannot start runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            rt.block_on(agent::run(config))
        }
    }
}

/// Log lines go to stderr; with `[api]` the last `keep` are also kept for `GET /api/v1/logs`.
fn init_logging(level: LogLevel, keep: Option<usize>) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    if let Some(n) = keep {
        betaas_agent::api::logs::init(n);
    }
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(betaas_agent::api::logs::Tee)
        .with_ansi(false)
        .init();
}
