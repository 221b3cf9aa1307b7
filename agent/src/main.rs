//! `betaas-agent`: the BETaaS gateway agent.

mod commands;
mod config;
mod mqtt;
mod resources;
mod things;

use std::path::PathBuf;
use std::process::ExitCode;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use clap::{Parser, Subcommand};
use rumqttc::{AsyncClient, QoS};
use tracing::{error, info, warn};

use config::{Config, LogLevel, Thing};
use mqtt::Topics;
use things::{Reading, Sensor};

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
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let command = cli.command.unwrap_or(Command::Run);
    // These need no configuration file: they run before it is loaded.
    match &command {
        Command::Forecast(args) => return commands::forecast::run(args),
        Command::Simulate(args) => return commands::simulate::run(args),
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
        Command::Forecast(_) | Command::Simulate(_) => ExitCode::SUCCESS, // ran above
        Command::CheckConfig => {
            println!(
                "{}: ok ({} things)",
                cli.config.display(),
                config.things.len()
            );
            ExitCode::SUCCESS
        }
        Command::Run => {
            init_logging(config.log_level);
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
            rt.block_on(run(config))
        }
    }
}

fn init_logging(level: LogLevel) {
    use tracing_subscriber::filter::LevelFilter;
    let level = match level {
        LogLevel::Error => LevelFilter::ERROR,
        LogLevel::Warn => LevelFilter::WARN,
        LogLevel::Info => LevelFilter::INFO,
        LogLevel::Debug => LevelFilter::DEBUG,
        LogLevel::Trace => LevelFilter::TRACE,
    };
    tracing_subscriber::fmt()
        .with_max_level(level)
        .with_writer(std::io::stderr)
        .with_ansi(false)
        .init();
}

async fn run(config: Config) -> ExitCode {
    let topics = Topics::new(&config);
    let (client, eventloop) = mqtt::connect(&config, &topics);
    info!(
        gateway = %config.gateway_id,
        broker = %format!("{}:{}", config.mqtt.host, config.mqtt.port),
        things = config.things.len(),
        "starting"
    );
    tokio::spawn(mqtt::drive(eventloop, client.clone(), topics.clone()));
    tokio::spawn(resources::run(
        config.resources.clone(),
        config.data_dir.clone(),
    ));
    for thing in config.things {
        tokio::spawn(poll_thing(thing, client.clone(), topics.clone()));
    }

    shutdown_signal().await;
    info!("stopping");
    // A clean stop is not a failure: say so before the broker would fire the will.
    let _ = client
        .publish(topics.availability(), QoS::AtLeastOnce, true, mqtt::OFFLINE)
        .await;
    let _ = client.disconnect().await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    ExitCode::SUCCESS
}

async fn shutdown_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let (Ok(mut term), Ok(mut int)) = (
        signal(SignalKind::terminate()),
        signal(SignalKind::interrupt()),
    ) else {
        error!("cannot install signal handlers; running until killed");
        return std::future::pending().await;
    };
    tokio::select! {
        _ = term.recv() => {}
        _ = int.recv() => {}
    }
}

/// Polls one thing forever. A failing sensor is closed and reopened (and so re-initialised: it may
/// have lost power) on the next tick; its availability follows, and each change is logged once.
async fn poll_thing(thing: Thing, client: AsyncClient, topics: Topics) {
    let id = thing.id.to_string();
    let unit = thing.driver.unit();
    let state_topic = topics.thing_state(&id);
    let avail_topic = topics.thing_availability(&id);
    let mut ticker = tokio::time::interval(thing.interval_ms.0);
    ticker.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let thing = std::sync::Arc::new(thing);
    let mut sensor: Option<Sensor> = None;
    // None = not yet known, Some(Ok) = available, Some(Err(msg)) = failing with msg.
    let mut status: Option<Result<(), String>> = None;
    let mut seq: u64 = 0;

    loop {
        ticker.tick().await;
        let t = thing.clone();
        let mut s = sensor.take();
        // I2C transfers block in the kernel (up to seconds on a stuck bus): keep them off the runtime.
        let outcome = tokio::task::spawn_blocking(move || {
            let mut dev = match s.take() {
                Some(dev) => dev,
                None => Sensor::open(&t)?,
            };
            let value = dev.read()?;
            Ok::<_, String>((dev, value))
        })
        .await
        .unwrap_or_else(|e| Err(format!("driver task failed: {e}")));

        let now = match outcome {
            Ok((dev, value)) => {
                sensor = Some(dev);
                seq += 1;
                let reading = Reading {
                    thing: id.clone(),
                    value,
                    unit,
                    ts: unix_millis(),
                    seq,
                };
                match serde_json::to_vec(&reading) {
                    Ok(payload) => {
                        let _ = client
                            .publish(&state_topic, QoS::AtLeastOnce, false, payload)
                            .await;
                    }
                    Err(e) => error!(thing = %id, "cannot encode reading: {e}"),
                }
                Ok(())
            }
            Err(msg) => Err(msg),
        };
        if status.as_ref() != Some(&now) {
            match &now {
                Ok(()) => info!(thing = %id, "available"),
                Err(msg) => {
                    warn!(thing = %id, "unavailable: {msg}; retrying every {:?}", thing.interval_ms.0)
                }
            }
            let avail = if now.is_ok() {
                mqtt::ONLINE
            } else {
                mqtt::OFFLINE
            };
            let _ = client
                .publish(&avail_topic, QoS::AtLeastOnce, true, avail)
                .await;
            status = Some(now);
        }
    }
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}
