//! Disks, cdroms and their controllers.

use api::v1::{Disk, VirtualMachineInstance};
use serde_json::json;

use super::{Args, BuildError, escape, invalid, on_off, unsupported};
use crate::disks::{Prepared, PreparedVolume};

#[derive(Default)]
struct Controllers {
    sata_ports: u32,
    ahci: bool,
    scsi: bool,
    usb: bool,
}

pub(super) fn add(
    vmi: &VirtualMachineInstance,
    prepared: &Prepared,
    a: &mut Args,
) -> Result<(), BuildError> {
    let q35 = vmi
        .spec
        .domain
        .machine
        .as_ref()
        .and_then(|m| m.machine_type.as_deref())
        .is_none_or(|m| m == "q35" || m.starts_with("pc-q35"));
    let mut c = Controllers::default();
    let devices = &vmi.spec.domain.devices;
    // With no boot order anywhere, the first disk boots, as libvirt's `<boot dev='hd'/>`
    // makes it for upstream. Firmware would otherwise try its own device order, in which a
    // SATA cloud-init disk can come before a virtio root disk.
    let no_order = devices.disks.iter().all(|d| d.boot_order.is_none())
        && devices.interfaces.iter().all(|i| i.boot_order.is_none());
    let first_disk = devices
        .disks
        .iter()
        .position(|d| d.cdrom.is_none() && d.lun.is_none());
    for (i, disk) in devices.disks.iter().enumerate() {
        let field = format!("spec.domain.devices.disks[{i}]");
        let volume = prepared
            .volumes
            .iter()
            .find(|v| v.name == disk.name)
            .ok_or_else(|| {
                invalid(
                    format!("{field}.name"),
                    format!("disk {:?} has no volume of the same name", disk.name),
                )
            })?;
        let boot_order = disk
            .boot_order
            .or((no_order && first_disk == Some(i)).then_some(1));
        add_disk(disk, boot_order, volume, &field, q35, &mut c, a)?;
    }
    Ok(())
}

fn add_disk(
    disk: &Disk,
    boot_order: Option<u32>,
    volume: &PreparedVolume,
    field: &str,
    q35: bool,
    c: &mut Controllers,
    a: &mut Args,
) -> Result<(), BuildError> {
    if disk.lun.is_some() {
        return Err(unsupported(format!("{field}.lun"), "LUN disks"));
    }
    let (bus, cdrom, readonly) = match (&disk.disk, &disk.cdrom) {
        (_, Some(cd)) => (cd.bus.as_deref().unwrap_or("sata"), true, true),
        (Some(d), None) => (
            d.bus.as_deref().unwrap_or("sata"),
            false,
            d.readonly == Some(true),
        ),
        (None, None) => ("sata", false, false),
    };
    // Only virtio-blk and cdroms take a read-only node; an emulated hard disk (ide-hd,
    // scsi-hd, usb-storage) refuses one, so a read-only volume such as a cloud-init ISO is
    // attached writable there, as libvirt does. The ISO is this VMI's own scratch copy.
    let read_only = readonly || (volume.read_only && (cdrom || bus == "virtio"));
    let (direct, write_cache) = match disk.cache.as_deref() {
        Some("none") => (true, true),
        Some("writethrough") => (false, false),
        Some("writeback") | None => (false, true),
        Some(other) => {
            return Err(invalid(
                format!("{field}.cache"),
                format!("unknown cache mode {other:?}"),
            ));
        }
    };
    let aio = match disk.io.as_deref() {
        Some("native") if !direct => {
            return Err(invalid(format!("{field}.io"), "io native needs cache none"));
        }
        Some("native") => "native",
        _ => "threads",
    };
    let node = format!("drive-ua-{}", disk.name);
    let blockdev = json!({
        "driver": volume.format.as_str(),
        "node-name": node,
        "read-only": read_only,
        "cache": {"direct": direct, "no-flush": false},
        "discard": "unmap",
        "file": {"driver": "file", "filename": volume.path.display().to_string(), "aio": aio},
    });
    a.push("-blockdev", blockdev.to_string());
    let mut dev = match (bus, cdrom) {
        ("virtio", false) => format!(
            "virtio-blk-pci,drive={},id=ua-{}",
            escape(&node),
            escape(&disk.name)
        ),
        ("virtio", true) => {
            return Err(invalid(
                format!("{field}.cdrom.bus"),
                "a cdrom cannot be on virtio",
            ));
        }
        ("sata", _) => {
            let controller = if q35 {
                "ide"
            } else {
                if !c.ahci {
                    a.device("ahci,id=sata0");
                    c.ahci = true;
                }
                "sata0"
            };
            if c.sata_ports >= 6 {
                return Err(invalid(
                    format!("{field}.disk.bus"),
                    "at most 6 sata devices",
                ));
            }
            let port = c.sata_ports;
            c.sata_ports += 1;
            let kind = if cdrom { "ide-cd" } else { "ide-hd" };
            format!(
                "{kind},drive={},id=ua-{},bus={controller}.{port}",
                escape(&node),
                escape(&disk.name)
            )
        }
        ("scsi", _) => {
            if !c.scsi {
                a.device("virtio-scsi-pci,id=scsi0");
                c.scsi = true;
            }
            let kind = if cdrom { "scsi-cd" } else { "scsi-hd" };
            format!(
                "{kind},drive={},id=ua-{},bus=scsi0.0",
                escape(&node),
                escape(&disk.name)
            )
        }
        ("usb", _) => {
            if !c.usb {
                a.device("qemu-xhci,id=usb");
                c.usb = true;
            }
            format!(
                "usb-storage,drive={},id=ua-{},bus=usb.0",
                escape(&node),
                escape(&disk.name)
            )
        }
        (other, _) => {
            return Err(unsupported(
                format!("{field}.disk.bus"),
                format!("disk bus {other:?}"),
            ));
        }
    };
    if !cdrom && bus != "usb" {
        dev.push_str(&format!(",write-cache={}", on_off(write_cache)));
    }
    if let Some(order) = boot_order {
        dev.push_str(&format!(",bootindex={order}"));
    }
    if let Some(serial) = &disk.serial
        && !cdrom
    {
        dev.push_str(&format!(",serial={}", escape(serial)));
    }
    if let Some(policy) = &disk.error_policy {
        let (w, r) = match policy.as_str() {
            "stop" => ("stop", "stop"),
            "ignore" => ("ignore", "ignore"),
            "report" => ("report", "report"),
            "enospace" => ("enospc", "report"),
            other => {
                return Err(invalid(
                    format!("{field}.errorPolicy"),
                    format!("unknown policy {other:?}"),
                ));
            }
        };
        if bus == "virtio" || (bus == "sata" && !cdrom) {
            dev.push_str(&format!(",werror={w},rerror={r}"));
        }
    }
    a.device(dev);
    Ok(())
}
