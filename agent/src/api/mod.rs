//! The service layer (paper §IV: gateways "configured through the GUI"): a REST API under
//! `/api/v1` and the web UI at `/`, served over HTTPS by the agent itself (hyper's HTTP/1 server
//! on the agent's tokio runtime, rustls on ring).
//!
//! Every request under `/api/` needs `Authorization: Bearer <token>` ([`auth`]); the UI's page
//! holds no data and is served to anyone, it asks for the token and sends it with each call.
//! Handlers are thin: inputs are checked by [`validate`], actions go through the paths the MQTT
//! side uses (an actuator's command queue, the instance's VM requests, the cloud monitor), so a
//! request from the API is validated and answered exactly like one from the bus. Nothing here
//! touches the journal: a reading is journaled before the API hears of it ([`hub`]).
//!
//! Bounds: bodies 64 KiB, 32 connections, 8 event streams, TLS handshake and request headers
//! 10 s each, a command's result 15 s.

pub mod auth;
pub mod clouds;
pub mod hub;
pub mod logs;
pub mod tls;
pub mod validate;

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::net::IpAddr;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context as TaskContext, Poll};
use std::time::{Duration, Instant};

use http_body_util::{combinators::BoxBody, BodyExt, Full, Limited};
use hyper::body::{Bytes, Frame, Incoming};
use hyper::header::{HeaderName, HeaderValue};
use hyper::{Method, Request, Response, StatusCode};
use serde_json::{json, Value};
use tokio::sync::mpsc;
use tracing::{error, info, warn};

use crate::config::api::ApiConfig;
use crate::config::{Kind, Thing};
use crate::things::status::ThingStatus;
use validate::ApiError;

pub const MAX_BODY: usize = 64 * 1024;
const MAX_CONNECTIONS: usize = 32;
const MAX_STREAMS: usize = 8;
const HANDSHAKE: Duration = Duration::from_secs(10);
const COMMAND_WAIT: Duration = Duration::from_secs(15);
const KEEPALIVE: Duration = Duration::from_secs(15);

/// The web UI, gzipped at build time (`build.rs`).
const UI_GZ: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/index.html.gz"));
/// `openapi.json`, minified at build time.
const OPENAPI: &str = include_str!(concat!(env!("OUT_DIR"), "/openapi.json"));

/// What the API works on, handed over by the agent at start.
pub struct Context {
    pub gateway: String,
    pub data_dir: PathBuf,
    /// The health topic's object, now.
    pub health: Box<dyn Fn() -> Value + Send + Sync>,
    pub things: Arc<Vec<Thing>>,
    pub status: Arc<ThingStatus>,
    /// Each actuator's command queue (the MQTT commands' queue).
    pub actuators: BTreeMap<String, mpsc::Sender<Vec<u8>>>,
    pub instance: Option<Arc<crate::instance::Runtime>>,
    /// The remote clouds held here, if any.
    pub clouds: Option<crate::cloud::monitor::Clouds>,
    /// The resource monitor's latest figures.
    pub resources: crate::resources::Handle,
    /// The instance's template names (VM requests).
    pub templates: Vec<String>,
}

struct Shared {
    ctx: Context,
    cfg: ApiConfig,
    token: String,
    limiter: Mutex<auth::Limiter>,
    streams: AtomicUsize,
}

static INFO: OnceLock<Value> = OnceLock::new();

/// `health.api`: where the API listens and its certificate's fingerprint (`None`: off).
pub fn health() -> Option<Value> {
    INFO.get().cloned()
}

type Body = BoxBody<Bytes, Infallible>;

/// Starts the API in a task of its own. A failure to start is logged and leaves the agent
/// running without it: readings do not depend on the API.
pub fn start(cfg: ApiConfig, ctx: Context) {
    tokio::spawn(async move {
        if let Err(e) = serve(cfg, ctx).await {
            error!("api: {e}; the agent runs without its API");
        }
    });
}

async fn serve(cfg: ApiConfig, ctx: Context) -> Result<(), String> {
    let token_path = cfg.token_path(&ctx.data_dir);
    let tp = token_path.clone();
    let (token, made) = tokio::task::spawn_blocking(move || auth::load_or_make(&tp))
        .await
        .map_err(|e| e.to_string())??;
    if made {
        // On the console once, never through the log (GET logs would show it).
        eprintln!(
            "betaas-agent: API token (shown once; kept in {}): {token}",
            token_path.display()
        );
    }
    let dir = ctx.data_dir.join("api");
    let names = vec![ctx.gateway.clone(), "localhost".to_owned()];
    let provisioned = cfg.cert.clone().zip(cfg.key.clone());
    let loaded = tokio::task::spawn_blocking(move || {
        tls::load(
            provisioned
                .as_ref()
                .map(|(c, k)| (c.as_path(), k.as_path())),
            &dir,
            &names,
        )
    })
    .await
    .map_err(|e| e.to_string())??;
    if let Some(p) = &loaded.made {
        info!(file = %p.display(), "api: made a self-signed certificate");
    }
    let listener = tokio::net::TcpListener::bind(cfg.listen)
        .await
        .map_err(|e| format!("listen {}: {e}", cfg.listen))?;
    let local = listener.local_addr().map_err(|e| e.to_string())?;
    info!(listen = %local, fingerprint = %loaded.fingerprint, "api: serving https (certificate SHA-256 fingerprint)");
    let _ = INFO.set(json!({"listen": local.to_string(), "fingerprint": loaded.fingerprint}));
    let acceptor = tokio_rustls::TlsAcceptor::from(loaded.config);
    let shared = Arc::new(Shared {
        ctx,
        cfg,
        token,
        limiter: Mutex::new(auth::Limiter::default()),
        streams: AtomicUsize::new(0),
    });
    let permits = Arc::new(tokio::sync::Semaphore::new(MAX_CONNECTIONS));
    loop {
        let (tcp, peer) = match listener.accept().await {
            Ok(c) => c,
            Err(e) => {
                // Out of file descriptors and the like: wait, do not spin.
                warn!("api: accept: {e}");
                tokio::time::sleep(Duration::from_millis(200)).await;
                continue;
            }
        };
        let Ok(permit) = permits.clone().try_acquire_owned() else {
            drop(tcp); // full: the client retries
            continue;
        };
        let acceptor = acceptor.clone();
        let shared = shared.clone();
        tokio::spawn(async move {
            let _permit = permit;
            let tls = match tokio::time::timeout(HANDSHAKE, acceptor.accept(tcp)).await {
                Ok(Ok(s)) => s,
                _ => return, // a port scan, a client that does not trust us yet, a stall
            };
            let ip = peer.ip();
            let service = hyper::service::service_fn(move |req| {
                let shared = shared.clone();
                async move { Ok::<_, Infallible>(handle(&shared, ip, req).await) }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .timer(hyper_util::rt::TokioTimer::new())
                .header_read_timeout(HANDSHAKE)
                .serve_connection(hyper_util::rt::TokioIo::new(tls), service)
                .await;
        });
    }
}

fn full(b: impl Into<Bytes>) -> Body {
    Full::new(b.into()).boxed()
}

fn respond(status: u16, content_type: &'static str, body: Body) -> Response<Body> {
    let mut r = Response::new(body);
    *r.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = r.headers_mut();
    h.insert(
        hyper::header::CONTENT_TYPE,
        HeaderValue::from_static(content_type),
    );
    h.insert(
        hyper::header::CACHE_CONTROL,
        HeaderValue::from_static("no-store"),
    );
    h.insert(
        HeaderName::from_static("x-content-type-options"),
        HeaderValue::from_static("nosniff"),
    );
    r
}

fn json_response(status: u16, v: &Value) -> Response<Body> {
    respond(status, "application/json", full(v.to_string()))
}

fn error_response(e: &ApiError) -> Response<Body> {
    json_response(e.status, &e.json())
}

async fn handle(s: &Arc<Shared>, ip: IpAddr, req: Request<Incoming>) -> Response<Body> {
    let path = req.uri().path().to_owned();
    if path == "/" || path == "/index.html" {
        if req.method() != Method::GET && req.method() != Method::HEAD {
            return error_response(&ApiError::status(405, None, "GET only"));
        }
        let mut r = respond(200, "text/html; charset=utf-8", full(UI_GZ));
        let h = r.headers_mut();
        h.insert(
            hyper::header::CONTENT_ENCODING,
            HeaderValue::from_static("gzip"),
        );
        h.insert(
            HeaderName::from_static("x-frame-options"),
            HeaderValue::from_static("DENY"),
        );
        h.insert(
            HeaderName::from_static("referrer-policy"),
            HeaderValue::from_static("no-referrer"),
        );
        h.insert(
            HeaderName::from_static("content-security-policy"),
            HeaderValue::from_static(
                "default-src 'self'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; img-src data:; frame-ancestors 'none'",
            ),
        );
        return r;
    }
    let Some(rest) = path.strip_prefix("/api/v1/") else {
        return error_response(&ApiError::status(
            404,
            None,
            "not found; the API is under /api/v1/",
        ));
    };
    if let Err(e) = authorize(s, ip, &req) {
        let mut r = error_response(&e);
        if e.status == 401 {
            r.headers_mut().insert(
                hyper::header::WWW_AUTHENTICATE,
                HeaderValue::from_static("Bearer"),
            );
        }
        return r;
    }
    let rest = rest.to_owned();
    let segs: Vec<&str> = rest.split('/').collect();
    let method = req.method().clone();
    let q = req.uri().query().map(str::to_owned);
    let q = q.as_deref();
    let result = match (&method, segs.as_slice()) {
        (&Method::GET, ["health"]) => Ok(json_response(200, &health_now(s))),
        (&Method::GET, ["openapi.json"]) => Ok(respond(200, "application/json", full(OPENAPI))),
        (&Method::GET, ["things"]) => Ok(json_response(200, &things(s))),
        (&Method::GET, ["things", id, "readings"]) => readings(s, id, q),
        (&Method::POST, ["things", id, "set"]) => match body(req).await {
            Ok(b) => set(s, id, &b).await,
            Err(e) => Err(e),
        },
        (&Method::GET, ["instance"]) => instance(s).map(|rt| {
            let mut h = rt.health();
            h["templates"] = json!(s.ctx.templates);
            json_response(200, &h)
        }),
        (&Method::POST, ["vms"]) => match body(req).await {
            Ok(b) => vm_request(s, &b).await,
            Err(e) => Err(e),
        },
        (&Method::DELETE, ["vms", vm]) => vm_release(s, vm, q).await,
        (&Method::POST, ["update"]) => match body(req).await {
            Ok(b) => update(s, &b).await,
            Err(e) => Err(e),
        },
        (&Method::GET, ["clouds"]) => Ok(json_response(
            200,
            &crate::cloud::monitor::health(s.ctx.clouds.as_ref()).unwrap_or_else(|| json!([])),
        )),
        (&Method::PUT, ["clouds", name]) => match body(req).await {
            Ok(b) => put_cloud(s, name, b).await,
            Err(e) => Err(e),
        },
        (&Method::GET, ["events"]) => events(s),
        (&Method::GET, ["logs"]) => validate::lines_query(q, s.cfg.log_lines)
            .map(|n| json_response(200, &json!({"lines": logs::last(n)}))),
        (
            _,
            ["health" | "openapi.json" | "things" | "instance" | "vms" | "clouds" | "events"
            | "logs" | "update"],
        )
        | (_, ["things", _, "readings" | "set"])
        | (_, ["vms" | "clouds", _]) => Err(ApiError::status(
            405,
            None,
            format!("{method} is not allowed here"),
        )),
        _ => Err(ApiError::status(
            404,
            None,
            format!("no such endpoint: /api/v1/{rest}"),
        )),
    };
    result.unwrap_or_else(|e| error_response(&e))
}

/// The health topic's object, with the version and the resource monitor's latest sample and
/// forecast for the status page.
fn health_now(s: &Shared) -> Value {
    let mut h = (s.ctx.health)();
    h["version"] = json!(env!("CARGO_PKG_VERSION"));
    h["gateway"] = json!(s.ctx.gateway);
    let latest = s.ctx.resources.latest();
    h["resources"] = json!({
        "now": s.ctx.resources.now(),
        "battery": latest.and_then(|l| l.battery),
        "forecast": latest.map(|l| json!({
            "mem_available_mb": l.forecast.mem_available_mb,
            "disk_free_mb": l.forecast.disk_free_mb,
            "cpu_idle": l.forecast.cpu_idle,
        })),
    });
    h
}

/// The bearer token, after the address's allowance of wrong ones (429 beyond it).
fn authorize(s: &Shared, ip: IpAddr, req: &Request<Incoming>) -> Result<(), ApiError> {
    let now = Instant::now();
    let mut limiter = s.limiter.lock().unwrap_or_else(|p| p.into_inner());
    if let Err(wait) = limiter.check(ip, now) {
        return Err(ApiError::status(
            429,
            Some("authorization"),
            format!(
                "too many wrong tokens from {ip}: retry in {} s",
                wait.as_secs() + 1
            ),
        ));
    }
    let given = req
        .headers()
        .get(hyper::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(auth::bearer);
    match given {
        Some(t) if auth::token_matches(s.token.as_bytes(), t.as_bytes()) => Ok(()),
        _ => {
            limiter.failed(ip, now);
            warn!(client = %ip, "api: missing or wrong bearer token");
            Err(ApiError::status(
                401,
                Some("authorization"),
                "missing or wrong token: send Authorization: Bearer <token>",
            ))
        }
    }
}

/// The request body, at most [`MAX_BODY`] bytes, within [`HANDSHAKE`].
async fn body(req: Request<Incoming>) -> Result<Bytes, ApiError> {
    let limited = Limited::new(req.into_body(), MAX_BODY);
    match tokio::time::timeout(HANDSHAKE, limited.collect()).await {
        Ok(Ok(c)) => Ok(c.to_bytes()),
        Ok(Err(e)) if e.is::<http_body_util::LengthLimitError>() => Err(ApiError::status(
            413,
            Some("body"),
            format!("larger than {MAX_BODY} bytes"),
        )),
        Ok(Err(e)) => Err(ApiError::bad("body", format!("unreadable: {e}"))),
        Err(_) => Err(ApiError::status(408, Some("body"), "not received in time")),
    }
}

fn kind(t: &Thing) -> &'static str {
    match t.kind {
        Kind::Sensor => "sensor",
        Kind::Actuator => "actuator",
    }
}

/// The UI's control for an actuator.
fn control(t: &Thing) -> Value {
    use crate::things::spec::Component;
    let info = t.driver.info();
    match (info.component, info.range) {
        (Component::Number, Some(r)) => {
            json!({"type": "number", "min": r.min, "max": r.max, "unit": t.unit()})
        }
        (Component::Switch, _) => json!({"type": "switch"}),
        _ => Value::Null,
    }
}

fn things(s: &Shared) -> Value {
    let health = s.ctx.status.snapshot();
    let mut list = Vec::new();
    for t in s.ctx.things.iter() {
        for id in t.published_ids() {
            let last = hub::last(&id);
            list.push(json!({
                "id": id,
                "config_id": t.id.to_string(),
                "kind": kind(t),
                "driver": t.driver.info().name,
                "unit": last.as_ref().map_or_else(|| t.unit(), |r| r.unit.clone()),
                "min": t.min,
                "max": t.max,
                "health": health.get(&id),
                "last": last,
                "state": hub::last_state(&id),
                "control": if t.kind == Kind::Actuator { control(t) } else { Value::Null },
            }));
        }
    }
    Value::Array(list)
}

fn published(s: &Shared, id: &str) -> Result<&'static str, ApiError> {
    validate::name("id", id)?;
    s.ctx
        .things
        .iter()
        .find(|t| t.published_ids().iter().any(|p| p == id))
        .map(kind)
        .ok_or_else(|| {
            ApiError::status(404, Some("id"), format!("no thing {id:?} on this gateway"))
        })
}

fn readings(s: &Shared, id: &str, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    published(s, id)?;
    let (since, limit) = validate::readings_query(q, s.cfg.readings)?;
    let list = hub::recent(id, since, limit).unwrap_or_default();
    Ok(json_response(200, &json!({"thing": id, "readings": list})))
}

/// An actuator command: queued like an MQTT command, answered with its result.
async fn set(s: &Shared, id: &str, body: &[u8]) -> Result<Response<Body>, ApiError> {
    if published(s, id)? != "actuator" {
        return Err(ApiError::bad(
            "id",
            format!("{id} is a sensor, not an actuator"),
        ));
    }
    let tx = s
        .ctx
        .actuators
        .get(id)
        .ok_or_else(|| ApiError::bad("id", format!("{id} is not an actuator")))?;
    let fresh = format!(
        "api-{}",
        auth::random_hex(8).map_err(|e| ApiError::status(500, None, e))?
    );
    let (cmd, payload) = validate::set_body(body, fresh)?;
    let rx = hub::expect_result(&cmd)
        .ok_or_else(|| ApiError::status(503, None, "the API's event hub is not running"))?;
    if tx.try_send(payload).is_err() {
        hub::forget(&cmd);
        return Err(ApiError::status(
            503,
            None,
            "busy: too many commands queued; retry",
        ));
    }
    let outcome = match tokio::time::timeout(COMMAND_WAIT, rx).await {
        Ok(Ok(o)) => o,
        _ => {
            hub::forget(&cmd);
            return Err(ApiError::status(
                504,
                None,
                format!(
                    "no result for command {cmd} within {} s",
                    COMMAND_WAIT.as_secs()
                ),
            ));
        }
    };
    if outcome["ok"] == true {
        Ok(json_response(200, &outcome))
    } else {
        let mut v = ApiError::bad("value", outcome["error"].as_str().unwrap_or("refused")).json();
        v["outcome"] = outcome;
        Ok(json_response(400, &v))
    }
}

fn instance(s: &Shared) -> Result<&Arc<crate::instance::Runtime>, ApiError> {
    s.ctx.instance.as_ref().ok_or_else(|| {
        ApiError::status(
            404,
            None,
            "this gateway is not a member of an instance ([instance])",
        )
    })
}

fn request_id() -> Result<String, ApiError> {
    auth::random_hex(8)
        .map(|h| format!("api-{h}"))
        .map_err(|e| ApiError::status(500, None, e))
}

async fn vm_request(s: &Shared, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let rt = instance(s)?;
    let mut req = validate::vm_body(body, &s.ctx.templates)?;
    let id = request_id()?;
    info!(request = %id, template = %req["template"], war = ?req.get("war"), cluster = ?req.get("cluster"), "api: VM request");
    req.insert("id".into(), json!(id));
    let r = rt.local_request(Value::Object(req)).await;
    Ok(json_response(200, &r))
}

async fn vm_release(s: &Shared, vm: &str, q: Option<&str>) -> Result<Response<Body>, ApiError> {
    let rt = instance(s)?;
    validate::name("vm", vm)?;
    let target = validate::release_query(q)?;
    let id = request_id()?;
    info!(request = %id, vm, "api: VM release");
    let r = rt
        .local_request(json!({"id": id, "release": vm, "target": target}))
        .await;
    Ok(json_response(200, &r))
}

/// `POST update`: the same installation as the signed MQTT request (`betaas-agent update`); 200
/// `{"decision":"installed","version"}` and a reboot 3 s later, or 422 with RAUC's or the
/// download's reason. Runs in its own task, so a client that goes away does not cancel it halfway.
async fn update(s: &Shared, body: &[u8]) -> Result<Response<Body>, ApiError> {
    let url = validate::update_body(body)?;
    info!(url, "api: firmware update requested");
    let task = tokio::spawn(crate::update::install_and_reboot(
        url,
        s.ctx.data_dir.clone(),
        std::time::Duration::from_secs(3),
    ));
    match task.await {
        Ok(Ok(version)) => {
            info!(version, "update installed; rebooting into the other slot");
            Ok(json_response(
                200,
                &json!({"decision": "installed", "version": version, "reboot_in_s": 3}),
            ))
        }
        Ok(Err(why)) => {
            warn!("api: update refused: {why}");
            Err(ApiError::status(422, None, why))
        }
        Err(e) => Err(ApiError::status(500, None, e.to_string())),
    }
}

async fn put_cloud(s: &Shared, name: &str, body: Bytes) -> Result<Response<Body>, ApiError> {
    let data_dir = s.ctx.data_dir.clone();
    let monitor = s.ctx.clouds.clone();
    let name = name.to_owned();
    let n2 = name.clone();
    // Validation, the files (fsync) and loading the credentials: off the runtime, in a task a
    // client that goes away does not cancel.
    let done = tokio::task::spawn_blocking(move || {
        let creds = clouds::credentials_path(&data_dir, &n2);
        let put = validate::cloud_body(&n2, &body, &creds)?;
        clouds::save(
            &data_dir,
            &n2,
            &put.config_toml,
            put.credentials_toml.as_deref(),
        )
        .map_err(|e| {
            if e.starts_with("credentials") {
                ApiError::bad("credentials", e)
            } else {
                ApiError::status(500, None, e)
            }
        })?;
        crate::cloud::monitor::upsert(monitor.as_ref(), &put.config)
            .map_err(|e| ApiError::status(500, None, e))
    })
    .await
    .map_err(|e| ApiError::status(500, None, e.to_string()))?;
    done?;
    let entry = crate::cloud::monitor::health(s.ctx.clouds.as_ref()).and_then(|l| {
        l.as_array()?
            .iter()
            .find(|c| c["name"] == name.as_str())
            .cloned()
    });
    Ok(json_response(
        200,
        &json!({"name": name, "saved": true, "cloud": entry}),
    ))
}

/// The body of an event stream: what the forwarding task sends.
struct Stream(mpsc::Receiver<Bytes>);

impl hyper::body::Body for Stream {
    type Data = Bytes;
    type Error = Infallible;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut TaskContext<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut()
            .0
            .poll_recv(cx)
            .map(|o| o.map(|b| Ok(Frame::data(b))))
    }
}

/// One of [`MAX_STREAMS`], given back when its stream ends.
struct StreamSlot(Arc<Shared>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.streams.fetch_sub(1, Ordering::SeqCst);
    }
}

fn events(s: &Arc<Shared>) -> Result<Response<Body>, ApiError> {
    let mut events = hub::subscribe()
        .ok_or_else(|| ApiError::status(503, None, "the API's event hub is not running"))?;
    if s.streams.fetch_add(1, Ordering::SeqCst) >= MAX_STREAMS {
        s.streams.fetch_sub(1, Ordering::SeqCst);
        return Err(ApiError::status(
            503,
            None,
            format!("at most {MAX_STREAMS} event streams"),
        ));
    }
    let slot = StreamSlot(s.clone());
    let (tx, rx) = mpsc::channel::<Bytes>(16);
    tokio::spawn(async move {
        let _slot = slot;
        if tx
            .send(Bytes::from_static(b"retry: 2000\n: connected\n\n"))
            .await
            .is_err()
        {
            return;
        }
        loop {
            let frame = tokio::select! {
                e = events.recv() => match e {
                    Ok(e) => e.sse(),
                    Err(tokio::sync::broadcast::error::RecvError::Lagged(n)) => {
                        format!("event: lagged\ndata: {{\"missed\":{n}}}\n\n")
                    }
                    Err(tokio::sync::broadcast::error::RecvError::Closed) => return,
                },
                _ = tokio::time::sleep(KEEPALIVE) => ": keepalive\n\n".to_owned(),
            };
            if tx.send(Bytes::from(frame)).await.is_err() {
                return; // the client went away
            }
        }
    });
    Ok(respond(200, "text/event-stream", Stream(rx).boxed()))
}
