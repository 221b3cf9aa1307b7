//! The agent's parts, one module per component of the paper; `main.rs` is the command line.
//! Integration tests, benchmarks and the fuzz crate reach them through this library.

pub mod actuators;
pub mod agent;
pub mod api;
pub mod clock;
pub mod cloud;
pub mod commands;
pub mod config;
pub mod discovery;
pub mod instance;
pub mod journal;
pub mod mqtt;
pub mod outbox;
pub mod resources;
pub mod session;
pub mod things;
pub mod update;
pub mod vm;
pub mod war;
