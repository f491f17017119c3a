//! Pulling OCI images into the node's image cache.
//!
//! 1. Parse the reference (`kubevirt/cirros` means `docker.io/kubevirt/cirros:latest`).
//! 2. Unless the pull policy is `Always`, a reference already in the cache is used as is:
//!    `refs/<reference>` names the manifest digest whose unpacked tree is `unpacked/<digest>`.
//! 3. Otherwise try each endpoint from [`Registries`] in order: fetch the manifest (an index
//!    resolves to linux/amd64), stream every layer to a temporary file (the client checks
//!    the digest), unpack the layers in order into a temporary tree, then rename it into
//!    place, so concurrent launchers never see half a tree. The image's configuration
//!    (entrypoint, environment, user) is kept beside it as `unpacked/<digest>.config.json`.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
pub use oci_client::config::{Config as ImageConfig, ConfigFile};
use oci_client::manifest::{IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub use reference::ImageRef;

mod limit;
mod reference;
use tracing::{debug, info};

use crate::registries::{Endpoint, Registries};

/// The cache's directory of unpacked trees. (`trees/`, before owners were kept, is no
/// longer read: its files all belong to root.)
const TREES: &str = "unpacked";

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image reference {0:?} is not valid")]
    InvalidReference(String),
    #[error("pull {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("image {image}: {path} not found in the image")]
    MissingPath { image: String, path: String },
    #[error("image {image}: {path} leads outside the image")]
    OutsideImage { image: String, path: String },
    #[error("image cache {path}")]
    Cache {
        path: String,
        source: std::io::Error,
    },
}

/// When to contact the registry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum PullPolicy {
    Always,
    #[default]
    IfNotPresent,
    Never,
}

impl PullPolicy {
    pub fn parse(s: Option<&str>) -> Self {
        match s {
            Some("Always") => Self::Always,
            Some("Never") => Self::Never,
            _ => Self::IfNotPresent,
        }
    }
}

/// How much one pull may bring onto the node: the layers as downloaded, and the tree
/// they unpack to (file contents and archive headers).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    pub compressed: u64,
    pub unpacked: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            compressed: 16 << 30,
            unpacked: 32 << 30,
        }
    }
}

impl Limits {
    /// The defaults, or `KUBEVIRT_RS_IMAGE_MAX_COMPRESSED` and
    /// `KUBEVIRT_RS_IMAGE_MAX_UNPACKED` (bytes) where set.
    pub fn from_env(env: impl Fn(&str) -> Option<String>) -> Self {
        let d = Self::default();
        let bytes = |name: &str, default: u64| {
            env(name)
                .and_then(|v| v.trim().parse().ok())
                .unwrap_or(default)
        };
        Self {
            compressed: bytes("KUBEVIRT_RS_IMAGE_MAX_COMPRESSED", d.compressed),
            unpacked: bytes("KUBEVIRT_RS_IMAGE_MAX_UNPACKED", d.unpacked),
        }
    }
}

/// The node's image cache.
#[derive(Debug)]
pub struct ImageCache {
    root: PathBuf,
    registries: Registries,
    limits: Limits,
}

impl ImageCache {
    pub fn new(root: PathBuf, registries: Registries) -> Self {
        Self::with_limits(root, registries, Limits::default())
    }

    pub fn with_limits(root: PathBuf, registries: Registries, limits: Limits) -> Self {
        // The registry client's TLS needs a process-wide provider; ring, as kube uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self {
            root,
            registries,
            limits,
        }
    }

    /// Ensures `image` is unpacked in the cache and returns the root of its tree.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> Result<PathBuf, ImageError> {
        Ok(self.pull(image, policy).await?.tree)
    }

    /// Ensures `image` is unpacked in the cache; returns its tree and its configuration.
    pub async fn pull(&self, image: &str, policy: PullPolicy) -> Result<Pulled, ImageError> {
        let reference =
            ImageRef::parse(image).ok_or_else(|| ImageError::InvalidReference(image.to_owned()))?;
        let ref_file = self
            .root
            .join("refs")
            .join(reference_key(&reference.to_string()));
        if policy != PullPolicy::Always {
            if let Ok(digest) = std::fs::read_to_string(&ref_file) {
                let tree = self.root.join(TREES).join(escape(digest.trim()));
                if tree.is_dir()
                    && let Some(config) = read_config(&tree)
                {
                    debug!(image, digest = digest.trim(), "image cached");
                    let digest = digest.trim().to_owned();
                    return Ok(Pulled {
                        tree,
                        config,
                        digest,
                    });
                }
            }
            if policy == PullPolicy::Never {
                return Err(ImageError::Pull {
                    image: image.into(),
                    reason: "not in the cache and imagePullPolicy is Never".into(),
                });
            }
        }
        let mut reasons = Vec::new();
        for endpoint in self
            .registries
            .endpoints(&reference.registry, &reference.repository)
        {
            match self.pull_from(&reference, &endpoint).await {
                Ok((digest, tree, config)) => {
                    write_atomic(&ref_file, digest.as_bytes())
                        .map_err(|e| self.cache_err(&ref_file, e))?;
                    return Ok(Pulled {
                        tree,
                        config,
                        digest,
                    });
                }
                Err(reason) => {
                    debug!(image, endpoint = endpoint.host, reason, "pull failed");
                    reasons.push(format!("{}: {reason}", endpoint.host));
                }
            }
        }
        Err(ImageError::Pull {
            image: image.into(),
            reason: reasons.join("; "),
        })
    }

    async fn pull_from(
        &self,
        reference: &ImageRef,
        endpoint: &Endpoint,
    ) -> Result<(String, PathBuf, ConfigFile), String> {
        let protocol = if endpoint.plain_http {
            ClientProtocol::HttpsExcept(vec![endpoint.host.clone()])
        } else {
            ClientProtocol::Https
        };
        let client = Client::new(ClientConfig {
            protocol,
            connect_timeout: Some(std::time::Duration::from_secs(5)),
            read_timeout: Some(std::time::Duration::from_secs(120)),
            ..Default::default()
        });
        let target = match (&reference.tag, &reference.digest) {
            (_, Some(d)) => Reference::with_digest(
                endpoint.host.clone(),
                endpoint.repository.clone(),
                d.clone(),
            ),
            (tag, None) => Reference::with_tag(
                endpoint.host.clone(),
                endpoint.repository.clone(),
                tag.clone().unwrap_or_else(|| "latest".into()),
            ),
        };
        let auth = RegistryAuth::Anonymous;
        let (manifest, digest, config_json) = client
            .pull_manifest_and_config(&target, &auth)
            .await
            .map_err(|e| e.to_string())?;
        let config: ConfigFile = serde_json::from_str(&config_json)
            .map_err(|e| format!("the image's configuration: {e}"))?;
        let tree = self.root.join(TREES).join(escape(&digest));
        let config_file = config_path(&tree);
        if !config_file.is_file() {
            write_atomic(&config_file, config_json.as_bytes()).map_err(|e| e.to_string())?;
        }
        if tree.is_dir() {
            return Ok((digest, tree, config));
        }
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let staging = tempdir_in(&tmp).map_err(|e| e.to_string())?;
        let unpacked = staging.join("tree");
        std::fs::create_dir_all(&unpacked).map_err(|e| e.to_string())?;
        // Whoever unpacks it (a launcher runs with umask 077), the tree's root is open to
        // every user: a pod mounts it as an image volume and runs as its own user.
        use std::os::unix::fs::PermissionsExt;
        std::fs::set_permissions(&unpacked, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| e.to_string())?;
        let result = self
            .pull_layers(&client, &target, &manifest.layers, &staging, &unpacked)
            .await;
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&staging);
            return Err(e);
        }
        std::fs::create_dir_all(self.root.join(TREES)).map_err(|e| e.to_string())?;
        match std::fs::rename(&unpacked, &tree) {
            Ok(()) => {}
            Err(_) if tree.is_dir() => {} // another launcher won the race
            Err(e) => return Err(e.to_string()),
        }
        let _ = std::fs::remove_dir_all(&staging);
        info!(image = %reference, digest, "image pulled");
        Ok((digest, tree, config))
    }

    /// Downloads and unpacks `layers` in order into `tree`, within the limits.
    async fn pull_layers(
        &self,
        client: &Client,
        target: &Reference,
        layers: &[oci_client::manifest::OciDescriptor],
        staging: &Path,
        tree: &Path,
    ) -> Result<(), String> {
        let limits = self.limits;
        let declared: u64 = layers
            .iter()
            .map(|l| u64::try_from(l.size).unwrap_or(u64::MAX))
            .fold(0, u64::saturating_add);
        if declared > limits.compressed {
            return Err(format!(
                "the image's layers are {declared} bytes, over this node's limit of {} bytes",
                limits.compressed
            ));
        }
        let mut downloaded = 0u64;
        let mut unpacked = 0u64;
        for layer in layers {
            let blob = staging.join("layer");
            let file = tokio::fs::File::create(&blob)
                .await
                .map_err(|e| e.to_string())?;
            let mut sink = limit::Writer::new(file, limits.compressed - downloaded);
            client
                .pull_blob(target, layer, &mut sink)
                .await
                .map_err(|e| match sink.exceeded() {
                    true => format!(
                        "layer {} exceeds this node's limit of {} compressed bytes",
                        layer.digest, limits.compressed
                    ),
                    false => e.to_string(),
                })?;
            downloaded += sink.written();
            let gzip = layer.media_type == IMAGE_LAYER_GZIP_MEDIA_TYPE
                || layer.media_type == IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
                || layer.media_type.ends_with("+gzip");
            let dest = tree.to_path_buf();
            let budget = limits.unpacked - unpacked;
            let used = tokio::task::spawn_blocking(move || unpack(&blob, &dest, gzip, budget))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("unpack layer {}: {e}", layer.digest))?;
            unpacked += used;
        }
        Ok(())
    }

    fn cache_err(&self, path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Cache {
            path: path.display().to_string(),
            source,
        }
    }
}

/// An image in the cache.
#[derive(Debug, Clone)]
pub struct Pulled {
    /// The root of its unpacked tree.
    pub tree: PathBuf,
    /// Its configuration: entrypoint, command, environment, user, working directory.
    pub config: ConfigFile,
    /// Its manifest's digest (`sha256:...`).
    pub digest: String,
}

/// Where the configuration of the image unpacked at `tree` is kept.
fn config_path(tree: &Path) -> PathBuf {
    let mut name = tree.file_name().unwrap_or_default().to_os_string();
    name.push(".config.json");
    tree.with_file_name(name)
}

fn read_config(tree: &Path) -> Option<ConfigFile> {
    serde_json::from_slice(&std::fs::read(config_path(tree)).ok()?).ok()
}

/// The disk image of a containerDisk: `path` inside the image, else the first file
/// (by name) under `/disk`. Whatever is found must stay inside the tree, symbolic links
/// followed.
pub fn container_disk_file(
    tree: &Path,
    image: &str,
    path: Option<&str>,
) -> Result<PathBuf, ImageError> {
    if let Some(p) = path {
        return file_in_image(tree, image, p);
    }
    let missing = |p: &str| ImageError::MissingPath {
        image: image.into(),
        path: p.into(),
    };
    let mut names: Vec<String> = std::fs::read_dir(tree.join("disk"))
        .map_err(|_| missing("/disk"))?
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .collect();
    names.sort();
    names
        .iter()
        .find_map(|name| file_in_image(tree, image, &format!("/disk/{name}")).ok())
        .ok_or_else(|| missing("/disk/*"))
}

/// A regular file inside an unpacked image, such as a kernel for kernel boot. The path
/// must be a clean absolute path in the image, and what it resolves to (links followed)
/// must be inside the tree: an image cannot point the node at its own files.
pub fn file_in_image(tree: &Path, image: &str, path: &str) -> Result<PathBuf, ImageError> {
    let missing = || ImageError::MissingPath {
        image: image.into(),
        path: path.into(),
    };
    let relative = Path::new(path.trim_start_matches('/'));
    let clean = path.starts_with('/')
        && relative
            .components()
            .all(|c| matches!(c, std::path::Component::Normal(_)));
    if !clean || relative.as_os_str().is_empty() {
        return Err(ImageError::OutsideImage {
            image: image.into(),
            path: path.into(),
        });
    }
    let root = tree.canonicalize().map_err(|_| missing())?;
    let file = root.join(relative).canonicalize().map_err(|_| missing())?;
    if !file.starts_with(&root) {
        return Err(ImageError::OutsideImage {
            image: image.into(),
            path: path.into(),
        });
    }
    if !file.is_file() {
        return Err(missing());
    }
    Ok(file)
}

/// Unpacks one layer into `dest`, at most `budget` bytes of its uncompressed stream;
/// returns how many it took. Paths stay inside `dest` (the tar crate checks entries, we
/// check whiteouts), setuid and setgid bits are dropped, device nodes and FIFOs skipped.
fn unpack(blob: &Path, dest: &Path, gzip: bool, budget: u64) -> std::io::Result<u64> {
    let file = std::fs::File::open(blob)?;
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let counted = limit::Reader::new(reader, budget);
    let used = counted.used();
    let mut archive = tar::Archive::new(counted);
    archive.set_preserve_permissions(true);
    // Owners as the image has them: a containerDisk belongs to qemu (107), which the
    // launcher runs as in its pod.
    archive.set_preserve_ownerships(true);
    archive.set_mask(0o6000);
    let root = dest.canonicalize()?;
    for entry in archive.entries()? {
        let mut entry = entry?;
        if matches!(
            entry.header().entry_type(),
            tar::EntryType::Char | tar::EntryType::Block | tar::EntryType::Fifo
        ) {
            continue;
        }
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            whiteout(&root, &path, hidden)?;
            continue;
        }
        // tar's error names the file; its source says why (such as the budget).
        entry.unpack_in(&root).map_err(|e| {
            let mut text = e.to_string();
            let mut source = std::error::Error::source(&e);
            while let Some(s) = source {
                text = format!("{text}: {s}");
                source = s.source();
            }
            std::io::Error::new(e.kind(), text)
        })?;
    }
    std::fs::remove_file(blob)?;
    Ok(used.get())
}

/// An OCI whiteout: `dir/.wh.NAME` deletes what a lower layer put at `dir/NAME`, and
/// `dir/.wh..wh..opq` empties `dir`. Nothing outside `root` is touched: the entry's
/// path must be plain names, and its directory must resolve inside `root`.
fn whiteout(root: &Path, path: &Path, hidden: &str) -> std::io::Result<()> {
    let plain = path.components().all(|c| {
        matches!(
            c,
            std::path::Component::Normal(_) | std::path::Component::CurDir
        )
    });
    if !plain {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("whiteout {} leaves the image", path.display()),
        ));
    }
    let parent = root.join(path.parent().unwrap_or(Path::new("")));
    let Ok(parent) = parent.canonicalize() else {
        return Ok(()); // nothing below to delete
    };
    if !parent.starts_with(root) {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidData,
            format!("whiteout {} leaves the image", path.display()),
        ));
    }
    let remove = |victim: &Path| match std::fs::symlink_metadata(victim) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(victim),
        Ok(_) => std::fs::remove_file(victim),
        Err(_) => Ok(()),
    };
    if hidden == ".wh..opq" {
        for entry in std::fs::read_dir(&parent)? {
            remove(&entry?.path())?;
        }
        return Ok(());
    }
    if hidden.is_empty() || hidden == "." || hidden == ".." || hidden.contains('/') {
        return Ok(());
    }
    remove(&parent.join(hidden))
}

/// The cache's name for an image reference: a hash, so two references never share one
/// (`a/b:v` and `a_b:v` did when names were escaped).
fn reference_key(reference: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(reference.as_bytes()))
}

fn escape(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '.' || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

fn write_atomic(path: &Path, data: &[u8]) -> std::io::Result<()> {
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent)?;
    }
    let tmp = path.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, data)?;
    std::fs::rename(tmp, path)
}

fn tempdir_in(parent: &Path) -> std::io::Result<PathBuf> {
    let dir = parent.join(format!("pull-{}-{}", std::process::id(), nanos()));
    std::fs::create_dir(&dir)?;
    Ok(dir)
}

fn nanos() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_disk_is_found_under_disk_or_at_its_path() {
        let tree = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(tree.path().join("disk")).unwrap();
        std::fs::write(tree.path().join("disk/b.qcow2"), b"").unwrap();
        std::fs::write(tree.path().join("disk/a.img"), b"").unwrap();
        assert_eq!(
            container_disk_file(tree.path(), "i", None).unwrap(),
            tree.path().join("disk/a.img")
        );
        assert_eq!(
            container_disk_file(tree.path(), "i", Some("/disk/b.qcow2")).unwrap(),
            tree.path().join("disk/b.qcow2")
        );
        let err = container_disk_file(tree.path(), "i", Some("/nope")).unwrap_err();
        assert_eq!(err.to_string(), "image i: /nope not found in the image");
    }

    #[test]
    fn layers_unpack_with_whiteouts() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tree");
        std::fs::create_dir_all(dest.join("disk")).unwrap();
        std::fs::write(dest.join("disk/old.img"), b"old").unwrap();
        let blob = dir.path().join("layer");
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            std::fs::File::create(&blob).unwrap(),
            Default::default(),
        ));
        let mut add = |path: &str, data: &[u8]| {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(0o440);
            h.set_uid(107);
            h.set_gid(107);
            h.set_cksum();
            builder.append_data(&mut h, path, data).unwrap();
        };
        add("disk/.wh.old.img", b"");
        add("disk/new.qcow2", b"new");
        builder.into_inner().unwrap().finish().unwrap();
        unpack(&blob, &dest, true, 1 << 20).unwrap();
        assert!(!dest.join("disk/old.img").exists());
        assert_eq!(std::fs::read(dest.join("disk/new.qcow2")).unwrap(), b"new");
        assert!(!blob.exists(), "the layer file is removed after unpacking");
        // Owners are kept (when unpacking as root, as the node does): the launcher, 107
        // in its pod, reads its containerDisk.
        use std::os::unix::fs::MetadataExt;
        let owner = std::fs::metadata(dest.join("disk/new.qcow2"))
            .unwrap()
            .uid();
        if nix::unistd::geteuid().is_root() {
            assert_eq!(owner, 107);
        }
    }

    /// A gzipped layer of `(path, mode, data)` files and `(path, target)` symlinks.
    fn layer(blob: &Path, files: &[(&str, u32, &[u8])], links: &[(&str, &str)]) {
        let mut builder = tar::Builder::new(flate2::write::GzEncoder::new(
            std::fs::File::create(blob).unwrap(),
            Default::default(),
        ));
        for (path, target) in links {
            let mut h = tar::Header::new_gnu();
            h.set_entry_type(tar::EntryType::Symlink);
            h.set_size(0);
            h.set_uid(0);
            h.set_gid(0);
            builder.append_link(&mut h, path, target).unwrap();
        }
        for (path, mode, data) in files {
            let mut h = tar::Header::new_gnu();
            h.set_size(data.len() as u64);
            h.set_mode(*mode);
            h.set_uid(0);
            h.set_gid(0);
            h.set_cksum();
            // append_data refuses `..`; a hostile layer writes the raw name.
            h.as_old_mut().name[..path.len()].copy_from_slice(path.as_bytes());
            h.set_cksum();
            builder.append(&h, *data).unwrap();
        }
        builder.into_inner().unwrap().finish().unwrap();
    }

    #[test]
    fn a_layer_cannot_delete_outside_its_tree_or_keep_setuid_bits() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tree");
        std::fs::create_dir_all(&dest).unwrap();
        let victim = dir.path().join("victim");
        std::fs::write(&victim, b"keep me").unwrap();
        let blob = dir.path().join("layer");
        layer(&blob, &[("../.wh.victim", 0o644, b"")], &[]);
        let err = unpack(&blob, &dest, true, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("leaves the image"), "{err}");
        assert!(victim.exists());
        // Through a symbolic link to the outside: refused the same way.
        layer(&blob, &[("out/.wh.victim", 0o644, b"")], &[("out", "..")]);
        let err = unpack(&blob, &dest, true, 1 << 20).unwrap_err();
        assert!(err.to_string().contains("leaves the image"), "{err}");
        assert!(victim.exists());

        let dest = dir.path().join("tree2");
        std::fs::create_dir_all(&dest).unwrap();
        layer(
            &blob,
            &[("bin/su", 0o4755, b"#!"), ("bin/g", 0o2755, b"#!")],
            &[],
        );
        unpack(&blob, &dest, true, 1 << 20).unwrap();
        for f in ["bin/su", "bin/g"] {
            let mode = std::fs::metadata(dest.join(f))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o7777, 0o755, "{f}");
        }
    }

    #[test]
    fn a_layer_that_unpacks_past_the_budget_fails() {
        let dir = tempfile::tempdir().unwrap();
        let dest = dir.path().join("tree");
        std::fs::create_dir_all(&dest).unwrap();
        let blob = dir.path().join("layer");
        let big = vec![0u8; 64 << 10];
        layer(&blob, &[("disk/zeros.img", 0o644, &big)], &[]);
        assert!(
            std::fs::metadata(&blob).unwrap().len() < 4096,
            "compresses well"
        );
        let err = unpack(&blob, &dest, true, 16 << 10).unwrap_err();
        assert!(err.to_string().contains("limit of 16384 bytes"), "{err}");
    }

    #[test]
    fn files_in_an_image_stay_inside_it() {
        let dir = tempfile::tempdir().unwrap();
        let tree = dir.path().join("tree");
        std::fs::create_dir_all(tree.join("disk")).unwrap();
        std::fs::create_dir_all(tree.join("boot")).unwrap();
        std::fs::write(dir.path().join("secret"), b"host").unwrap();
        std::fs::write(tree.join("boot/vmlinuz"), b"k").unwrap();
        std::os::unix::fs::symlink("../boot/vmlinuz", tree.join("disk/inside.img")).unwrap();
        std::os::unix::fs::symlink("../../secret", tree.join("disk/a-out.img")).unwrap();
        std::os::unix::fs::symlink("/etc/passwd", tree.join("boot/abs")).unwrap();
        let outside = |r: Result<PathBuf, ImageError>| match r {
            Err(ImageError::OutsideImage { .. }) => {}
            other => panic!("not refused: {other:?}"),
        };
        outside(file_in_image(&tree, "i", "/../secret"));
        outside(file_in_image(&tree, "i", "/disk/a-out.img"));
        outside(file_in_image(&tree, "i", "/boot/abs"));
        outside(file_in_image(&tree, "i", "boot/vmlinuz"));
        assert_eq!(
            file_in_image(&tree, "i", "/disk/inside.img").unwrap(),
            tree.canonicalize().unwrap().join("boot/vmlinuz")
        );
        // The fallback skips the link that leads out and takes the next file.
        assert_eq!(
            container_disk_file(&tree, "i", None).unwrap(),
            tree.canonicalize().unwrap().join("boot/vmlinuz")
        );
    }

    #[test]
    fn references_that_escaped_alike_have_their_own_keys() {
        assert_ne!(reference_key("r/a/b:v"), reference_key("r/a_b:v"));
        assert_eq!(reference_key("r/a/b:v").len(), 64);
    }

    #[tokio::test]
    async fn a_bad_reference_and_an_unreachable_registry_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let cache = ImageCache::new(dir.path().to_path_buf(), Registries::default());
        let err = cache
            .ensure("UPPER/Case::bad", PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(matches!(err, ImageError::InvalidReference(_)), "{err}");
        let err = cache
            .ensure("127.0.0.1:9/nothing/here:v1", PullPolicy::IfNotPresent)
            .await
            .unwrap_err();
        assert!(
            err.to_string()
                .starts_with("pull 127.0.0.1:9/nothing/here:v1: 127.0.0.1:9: "),
            "{err}"
        );
        let err = cache
            .ensure("127.0.0.1:9/nothing/here:v1", PullPolicy::Never)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("imagePullPolicy is Never"),
            "{err}"
        );
    }
}
