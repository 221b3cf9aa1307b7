//! Pure parsers of what things send and receive over MQTT (the agent's `things` re-exports them).

pub mod command;
pub mod payload;
