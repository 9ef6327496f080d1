#!/usr/bin/env python3
"""Package canary_guard.wasm as an OCI image layout that Istio's Wasm image fetcher accepts.

No Docker engine: standard library only. The image is the "compat" variant of the Wasm image
specification (solo-io/wasm spec/spec-compat.md), the one Istio's fetcher
(istio/istio pkg/wasm/imagefetcher.go, extractOCIStandardImage) reads:

- an OCI image manifest (application/vnd.oci.image.manifest.v1+json) with exactly one layer
  of media type application/vnd.oci.image.layer.v1.tar+gzip, annotated
  module.wasm.image/variant=compat as the spec asks;
- that layer is a gzip'd tar holding one entry, `plugin.wasm`, at the root;
- an image config (application/vnd.oci.image.config.v1+json) whose rootfs.diff_ids is the
  sha256 of the uncompressed tar.

The config says os "wasip1", architecture "wasm" (the GOOS/GOARCH of a WASI preview 1
module); Istio's fetcher reads neither, since the tag resolves to this one manifest, not to an
index it would have to pick a platform from.

The output is reproducible: the tar entry has mtime 0, uid/gid 0, mode 0644 and no owner
names, the gzip header has mtime 0 and no file name, the JSON documents are serialised with
sorted keys, and the config's `created` is the Unix epoch (or $SOURCE_DATE_EPOCH). The same
module and options give the same manifest digest (with the same zlib: another zlib build may
compress differently).

Usage:
    scripts/oci_image.py --wasm target/wasm32-wasip1/release/canary_guard.wasm \
        --out out/oci --tag 0.1.0

Push it with any OCI tool, for example
    skopeo copy oci:out/oci:0.1.0 docker://REGISTRY/canary-guard:0.1.0
and point a WasmPlugin at `oci://REGISTRY/canary-guard:0.1.0`.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import json
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
from datetime import datetime, timezone
from pathlib import Path

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
OCI_LAYOUT_VERSION = "1.0.0"

# The file name Istio's fetcher looks for in the layer (compat variant).
PLUGIN_FILE = "plugin.wasm"
WASM_MAGIC = b"\0asm"

# A Docker/OCI tag: [A-Za-z0-9_][A-Za-z0-9_.-]{0,127}.
TAG_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}$")

DEFAULT_TITLE = "canary-guard"
DEFAULT_DESCRIPTION = ("In-proxy canary routing with automated, Flagger-compatible analysis and "
                       "rollback (Proxy-Wasm for Envoy and Istio)")
DEFAULT_LICENSES = "Apache-2.0"
# GOOS/GOARCH of a WASI preview 1 module, as the OCI image spec suggests for `os` and
# `architecture`. Istio's fetcher does not read the config's platform (see the README).
DEFAULT_OS = "wasip1"
DEFAULT_ARCH = "wasm"


def sha256_hex(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def canonical_json(doc: dict) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=False).encode()


def layer_tar(wasm: bytes) -> bytes:
    """An uncompressed tar with exactly one regular file, plugin.wasm, with fixed metadata."""
    buf = io.BytesIO()
    info = tarfile.TarInfo(PLUGIN_FILE)
    info.size = len(wasm)
    info.mtime = 0
    info.mode = 0o644
    info.uid = info.gid = 0
    info.uname = info.gname = ""
    info.type = tarfile.REGTYPE
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.USTAR_FORMAT) as tar:
        tar.addfile(info, io.BytesIO(wasm))
    return buf.getvalue()


def gzip_deterministic(data: bytes) -> bytes:
    """gzip with mtime 0 and no file name in the header (BytesIO has no name)."""
    buf = io.BytesIO()
    with gzip.GzipFile(filename="", fileobj=buf, mode="wb", compresslevel=9, mtime=0) as gz:
        gz.write(data)
    return buf.getvalue()


def descriptor(media_type: str, blob: bytes, annotations: dict | None = None) -> dict:
    d = {"mediaType": media_type, "digest": "sha256:" + sha256_hex(blob), "size": len(blob)}
    if annotations:
        d["annotations"] = annotations
    return d


def created_timestamp() -> str:
    """RFC 3339 time for the config: $SOURCE_DATE_EPOCH if set, else the Unix epoch (fixed, so
    that the digest depends on the inputs only)."""
    raw = os.environ.get("SOURCE_DATE_EPOCH", "").strip() or "0"
    try:
        epoch = int(raw)
    except ValueError:
        raise SystemExit(f"SOURCE_DATE_EPOCH={raw!r}: not an integer") from None
    return datetime.fromtimestamp(epoch, tz=timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def git_remote_url(repo: Path) -> str | None:
    try:
        out = subprocess.run(["git", "-C", str(repo), "remote", "get-url", "origin"],
                             capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    url = out.stdout.strip()
    return url if out.returncode == 0 and url else None


def build_blobs(wasm: bytes, tag: str, *, title: str, version: str, source: str | None,
                description: str, licenses: str, revision: str | None,
                os_name: str, arch: str, created: str) -> tuple[dict, dict[str, bytes]]:
    """Returns (index.json document, {digest hex: blob}) for the image."""
    tar = layer_tar(wasm)
    layer = gzip_deterministic(tar)

    labels = {
        "org.opencontainers.image.title": title,
        "org.opencontainers.image.description": description,
        "org.opencontainers.image.version": version,
        "org.opencontainers.image.licenses": licenses,
    }
    if source:
        labels["org.opencontainers.image.source"] = source
    if revision:
        labels["org.opencontainers.image.revision"] = revision

    config = {
        "created": created,
        "architecture": arch,
        "os": os_name,
        "config": {"Labels": dict(labels)},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + sha256_hex(tar)]},
        # `created` in history too: umoci stat dereferences it.
        "history": [{"created": created,
                     "created_by": f"scripts/oci_image.py: {PLUGIN_FILE} (sha256:{sha256_hex(wasm)})"}],
    }
    config_blob = canonical_json(config)

    manifest = {
        "schemaVersion": 2,
        "mediaType": MEDIA_MANIFEST,
        "config": descriptor(MEDIA_CONFIG, config_blob),
        # No title annotation on the layer: ORAS would name the tar.gz blob after it.
        "layers": [descriptor(MEDIA_LAYER, layer)],
        # Required by the compat spec for the OCI layer media type.
        "annotations": {"module.wasm.image/variant": "compat", **labels},
    }
    manifest_blob = canonical_json(manifest)

    index = {
        "schemaVersion": 2,
        "mediaType": MEDIA_INDEX,
        "manifests": [descriptor(MEDIA_MANIFEST, manifest_blob,
                                 {"org.opencontainers.image.ref.name": tag})],
    }
    blobs = {sha256_hex(b): b for b in (layer, config_blob, manifest_blob)}
    return index, blobs


def write_layout(out: Path, index: dict, blobs: dict[str, bytes]) -> None:
    """Writes the layout into a fresh sibling directory, then swaps it in for `out`.

    An existing `out` is replaced only if it is empty or an OCI layout (has `oci-layout`), so
    a mistyped --out cannot wipe an unrelated directory.
    """
    out = out.resolve()
    if out.exists():
        if not out.is_dir():
            raise SystemExit(f"--out {out}: exists and is not a directory")
        if any(out.iterdir()) and not (out / "oci-layout").is_file():
            raise SystemExit(f"--out {out}: not empty and not an OCI image layout; refusing to replace it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        os.chmod(tmp, 0o755)
        blob_dir = tmp / "blobs" / "sha256"
        blob_dir.mkdir(parents=True)
        for digest, blob in sorted(blobs.items()):
            (blob_dir / digest).write_bytes(blob)
        (tmp / "oci-layout").write_bytes(canonical_json({"imageLayoutVersion": OCI_LAYOUT_VERSION}))
        (tmp / "index.json").write_bytes(canonical_json(index))
        if out.exists():
            shutil.rmtree(out)
        tmp.rename(out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def main(argv: list[str] | None = None) -> int:
    repo = Path(__file__).resolve().parents[1]
    p = argparse.ArgumentParser(
        description="Build an OCI image layout (Istio compat variant: one layer with plugin.wasm) "
                    "from a Wasm module, without a Docker engine.")
    p.add_argument("--wasm", required=True, type=Path, help="the Wasm module to package")
    p.add_argument("--out", required=True, type=Path,
                   help="OCI image layout directory to write (replaced if it is one already)")
    p.add_argument("--tag", required=True, help="tag, stored as org.opencontainers.image.ref.name")
    p.add_argument("--version", dest="image_version",
                   help="org.opencontainers.image.version (default: the tag)")
    p.add_argument("--title", default=DEFAULT_TITLE, help="org.opencontainers.image.title")
    p.add_argument("--source", default=os.environ.get("CANARY_GUARD_IMAGE_SOURCE"),
                   help="org.opencontainers.image.source URL (default: $CANARY_GUARD_IMAGE_SOURCE, "
                        "else the git remote 'origin'; omitted when neither exists)")
    p.add_argument("--revision", help="org.opencontainers.image.revision (default: none)")
    p.add_argument("--description", default=DEFAULT_DESCRIPTION)
    p.add_argument("--licenses", default=DEFAULT_LICENSES)
    p.add_argument("--os", dest="os_name", default=DEFAULT_OS, help=f"config os (default {DEFAULT_OS})")
    p.add_argument("--architecture", default=DEFAULT_ARCH,
                   help=f"config architecture (default {DEFAULT_ARCH})")
    args = p.parse_args(argv)

    if not TAG_RE.match(args.tag):
        p.error(f"--tag {args.tag!r}: not a valid tag ([A-Za-z0-9_][A-Za-z0-9_.-]{{0,127}})")
    try:
        wasm = args.wasm.read_bytes()
    except OSError as e:
        p.error(f"--wasm {args.wasm}: {e.strerror}; build it first (make build)")
    if not wasm.startswith(WASM_MAGIC):
        p.error(f"--wasm {args.wasm}: not a Wasm binary (no \\0asm magic)")

    source = args.source or git_remote_url(repo)
    index, blobs = build_blobs(
        wasm, args.tag, title=args.title, version=args.image_version or args.tag, source=source,
        description=args.description, licenses=args.licenses, revision=args.revision,
        os_name=args.os_name, arch=args.architecture, created=created_timestamp())
    write_layout(args.out, index, blobs)

    manifest = index["manifests"][0]
    print(f"{args.out}: OCI image layout, tag {args.tag}, manifest {manifest['digest']} "
          f"({len(wasm)} bytes of {PLUGIN_FILE}, sha256:{sha256_hex(wasm)})")
    print(f"push: skopeo copy oci:{args.out}:{args.tag} docker://REGISTRY/{args.title}:{args.tag}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
