#!/usr/bin/env python3
"""Write a single-layer OCI image layout (python3 stdlib only).

usage: oci.py LAYOUT_DIR TAG[,TAG...] SRC=DEST [SRC=DEST ...]

Each SRC file is stored in the layer at DEST (parent directories are added), owned
by 107:107 (qemu in upstream's containerDisk images), mode 0440 for files and 0755
for directories. Timestamps are fixed, so the same inputs give the same digests.
The layout is replaced as a whole (written next to it, then renamed).
"""
import io
import os
import sys
import tarfile

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "images"))
import layout as images_layout  # noqa: E402

UID = GID = 107
MTIME = 0


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
    print(images_layout.write(layout, tags, {}, [layer_tar(entries)], "kubevirt-rs guest/package.sh"))


if __name__ == "__main__":
    main(sys.argv)
