#!/usr/bin/env bash
# Starts a loopback registry and fills it for the containers/image test:
#   signed/app:v1 (with a sigstore attachment signed by KEY), unsigned/app:v1,
#   blocked/app:v1, free/app:v1, and mirror/signed/app: a mirror of signed/app, image
#   and attachment.
# Usage: registry.sh PORT WORKDIR KEY   (the registry's PID is written to WORKDIR/registry.pid)
set -euo pipefail
port=$1 work=$2 key=$3
reg="127.0.0.1:$port"
mkdir -p "$work/storage" "$work/img/blobs/sha256" "$work/layer"

cat >"$work/registry.yml" <<YAML
version: 0.1
log: {level: warn}
storage: {filesystem: {rootdirectory: $work/storage}}
http: {addr: $reg}
YAML
docker-registry serve "$work/registry.yml" >"$work/registry.log" 2>&1 &
echo $! >"$work/registry.pid"
for _ in $(seq 1 100); do
  curl -sf "http://$reg/v2/" >/dev/null && break
  sleep 0.1
done
curl -sf "http://$reg/v2/" >/dev/null

sha() { sha256sum "$1" | cut -d' ' -f1; }
blob() { # copy a file into the OCI layout, print its digest hex
  local h; h=$(sha "$1"); cp "$1" "$work/img/blobs/sha256/$h"; echo "$h"
}

# A one-file image as an OCI layout, with an uncompressed layer.
echo "hello from cip-webhook's test image" >"$work/layer/hello.txt"
tar -C "$work/layer" -cf "$work/layer.tar" hello.txt
layer=$(blob "$work/layer.tar")
printf '{"architecture":"amd64","os":"linux","rootfs":{"type":"layers","diff_ids":["sha256:%s"]},"config":{}}' "$layer" >"$work/config.json"
config=$(blob "$work/config.json")
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.oci.image.layer.v1.tar","digest":"sha256:%s","size":%d}]}' \
  "$config" "$(stat -c%s "$work/config.json")" "$layer" "$(stat -c%s "$work/layer.tar")" >"$work/manifest.json"
manifest=$(blob "$work/manifest.json")
printf '{"schemaVersion":2,"manifests":[{"mediaType":"application/vnd.oci.image.manifest.v1+json","digest":"sha256:%s","size":%d,"annotations":{"org.opencontainers.image.ref.name":"v1"}}]}' \
  "$manifest" "$(stat -c%s "$work/manifest.json")" >"$work/img/index.json"
echo '{"imageLayoutVersion":"1.0.0"}' >"$work/img/oci-layout"

for repo in signed unsigned blocked free mirror/signed; do
  skopeo --insecure-policy copy -q --dest-tls-verify=false "oci:$work/img:v1" "docker://$reg/$repo/app:v1"
done

# The sigstore attachment cosign would write: tag sha256-<digest>.sig in the same repository.
digest=$(curl -sfI -H 'Accept: application/vnd.oci.image.manifest.v1+json' "http://$reg/v2/signed/app/manifests/v1" \
  | tr -d '\r' | awk -F': ' 'tolower($1)=="docker-content-digest"{print $2}')
[ -n "$digest" ]
printf '{"critical":{"identity":{"docker-reference":"%s/signed/app:v1"},"image":{"docker-manifest-digest":"%s"},"type":"cosign container image signature"},"optional":null}' \
  "$reg" "$digest" >"$work/payload.json"
signature=$(openssl dgst -sha256 -sign "$key" "$work/payload.json" | base64 -w0)
echo '{}' >"$work/sigconfig.json"
upload() { # push a blob to REPO: upload FILE REPO
  local location
  location=$(curl -sfi -X POST "http://$reg/v2/$2/blobs/uploads/" | tr -d '\r' | awk -F': ' 'tolower($1)=="location"{print $2}')
  case $location in http*) ;; *) location="http://$reg$location" ;; esac
  case $location in *\?*) sep='&' ;; *) sep='?' ;; esac
  curl -sf -X PUT -H 'Content-Type: application/octet-stream' --data-binary "@$1" "$location${sep}digest=sha256:$(sha "$1")" >/dev/null
}
printf '{"schemaVersion":2,"mediaType":"application/vnd.oci.image.manifest.v1+json","config":{"mediaType":"application/vnd.oci.image.config.v1+json","digest":"sha256:%s","size":%d},"layers":[{"mediaType":"application/vnd.dev.cosign.simplesigning.v1+json","digest":"sha256:%s","size":%d,"annotations":{"dev.cosignproject.cosign/signature":"%s"}}]}' \
  "$(sha "$work/sigconfig.json")" "$(stat -c%s "$work/sigconfig.json")" "$(sha "$work/payload.json")" "$(stat -c%s "$work/payload.json")" "$signature" >"$work/sigmanifest.json"
for repo in signed/app mirror/signed/app; do
  upload "$work/payload.json" "$repo"
  upload "$work/sigconfig.json" "$repo"
  curl -sf -X PUT -H 'Content-Type: application/vnd.oci.image.manifest.v1+json' --data-binary "@$work/sigmanifest.json" \
    "http://$reg/v2/$repo/manifests/${digest/:/-}.sig" >/dev/null
done
echo "registry ready on $reg; signed digest $digest"
