#!/usr/bin/env bash
# Builds the container image `craft-consensus:local` WITHOUT an image registry (no base
# image is pulled): it takes binaries that are already built on this machine, assembles a
# minimal root filesystem (the three binaries, every shared library `ldd` lists for them,
# the dynamic loader, /etc/passwd with a non-root user, /tmp) and feeds it to
# `docker import`.
#
# Usage: deploy/build-local-image.sh [BIN_DIR] [IMAGE_TAG]
#   BIN_DIR    directory holding consensus, dev-controller, dev-network
#              (default: ${CARGO_TARGET_DIR:-target}/debug)
#   IMAGE_TAG  (default: craft-consensus:local)
#
# The binaries must have been built for this machine's architecture and against a glibc
# no newer than the one whose files are copied (they are: they are copied from this host).
# The image runs as uid/gid 10001 ("craft"), like the Dockerfile's.
set -euo pipefail

BIN_DIR="${1:-${CARGO_TARGET_DIR:-target}/debug}"
IMAGE="${2:-craft-consensus:local}"
BINS=(consensus dev-controller dev-network)
APP_UID=10001
APP_GID=10001

for b in "${BINS[@]}"; do
    if [[ ! -x "$BIN_DIR/$b" ]]; then
        echo "error: $BIN_DIR/$b not found or not executable" >&2
        echo "build it first: cargo build -p consensus -p craft-devnet --bins" >&2
        exit 1
    fi
done
command -v ldd >/dev/null || { echo "error: ldd is required" >&2; exit 1; }
command -v docker >/dev/null || { echo "error: docker is required" >&2; exit 1; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/craft-image.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
ROOT="$WORK/rootfs"
mkdir -p "$ROOT/usr/local/bin" "$ROOT/etc/cita" "$ROOT/var/lib/cita" "$ROOT/tmp"
chmod 1777 "$ROOT/tmp"
chmod 0755 "$ROOT/var/lib/cita"

# Copies a host file to the same path inside the root fs, following symlinks (the
# content lands under the name the loader will look for).
copy_into_root() {
    local src="$1"
    local dst="$ROOT$src"
    [[ -e "$dst" ]] && return 0
    mkdir -p "$(dirname "$dst")"
    cp -L "$src" "$dst"
}

for b in "${BINS[@]}"; do
    install -m 0755 "$BIN_DIR/$b" "$ROOT/usr/local/bin/$b"
    # ldd lines: "libx.so => /path/libx.so (0x..)", "/lib64/ld-linux-x86-64.so.2 (0x..)",
    # "linux-vdso.so.1 (0x..)" (virtual, skipped).
    deps="$(ldd "$BIN_DIR/$b")" || { echo "error: ldd $BIN_DIR/$b failed (static or foreign binary?)" >&2; exit 1; }
    if grep -q 'not found' <<<"$deps"; then
        echo "error: $b has unresolved libraries:" >&2
        grep 'not found' <<<"$deps" >&2
        exit 1
    fi
    while read -r lib; do
        copy_into_root "$lib"
    done < <(awk '$2 == "=>" && $3 ~ /^\// { print $3; next } $1 ~ /^\// { print $1 }' <<<"$deps")
done
# The dynamic loader named in PT_INTERP (ldd lists it too; this is a belt-and-braces copy).
interp="$(readelf -l "$BIN_DIR/consensus" 2>/dev/null | sed -n 's/.*Requesting program interpreter: \(.*\)\]/\1/p' || true)"
[[ -n "$interp" && -e "$interp" ]] && copy_into_root "$interp"

# Users, groups and name resolution (Docker bind-mounts /etc/hosts and /etc/resolv.conf;
# glibc >= 2.34 has the files and dns NSS modules built in).
cat > "$ROOT/etc/passwd" <<EOF
root:x:0:0:root:/root:/sbin/nologin
craft:x:$APP_UID:$APP_GID:craft consensus:/var/lib/cita:/sbin/nologin
nobody:x:65534:65534:nobody:/nonexistent:/sbin/nologin
EOF
cat > "$ROOT/etc/group" <<EOF
root:x:0:
craft:x:$APP_GID:
nogroup:x:65534:
EOF
printf 'hosts: files dns\n' > "$ROOT/etc/nsswitch.conf"
touch "$ROOT/etc/hosts" "$ROOT/etc/resolv.conf"

# Everything is owned by root except the data directory, which belongs to the service
# user (a new named volume mounted there inherits that ownership). Two tar passes so this
# works without root privileges.
TAR="$WORK/rootfs.tar"
tar --numeric-owner --owner=0 --group=0 -C "$ROOT" --exclude=./var/lib/cita -cf "$TAR" .
tar --numeric-owner --owner="$APP_UID" --group="$APP_GID" -C "$ROOT" -rf "$TAR" ./var/lib/cita

version="$("$BIN_DIR/consensus" --version | awk '{print $2}')"
docker import \
    --change 'ENTRYPOINT ["/usr/local/bin/consensus"]' \
    --change 'CMD ["run","-c","/etc/cita/config.toml","--stdout"]' \
    --change "USER $APP_UID:$APP_GID" \
    --change 'WORKDIR /var/lib/cita' \
    --change 'ENV PATH=/usr/local/bin:/usr/bin:/bin' \
    --change 'EXPOSE 50001 60001' \
    --change "LABEL org.opencontainers.image.title=craft-consensus org.opencontainers.image.version=$version" \
    - "$IMAGE" < "$TAR" >/dev/null

echo "built $IMAGE (consensus $version) from $BIN_DIR"
docker run --rm "$IMAGE" --version
