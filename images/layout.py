#!/usr/bin/env python3
"""Write an OCI image layout with one layer per directory (python3 stdlib only).

usage: [LAYER_CACHE=DIR] layout.py LAYOUT_DIR TAG CONFIG_JSON DIR [DIR ...]

Each DIR becomes a layer, in order, with its modes and symbolic links as they are, owned
by root, timestamps fixed: the same inputs give the same digests, so an unchanged base
layer is pushed once. CONFIG_JSON is the image's `config` (Entrypoint, Cmd, Env, User,
WorkingDir). The layout is replaced as a whole (written next to it, then renamed).
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile


def blob(root, data):
    digest = hashlib.sha256(data).hexdigest()
    with open(os.path.join(root, "blobs", "sha256", digest), "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def normalize(info):
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.mtime = 0
    return info


def layer_tar(directory):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name in sorted(os.listdir(directory)):
            tar.add(os.path.join(directory, name), arcname=name, filter=normalize)
    return buf.getvalue()


def gzipped(tar, cache):
    """The layer compressed; kept in `cache` (a directory, if given) by its digest, so an
    unchanged layer is compressed once."""
    key = hashlib.sha256(tar).hexdigest()
    path = os.path.join(cache, key + ".gz") if cache else None
    if path and os.path.exists(path):
        os.utime(path)
        with open(path, "rb") as f:
            return f.read()
    data = gzip.compress(tar, compresslevel=6, mtime=0)
    if path:
        os.makedirs(cache, exist_ok=True)
        with open(path + ".tmp", "wb") as f:
            f.write(data)
        os.rename(path + ".tmp", path)
    return data


def write(layout, tags, image_config, tars, created_by, cache=None):
    """Writes the layout: one gzip layer per uncompressed tar in `tars`, in order."""
    tmp = layout.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))

    layers, diff_ids = [], []
    for tar in tars:
        diff_ids.append("sha256:" + hashlib.sha256(tar).hexdigest())
        digest, size = blob(tmp, gzipped(tar, cache))
        layers.append({"mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                       "digest": digest, "size": size})

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": image_config,
        "rootfs": {"type": "layers", "diff_ids": diff_ids},
        "history": [{"created_by": created_by} for _ in tars],
    }
    config_digest, config_size = blob(tmp, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {"mediaType": "application/vnd.oci.image.config.v1+json",
                   "digest": config_digest, "size": config_size},
        "layers": layers,
    }
    manifest_digest, manifest_size = blob(tmp, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{"mediaType": "application/vnd.oci.image.manifest.v1+json",
                       "digest": manifest_digest, "size": manifest_size,
                       "annotations": {"org.opencontainers.image.ref.name": t}} for t in tags],
    }
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(tmp, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)
    shutil.rmtree(layout, ignore_errors=True)
    os.rename(tmp, layout)
    return manifest_digest


def main(argv):
    if len(argv) < 5:
        sys.exit(__doc__)
    layout, tag, config_json, dirs = argv[1], argv[2], argv[3], argv[4:]
    tars = [layer_tar(d) for d in dirs]
    cache = os.environ.get("LAYER_CACHE")
    print(write(layout, [tag], json.loads(config_json), tars, "kubevirt-rs images/build.sh", cache))


if __name__ == "__main__":
    main(sys.argv)
