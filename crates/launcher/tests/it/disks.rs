//! Disk preparation with the real tools (qemu-img, genisoimage): what the guest will see.

use std::path::Path;
use std::process::Command;

use api::parse::{Object, parse_documents};
use api::v1::VirtualMachineInstance;
use launcher::disks::{DiskError, DiskFormat, HostDisks, Images, prepare};
use launcher::image::ImageCache;
use launcher::registries::Registries;

fn vmi(yaml: &str) -> VirtualMachineInstance {
    let Object::VirtualMachineInstance(mut vmi) = parse_documents(yaml).unwrap().remove(0) else {
        panic!()
    };
    api::defaults::set_vmi_defaults(
        &mut vmi.spec,
        Some("8d1c2f0e-1111-4222-8333-944455556666"),
        &Default::default(),
    );
    vmi
}

fn iso_file(iso: &Path, path: &str) -> String {
    let out = Command::new("isoinfo")
        .args(["-R", "-i"])
        .arg(iso)
        .args(["-x", path])
        .output()
        .unwrap();
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn iso_label(iso: &Path) -> String {
    let out = Command::new("isoinfo")
        .args(["-d", "-i"])
        .arg(iso)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    text.lines()
        .find_map(|l| l.strip_prefix("Volume id: "))
        .unwrap_or_default()
        .to_owned()
}

fn virtual_size(image: &Path) -> u64 {
    let out = Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(image)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    info["virtual-size"].as_u64().unwrap()
}

#[tokio::test]
async fn cloud_init_empty_and_host_disks_are_what_the_guest_expects() {
    let dir = tempfile::tempdir().unwrap();
    let host_disk = dir.path().join("host/data.img");
    let vmi = vmi(&format!(
        "
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {{name: disks, namespace: ns}}
spec:
  hostname: box
  domain: {{devices: {{}}, memory: {{guest: 64Mi}}}}
  volumes:
  - name: nocloud
    cloudInitNoCloud: {{userDataBase64: IyEvYmluL3NoCmVjaG8gaGk=, networkData: 'version: 2'}}
  - name: configdrive
    cloudInitConfigDrive: {{userData: '#cloud-config'}}
  - name: scratch
    emptyDisk: {{capacity: 3Gi}}
  - name: host
    hostDisk: {{path: {}, type: DiskOrCreate, capacity: 64Mi}}
",
        host_disk.display()
    ));
    let cache = ImageCache::new(dir.path().join("cache"), Registries::default());
    let run = dir.path().join("run");
    let prepared = prepare(&vmi, &Images::Pull(&cache), &run, HostDisks::Anywhere)
        .await
        .unwrap();
    let by_name = |n: &str| {
        prepared
            .volumes
            .iter()
            .find(|v| v.name == n)
            .unwrap()
            .clone()
    };

    let nocloud = by_name("nocloud");
    assert!(nocloud.read_only);
    assert_eq!(iso_label(&nocloud.path), "cidata");
    assert_eq!(iso_file(&nocloud.path, "/user-data"), "#!/bin/sh\necho hi");
    assert_eq!(iso_file(&nocloud.path, "/network-config"), "version: 2");
    assert_eq!(
        iso_file(&nocloud.path, "/meta-data"),
        "instance-id: disks.ns\nlocal-hostname: box\n"
    );

    let cd = by_name("configdrive");
    assert_eq!(iso_label(&cd.path), "config-2");
    assert_eq!(
        iso_file(&cd.path, "/openstack/latest/user_data"),
        "#cloud-config"
    );
    let meta: serde_json::Value =
        serde_json::from_str(&iso_file(&cd.path, "/openstack/latest/meta_data.json")).unwrap();
    assert_eq!(meta["hostname"], "box");

    let scratch = by_name("scratch");
    assert_eq!(scratch.format, DiskFormat::Qcow2);
    assert_eq!(virtual_size(&scratch.path), 3 << 30);
    assert!(
        scratch.path.starts_with(&run),
        "ephemeral disks live in the runtime directory"
    );

    let host = by_name("host");
    assert_eq!(host.path, host_disk);
    assert_eq!(host.format, DiskFormat::Raw);
    assert_eq!(std::fs::metadata(&host_disk).unwrap().len(), 64 << 20);
}

#[tokio::test]
async fn what_cannot_be_prepared_names_its_field() {
    let dir = tempfile::tempdir().unwrap();
    let cache = ImageCache::new(dir.path().join("cache"), Registries::default());
    let cases = [
        (
            "{name: d, hostDisk: {path: /nonexistent/disk.img, type: Disk}}",
            "spec.volumes[0].hostDisk.path: /nonexistent/disk.img does not exist",
        ),
        (
            "{name: d, persistentVolumeClaim: {claimName: pvc}}",
            "spec.volumes[0].persistentVolumeClaim: volume source persistentVolumeClaim is not supported yet",
        ),
        (
            "{name: d, cloudInitNoCloud: {secretRef: {name: s}}}",
            "spec.volumes[0].cloudInitNoCloud.secretRef: cloud-init data from a Secret is not supported yet",
        ),
    ];
    for (volume, expected) in cases {
        let vmi = vmi(&format!(
            "apiVersion: kubevirt.io/v1\nkind: VirtualMachineInstance\nmetadata: {{name: x}}\nspec:\n  domain: {{devices: {{}}, memory: {{guest: 64Mi}}}}\n  volumes: [{volume}]\n"
        ));
        let err: DiskError = prepare(
            &vmi,
            &Images::Pull(&cache),
            &dir.path().join("run"),
            HostDisks::Anywhere,
        )
        .await
        .unwrap_err();
        assert_eq!(err.to_string(), expected);
    }
}

#[tokio::test]
async fn a_sandboxed_launcher_takes_its_images_from_the_pods_image_volumes() {
    let dir = tempfile::tempdir().unwrap();
    let mounted = dir.path().join("images");
    std::fs::create_dir_all(mounted.join("volumes/root/disk")).unwrap();
    std::fs::write(
        mounted.join("volumes/root/disk/disk.img"),
        vec![0u8; 1 << 20],
    )
    .unwrap();
    let vmi = vmi("
apiVersion: kubevirt.io/v1
kind: VirtualMachineInstance
metadata: {name: mounted, namespace: ns}
spec:
  domain: {devices: {}, memory: {guest: 64Mi}}
  volumes:
  - name: root
    containerDisk: {image: registry.invalid/never/pulled:1}
");
    let run = dir.path().join("run");
    let prepared = prepare(
        &vmi,
        &Images::Mounted(&mounted),
        &run,
        HostDisks::Inside(&[]),
    )
    .await
    .unwrap();
    let overlay = &prepared.volumes[0];
    assert_eq!(overlay.format, DiskFormat::Qcow2);
    let info = std::process::Command::new("qemu-img")
        .args(["info", "--output=json", "-U"])
        .arg(&overlay.path)
        .output()
        .unwrap();
    let info: serde_json::Value = serde_json::from_slice(&info.stdout).unwrap();
    assert_eq!(
        info["backing-filename"],
        mounted
            .join("volumes/root/disk/disk.img")
            .display()
            .to_string()
    );

    // A volume the pod did not mount is an error naming the image, never a pull.
    std::fs::remove_dir_all(mounted.join("volumes/root")).unwrap();
    let err = prepare(
        &vmi,
        &Images::Mounted(&mounted),
        &dir.path().join("run2"),
        HostDisks::Inside(&[]),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, DiskError::NotMounted { .. }), "{err}");
    assert!(
        err.to_string().contains("registry.invalid/never/pulled:1"),
        "{err}"
    );
}
