//! Pulling OCI images into the node's image cache.
//!
//! 1. Parse the reference (`kubevirt/cirros` means `docker.io/kubevirt/cirros:latest`).
//! 2. Unless the pull policy is `Always`, a reference already in the cache is used as is:
//!    `refs/<reference>` names the manifest digest whose unpacked tree is `trees/<digest>`.
//! 3. Otherwise try each endpoint from [`Registries`] in order: fetch the manifest (an index
//!    resolves to linux/amd64), stream every layer to a temporary file (the client checks
//!    the digest), unpack the layers in order into a temporary tree, then rename it into
//!    place, so concurrent launchers never see half a tree.

use std::path::{Path, PathBuf};

use oci_client::client::{ClientConfig, ClientProtocol};
use oci_client::manifest::{IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE, IMAGE_LAYER_GZIP_MEDIA_TYPE};
use oci_client::secrets::RegistryAuth;
use oci_client::{Client, Reference};

pub use reference::ImageRef;

mod reference;
use tracing::{debug, info};

use crate::registries::{Endpoint, Registries};

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("image reference {0:?} is not valid")]
    InvalidReference(String),
    #[error("pull {image}: {reason}")]
    Pull { image: String, reason: String },
    #[error("image {image}: {path} not found in the image")]
    MissingPath { image: String, path: String },
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

/// The node's image cache.
#[derive(Debug)]
pub struct ImageCache {
    root: PathBuf,
    registries: Registries,
}

impl ImageCache {
    pub fn new(root: PathBuf, registries: Registries) -> Self {
        // The registry client's TLS needs a process-wide provider; ring, as kube uses.
        let _ = rustls::crypto::ring::default_provider().install_default();
        Self { root, registries }
    }

    /// Ensures `image` is unpacked in the cache and returns the root of its tree.
    pub async fn ensure(&self, image: &str, policy: PullPolicy) -> Result<PathBuf, ImageError> {
        let reference =
            ImageRef::parse(image).ok_or_else(|| ImageError::InvalidReference(image.to_owned()))?;
        let ref_file = self.root.join("refs").join(escape(&reference.to_string()));
        if policy != PullPolicy::Always {
            if let Ok(digest) = std::fs::read_to_string(&ref_file) {
                let tree = self.root.join("trees").join(escape(digest.trim()));
                if tree.is_dir() {
                    debug!(image, digest = digest.trim(), "image cached");
                    return Ok(tree);
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
                Ok((digest, tree)) => {
                    write_atomic(&ref_file, digest.as_bytes())
                        .map_err(|e| self.cache_err(&ref_file, e))?;
                    return Ok(tree);
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
    ) -> Result<(String, PathBuf), String> {
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
        let (manifest, digest) = client
            .pull_image_manifest(&target, &auth)
            .await
            .map_err(|e| e.to_string())?;
        let tree = self.root.join("trees").join(escape(&digest));
        if tree.is_dir() {
            return Ok((digest, tree));
        }
        let tmp = self.root.join("tmp");
        std::fs::create_dir_all(&tmp).map_err(|e| e.to_string())?;
        let staging = tempdir_in(&tmp).map_err(|e| e.to_string())?;
        let unpacked = staging.join("tree");
        std::fs::create_dir_all(&unpacked).map_err(|e| e.to_string())?;
        for layer in &manifest.layers {
            let blob = staging.join("layer");
            let file = tokio::fs::File::create(&blob)
                .await
                .map_err(|e| e.to_string())?;
            client
                .pull_blob(&target, layer, file)
                .await
                .map_err(|e| e.to_string())?;
            let gzip = layer.media_type == IMAGE_LAYER_GZIP_MEDIA_TYPE
                || layer.media_type == IMAGE_DOCKER_LAYER_GZIP_MEDIA_TYPE
                || layer.media_type.ends_with("+gzip");
            let dest = unpacked.clone();
            tokio::task::spawn_blocking(move || unpack(&blob, &dest, gzip))
                .await
                .map_err(|e| e.to_string())?
                .map_err(|e| format!("unpack layer {}: {e}", layer.digest))?;
        }
        std::fs::create_dir_all(self.root.join("trees")).map_err(|e| e.to_string())?;
        match std::fs::rename(&unpacked, &tree) {
            Ok(()) => {}
            Err(_) if tree.is_dir() => {} // another launcher won the race
            Err(e) => return Err(e.to_string()),
        }
        let _ = std::fs::remove_dir_all(&staging);
        info!(image = %reference, digest, "image pulled");
        Ok((digest, tree))
    }

    fn cache_err(&self, path: &Path, source: std::io::Error) -> ImageError {
        ImageError::Cache {
            path: path.display().to_string(),
            source,
        }
    }
}

/// The disk image of a containerDisk: `path` inside the image, else the only or first file
/// under `/disk`.
pub fn container_disk_file(
    tree: &Path,
    image: &str,
    path: Option<&str>,
) -> Result<PathBuf, ImageError> {
    let missing = |p: &str| ImageError::MissingPath {
        image: image.into(),
        path: p.into(),
    };
    if let Some(p) = path {
        let file = tree.join(p.trim_start_matches('/'));
        return if file.is_file() {
            Ok(file)
        } else {
            Err(missing(p))
        };
    }
    let mut files: Vec<PathBuf> = std::fs::read_dir(tree.join("disk"))
        .map_err(|_| missing("/disk"))?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.is_file())
        .collect();
    files.sort();
    files.into_iter().next().ok_or_else(|| missing("/disk/*"))
}

/// A file inside an unpacked image, such as a kernel for kernel boot.
pub fn file_in_image(tree: &Path, image: &str, path: &str) -> Result<PathBuf, ImageError> {
    let file = tree.join(path.trim_start_matches('/'));
    if file.is_file() {
        Ok(file)
    } else {
        Err(ImageError::MissingPath {
            image: image.into(),
            path: path.into(),
        })
    }
}

fn unpack(blob: &Path, dest: &Path, gzip: bool) -> std::io::Result<()> {
    let file = std::fs::File::open(blob)?;
    let reader: Box<dyn std::io::Read> = if gzip {
        Box::new(flate2::read::GzDecoder::new(file))
    } else {
        Box::new(file)
    };
    let mut archive = tar::Archive::new(reader);
    archive.set_preserve_permissions(true);
    for entry in archive.entries()? {
        let mut entry = entry?;
        let path = entry.path()?.into_owned();
        let name = path
            .file_name()
            .and_then(|n| n.to_str())
            .unwrap_or_default();
        if let Some(hidden) = name.strip_prefix(".wh.") {
            // An OCI whiteout deletes what a lower layer put there.
            let victim = dest.join(path.with_file_name(hidden));
            let _ = std::fs::remove_dir_all(&victim).or_else(|_| std::fs::remove_file(&victim));
            continue;
        }
        entry.unpack_in(dest)?;
    }
    std::fs::remove_file(blob)
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
            h.set_cksum();
            builder.append_data(&mut h, path, data).unwrap();
        };
        add("disk/.wh.old.img", b"");
        add("disk/new.qcow2", b"new");
        builder.into_inner().unwrap().finish().unwrap();
        unpack(&blob, &dest, true).unwrap();
        assert!(!dest.join("disk/old.img").exists());
        assert_eq!(std::fs::read(dest.join("disk/new.qcow2")).unwrap(), b"new");
        assert!(!blob.exists(), "the layer file is removed after unpacking");
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
