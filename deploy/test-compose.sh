#!/usr/bin/env bash
# End-to-end test of deploy/docker-compose.yml: builds the local image (no registry
# needed), starts the 3-node cluster, waits until every node's chain reaches
# $TARGET_HEIGHT within $TIMEOUT seconds, checks that the chains agree, tears down.
#
# Usage: deploy/test-compose.sh [BIN_DIR]
#   BIN_DIR        passed to build-local-image.sh (default ${CARGO_TARGET_DIR:-target}/debug)
# Environment:
#   CRAFT_IMAGE    image to test (default craft-consensus:local)
#   SKIP_BUILD=1   use the existing $CRAFT_IMAGE instead of running build-local-image.sh
#   TARGET_HEIGHT  (default 10)   TIMEOUT (seconds, default 60)   PROJECT (default craftci)
#
# Exits 0 when the engine is unavailable ("skipped"), 0 on success, non-zero on failure
# (after printing every container's logs).
set -uo pipefail

HERE="$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)"
COMPOSE_FILE="$HERE/docker-compose.yml"
PROJECT="${PROJECT:-craftci}"
TARGET_HEIGHT="${TARGET_HEIGHT:-10}"
TIMEOUT="${TIMEOUT:-60}"
NODES=(1 2 3)
export CRAFT_IMAGE="${CRAFT_IMAGE:-craft-consensus:local}"

if ! command -v docker >/dev/null 2>&1 || ! docker info >/dev/null 2>&1; then
    echo "docker engine not available: skipped"
    exit 0
fi

# Compose v2 plugin (`docker compose`) or the standalone v1 `docker-compose`.
if docker compose version >/dev/null 2>&1; then
    COMPOSE=(docker compose)
elif command -v docker-compose >/dev/null 2>&1; then
    COMPOSE=(docker-compose)
else
    echo "docker compose not available: skipped"
    exit 0
fi
dc() { "${COMPOSE[@]}" -f "$COMPOSE_FILE" -p "$PROJECT" "$@"; }

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*"; }

WORK="$(mktemp -d "${TMPDIR:-/tmp}/craft-compose-test.XXXXXX")"
cleanup() {
    log "tearing down"
    dc down -v --remove-orphans >/dev/null 2>&1 || true
    rm -rf "$WORK"
}
fail() {
    echo "FAIL: $*" >&2
    echo "----- container states -----" >&2
    dc ps >&2 || true
    echo "----- logs -----" >&2
    dc logs --no-color --tail=200 >&2 || true
    exit 1
}
trap cleanup EXIT

if [[ "${SKIP_BUILD:-0}" != 1 ]]; then
    log "building $CRAFT_IMAGE"
    "$HERE/build-local-image.sh" "${1:-${CARGO_TARGET_DIR:-target}/debug}" "$CRAFT_IMAGE" || fail "image build failed"
fi

# A leftover from an interrupted run would start from old data.
dc down -v --remove-orphans >/dev/null 2>&1 || true
log "starting the cluster (project $PROJECT)"
dc up -d || fail "compose up failed"
start=$SECONDS

# Container ids, looked up once (`restart` keeps a container's id).
SERVICES=(network "${NODES[@]/#/controller-}" "${NODES[@]/#/consensus-}")
declare -A CID
for svc in "${SERVICES[@]}"; do
    CID[$svc]="$(dc ps -q "$svc" 2>/dev/null)"
    [[ -n "${CID[$svc]}" ]] || fail "service $svc has no container"
done

# Copies controller-N's chain.log out of its container (the image has no shell, so no
# `exec cat`; `docker cp` reads the named volume through the container).
fetch_chain() {
    local n="$1"
    docker cp "${CID[controller-$n]}:/var/lib/cita/chain/chain.log" - 2>/dev/null \
        | tar -xO 2>/dev/null > "$WORK/chain-$n.log" || true
}
# The chain height of node N: the highest "HEIGHT DATA" line.
chain_height() {
    awk '$1 ~ /^[0-9]+$/ && $1 > h { h = $1 } END { print h + 0 }' "$WORK/chain-$1.log"
}
check_running() {
    local svc state
    for svc in "${SERVICES[@]}"; do
        state="$(docker inspect -f '{{.State.Status}} {{.RestartCount}}' "${CID[$svc]}" 2>/dev/null)"
        [[ "$state" == "running 0" ]] || fail "service $svc is not running cleanly (state: ${state:-missing})"
    done
}

while :; do
    heights=()
    done_all=1
    for n in "${NODES[@]}"; do
        fetch_chain "$n"
        h="$(chain_height "$n")"
        heights+=("n$n=$h")
        (( h >= TARGET_HEIGHT )) || done_all=0
    done
    elapsed=$(( SECONDS - start ))
    log "t=${elapsed}s heights: ${heights[*]}"
    (( done_all )) && break
    (( elapsed >= TIMEOUT )) && fail "not every node reached height $TARGET_HEIGHT within ${TIMEOUT}s (${heights[*]})"
    check_running
    sleep 1
done

# Agreement: for every height present on several nodes (lines "HEIGHT DATA"; heights a
# controller synced from a peer are written as "HEIGHT sync" and skipped), the data must
# be identical.
compared="$(awk '
    $1 ~ /^[0-9]+$/ && $2 != "sync" && $2 != "" {
        if (($1) in seen && seen[$1] != $2) {
            printf "fork at height %s: %s has %s, %s has %s\n", $1, FILENAME, $2, who[$1], seen[$1] > "/dev/stderr"
            bad = 1
        }
        if (!(($1) in seen)) { seen[$1] = $2; who[$1] = FILENAME; n++ }
        else common++
    }
    END { if (bad) exit 1; print n " heights, " common " copies on other nodes identical" }
' "$WORK"/chain-*.log)" || fail "chains disagree"
log "chains agree: $compared"
check_running
log "PASS: all ${#NODES[@]} nodes reached height >= $TARGET_HEIGHT in $(( SECONDS - start ))s"
