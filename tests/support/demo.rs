//! `make qemu`: boots the qemu-cubieboard firmware image with an emulated TMP105, a local mosquitto
//! (or `BROKER=host:port`), turns the sensor's temperature slowly up and down over QMP, and prints
//! every message the gateway publishes. `DEMO_SECONDS=N` stops after N seconds; Ctrl-C stops too.
//! QEMU, mosquitto and the subscriber are stopped on the way out (their Drop impls).

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use betaas_e2e::{Mosquitto, Qemu};

fn main() {
    let stop = Arc::new(AtomicBool::new(false));
    let s = stop.clone();
    if let Err(e) = ctrlc::set_handler(move || s.store(true, Ordering::SeqCst)) {
        eprintln!("qemu-demo: cannot catch Ctrl-C: {e}");
    }
    let seconds: Option<u64> = match std::env::var("DEMO_SECONDS") {
        Ok(v) if !v.is_empty() => match v.parse() {
            Ok(n) => Some(n),
            Err(_) => return eprintln!("qemu-demo: DEMO_SECONDS={v:?} is not a number of seconds"),
        },
        _ => None,
    };

    let broker = match std::env::var("BROKER").ok().filter(|b| !b.is_empty()) {
        Some(b) => {
            let Some((host, port)) = b
                .rsplit_once(':')
                .and_then(|(h, p)| Some((h, p.parse::<u16>().ok()?)))
            else {
                return eprintln!("qemu-demo: BROKER={b:?} is not host:port");
            };
            println!("==> using the broker at {host}:{port}");
            Mosquitto::external(host, port)
        }
        None => {
            // The embedded default port when it is free; another one when something holds 1883.
            let b = if Mosquitto::port_in_use(1883) {
                Mosquitto::start()
            } else {
                Mosquitto::start_on(1883)
            };
            println!("==> started mosquitto on 127.0.0.1:{}", b.port);
            b
        }
    };
    // The guest reaches the host's loopback as 10.0.2.2.
    let guest_host = match broker.host.as_str() {
        "127.0.0.1" | "localhost" | "::1" => "10.0.2.2",
        h => h,
    };
    let mut sub = broker.subscribe("betaas/#");
    let config = format!(
        "gateway_id = \"qemu-cubieboard\"\n[mqtt]\nhost = \"{guest_host}\"\nport = {}\n\n\
         [[things]]\nid = \"temp0\"\ndriver = \"tmp105\"\nbus = \"i2c\"\ndevice = \"/dev/i2c-0\"\naddress = 0x48\ninterval_ms = 1000\n",
        broker.port
    );
    println!(
        "==> booting out/qemu-cubieboard (U-Boot, Debian kernel, the agent; ~20-30 s under TCG)"
    );
    let mut vm = Qemu::boot("qemu-cubieboard", &config);
    println!(
        "    console log: {}",
        vm.dir.path().join("console.log").display()
    );

    let start = Instant::now();
    let mut last_set = Instant::now() - Duration::from_secs(10);
    while !stop.load(Ordering::SeqCst)
        && seconds.is_none_or(|n| start.elapsed() < Duration::from_secs(n))
    {
        // A slow wave between 15 and 35 °C, so the readings visibly follow the "room".
        if last_set.elapsed() >= Duration::from_secs(3) {
            let t = start.elapsed().as_secs_f64();
            let millideg = (25_000.0 + 10_000.0 * (t / 30.0).sin()) as i64 / 125 * 125;
            if let Err(e) = vm.qmp().execute(
                "qom-set",
                serde_json::json!({"path": "/machine/peripheral/sens0", "property": "temperature", "value": millideg}),
            ) {
                eprintln!("qemu-demo: QEMU stopped answering ({e}); exiting");
                break;
            }
            println!(
                "[{:5.1}s] sensor set to {:.3} °C",
                t,
                millideg as f64 / 1000.0
            );
            last_set = Instant::now();
        }
        if let Some((topic, payload)) = sub.next(Duration::from_millis(200)) {
            println!("[{:5.1}s] {topic} {payload}", start.elapsed().as_secs_f64());
        }
    }
    println!("==> stopping QEMU and the broker");
    vm.kill();
}
