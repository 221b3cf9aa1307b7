//! `betaas-vmd`, the paper's VM manager: turns templates into libvirt domains (each with its own
//! qcow2 overlay), stops them with a managed save rather than destroying them, resumes them on
//! the next request for the same template, destroys them after an idle time, and reports their
//! CPU, memory and disk. It serves the agent over a Unix socket with `betaas-proto`.
//!
//! Pure parts: [`domxml`] (domain XML and our ownership mark), [`registry`] (adoption,
//! reconciliation, idle policy, resume-first, names), [`lifecycle`] (stop per kind, restart
//! budget), [`access`] (who may connect), [`config`]. I/O: [`libvirt`] (connection with backoff),
//! [`overlay`] (qemu-img), [`catalog`] (template files), [`probe`] (boots a guest per kind),
//! [`manager`] (the lifecycle), [`server`] (the socket), [`service`] (a VM's ports and application).

pub mod access;
pub mod catalog;
pub mod config;
pub mod console;
pub mod domxml;
pub mod identity;
pub mod libvirt;
pub mod lifecycle;
pub mod manager;
pub mod overlay;
pub mod probe;
pub mod registry;
pub mod server;
pub mod service;
