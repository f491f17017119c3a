//! Async client for QMP, the QEMU Machine Protocol, over a unix socket.
//!
//! # What this crate owns
//!
//! The wire protocol and nothing else: connecting to the monitor socket, the
//! handshake, correlating replies with requests, delivering asynchronous
//! events, timeouts, and a few typed helpers for common commands.
//!
//! # What it does not own
//!
//! Starting or supervising QEMU, building its command line, deciding what a
//! VM state means to the rest of the system, retrying or reconnecting. A
//! closed connection stays closed; the caller decides what to do about it.
//!
//! # Protocol
//!
//! 1. **Greeting.** On connect QEMU sends one line,
//!    `{"QMP": {"version": {...}, "capabilities": [...]}}`. It is parsed into a
//!    [`Greeting`]; the QEMU version is available from [`Qmp::version`].
//! 2. **Capabilities negotiation.** The client sends `qmp_capabilities`
//!    without `enable`, so no optional capability (such as `oob`) is turned
//!    on. Until QEMU acknowledges it, no other command is accepted.
//! 3. **Commands.** Each request carries a fresh numeric `id`; QEMU echoes it
//!    in `{"return": ..., "id": N}` or `{"error": {"class", "desc"}, "id": N}`.
//!    A single reader task routes each reply to the caller waiting on that
//!    id, so a cloned [`Qmp`] can be used from many tasks at once.
//! 4. **Events.** Lines of the form `{"event": ..., "data": ..., "timestamp":
//!    ...}` can arrive at any time, including *before* the reply to the
//!    command that caused them (QEMU emits `RESUME`, `STOP`, `SHUTDOWN` this
//!    way). The reader handles lines strictly in order and queues an event
//!    before it hands over any later reply, so once a command's future
//!    resolves, every event QEMU sent ahead of that reply is already waiting
//!    in the [`EventStream`]. The queue is unbounded so a slow event consumer
//!    can never stall command replies, and nothing is dropped.
//!
//! Lines that are not valid QMP are logged and skipped; they never panic or
//! end the connection. When the peer hangs up, every pending and later
//! command fails with [`QmpError::Disconnected`] and the event stream ends.

mod client;
mod commands;
mod error;
mod events;
mod transport;
mod wire;

pub use client::{DEFAULT_COMMAND_TIMEOUT, Qmp};
pub use commands::{ScreendumpFormat, StatusInfo};
pub use error::{QmpError, Result};
pub use events::{Event, EventStream};
pub use wire::{Greeting, QemuVersion};
