//! `betaas-agent vm request|release`: a client (an application, an operator's PC) signs a VM
//! request with its own key and credential (`betaas-agent instance admit --client NAME`), sends it
//! to one gateway's `vm/request` topic, waits for the answer on `vm/result` and prints it as one
//! JSON line. Exit 0: local, remote or released; 1: cancel, error or no answer in time; 2: usage,
//! key or connection error.

use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use betaas_core::instance::membership::envelope;
use betaas_core::instance::msg::{self, Body, Credential};
use clap::Args;

use crate::config::read_password_file;
use ed25519_dalek::SigningKey;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};

/// The client's key, next to its credential and the instance's public key.
pub const CLIENT_KEY: &str = "client.key";
/// The highest counter this client used: its messages must keep rising across runs.
const COUNTER: &str = "counter";

#[derive(Args, Debug)]
pub struct Target {
    /// The broker, HOST:PORT.
    #[arg(long)]
    mqtt: String,
    /// The topic prefix the gateways use.
    #[arg(long, default_value = "betaas")]
    prefix: String,
    /// The instance the gateway belongs to.
    #[arg(long)]
    instance: String,
    /// The client's keys: client.key (0600) and credential, from `instance admit --client`.
    #[arg(long)]
    keys: PathBuf,
    /// The gateway that decides the request.
    #[arg(long)]
    gateway: String,
    /// How long to wait for the result.
    #[arg(long, default_value_t = 60)]
    timeout: u64,
    /// MQTT user name, when the broker wants one.
    #[arg(long)]
    mqtt_user: Option<String>,
    /// A file holding the MQTT password (one line).
    #[arg(long, requires = "mqtt_user")]
    mqtt_password_file: Option<PathBuf>,
    /// The request's id, as the result will carry it (default: a random one).
    #[arg(long)]
    id: Option<String>,
}

#[derive(Args, Debug)]
pub struct RequestArgs {
    #[command(flatten)]
    target: Target,
    /// The template to run.
    #[arg(long)]
    template: String,
    /// An application for a template with service ports (`app`): the WAR's http(s) URL, fetched
    /// by the gateway; the result then carries "url" where it answers.
    #[arg(long)]
    war: Option<String>,
    /// The WAR's sha256 (64 hex digits): the gateway refuses an archive that does not match.
    #[arg(long, requires = "war")]
    war_sha256: Option<String>,
    /// A cluster this VM is a node of (big data): the gateway asked keeps the cluster; its nodes
    /// get the URLs of the nodes placed before them (a worker its master's).
    #[arg(long)]
    cluster: Option<String>,
    /// With --cluster: keep this many VMs of the template running (workers), scaling up or
    /// down and replacing those on a gateway that goes down.
    #[arg(long, requires = "cluster")]
    replicas: Option<u32>,
}

#[derive(Args, Debug)]
pub struct ReleaseArgs {
    #[command(flatten)]
    target: Target,
    /// The VM to release (its name, or its id on the remote cloud).
    #[arg(long)]
    vm: String,
    /// The remote cloud it runs on.
    #[arg(long = "target")]
    cloud: Option<String>,
}

#[derive(Args, Debug)]
pub struct UpdateArgs {
    #[command(flatten)]
    target: Target,
    /// The signed RAUC bundle the gateway downloads (`make bundle`), http:// or https://.
    #[arg(long)]
    url: String,
}

/// `betaas-agent update`: the gateway downloads and installs the bundle, answers `installed`
/// (exit 0) and reboots into the other slot.
pub fn update(args: &UpdateArgs) -> ExitCode {
    if let Err(e) = crate::update::check_url(&args.url) {
        return fail(e);
    }
    run(&args.target, json!({"update": args.url}))
}

pub fn request(args: &RequestArgs) -> ExitCode {
    let mut body = json!({"template": args.template});
    if let Some(w) = &args.war {
        body["war"] = json!(w);
    }
    if let Some(h) = &args.war_sha256 {
        match crate::war::parse_sha256(h) {
            Ok(h) => body["war_sha256"] = json!(h),
            Err(e) => return fail(e),
        }
    }
    if let Some(c) = &args.cluster {
        body["cluster"] = json!(c);
    }
    if let Some(n) = args.replicas {
        body["replicas"] = json!(n);
    }
    run(&args.target, body)
}

pub fn release(args: &ReleaseArgs) -> ExitCode {
    let mut body = json!({"release": args.vm});
    if let Some(c) = &args.cloud {
        body["target"] = json!(c);
    }
    run(&args.target, body)
}

/// Usage and key errors: exit 2 with the message.
fn fail(msg: impl std::fmt::Display) -> ExitCode {
    eprintln!("betaas-agent: {msg}");
    ExitCode::from(2)
}

/// Signs a request object (`{"template"}`, with `"war"` and `"war_sha256"` when given, or `{"release","target"}`) with the client's keys in
/// `keys`, for `gateway` of `instance`. Without an `"id"`, a random one is given. Returns the id
/// and the bytes to publish on the gateway's `vm/request` topic.
pub fn sign(
    keys: &Path,
    instance: &str,
    gateway: &str,
    mut body: Value,
) -> Result<(String, Vec<u8>), String> {
    let (key, credential) = load_client(keys)?;
    let id = match body["id"].as_str() {
        Some(id) => id.to_owned(),
        None => format!(
            "{}-{:016x}",
            credential.gateway,
            crate::instance::random_u64()
        ),
    };
    body["id"] = json!(id);
    body["instance"] = json!(instance);
    let bytes = msg::encode(
        &key,
        envelope(
            &credential.gateway.clone(),
            next_counter(keys),
            Some(gateway),
            Body::ClientRequest {
                credential,
                request: body.to_string(),
            },
        ),
    );
    Ok((id, bytes))
}

fn run(t: &Target, mut body: Value) -> ExitCode {
    let (host, port) = match t.mqtt.rsplit_once(':').map(|(h, p)| (h, p.parse::<u16>())) {
        Some((h, Ok(p))) if !h.is_empty() => (h.to_owned(), p),
        _ => return fail(format!("--mqtt {:?}: expected HOST:PORT", t.mqtt)),
    };
    let password = match t.mqtt_password_file.as_deref().map(read_password_file) {
        Some(Ok(pw)) => Some(pw),
        Some(Err(e)) => return fail(e),
        None => None,
    };
    if let Some(id) = &t.id {
        body["id"] = json!(id);
    }
    let (id, bytes) = match sign(&t.keys, &t.instance, &t.gateway, body) {
        Ok(signed) => signed,
        Err(e) => return fail(e),
    };
    let base = format!("{}/{}", t.prefix, t.gateway);
    let mut opts = MqttOptions::new(format!("{id}-cli"), host, port);
    opts.set_keep_alive(Duration::from_secs(10));
    if let (Some(user), Some(pw)) = (&t.mqtt_user, password) {
        opts.set_credentials(user, pw);
    }
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => return fail(format!("cannot start runtime: {e}")),
    };
    let wait = Duration::from_secs(t.timeout);
    let answer =
        rt.block_on(async { tokio::time::timeout(wait, exchange(opts, &base, bytes, &id)).await });
    match answer {
        Ok(Ok(result)) => {
            println!("{result}");
            match result["decision"].as_str() {
                Some("local" | "remote" | "released" | "installed") => ExitCode::SUCCESS,
                _ => ExitCode::from(1),
            }
        }
        Ok(Err(e)) => fail(e),
        Err(_) => {
            let r = json!({"id": id, "decision": "cancel",
                "reason": format!("no result from {} within {} s", t.gateway, t.timeout)});
            println!("{r}");
            ExitCode::from(1)
        }
    }
}

/// Subscribes to the result topic (waiting for the SUBACK, so the answer cannot be missed), sends
/// the request and returns the result carrying its id.
async fn exchange(
    opts: MqttOptions,
    base: &str,
    request: Vec<u8>,
    id: &str,
) -> Result<Value, String> {
    let (client, mut events) = AsyncClient::new(opts, 16);
    let results = format!("{base}/vm/result");
    client
        .subscribe(&results, QoS::AtLeastOnce)
        .await
        .map_err(|e| e.to_string())?;
    loop {
        match events.poll().await {
            Ok(Event::Incoming(Packet::SubAck(ack))) => {
                if ack
                    .return_codes
                    .iter()
                    .any(|c| matches!(c, rumqttc::SubscribeReasonCode::Failure))
                {
                    return Err(format!("the broker refused a subscription to {results}"));
                }
                client
                    .publish(
                        format!("{base}/vm/request"),
                        QoS::AtLeastOnce,
                        false,
                        request.clone(),
                    )
                    .await
                    .map_err(|e| e.to_string())?;
            }
            Ok(Event::Incoming(Packet::Publish(p))) if p.topic == results => {
                let Ok(v) = serde_json::from_slice::<Value>(&p.payload) else {
                    continue;
                };
                if v["id"] == id {
                    let _ = client.try_disconnect();
                    return Ok(v);
                }
            }
            Ok(_) => {}
            Err(e) => return Err(format!("mqtt: {e}")),
        }
    }
}

fn load_client(dir: &Path) -> Result<(SigningKey, Credential), String> {
    let key_path = dir.join(CLIENT_KEY);
    let key = crate::instance::read_secret_key(&key_path)?;
    let credential = crate::instance::read_credential(dir, &key, &key_path)?;
    Ok((key, credential))
}

/// Above every counter this client used before: the larger of the wall clock in microseconds and
/// the last one used + 1 (kept in the keys directory, best effort: a read-only directory leaves
/// the clock alone to keep it rising).
fn next_counter(dir: &Path) -> u64 {
    let path = dir.join(COUNTER);
    let last = std::fs::read_to_string(&path)
        .ok()
        .and_then(|s| s.trim().parse::<u64>().ok())
        .unwrap_or(0);
    let n = (crate::clock::unix_millis() * 1000).max(last + 1);
    let _ = std::fs::write(&path, n.to_string());
    n
}
