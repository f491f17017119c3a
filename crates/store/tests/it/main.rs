//! The store's contract, run against both implementations, and its behaviour across
//! crashes. One test binary.

#![allow(clippy::unwrap_used)]

mod contract;
mod crash;
