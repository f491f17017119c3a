//! The QMP client against a scripted fake peer and against real QEMU. One test binary.

mod common;
mod fake_peer;
mod fake_peer_failures;
mod real_qemu;
