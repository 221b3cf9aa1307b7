//! The Unix socket: one thread per connection, one request → one response, all requests served
//! in turn by the one manager (libvirt calls on one connection are serialized anyway; a long
//! managed save makes a concurrent List wait, which the agent tolerates).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use betaas_proto::{decode_request, encode_response, FrameReader};

use crate::manager::Manager;

pub type Shared = Arc<Mutex<Manager>>;

/// A poisoned lock means a request panicked half-way; the manager's state is rebuilt from
/// libvirt on the next refresh, so serving on is safer than dying with VMs half-managed.
pub fn lock(m: &Shared) -> MutexGuard<'_, Manager> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Binds `path` (replacing a stale socket file left by a killed daemon).
pub fn bind(path: &Path) -> std::io::Result<UnixListener> {
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    UnixListener::bind(path)
}

pub fn serve(listener: UnixListener, mgr: Shared) {
    for conn in listener.incoming() {
        match conn {
            Ok(s) => {
                let mgr = mgr.clone();
                std::thread::spawn(move || {
                    if let Err(e) = connection(s, &mgr) {
                        tracing::debug!(error = %e, "connection ended");
                    }
                });
            }
            Err(e) => tracing::warn!(error = %e, "accept failed"),
        }
    }
}

fn connection(mut s: UnixStream, mgr: &Shared) -> std::io::Result<()> {
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    loop {
        loop {
            match reader.next_frame() {
                Ok(Some(frame)) => {
                    let (id, resp) = match decode_request(&frame) {
                        Ok((id, req)) => {
                            tracing::debug!(id, ?req, "request");
                            (id, lock(mgr).handle(req))
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "undecodable request");
                            e.reply()
                        }
                    };
                    s.write_all(&encode_response(id, &resp))?;
                }
                Ok(None) => break,
                Err(e) => {
                    // Frame boundaries are lost: answer once, then hang up.
                    tracing::warn!(error = %e, "bad frame, closing connection");
                    s.write_all(&encode_response(0, &e.reply()))?;
                    return Ok(());
                }
            }
        }
        let n = s.read(&mut buf)?;
        if n == 0 {
            return Ok(());
        }
        reader.push(&buf[..n]);
    }
}

/// The dependability manager's clock: every `interval`, VMs that died without being stopped are
/// restarted within their budget (see [`crate::lifecycle`]).
pub fn supervisor(mgr: Shared, interval: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(interval);
        if let Err(e) = lock(&mgr).supervise() {
            tracing::warn!(error = %e, "supervision run failed");
        }
    });
}

/// The idle policy's clock: every `interval`, stopped VMs past their idle time are destroyed.
pub fn reaper(mgr: Shared, interval: Duration) {
    std::thread::spawn(move || loop {
        std::thread::sleep(interval);
        if let Err(e) = lock(&mgr).reap() {
            tracing::warn!(error = %e, "idle policy run failed");
        }
    });
}
