//! Shared helpers of the remote-cloud tests: a loopback HTTP fixture server that records every
//! request and answers from a synchronous handler (the test's model of the cloud), and a tracing
//! capture to search the logs for secrets.
#![allow(dead_code)] // each test file uses a part

pub mod opennebula;
pub mod openstack;

use std::convert::Infallible;
use std::io::Write;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use http_body_util::{BodyExt, Full};
use hyper::body::{Bytes, Incoming};
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio::task::{JoinHandle, JoinSet};

/// One request as the fixture received it.
#[derive(Debug, Clone)]
pub struct Req {
    pub method: String,
    /// Path and query.
    pub path: String,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Req {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or(serde_json::Value::Null)
    }
    /// `"GET /path"`.
    pub fn line(&self) -> String {
        format!("{} {}", self.method, self.path)
    }
}

/// What the handler answers; `delay` holds the answer back (slow cloud).
#[derive(Debug, Clone)]
pub struct Resp {
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
    pub delay: Option<Duration>,
}

impl Resp {
    pub fn new(status: u16, body: impl Into<String>) -> Resp {
        Resp {
            status,
            headers: Vec::new(),
            body: body.into(),
            delay: None,
        }
    }
    pub fn json(status: u16, v: serde_json::Value) -> Resp {
        Resp::new(status, v.to_string()).header("Content-Type", "application/json")
    }
    pub fn header(mut self, k: &str, v: &str) -> Resp {
        self.headers.push((k.into(), v.into()));
        self
    }
    pub fn delayed(mut self, d: Duration) -> Resp {
        self.delay = Some(d);
        self
    }
}

pub type Handler = Arc<dyn Fn(&Req) -> Resp + Send + Sync>;

pub struct Fixture {
    pub addr: SocketAddr,
    log: Arc<Mutex<Vec<Req>>>,
    handler: Handler,
    task: Option<JoinHandle<()>>,
}

impl Fixture {
    pub async fn start(handler: Handler) -> Fixture {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind loopback");
        let addr = listener.local_addr().expect("local addr");
        let log = Arc::new(Mutex::new(Vec::new()));
        let task = Some(tokio::spawn(serve(listener, log.clone(), handler.clone())));
        Fixture {
            addr,
            log,
            handler,
            task,
        }
    }

    pub fn url(&self) -> String {
        format!("http://{}", self.addr)
    }

    pub fn requests(&self) -> Vec<Req> {
        self.log.lock().expect("log").clone()
    }

    /// The requests so far, and forget them.
    pub fn take(&self) -> Vec<Req> {
        std::mem::take(&mut *self.log.lock().expect("log"))
    }

    pub fn lines(&self) -> Vec<String> {
        self.requests().iter().map(Req::line).collect()
    }

    /// Closes the listener and every open connection: the next connection is refused.
    pub fn stop(&mut self) {
        if let Some(t) = self.task.take() {
            t.abort();
        }
    }

    /// Listens again on the same port (the cloud is back).
    pub async fn restart(&mut self) {
        self.stop();
        tokio::task::yield_now().await;
        let listener = TcpListener::bind(self.addr).await.expect("rebind");
        self.task = Some(tokio::spawn(serve(
            listener,
            self.log.clone(),
            self.handler.clone(),
        )));
    }
}

impl Drop for Fixture {
    fn drop(&mut self) {
        self.stop();
    }
}

async fn serve(listener: TcpListener, log: Arc<Mutex<Vec<Req>>>, handler: Handler) {
    // Owned here: aborting this task drops the set, which aborts every connection.
    let mut conns = JoinSet::new();
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        while conns.try_join_next().is_some() {}
        let (log, handler) = (log.clone(), handler.clone());
        conns.spawn(async move {
            let svc = service_fn(move |req: Request<Incoming>| {
                let (log, handler) = (log.clone(), handler.clone());
                async move {
                    let (parts, body) = req.into_parts();
                    let body = body
                        .collect()
                        .await
                        .map(|b| b.to_bytes())
                        .unwrap_or_default();
                    let r = Req {
                        method: parts.method.to_string(),
                        path: parts
                            .uri
                            .path_and_query()
                            .map_or("/".into(), |p| p.to_string()),
                        headers: parts
                            .headers
                            .iter()
                            .map(|(k, v)| {
                                (k.to_string(), String::from_utf8_lossy(v.as_bytes()).into())
                            })
                            .collect(),
                        body: String::from_utf8_lossy(&body).into(),
                    };
                    log.lock().expect("log").push(r.clone());
                    let resp = handler(&r);
                    if let Some(d) = resp.delay {
                        tokio::time::sleep(d).await;
                    }
                    let mut b = Response::builder().status(resp.status);
                    for (k, v) in &resp.headers {
                        b = b.header(k, v);
                    }
                    Ok::<_, Infallible>(
                        b.body(Full::new(Bytes::from(resp.body))).expect("response"),
                    )
                }
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}

/// Everything logged (all levels) while the guard lives, on this thread.
#[derive(Clone, Default)]
pub struct Logs(Arc<Mutex<Vec<u8>>>);

impl Logs {
    pub fn text(&self) -> String {
        String::from_utf8_lossy(&self.0.lock().expect("logs")).into_owned()
    }
}

struct LogWriter(Arc<Mutex<Vec<u8>>>);

impl Write for LogWriter {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().expect("logs").extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

pub fn capture_logs() -> (Logs, tracing::subscriber::DefaultGuard) {
    let logs = Logs::default();
    let buf = logs.0.clone();
    let sub = tracing_subscriber::fmt()
        .with_max_level(tracing::Level::TRACE)
        .with_ansi(false)
        .with_writer(move || LogWriter(buf.clone()))
        .finish();
    (logs, tracing::subscriber::set_default(sub))
}

/// Short timeouts so failure tests take a second, not minutes.
pub fn fast_timeouts() -> betaas_agent::cloud::Timeouts {
    betaas_agent::cloud::Timeouts {
        connect: Duration::from_millis(500),
        request: Duration::from_millis(800),
        reach: Duration::from_millis(400),
        poll: Duration::from_secs(3),
        poll_interval: Duration::from_millis(20),
        token_margin: Duration::ZERO,
    }
}

/// A random lowercase hex string: secrets and names that prove the request carried ours.
pub fn random_hex(n: usize) -> String {
    (0..n)
        .map(|_| char::from_digit(fastrand::u32(0..16), 16).unwrap_or('0'))
        .collect()
}

/// A port with nothing listening on it.
pub fn refused_addr() -> SocketAddr {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let a = l.local_addr().expect("addr");
    drop(l);
    a
}
