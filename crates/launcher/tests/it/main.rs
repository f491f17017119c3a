//! virt-launcher against real QEMU guests under TCG, from the loopback registry (`make
//! guest registry`): disk preparation, lifecycle and the standalone mode. One test binary,
//! so the guests of different modules boot side by side. The full Debian guest (cloud-init,
//! the guest agent) is tested through the whole system, in the server's tests.

#![allow(clippy::unwrap_used)]

mod common;
mod disks;
mod lifecycle;
mod standalone;
