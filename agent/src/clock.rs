//! The two clocks. The board has no RTC: the wall clock may read 1970 at boot and jump by years
//! when NTP or an operator sets it. So every timeout, heartbeat and trust timer runs on the
//! monotonic clock, and the wall clock is only written into `ts` fields for people to read.

use std::sync::OnceLock;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Milliseconds since the Unix epoch, as the wall clock says (may jump): for `ts` fields only.
pub fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// Milliseconds since the process first asked: never goes back, unaffected by clock changes.
pub fn mono_millis() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn monotonic_millis_never_go_back() {
        let mut last = mono_millis();
        for _ in 0..1000 {
            let now = mono_millis();
            assert!(now >= last);
            last = now;
        }
    }
}
