//! Library face of the agent, so integration tests, benchmarks and the fuzz crate can reach its parts.
//! Keep it to `pub mod` lines.

pub mod journal;
