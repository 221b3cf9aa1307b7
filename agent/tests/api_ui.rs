//! The web UI in a real browser: Debian's headless Chromium driven over WebDriver (chromedriver,
//! W3C protocol spoken with reqwest) against a real agent and mosquitto. The page is opened with
//! the token in its fragment; the test changes the sensor and sees the new value on the page,
//! presses the actuator's Set button and sees the command's result (its I2C bus is absent on the
//! host: the device refuses, as the same command over MQTT is refused). Screenshots go to
//! `out/api-ui/`. Needs `chromium` and `chromium-driver` (image/host-deps.sh installs them).
#![allow(clippy::unwrap_used)] // a test that unwraps fails with the value in the message

mod api_support;
mod instance_support;
mod sf_support;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use api_support::{ApiGw, Client};
use betaas_e2e::{KillOnDrop, Mosquitto};
use serde_json::{json, Value};

const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

/// A chromedriver process and one browser session.
struct Browser {
    rt: Arc<tokio::runtime::Runtime>,
    http: reqwest::Client,
    base: String,
    _driver: KillOnDrop,
    _profile: tempfile::TempDir,
}

impl Browser {
    fn start(rt: Arc<tokio::runtime::Runtime>) -> Browser {
        let port = betaas_e2e::free_port();
        let driver = KillOnDrop(
            Command::new("chromedriver")
                .arg(format!("--port={port}"))
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("chromedriver (Debian: chromium-driver; image/host-deps.sh installs it)"),
        );
        let http = {
            let _in = rt.enter();
            reqwest::Client::builder()
                .timeout(Duration::from_secs(60))
                .build()
                .unwrap()
        };
        let root = format!("http://127.0.0.1:{port}");
        betaas_e2e::wait_until("chromedriver ready", Duration::from_secs(20), || {
            let r = rt.block_on(async {
                http.get(format!("{root}/status"))
                    .send()
                    .await
                    .ok()?
                    .json::<Value>()
                    .await
                    .ok()
            });
            r.filter(|v| v["value"]["ready"] == true).map(|_| ())
        });
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {
            "browserName": "chrome",
            "acceptInsecureCerts": true,
            "goog:chromeOptions": {
                "binary": "/usr/bin/chromium",
                "args": ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                         "--window-size=1400,1100", format!("--user-data-dir={}", profile.path().display())],
            },
        }}});
        let v = rt.block_on(async {
            http.post(format!("{root}/session"))
                .json(&caps)
                .send()
                .await
                .unwrap()
                .json::<Value>()
                .await
                .unwrap()
        });
        let session = v["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("no session: {v}"))
            .to_owned();
        Browser {
            rt,
            http,
            base: format!("{root}/session/{session}"),
            _driver: driver,
            _profile: profile,
        }
    }

    fn call(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let url = format!("{}{path}", self.base);
        let v: Value = self.rt.block_on(async {
            let mut r = self.http.request(method, url);
            if let Some(b) = body {
                r = r.json(&b);
            }
            r.send().await.unwrap().json().await.unwrap()
        });
        v["value"].clone()
    }

    fn goto(&self, url: &str) {
        self.call(reqwest::Method::POST, "/url", Some(json!({"url": url})));
    }

    /// The element matching `css`, waiting for it to appear.
    fn find(&self, css: &str) -> String {
        betaas_e2e::wait_until(&format!("element {css}"), Duration::from_secs(20), || {
            let v = self.call(
                reqwest::Method::POST,
                "/element",
                Some(json!({"using": "css selector", "value": css})),
            );
            v[ELEMENT].as_str().map(str::to_owned)
        })
    }

    fn text(&self, css: &str) -> String {
        let e = self.find(css);
        self.call(reqwest::Method::GET, &format!("/element/{e}/text"), None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn type_into(&self, css: &str, text: &str) {
        let e = self.find(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/clear"),
            Some(json!({})),
        );
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/value"),
            Some(json!({"text": text})),
        );
    }

    fn click(&self, css: &str) {
        let e = self.find(css);
        self.call(
            reqwest::Method::POST,
            &format!("/element/{e}/click"),
            Some(json!({})),
        );
    }

    fn url(&self) -> String {
        self.call(reqwest::Method::GET, "/url", None)
            .as_str()
            .unwrap_or("")
            .to_owned()
    }

    fn screenshot(&self, path: &Path) {
        let b64 = self.call(reqwest::Method::GET, "/screenshot", None);
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(path, base64(b64.as_str().unwrap())).unwrap();
        println!("screenshot: {}", path.display());
    }

    /// Waits until `css`'s text satisfies `f`; returns it.
    fn until_text(
        &self,
        css: &str,
        what: &str,
        timeout: Duration,
        f: impl Fn(&str) -> bool,
    ) -> String {
        let end = Instant::now() + timeout;
        loop {
            let t = self.text(css);
            if f(&t) {
                return t;
            }
            assert!(
                Instant::now() < end,
                "{what}: {css} still shows {t:?} after {timeout:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }
}

impl Drop for Browser {
    fn drop(&mut self) {
        let url = self.base.clone();
        let _ = self
            .rt
            .block_on(async { self.http.delete(url).send().await });
    }
}

/// Standard base64 (the screenshot's PNG).
fn base64(s: &str) -> Vec<u8> {
    let val = |c: u8| match c {
        b'A'..=b'Z' => c - b'A',
        b'a'..=b'z' => c - b'a' + 26,
        b'0'..=b'9' => c - b'0' + 52,
        b'+' => 62,
        _ => 63,
    };
    let clean: Vec<u8> = s
        .bytes()
        .filter(|c| !c.is_ascii_whitespace() && *c != b'=')
        .collect();
    let mut out = Vec::with_capacity(clean.len() * 3 / 4);
    for chunk in clean.chunks(4) {
        let n = chunk
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, c)| acc | u32::from(val(*c)) << (18 - 6 * i));
        let bytes = n.to_be_bytes();
        out.extend_from_slice(&bytes[1..chunk.len()]);
    }
    out
}

fn out_dir() -> PathBuf {
    betaas_e2e::repo().join("out").join("api-ui")
}

#[test]
fn the_ui_shows_live_values_and_drives_an_actuator() {
    betaas_e2e::seeded();
    assert_eq!(&base64("iVBORw0KGgo=")[..4], b"\x89PNG");
    let _serial = instance_support::serial();
    let rt = Arc::new(tokio::runtime::Runtime::new().unwrap());
    let broker = Mosquitto::start();
    let gw = ApiGw::new("gwui");
    let config = gw.write_config(broker.port);
    let first = f64::from(fastrand::i32(100..300)) / 10.0;
    gw.set_value(first);
    let _agent = sf_support::Agent::start(&config);
    let mut sub = broker.subscribe("betaas/gwui/things/limit/result");
    betaas_e2e::wait_until("the token file", Duration::from_secs(20), || {
        gw.data().join("api/token").exists().then_some(())
    });
    let token = gw.token();
    let api = Client::new(rt.clone(), gw.port, &token);
    api.wait_up(Duration::from_secs(20));

    let browser = Browser::start(rt.clone());
    browser.goto(&format!("https://127.0.0.1:{}/#token={token}", gw.port));
    let shown = browser.until_text(
        "#val-temp",
        "the first value",
        Duration::from_secs(20),
        |t| t.parse::<f64>() == Ok(first),
    );
    println!("page shows {shown}");
    assert!(
        !browser.url().contains(&token),
        "the token is taken out of the address bar"
    );

    // A value set now by the test appears on the page, pushed by the event stream.
    let v = f64::from(fastrand::i32(-300..900)) / 10.0 + 0.05;
    let t0 = Instant::now();
    gw.set_value(v);
    browser.until_text("#val-temp", "the new value", Duration::from_secs(10), |t| {
        t.parse::<f64>() == Ok(v)
    });
    println!("new value {v} on the page after {:?}", t0.elapsed());
    browser.screenshot(&out_dir().join("live-value.png"));

    // The actuator's control: the command goes through the API and its result is shown.
    let limit = f64::from(fastrand::i32(400..900)) / 8.0;
    browser.type_into("#in-limit", &limit.to_string());
    browser.click("#set-limit");
    let res = browser.until_text(
        "#res-limit",
        "the command's result",
        Duration::from_secs(20),
        |t| t.contains("device unavailable"),
    );
    println!("result shown: {res}");
    let published = sub.wait_for("the result on MQTT", Duration::from_secs(10), |_, p| {
        let o: Value = serde_json::from_str(p).ok()?;
        o["id"]
            .as_str()
            .is_some_and(|id| id.starts_with("api-"))
            .then_some(o)
    });
    assert_eq!(published["ok"], false);
    assert!(
        res.contains(published["error"].as_str().unwrap()),
        "{res} vs {published}"
    );
    browser.screenshot(&out_dir().join("actuator-result.png"));

    // The status panel and the instance are filled in.
    let status = browser.text("#kvs");
    assert!(
        status.contains("journal backlog") && status.contains("uptime"),
        "{status}"
    );
    browser.until_text("#inst", "the instance", Duration::from_secs(10), |t| {
        t.starts_with("instance lab")
    });
    browser.screenshot(&out_dir().join("overview.png"));
}
