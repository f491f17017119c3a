//! virt-api against the real in-process API server: registration and aggregation,
//! the VM lifecycle subresources, the webhooks, and forwarding to a stand-in handler
//! (a network peer, so a fake is fine here) over mutual TLS.

#![allow(clippy::unwrap_used, missing_debug_implementations)]

mod forwarding;
pub mod harness;
mod lifecycle;
mod webhooks;

pub use harness::*;
