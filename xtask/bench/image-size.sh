#!/usr/bin/env sh
# Image size of one service (default: api): our scratch image vs its stripped static binary, and
# vs a distroless/cc-style image of the same service (glibc, libgcc, CA certificates, tzdata and
# base files from a debootstrapped Debian, plus the default dynamically linked release binary;
# the same set distroless/cc ships). Needs `cargo xtask image builder` once (for the Debian root).
#   xtask/bench/image-size.sh [SERVICE]
set -e
cd "$(dirname "$0")/../.."
svc=${1:-api}
target=${CARGO_TARGET_DIR:-target}
rootfs=$target/xtask/rootfs/rust-builder
[ -d "$rootfs/usr/lib" ] || { echo "no Debian root in $rootfs: run cargo xtask image builder" >&2; exit 1; }

cargo xtask image build --service "$svc" >/dev/null 2>&1
field() { python3 -c "import json,sys; print(json.load(open('$target/xtask/images.json'))['images']['$svc']['$1'])"; }
image=$(field image)
binary=$(stat -c %s "$target/x86_64-unknown-linux-gnu/image/$svc")
ours=$(docker image inspect --format '{{.Size}}' "$image")
layer=$(field layer_size)

cargo build --release --locked -p "$svc" >/dev/null 2>&1
stage=$(mktemp -d)
for p in base-files libc6 libgcc-s1 ca-certificates netbase tzdata; do
  chroot "$rootfs" dpkg -L "$p" 2>/dev/null || true
done | sort -u | while read -r f; do [ -f "$rootfs$f" ] && echo ".$f"; done \
  | (cd "$rootfs" && tar -c -T -) | tar -C "$stage" -x
mkdir -p "$stage/usr/local/bin" && cp "$target/release/$svc" "$stage/usr/local/bin/$svc"
tar -C "$stage" -c . | docker import -c 'USER 65532:65532' -c "ENTRYPOINT [\"/usr/local/bin/$svc\"]" - "bench-cc-$svc:latest" >/dev/null
cc=$(docker image inspect --format '{{.Size}}' "bench-cc-$svc:latest")
rm -rf "$stage"

echo "service:                        $svc"
echo "stripped static binary:         $binary bytes"
echo "our image (docker images size): $ours bytes ($(python3 -c "print(round($ours/$binary,3))")x the binary)"
echo "our compressed layer:           $layer bytes ($(python3 -c "print(round($layer/$binary,3))")x the binary)"
echo "cc-style image, same service:   $cc bytes ($(python3 -c "print(round($cc/$ours,2))")x ours)"
