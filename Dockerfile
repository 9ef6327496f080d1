# canary-guard as a Wasm image for Istio's WasmPlugin, built with Docker (or Buildah/Podman).
# Without a Docker engine, `make image` writes the same layout to out/oci (scripts/oci_image.py).
#
#   make build
#   docker build -t REGISTRY/canary-guard:0.1.0 . && docker push REGISTRY/canary-guard:0.1.0
#
# This is the "compat" variant of the Wasm image spec that Istio's image fetcher reads: exactly
# one layer (so exactly one COPY, and nothing else that adds a layer) with `plugin.wasm` at the
# root. The LABEL lines add no layer.
FROM scratch
LABEL org.opencontainers.image.title="canary-guard" \
      org.opencontainers.image.description="In-proxy canary routing with automated, Flagger-compatible analysis and rollback (Proxy-Wasm for Envoy and Istio)" \
      org.opencontainers.image.licenses="Apache-2.0"
COPY target/wasm32-wasip1/release/canary_guard.wasm ./plugin.wasm
