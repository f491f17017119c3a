//! The pod runner against the real API server (in-process, over MemStore and plain
//! HTTP), with images mapped to `/bin/sh`: what a user of the cluster sees.

#![allow(clippy::unwrap_used)]

mod deletion;
mod harness;
mod logs;
mod node;
mod pods;
mod restart;
mod sandbox;
