"""The OCI image of the module (`make image`, scripts/oci_image.py): a valid OCI image layout in
the "compat" shape Istio's Wasm image fetcher reads (istio/istio pkg/wasm/imagefetcher.go,
extractOCIStandardImage), holding exactly the built module, byte for byte, reproducibly.

No Envoy needed. skopeo and umoci, when installed, cross-check the layout; they are optional.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import shutil
import subprocess
import sys
import tarfile
import warnings
from pathlib import Path

import pytest

from tests.integration import harness

REPO = harness.REPO
SCRIPT = REPO / "scripts" / "oci_image.py"
DOCKERFILE = REPO / "Dockerfile"
TAG = "0.1.0"

MEDIA_INDEX = "application/vnd.oci.image.index.v1+json"
MEDIA_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
MEDIA_CONFIG = "application/vnd.oci.image.config.v1+json"
MEDIA_LAYER = "application/vnd.oci.image.layer.v1.tar+gzip"
DOCKER_MANIFEST = "application/vnd.docker.distribution.manifest.v2+json"

# A minimal valid module header, for the tests that do not need the real build.
TINY_WASM = b"\0asm\x01\0\0\0"


def sha256(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


def build_image(wasm: Path | str, out: Path, tag: str = TAG, *extra: str,
                check: bool = True) -> subprocess.CompletedProcess:
    proc = subprocess.run(
        [sys.executable, str(SCRIPT), "--wasm", str(wasm), "--out", str(out), "--tag", tag, *extra],
        capture_output=True, text=True, timeout=120)
    if check and proc.returncode != 0:
        pytest.fail(f"oci_image.py failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}",
                    pytrace=False)
    return proc


class Layout:
    """An OCI image layout on disk, read and checked as a registry client would."""

    def __init__(self, root: Path):
        self.root = root

    def json(self, rel: str) -> dict:
        return json.loads((self.root / rel).read_bytes())

    def blob(self, desc: dict) -> bytes:
        """The blob a descriptor points at, after checking its digest and size."""
        algo, _, hexd = desc["digest"].partition(":")
        assert algo == "sha256", desc
        data = (self.root / "blobs" / "sha256" / hexd).read_bytes()
        assert sha256(data) == hexd, f"blob {hexd}: content digest {sha256(data)}"
        assert len(data) == desc["size"], f"blob {hexd}: {len(data)} bytes, descriptor says {desc['size']}"
        return data

    def index(self) -> dict:
        return self.json("index.json")

    def manifest_desc(self, tag: str = TAG) -> dict:
        found = [m for m in self.index()["manifests"]
                 if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == tag]
        assert len(found) == 1, f"tag {tag}: {len(found)} manifests in index.json"
        return found[0]

    def manifest(self, tag: str = TAG) -> dict:
        return json.loads(self.blob(self.manifest_desc(tag)))

    def config(self, tag: str = TAG) -> dict:
        return json.loads(self.blob(self.manifest(tag)["config"]))

    def layer(self, tag: str = TAG) -> bytes:
        (layer,) = self.manifest(tag)["layers"]
        return self.blob(layer)


@pytest.fixture(scope="module")
def wasm_file() -> Path:
    return Path(harness.wasm_path())


@pytest.fixture(scope="module")
def image(wasm_file, tmp_path_factory) -> Layout:
    out = tmp_path_factory.mktemp("oci") / "layout"
    build_image(wasm_file, out)
    return Layout(out)


def test_layout_files_and_every_blob_digest(image):
    assert image.json("oci-layout") == {"imageLayoutVersion": "1.0.0"}
    index = image.index()
    assert index["schemaVersion"] == 2
    assert index["mediaType"] == MEDIA_INDEX
    assert len(index["manifests"]) == 1
    desc = image.manifest_desc()
    # The tag resolves to the image manifest itself, not to a nested index: a registry client
    # (Istio's go-containerregistry) then has no platform to pick.
    assert desc["mediaType"] == MEDIA_MANIFEST
    manifest = image.manifest()
    referenced = {d["digest"].split(":", 1)[1] for d in [desc, manifest["config"], *manifest["layers"]]}
    on_disk = {p.name for p in (image.root / "blobs" / "sha256").iterdir()}
    assert on_disk == referenced, "blobs/sha256 holds exactly the referenced blobs"
    for p in (image.root / "blobs" / "sha256").iterdir():
        assert sha256(p.read_bytes()) == p.name, f"{p}: content does not match its name"
    assert sorted(p.name for p in image.root.iterdir()) == ["blobs", "index.json", "oci-layout"]


def test_manifest_is_the_istio_compat_variant(image):
    manifest = image.manifest()
    assert manifest["schemaVersion"] == 2
    assert manifest["mediaType"] == MEDIA_MANIFEST
    assert manifest["config"]["mediaType"] == MEDIA_CONFIG
    assert len(manifest["layers"]) == 1, "compat variant: exactly one layer"
    assert manifest["layers"][0]["mediaType"] == MEDIA_LAYER
    ann = manifest["annotations"]
    assert ann["module.wasm.image/variant"] == "compat"
    assert ann["org.opencontainers.image.title"] == "canary-guard"
    assert ann["org.opencontainers.image.version"] == TAG


def test_config_diff_ids_match_the_uncompressed_layer(image):
    config = image.config()
    assert config["os"] and config["architecture"]
    assert config["rootfs"]["type"] == "layers"
    tar = gzip.decompress(image.layer())
    assert config["rootfs"]["diff_ids"] == ["sha256:" + sha256(tar)]
    assert len(config["history"]) == 1 and not config["history"][0].get("empty_layer")
    assert config["config"]["Labels"]["org.opencontainers.image.version"] == TAG


def test_layer_holds_exactly_plugin_wasm_equal_to_the_build(image, wasm_file):
    layer = image.layer()
    assert layer[4:8] == b"\0\0\0\0", "gzip header mtime is 0"
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layer)), mode="r:") as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["plugin.wasm"]
        (m,) = members
        assert m.isreg()
        assert (m.mode, m.uid, m.gid, m.mtime, m.uname, m.gname) == (0o644, 0, 0, 0, "", "")
        data = tar.extractfile(m).read()
    built = wasm_file.read_bytes()
    assert sha256(data) == sha256(built)
    assert data == built


def istio_compat_extract(layout: Layout, tag: str = TAG) -> bytes:
    """Python rendering of Istio's fetch path for a compat image (pkg/wasm/imagefetcher.go):
    not a Docker schema2 manifest, so extractOCIStandardImage: one layer (older Istio) / the
    last layer (newer), media type OCI tar+gzip, gunzip, first entry whose base name is
    plugin.wasm."""
    manifest = layout.manifest(tag)
    assert manifest.get("mediaType") != DOCKER_MANIFEST
    layers = manifest["layers"]
    assert len(layers) == 1, f"number of layers must be 1 but got {len(layers)}"
    assert layers[-1]["mediaType"] == MEDIA_LAYER
    with tarfile.open(fileobj=io.BytesIO(gzip.decompress(layout.blob(layers[-1]))), mode="r:") as tar:
        for m in tar:
            if Path(m.name).name == "plugin.wasm":
                return tar.extractfile(m).read()
    raise AssertionError("plugin.wasm not found in the archive")


def test_istio_compat_fetch_path_yields_the_module(image, wasm_file):
    assert istio_compat_extract(image) == wasm_file.read_bytes()


def test_building_twice_gives_the_same_digests(image, wasm_file, tmp_path):
    again = Layout(tmp_path / "again")
    build_image(wasm_file, again.root)
    assert again.manifest_desc() == image.manifest_desc()
    for rel in ["oci-layout", "index.json", *(f"blobs/sha256/{p.name}"
                                              for p in (image.root / "blobs" / "sha256").iterdir())]:
        assert (again.root / rel).read_bytes() == (image.root / rel).read_bytes(), rel


def test_rebuild_replaces_the_layout_and_leaves_no_stale_blob(tmp_path):
    out = tmp_path / "oci"
    a, b = tmp_path / "a.wasm", tmp_path / "b.wasm"
    a.write_bytes(TINY_WASM)
    b.write_bytes(TINY_WASM + b"\0")  # another module, so other blobs
    build_image(a, out, "1.0.0")
    first = Layout(out).manifest_desc("1.0.0")["digest"]
    build_image(b, out, "2.0.0")
    layout = Layout(out)
    assert [m["annotations"]["org.opencontainers.image.ref.name"]
            for m in layout.index()["manifests"]] == ["2.0.0"]
    assert istio_compat_extract(layout, "2.0.0") == b.read_bytes()
    assert len(list((out / "blobs" / "sha256").iterdir())) == 3
    assert not (out / "blobs" / "sha256" / first.split(":")[1]).exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".oci.")], "temp dir left over"


def test_refuses_bad_input_and_foreign_output_dirs(tmp_path):
    good = tmp_path / "m.wasm"
    good.write_bytes(TINY_WASM)
    notwasm = tmp_path / "x.wasm"
    notwasm.write_bytes(b"ELF not a module")
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("precious")

    cases = [
        (build_image(notwasm, tmp_path / "o1", check=False), "not a Wasm binary"),
        (build_image(tmp_path / "missing.wasm", tmp_path / "o2", check=False), "make build"),
        (build_image(good, tmp_path / "o3", "bad tag!", check=False), "not a valid tag"),
        (build_image(good, foreign, check=False), "refusing to replace"),
    ]
    for proc, msg in cases:
        assert proc.returncode != 0 and msg in proc.stderr, proc.stderr
    assert (foreign / "keep.txt").read_text() == "precious"
    assert not any((tmp_path / o).exists() for o in ("o1", "o2", "o3"))


def test_dockerfile_builds_the_same_compat_layout():
    """Static check: FROM scratch and a single layer-creating instruction copying the release
    module to ./plugin.wasm (what `docker build` needs to produce a compat image)."""
    lines, cur = [], ""
    for raw in DOCKERFILE.read_text().splitlines():
        s = raw.strip()
        if not cur and (not s or s.startswith("#")):
            continue
        cur += s[:-1] + " " if s.endswith("\\") else s
        if not s.endswith("\\"):
            lines.append(cur)
            cur = ""
    instrs = [(l.split(None, 1)[0].upper(), l.split(None, 1)[1] if " " in l else "") for l in lines]
    assert instrs[0] == ("FROM", "scratch")
    layered = [(i, a) for i, a in instrs if i in ("COPY", "ADD", "RUN")]
    assert layered == [("COPY", "target/wasm32-wasip1/release/canary_guard.wasm ./plugin.wasm")]
    wasm_rel = Path(harness.DEFAULT_WASM).relative_to(REPO).as_posix()
    assert layered[0][1].split()[0] == wasm_rel


def test_standard_tools_cross_check(image, wasm_file, tmp_path):
    """skopeo and umoci read the layout, when installed (Debian: apt-get install skopeo umoci).
    Neither is required: without them this test only warns (CI does not allow skips)."""
    digest = image.manifest_desc()["digest"]
    ran = []
    skopeo = shutil.which("skopeo")
    if skopeo:
        ref = f"oci:{image.root}:{TAG}"
        out = subprocess.run([skopeo, "inspect", ref], capture_output=True, text=True, timeout=60)
        assert out.returncode == 0, out.stderr
        info = json.loads(out.stdout)
        assert info["Digest"] == digest
        assert info["Layers"] == [image.manifest()["layers"][0]["digest"]]
        assert (info["Os"], info["Architecture"]) == (image.config()["os"], image.config()["architecture"])
        # A copy (what a push does) keeps the manifest byte for byte, so the digest a WasmPlugin
        # pins (`sha256` / `url: ...@sha256:`) is the one printed by make image.
        dst = tmp_path / "skopeo-dir"
        cp = subprocess.run([skopeo, "--insecure-policy", "copy", "--quiet", ref, f"dir:{dst}"],
                            capture_output=True, text=True, timeout=60)
        assert cp.returncode == 0, cp.stderr
        assert sha256((dst / "manifest.json").read_bytes()) == digest.split(":")[1]
        ran.append("skopeo")
    umoci = shutil.which("umoci")
    if umoci:
        st = subprocess.run([umoci, "stat", "--json", "--image", f"{image.root}:{TAG}"],
                            capture_output=True, text=True, timeout=60)
        assert st.returncode == 0, st.stderr
        history = json.loads(st.stdout)["history"]
        assert len(history) == 1 and history[0]["layer"]["digest"] == image.manifest()["layers"][0]["digest"]
        assert [history[0]["diff_id"]] == image.config()["rootfs"]["diff_ids"]
        # `umoci unpack` would build an OCI runtime bundle, which exists for Linux images only;
        # `raw unpack` extracts the root filesystem, which is what a Wasm image is.
        rootfs = tmp_path / "rootfs"
        up = subprocess.run([umoci, "raw", "unpack", "--rootless", "--image", f"{image.root}:{TAG}",
                             str(rootfs)], capture_output=True, text=True, timeout=60)
        assert up.returncode == 0, up.stderr
        assert sorted(p.name for p in rootfs.iterdir()) == ["plugin.wasm"]
        assert (rootfs / "plugin.wasm").read_bytes() == wasm_file.read_bytes()
        ran.append("umoci")
    if os.environ.get("CI", "").lower() in ("1", "true", "yes"):
        # .ci/run installs both: in CI the cross-check must really run.
        assert ran == ["skopeo", "umoci"], f"CI needs skopeo and umoci (apt-get install skopeo umoci); ran {ran}"
    if not ran:
        warnings.warn("neither skopeo nor umoci is installed: OCI layout cross-check not run")
