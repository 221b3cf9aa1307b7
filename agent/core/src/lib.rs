//! BETaaS pure core: no I/O, no clock, no runtime. Time and state come in as arguments, so every
//! part is tested exhaustively on the host and behaves the same on the gateway.
//!
//! - [`forecast`]: Holt's linear method for the resource history (paper §II.B).
//! - [`allocator`]: the local/remote choice of the TaaS resources manager (paper §III, Figure 2).
//! - [`scenario`], [`sim`], [`gen`]: the simulator that compares it with other schedulers.
//! - [`instance`]: instance bus messages, membership and trust (the instance manager).
//! - [`placement`]: one VM request's decide → try → leave out → decide again loop.
//! - [`cluster`]: the Big Data Manager's scaling decision (replicas asked vs workers known).
//! - [`lifecycle`]: this gateway's reservations for its local VMs: release, rebuild after a restart.
//! - [`journal`]: the store-and-forward journal's record format (frames, segment header, state).
//! - [`things`]: the parsers of outside input for things: actuator commands, MQTT things' payloads.

pub mod allocator;
pub mod cluster;
pub mod forecast;
pub mod gen;
pub mod instance;
pub mod journal;
pub mod lifecycle;
pub mod placement;
pub mod scenario;
pub mod sim;
pub mod things;
