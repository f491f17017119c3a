//! The `kubevirt-rs` binary as its users meet it: kubectl, kube-rs and a plain HTTPS client
//! against a real server process on a temporary data directory.

#![allow(clippy::unwrap_used)]

mod agent;
mod aggregation;
mod browser;
mod cli;
mod console;
mod crash;
mod examples;
mod expose;
mod https;
mod kubectl;
mod kubers;
mod lifecycle;
mod migration;
mod probes;
mod rbac;
mod security;
mod support;
mod virtctl;
mod vms;
