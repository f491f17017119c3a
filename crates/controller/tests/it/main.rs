//! virt-controller against the in-process API server (MemStore, plain HTTP on loopback).
//! Nothing plays the node: the tests bind and ready the launcher pods, and write the
//! handler's `Running`, themselves.

#![allow(clippy::unwrap_used)]

mod common;
mod instancetype;
mod leader;
mod replicaset;
mod vm;
mod vmi;
