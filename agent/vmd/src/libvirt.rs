//! The one libvirt connection, reopened with backoff when libvirtd goes away.
//!
//! Every call goes through [`Libvirt::with`]: if the connection is missing or the error says it
//! broke (libvirtd killed or restarting), the connection is dropped, reopened with exponential
//! backoff, and the call retried until `retry` has passed; then the caller gets
//! [`HvError::Unavailable`] naming the URI and the last error. Errors about the operation itself
//! (no such domain, invalid state) are returned at once.

use std::thread::sleep;
use std::time::{Duration, Instant};

use thiserror::Error;
use virt::connect::Connect;
use virt::enumutil::Enum;
use virt::error::{Error as VirtError, ErrorNumber};

// Flag values from libvirt's public headers (stable ABI); named here rather than pulling virt-sys.
pub const METADATA_ELEMENT: i32 = 2;
pub const AFFECT_CONFIG: u32 = 2;
pub const SHUTDOWN_ACPI_POWER_BTN: u32 = 1;
/// `VIR_DOMAIN_SHUTDOWN_SIGNAL`: SIGTERM to a container's init. libvirt's default for lxc tries
/// /dev/initctl first, which a busybox init does not read: the container then ran until the
/// shutdown timeout.
pub const SHUTDOWN_SIGNAL: u32 = 4;
pub const UNDEFINE_MANAGED_SAVE: u32 = 1;
pub const UNDEFINE_NVRAM: u32 = 4;
pub const XML_INACTIVE: u32 = 2;

#[derive(Debug, Error)]
pub enum HvError {
    #[error("libvirt at {uri} is unreachable after {waited_ms} ms of retries: {last}")]
    Unavailable {
        uri: String,
        waited_ms: u64,
        last: String,
    },
    #[error("libvirt {what}: {message}")]
    Op {
        what: String,
        code: Option<ErrorNumber>,
        message: String,
    },
}

impl HvError {
    pub fn code(&self) -> Option<ErrorNumber> {
        match self {
            HvError::Op { code, .. } => *code,
            HvError::Unavailable { .. } => None,
        }
    }

    pub fn is_no_domain(&self) -> bool {
        self.code() == Some(ErrorNumber::NoDomain)
    }
}

/// Does this error mean the connection (not the operation) failed?
pub fn is_connection_error(e: &VirtError) -> bool {
    match e.code() {
        Enum::Known(ErrorNumber::SystemError)
        | Enum::Known(ErrorNumber::NoConnect)
        | Enum::Known(ErrorNumber::InvalidConn)
        | Enum::Known(ErrorNumber::Rpc) => true,
        // libvirt reports a dead socket as an internal error with these words.
        Enum::Known(ErrorNumber::InternalError) => {
            let m = e.message();
            m.contains("client socket is closed")
                || m.contains("connection closed")
                || m.contains("End of file while reading data")
        }
        _ => false,
    }
}

pub struct Libvirt {
    uri: String,
    conn: Option<Connect>,
    retry: Duration,
    /// Reconnections so far (tests and the log show that a restart was ridden out).
    pub reconnects: u64,
}

impl Libvirt {
    pub fn new(uri: &str, retry: Duration) -> Self {
        // libvirt's default handler prints every error on stderr; ours are returned and logged once.
        virt::error::clear_error_callback();
        Libvirt {
            uri: uri.to_owned(),
            conn: None,
            retry,
            reconnects: 0,
        }
    }

    pub fn uri(&self) -> &str {
        &self.uri
    }

    /// Runs `f` on a live connection, reconnecting and retrying on connection failures.
    pub fn with<T>(
        &mut self,
        what: &str,
        mut f: impl FnMut(&Connect) -> Result<T, VirtError>,
    ) -> Result<T, HvError> {
        let start = Instant::now();
        let mut backoff = Duration::from_millis(100);
        loop {
            let last = match self.connection() {
                Ok(c) => match f(c) {
                    Ok(v) => return Ok(v),
                    Err(e) if is_connection_error(&e) => {
                        self.drop_conn();
                        e.message().to_owned()
                    }
                    Err(e) => {
                        return Err(HvError::Op {
                            what: what.to_owned(),
                            code: match e.code() {
                                Enum::Known(k) => Some(k),
                                Enum::Unknown(_) => None,
                            },
                            message: e.message().to_owned(),
                        })
                    }
                },
                Err(e) => e.message().to_owned(),
            };
            let waited = start.elapsed();
            if waited + backoff > self.retry {
                return Err(HvError::Unavailable {
                    uri: self.uri.clone(),
                    waited_ms: waited.as_millis() as u64,
                    last: format!("{what}: {last}"),
                });
            }
            tracing::warn!(uri = %self.uri, %what, error = %last, "libvirt unreachable, retrying in {:?}", backoff);
            sleep(backoff);
            backoff = (backoff * 2).min(Duration::from_secs(2));
        }
    }

    fn connection(&mut self) -> Result<&Connect, VirtError> {
        if let Some(c) = &self.conn {
            // is_alive is a local check of the RPC client: cheap, catches a closed socket early.
            if c.is_alive().unwrap_or(false) {
                return self.conn.as_ref().ok_or_else(VirtError::last_error);
            }
            self.drop_conn();
        }
        let c = Connect::open(Some(&self.uri))?;
        if self.reconnects > 0 || self.conn.is_none() {
            tracing::info!(uri = %self.uri, "connected to libvirt");
        }
        self.reconnects += 1;
        self.conn = Some(c);
        self.conn.as_ref().ok_or_else(VirtError::last_error)
    }

    fn drop_conn(&mut self) {
        if let Some(c) = self.conn.take() {
            // virt's Drop panics if close fails; on a dead connection close still just drops
            // the reference. Leaking instead would be the only way around a panic, and a panic
            // here would mean libvirt's own invariant broke.
            drop(c);
        }
    }
}
