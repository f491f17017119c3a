//! Typed helpers for the handful of commands the rest of the system needs.

use std::path::Path;

use serde::Deserialize;
use serde_json::json;

use crate::client::Qmp;
use crate::error::{QmpError, Result};

/// Reply of `query-status`.
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct StatusInfo {
    /// True if the guest CPUs are executing.
    pub running: bool,
    /// QEMU run state, e.g. `prelaunch`, `running`, `paused`, `shutdown`.
    pub status: String,
}

/// Image format for [`Qmp::screendump`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ScreendumpFormat {
    #[default]
    Ppm,
    Png,
}

impl ScreendumpFormat {
    fn as_str(self) -> &'static str {
        match self {
            Self::Ppm => "ppm",
            Self::Png => "png",
        }
    }
}

impl Qmp {
    /// `query-status`: the VM run state.
    pub async fn query_status(&self) -> Result<StatusInfo> {
        self.execute_as("query-status", None).await
    }

    /// `cont`: start or resume the guest CPUs (QEMU emits `RESUME`).
    pub async fn cont(&self) -> Result<()> {
        self.execute("cont", None).await.map(drop)
    }

    /// `stop`: pause the guest CPUs (QEMU emits `STOP`).
    pub async fn stop(&self) -> Result<()> {
        self.execute("stop", None).await.map(drop)
    }

    /// `system_powerdown`: ask the guest to power off (ACPI; emits `POWERDOWN`).
    pub async fn system_powerdown(&self) -> Result<()> {
        self.execute("system_powerdown", None).await.map(drop)
    }

    /// `system_reset`: hard-reset the guest (emits `RESET`).
    pub async fn system_reset(&self) -> Result<()> {
        self.execute("system_reset", None).await.map(drop)
    }

    /// `quit`: make QEMU exit (emits `SHUTDOWN`, then closes the socket).
    ///
    /// QEMU may hang up before its reply reaches us; that also counts as
    /// success, since the request was sent and QEMU is going away.
    pub async fn quit(&self) -> Result<()> {
        match self.execute("quit", None).await {
            Ok(_) => Ok(()),
            Err(e) if e.is_disconnected() => Ok(()),
            Err(e) => Err(e),
        }
    }

    /// `screendump`: write the primary console to `filename` on the QEMU host.
    pub async fn screendump(&self, filename: &Path, format: ScreendumpFormat) -> Result<()> {
        let filename = filename.to_str().ok_or_else(|| {
            QmpError::InvalidArgument(format!("non-UTF-8 path {}", filename.display()))
        })?;
        let args = json!({ "filename": filename, "format": format.as_str() });
        self.execute("screendump", Some(args)).await.map(drop)
    }
}
