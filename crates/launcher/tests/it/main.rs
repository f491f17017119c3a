//! virt-launcher against real QEMU guests under TCG, from the loopback registry (`make
//! guest registry`): disk preparation, lifecycle, the standalone mode and the full Debian
//! guest. One test binary, so the guests of different modules boot side by side.

#![allow(clippy::unwrap_used)]

mod common;
mod disks;
mod full_guest;
mod lifecycle;
mod standalone;
