//! Helpers of the API tests: a gateway with `[api]`, a sysfs sensor, an MQTT thing and an
//! actuator, in an instance of its own (no room for VMs, so VM requests go to a remote cloud),
//! and an HTTPS client that carries the token and records every answer (to search for secrets).
#![allow(dead_code)] // each test file uses a part
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use betaas_core::allocator::Res;
use serde_json::Value;

use crate::instance_support::{self, Gw};

pub struct ApiGw {
    pub root: tempfile::TempDir,
    pub gw: Gw,
    pub port: u16,
    /// The MQTT thing's topic.
    pub device_topic: String,
}

impl ApiGw {
    /// `gw` admitted into a fresh instance; nothing started.
    pub fn new(id: &str) -> ApiGw {
        let (root, keys) = instance_support::new_instance();
        let gw = instance_support::member(&keys, root.path(), id, Res::new(0, 0, 0));
        ApiGw {
            root,
            gw,
            port: betaas_e2e::free_port(),
            device_topic: format!("dev/{:08x}/climate", fastrand::u32(..)),
        }
    }

    pub fn data(&self) -> PathBuf {
        self.gw.dir.join("data")
    }

    pub fn value_file(&self) -> PathBuf {
        self.gw.dir.join("temp.value")
    }

    /// Writes the sensor's value atomically.
    pub fn set_value(&self, v: f64) {
        let tmp = self.gw.dir.join("temp.value.tmp");
        std::fs::write(&tmp, format!("{v}\n")).unwrap();
        std::fs::rename(&tmp, self.value_file()).unwrap();
    }

    /// Writes agent.toml: the instance config of the tests, the things, `[api]`.
    pub fn write_config(&self, broker_port: u16) -> PathBuf {
        if !self.value_file().exists() {
            self.set_value(20.0);
        }
        let mut text = instance_support::config(&self.gw, broker_port, &self.gw.dir.join("keys"));
        text += &format!(
            "\n[[things]]\nid = \"temp\"\nbus = \"sysfs\"\ndriver = \"sysfs\"\ndevice = \"{}\"\n\
             unit = \"C\"\ninterval_ms = 200\n\n\
             [[things]]\nid = \"room\"\nbus = \"mqtt\"\ndriver = \"json\"\ntopic = \"{}\"\n\
             field = \"/t\"\nunit = \"C\"\n\n\
             [[things]]\nid = \"limit\"\nkind = \"actuator\"\nbus = \"i2c\"\ndriver = \"tmp105-limit\"\n\
             device = \"{}\"\naddress = 0x48\ninterval_ms = 1000\n\n\
             [api]\nlisten = \"127.0.0.1:{}\"\nreadings = 50\nlog_lines = 300\n",
            self.value_file().display(),
            self.device_topic,
            self.gw.dir.join("no-i2c-bus").display(),
            self.port,
        );
        let p = self.gw.dir.join("agent.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    pub fn token(&self) -> String {
        std::fs::read_to_string(self.data().join("api/token"))
            .unwrap()
            .trim()
            .to_owned()
    }
}

/// One answer.
#[derive(Debug)]
pub struct Answer {
    pub status: u16,
    pub body: Value,
    pub text: String,
}

/// An HTTPS client of the API. The certificate is self-signed: the client accepts it and the
/// tests compare its fingerprint with the one the agent reports.
pub struct Client {
    pub rt: Arc<tokio::runtime::Runtime>,
    pub http: reqwest::Client,
    pub base: String,
    pub token: String,
    /// Every body received, for the secrets check.
    pub seen: Mutex<String>,
}

impl Client {
    pub fn new(rt: Arc<tokio::runtime::Runtime>, port: u16, token: &str) -> Client {
        Client::from(rt, port, token, None)
    }

    /// From a given local address (the limiter counts per address).
    pub fn from(
        rt: Arc<tokio::runtime::Runtime>,
        port: u16,
        token: &str,
        local: Option<std::net::IpAddr>,
    ) -> Client {
        let _in_runtime = rt.enter();
        let http = reqwest::Client::builder()
            .danger_accept_invalid_certs(true)
            .tls_info(true)
            .local_address(local)
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        Client {
            rt,
            http,
            base: format!("https://127.0.0.1:{port}"),
            token: token.to_owned(),
            seen: Mutex::new(String::new()),
        }
    }

    pub fn send(
        &self,
        method: reqwest::Method,
        path: &str,
        token: Option<&str>,
        body: Option<Vec<u8>>,
    ) -> Answer {
        let mut req = self.http.request(method, format!("{}{path}", self.base));
        if let Some(t) = token {
            req = req.bearer_auth(t);
        }
        if let Some(b) = body {
            req = req.header("content-type", "application/json").body(b);
        }
        let (status, text) = self.rt.block_on(async {
            let r = req.send().await.unwrap();
            (r.status().as_u16(), r.text().await.unwrap())
        });
        self.seen.lock().unwrap().push_str(&text);
        Answer {
            status,
            body: serde_json::from_str(&text).unwrap_or(Value::Null),
            text,
        }
    }

    pub fn get(&self, path: &str) -> Answer {
        self.send(reqwest::Method::GET, path, Some(&self.token.clone()), None)
    }

    pub fn post(&self, path: &str, body: &Value) -> Answer {
        let b = body.to_string().into_bytes();
        self.send(
            reqwest::Method::POST,
            path,
            Some(&self.token.clone()),
            Some(b),
        )
    }

    pub fn put(&self, path: &str, body: &Value) -> Answer {
        let b = body.to_string().into_bytes();
        self.send(
            reqwest::Method::PUT,
            path,
            Some(&self.token.clone()),
            Some(b),
        )
    }

    pub fn delete(&self, path: &str) -> Answer {
        self.send(
            reqwest::Method::DELETE,
            path,
            Some(&self.token.clone()),
            None,
        )
    }

    /// Waits for the API to answer (the agent makes its certificate first).
    pub fn wait_up(&self, timeout: Duration) {
        let end = Instant::now() + timeout;
        loop {
            let r = self.rt.block_on(async {
                self.http
                    .get(format!("{}/api/v1/health", self.base))
                    .bearer_auth(&self.token)
                    .send()
                    .await
            });
            if r.is_ok_and(|r| r.status() == 200) {
                return;
            }
            assert!(
                Instant::now() < end,
                "the API did not come up in {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// The UI page: its Content-Encoding and its HTML, gunzipped.
    pub fn ui(&self) -> (String, String) {
        use std::io::Read;
        let (enc, bytes) = self.rt.block_on(async {
            let r = self
                .http
                .get(format!("{}/", self.base))
                .send()
                .await
                .unwrap();
            assert_eq!(r.status(), 200);
            let enc = r
                .headers()
                .get("content-encoding")
                .map(|v| v.to_str().unwrap().to_owned())
                .unwrap_or_default();
            (enc, r.bytes().await.unwrap())
        });
        let mut html = String::new();
        flate2::read::GzDecoder::new(&bytes[..])
            .read_to_string(&mut html)
            .unwrap();
        (enc, html)
    }

    /// SHA-256 of the server's certificate, as `AB:CD:…`.
    pub fn peer_fingerprint(&self) -> String {
        self.rt.block_on(async {
            let r = self
                .http
                .get(format!("{}/", self.base))
                .send()
                .await
                .unwrap();
            let info = r.extensions().get::<reqwest::tls::TlsInfo>().unwrap();
            let der = info.peer_certificate().unwrap();
            let d = ring::digest::digest(&ring::digest::SHA256, der);
            d.as_ref()
                .iter()
                .map(|b| format!("{b:02X}"))
                .collect::<Vec<_>>()
                .join(":")
        })
    }
}

/// An open `GET /api/v1/events` stream.
pub struct Events {
    rt: Arc<tokio::runtime::Runtime>,
    resp: reqwest::Response,
    buf: String,
    pub all: String,
}

impl Events {
    pub fn open(c: &Client) -> Events {
        let resp = c.rt.block_on(async {
            c.http
                .get(format!("{}/api/v1/events", c.base))
                .bearer_auth(&c.token)
                .timeout(Duration::from_secs(3600))
                .send()
                .await
                .unwrap()
        });
        assert_eq!(resp.status(), 200);
        assert_eq!(
            resp.headers()["content-type"].to_str().unwrap(),
            "text/event-stream"
        );
        Events {
            rt: c.rt.clone(),
            resp,
            buf: String::new(),
            all: String::new(),
        }
    }

    /// The next event `(name, data)` for which `f` holds, within `timeout`.
    pub fn until(
        &mut self,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str, &Value) -> bool,
    ) -> (String, Value) {
        let end = Instant::now() + timeout;
        loop {
            while let Some(i) = self.buf.find("\n\n") {
                let frame: String = self.buf.drain(..i + 2).collect();
                let mut name = String::new();
                let mut data = String::new();
                for l in frame.lines() {
                    if let Some(n) = l.strip_prefix("event: ") {
                        name = n.to_owned();
                    } else if let Some(d) = l.strip_prefix("data: ") {
                        data = d.to_owned();
                    }
                }
                let v: Value = serde_json::from_str(&data).unwrap_or(Value::Null);
                if !name.is_empty() && f(&name, &v) {
                    return (name, v);
                }
            }
            let left = end.saturating_duration_since(Instant::now());
            assert!(!left.is_zero(), "no event: {what} within {timeout:?}");
            let chunk = self
                .rt
                .block_on(async { tokio::time::timeout(left, self.resp.chunk()).await });
            match chunk {
                Ok(Ok(Some(b))) => {
                    let s = String::from_utf8_lossy(&b);
                    self.buf.push_str(&s);
                    self.all.push_str(&s);
                }
                Ok(Ok(None)) => panic!("the event stream ended"),
                Ok(Err(e)) => panic!("event stream: {e}"),
                Err(_) => panic!("no event: {what} within {timeout:?}"),
            }
        }
    }
}

pub fn mode(p: &Path) -> u32 {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(p).unwrap().permissions().mode() & 0o777
}
