//! The other devices: graphics and VNC, balloon, rng, inputs, watchdog, sound, panic.

use api::v1::VirtualMachineInstance;

use super::{Args, BuildError, Runtime, escape, escape_path, unsupported};

pub(super) fn add(
    vmi: &VirtualMachineInstance,
    rt: &Runtime,
    a: &mut Args,
) -> Result<(), BuildError> {
    let d = &vmi.spec.domain.devices;
    let at = "spec.domain.devices";
    if d.autoattach_graphics_device != Some(false) {
        let video = match d
            .video
            .as_ref()
            .and_then(|v| v.video_type.as_deref())
            .unwrap_or("vga")
        {
            "vga" => "VGA",
            "cirrus" => "cirrus-vga",
            "virtio" => "virtio-vga",
            "bochs" => "bochs-display",
            "ramfb" => "ramfb",
            other => {
                return Err(unsupported(
                    format!("{at}.video.type"),
                    format!("video type {other:?}"),
                ));
            }
        };
        a.device(format!("{video},id=video0"));
        a.push("-vnc", format!("unix:{}", escape_path(&rt.sockets.vnc)));
    }
    if d.autoattach_mem_balloon != Some(false) {
        a.device("virtio-balloon-pci,id=balloon0,free-page-reporting=on");
    }
    if d.rng.is_some() {
        a.push("-object", "rng-random,id=rng0,filename=/dev/urandom");
        a.device("virtio-rng-pci,rng=rng0,id=rng");
    }
    let mut usb = vmi.spec.domain.devices.disks.iter().any(|disk| {
        disk.disk.as_ref().and_then(|t| t.bus.as_deref()) == Some("usb")
            || disk.cdrom.as_ref().and_then(|t| t.bus.as_deref()) == Some("usb")
    });
    let mut inputs: Vec<(String, String, String)> = d
        .inputs
        .iter()
        .map(|i| {
            (
                i.name.clone(),
                i.bus.clone().unwrap_or_else(|| "usb".into()),
                i.input_type.clone(),
            )
        })
        .collect();
    if inputs.is_empty() && d.autoattach_input_device == Some(true) {
        inputs.push(("default-0".into(), "usb".into(), "tablet".into()));
    }
    for (i, (name, bus, kind)) in inputs.iter().enumerate() {
        let dev = match (bus.as_str(), kind.as_str()) {
            ("usb", "tablet") => "usb-tablet",
            ("usb", "keyboard") => "usb-kbd",
            ("virtio", "tablet") => "virtio-tablet-pci",
            ("virtio", "keyboard") => "virtio-keyboard-pci",
            _ => {
                return Err(unsupported(
                    format!("{at}.inputs[{i}]"),
                    format!("{bus} {kind}"),
                ));
            }
        };
        if bus == "usb" && !usb {
            a.device("qemu-xhci,id=usb");
            usb = true;
        }
        let bus_opt = if bus == "usb" { ",bus=usb.0" } else { "" };
        a.device(format!("{dev},id=ua-{}{bus_opt}", escape(name)));
    }
    if let Some(w) = &d.watchdog {
        if let Some(i) = &w.i6300esb {
            a.device(format!("i6300esb,id=ua-{}", escape(&w.name)));
            let action = match i.action.as_deref().unwrap_or("reset") {
                "poweroff" => "poweroff",
                "shutdown" => "shutdown",
                _ => "reset",
            };
            a.push("-action", format!("watchdog={action}"));
        } else {
            return Err(unsupported(format!("{at}.watchdog"), "this watchdog model"));
        }
    }
    if let Some(s) = &d.sound {
        a.push("-audiodev", "none,id=audio0");
        match s.model.as_deref().unwrap_or("ich9") {
            "ich9" => {
                a.device(format!("ich9-intel-hda,id=ua-{}", escape(&s.name)));
                a.device(format!(
                    "hda-duplex,audiodev=audio0,bus=ua-{}.0",
                    escape(&s.name)
                ));
            }
            "ac97" => a.device(format!("AC97,id=ua-{},audiodev=audio0", escape(&s.name))),
            other => {
                return Err(unsupported(
                    format!("{at}.sound.model"),
                    format!("sound model {other:?}"),
                ));
            }
        }
    }
    for (i, p) in d.panic_devices.iter().enumerate() {
        match p.model.as_deref().unwrap_or("isa") {
            "isa" => a.device("pvpanic"),
            other => {
                return Err(unsupported(
                    format!("{at}.panicDevices[{i}].model"),
                    format!("panic device {other:?}"),
                ));
            }
        }
    }
    let refused: [(&str, bool, &str); 6] = [
        (
            "filesystems",
            !d.filesystems.is_empty(),
            "virtiofs filesystems",
        ),
        ("tpm", d.tpm.is_some(), "TPM"),
        (
            "downwardMetrics",
            d.downward_metrics.is_some(),
            "downward metrics",
        ),
        (
            "clientPassthrough",
            d.client_passthrough.is_some(),
            "USB redirection",
        ),
        ("autoattachVSOCK", d.autoattach_vsock == Some(true), "VSOCK"),
        (
            "gpus",
            !d.gpus.is_empty() || !d.host_devices.is_empty(),
            "device passthrough",
        ),
    ];
    if let Some((field, _, what)) = refused.iter().find(|(_, set, _)| *set) {
        return Err(unsupported(format!("{at}.{field}"), *what));
    }
    if let Some(clock) = &vmi.spec.domain.clock {
        if clock.timezone.is_some() {
            return Err(unsupported(
                "spec.domain.clock.timezone",
                "a guest clock in a named timezone",
            ));
        }
        match clock.utc.as_ref().and_then(|u| u.offset_seconds) {
            Some(offset) if offset != 0 => {
                return Err(unsupported(
                    "spec.domain.clock.utc.offsetSeconds",
                    "a clock offset",
                ));
            }
            _ => a.push("-rtc", "base=utc"),
        }
    }
    Ok(())
}
