#!/usr/bin/env python3
"""Write a single-layer OCI image layout (python3 stdlib only).

usage: oci.py LAYOUT_DIR TAG[,TAG...] SRC=DEST [SRC=DEST ...]

Each SRC file is stored in the layer at DEST (parent directories are added), owned
by 107:107 (qemu in upstream's containerDisk images), mode 0440 for files and 0755
for directories. Timestamps are fixed, so the same inputs give the same digests.
The layout is replaced as a whole (written next to it, then renamed).
"""
import gzip
import hashlib
import io
import json
import os
import shutil
import sys
import tarfile

UID = GID = 107
MTIME = 0


def blob(root, data):
    digest = hashlib.sha256(data).hexdigest()
    path = os.path.join(root, "blobs", "sha256", digest)
    with open(path, "wb") as f:
        f.write(data)
    return "sha256:" + digest, len(data)


def layer_tar(entries):
    buf = io.BytesIO()
    dirs = set()
    for _, dest in entries:
        parts = dest.strip("/").split("/")[:-1]
        for i in range(1, len(parts) + 1):
            dirs.add("/".join(parts[:i]))
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for d in sorted(dirs):
            ti = tarfile.TarInfo(d)
            ti.type, ti.mode, ti.uid, ti.gid, ti.mtime = tarfile.DIRTYPE, 0o755, UID, GID, MTIME
            ti.uname = ti.gname = ""
            tar.addfile(ti)
        for src, dest in sorted(entries, key=lambda e: e[1]):
            ti = tarfile.TarInfo(dest.strip("/"))
            ti.size, ti.mode, ti.uid, ti.gid, ti.mtime = os.path.getsize(src), 0o440, UID, GID, MTIME
            ti.uname = ti.gname = ""
            with open(src, "rb") as f:
                tar.addfile(ti, f)
    return buf.getvalue()


def main(argv):
    if len(argv) < 4:
        sys.exit(__doc__)
    layout, tags = argv[1], argv[2].split(",")
    entries = [tuple(a.split("=", 1)) for a in argv[3:]]
    tmp = layout.rstrip("/") + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(os.path.join(tmp, "blobs", "sha256"))

    tar = layer_tar(entries)
    diff_id = "sha256:" + hashlib.sha256(tar).hexdigest()
    layer_digest, layer_size = blob(tmp, gzip.compress(tar, compresslevel=6, mtime=0))

    config = {
        "architecture": "amd64",
        "os": "linux",
        "config": {},
        "rootfs": {"type": "layers", "diff_ids": [diff_id]},
        "history": [{"created_by": "kubevirt-rs guest/package.sh"}],
    }
    config_digest, config_size = blob(tmp, json.dumps(config, sort_keys=True).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.manifest.v1+json",
        "config": {
            "mediaType": "application/vnd.oci.image.config.v1+json",
            "digest": config_digest,
            "size": config_size,
        },
        "layers": [{
            "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
            "digest": layer_digest,
            "size": layer_size,
        }],
    }
    manifest_digest, manifest_size = blob(tmp, json.dumps(manifest, sort_keys=True).encode())
    index = {
        "schemaVersion": 2,
        "mediaType": "application/vnd.oci.image.index.v1+json",
        "manifests": [{
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "digest": manifest_digest,
            "size": manifest_size,
            "annotations": {"org.opencontainers.image.ref.name": t},
        } for t in tags],
    }
    with open(os.path.join(tmp, "index.json"), "w") as f:
        json.dump(index, f, sort_keys=True)
    with open(os.path.join(tmp, "oci-layout"), "w") as f:
        json.dump({"imageLayoutVersion": "1.0.0"}, f)

    shutil.rmtree(layout, ignore_errors=True)
    os.rename(tmp, layout)
    print(manifest_digest)


if __name__ == "__main__":
    main(sys.argv)
