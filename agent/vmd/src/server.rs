//! The Unix socket: one thread per connection, one request → one response, all requests served
//! in turn by the one manager (libvirt calls on one connection are serialized anyway; a long
//! managed save makes a concurrent List wait, which the agent tolerates).

use std::io::{Read, Write};
use std::os::unix::net::{UnixListener, UnixStream};
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use betaas_proto::{decode_request, encode_response, ErrorKind, ErrorReply, FrameReader, Response};

use crate::access::{self, Access};
use crate::config::Config;
use crate::manager::Manager;

pub type Shared = Arc<Mutex<Manager>>;

/// A poisoned lock means a request panicked half-way; the manager's state is rebuilt from
/// libvirt on the next refresh, so serving on is safer than dying with VMs half-managed.
pub fn lock(m: &Shared) -> MutexGuard<'_, Manager> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// How connections are admitted and bounded.
#[derive(Debug, Clone, Copy)]
pub struct Limits {
    pub access: Access,
    pub max_connections: usize,
    pub read_timeout: Duration,
}

impl Limits {
    /// From the config: `socket_user` resolved in `/etc/passwd`. Err: the user is unknown.
    pub fn from_config(cfg: &Config) -> Result<(Limits, Option<(u32, u32)>), String> {
        let owner = match &cfg.socket_user {
            None => None,
            Some(u) => {
                let passwd = std::fs::read_to_string("/etc/passwd").unwrap_or_default();
                Some(
                    access::lookup_user(&passwd, u)
                        .ok_or_else(|| format!("socket_user {u:?}: no such user in /etc/passwd"))?,
                )
            }
        };
        let limits = Limits {
            access: Access {
                own_uid: rustix::process::geteuid().as_raw(),
                user_uid: owner.map(|(uid, _)| uid),
            },
            max_connections: cfg.max_connections,
            read_timeout: Duration::from_millis(cfg.read_timeout_ms),
        };
        Ok((limits, owner))
    }
}

/// Binds `path` (replacing a stale socket file left by a killed daemon), with `mode` and, when
/// given, owned by `owner` (uid, gid): closed to everyone, chowned, then opened up to `mode`. A
/// connection made in the instant between `bind` and the first chmod still meets the peer check.
pub fn bind(path: &Path, mode: u32, owner: Option<(u32, u32)>) -> std::io::Result<UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    match std::fs::remove_file(path) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    let listener = UnixListener::bind(path)?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o000))?;
    if let Some((uid, gid)) = owner {
        std::os::unix::fs::chown(path, Some(uid), Some(gid))?;
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(mode))?;
    Ok(listener)
}

/// Closes its connection's place among `max_connections` when the connection ends.
struct Slot(Arc<AtomicUsize>);

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

pub fn serve(listener: UnixListener, mgr: Shared, limits: Limits) {
    let open = Arc::new(AtomicUsize::new(0));
    for conn in listener.incoming() {
        let mut s = match conn {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        // Every refusal below is answered (id 0) and closed, never waited on.
        let _ = s.set_write_timeout(Some(limits.read_timeout));
        let peer = rustix::net::sockopt::socket_peercred(&s).map(|c| c.uid.as_raw());
        let uid = match peer {
            Ok(uid) if limits.access.permits(uid) => uid,
            Ok(uid) => {
                tracing::warn!(
                    uid,
                    "connection refused: this user may not use the VM manager"
                );
                refuse(
                    &mut s,
                    ErrorKind::NotAllowed,
                    format!("uid {uid} may not use betaas-vmd"),
                );
                continue;
            }
            Err(e) => {
                tracing::warn!(error = %e, "connection refused: no peer credentials");
                refuse(
                    &mut s,
                    ErrorKind::NotAllowed,
                    format!("no peer credentials: {e}"),
                );
                continue;
            }
        };
        if !access::admits(open.fetch_add(1, Ordering::SeqCst), limits.max_connections) {
            open.fetch_sub(1, Ordering::SeqCst);
            tracing::warn!(
                uid,
                max = limits.max_connections,
                "connection refused: too many open"
            );
            let why = format!("{} connections open: retry later", limits.max_connections);
            refuse(&mut s, ErrorKind::Busy, why);
            continue;
        }
        let slot = Slot(open.clone());
        let mgr = mgr.clone();
        std::thread::spawn(move || {
            if let Err(e) = connection(s, &mgr, limits.read_timeout) {
                tracing::debug!(error = %e, "connection ended");
            }
            drop(slot);
        });
    }
}

fn refuse(s: &mut UnixStream, kind: ErrorKind, message: String) {
    let resp = Response::Error(ErrorReply::new(kind, message));
    let _ = s.write_all(&encode_response(0, &resp));
}

/// Serves one connection until it closes, sends a broken frame, or is silent (or leaves a frame
/// incomplete) for `timeout`: the clock restarts only when a whole request has been served, so a
/// peer trickling a byte at a time gains nothing.
fn connection(mut s: UnixStream, mgr: &Shared, timeout: Duration) -> std::io::Result<()> {
    let mut reader = FrameReader::new();
    let mut buf = [0u8; 4096];
    let mut deadline = Instant::now() + timeout;
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
                    deadline = Instant::now() + timeout;
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
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            tracing::debug!(
                partial = reader.pending(),
                "connection silent too long, closed"
            );
            return Ok(());
        }
        s.set_read_timeout(Some(left))?;
        let n = match s.read(&mut buf) {
            Ok(n) => n,
            Err(e)
                if matches!(
                    e.kind(),
                    std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) =>
            {
                tracing::debug!(
                    partial = reader.pending(),
                    "connection silent too long, closed"
                );
                return Ok(());
            }
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
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
