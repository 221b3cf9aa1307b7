//! Container consoles. libvirt's LXC driver offers a container only a PTY console (a `file`
//! console is refused), so its output is copied into the container's `serial.log` by a thread
//! that holds the console stream, as `virsh console` would; QEMU writes a VM's serial port to that
//! file itself. Output written while nobody holds the console waits in the PTY's buffer, so a
//! follower attached a moment after the start loses nothing.

use std::collections::BTreeSet;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};

use virt::connect::Connect;
use virt::stream::Stream;

/// One follower per running container, each on its own connection (a blocking read).
#[derive(Clone, Default)]
pub struct Followers {
    active: Arc<Mutex<BTreeSet<String>>>,
}

impl Followers {
    /// Starts copying `name`'s console into `log` unless a follower already does.
    pub fn follow(&self, uri: &str, name: &str, log: &Path) {
        {
            let mut active = self.active.lock().unwrap_or_else(|e| e.into_inner());
            if !active.insert(name.to_owned()) {
                return;
            }
        }
        let (uri, name, log, active) = (
            uri.to_owned(),
            name.to_owned(),
            log.to_owned(),
            self.active.clone(),
        );
        let spawned = std::thread::Builder::new()
            .name(format!("console {name}"))
            .spawn(move || {
                match copy(&uri, &name, &log) {
                    Ok(bytes) => tracing::debug!(vm = %name, bytes, "console closed"),
                    Err(e) => tracing::warn!(vm = %name, error = %e, "console follower stopped"),
                }
                active
                    .lock()
                    .unwrap_or_else(|e| e.into_inner())
                    .remove(&name);
            });
        if let Err(e) = spawned {
            tracing::warn!(error = %e, "no thread for a console follower");
        }
    }
}

/// Copies the console until the container stops (end of stream); returns the bytes copied.
fn copy(uri: &str, name: &str, log: &PathBuf) -> Result<u64, String> {
    let conn = Connect::open(Some(uri)).map_err(|e| format!("open {uri}: {e}"))?;
    let r = (|| {
        let dom = conn
            .lookup_domain_by_name(name)
            .map_err(|e| e.to_string())?;
        let stream = Stream::new(&conn, 0).map_err(|e| e.to_string())?;
        // No VIR_DOMAIN_CONSOLE_FORCE: the LXC driver refuses it. A follower left by an earlier
        // run died with its daemon, and its end of the console with it.
        dom.open_console(None, &stream, 0)
            .map_err(|e| format!("open console: {e}"))?;
        let mut out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(log)
            .map_err(|e| format!("{}: {e}", log.display()))?;
        let mut buf = [0u8; 4096];
        let mut total = 0u64;
        loop {
            match stream.recv(&mut buf) {
                Ok(n) if n > 0 => {
                    let n = n as usize;
                    out.write_all(&buf[..n])
                        .map_err(|e| format!("{}: {e}", log.display()))?;
                    total += n as u64;
                }
                // 0: the container stopped; an error: its console went away with it.
                Ok(_) | Err(_) => break,
            }
        }
        let _ = stream.abort();
        Ok(total)
    })();
    // The connection closes when dropped.
    r
}
