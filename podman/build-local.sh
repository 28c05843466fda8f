#!/usr/bin/env bash
# Build the musegate image with no container registry, then prove it works.
#
#   1. a Debian bookworm base (python3 3.11, venv, ca-certificates) made with
#      mmdebstrap from Debian's own mirror and `podman import`ed as $BASE_IMAGE
#      (the tarball is kept in $CACHE_DIR, so later runs skip this step);
#   2. podman build -f podman/Containerfile --build-arg BASE=$BASE_IMAGE -t $IMAGE;
#   3. run it on a generated demo library mounted read-only at /music, through a
#      port published on 127.0.0.1: the health endpoint answers, the container's
#      healthcheck turns healthy, the library is analysed, and `podman stop`
#      ends it with exit code 0 and "musegate stopping" in its log.
#
# Exit codes: 0 all checks passed, 1 a check failed, 77 podman cannot run
# containers on this machine (the reason is printed; tests skip on it).
#
# Environment:
#   MUSEGATE_PODMAN_CACHE  where the base tarball is kept (~/.cache/musegate/podman)
#   MUSEGATE_IMAGE         the tag to build (localhost/musegate:latest)
#   MUSEGATE_BASE_IMAGE    the imported base (localhost/bookworm-python:3.11)
#   MUSEGATE_BUILD_CA      CA bundle mounted into the build for pip (the host's
#                          /etc/ssl/certs/ca-certificates.crt when it exists;
#                          empty = the base image's own trust store)
#   MUSEGATE_TIMEOUT       seconds each wait may take (600)
#   MUSEGATE_BUILD_REPORT  a file to write KEY=VALUE results to (for tests):
#                          PODMAN_GLOBAL, PODMAN_RUN_OPTS, IMAGE, IMAGE_MB,
#                          BUILD_SECONDS, STOP_SECONDS, RESULT (passed, failed
#                          or skipped), REASON
#   DEBIAN_MIRROR          (http://deb.debian.org)
set -euo pipefail
cd "$(dirname "$0")/.."

CACHE_DIR=${MUSEGATE_PODMAN_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/musegate/podman}
IMAGE=${MUSEGATE_IMAGE:-localhost/musegate:latest}
BASE_IMAGE=${MUSEGATE_BASE_IMAGE:-localhost/bookworm-python:3.11}
TIMEOUT=${MUSEGATE_TIMEOUT:-600}
MIRROR=${DEBIAN_MIRROR:-http://deb.debian.org}
if [ -z "${MUSEGATE_BUILD_CA+set}" ] && [ -r /etc/ssl/certs/ca-certificates.crt ]; then
  MUSEGATE_BUILD_CA=/etc/ssl/certs/ca-certificates.crt
fi
BUILD_CA=${MUSEGATE_BUILD_CA:-}
# What the base holds; a change here makes a new tarball.
BASE_PACKAGES=python3,python3-venv,ca-certificates
# podman import gives an image no environment: set the PATH every Debian image has.
BASE_PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin
BASE_KEY=$(printf '%s|%s|%s' bookworm "$BASE_PACKAGES" "$MIRROR" | sha256sum | cut -c1-16)
IMPORT_KEY=$(printf '%s|%s' "$BASE_KEY" "$BASE_PATH" | sha256sum | cut -c1-16)
BASE_TAR=$CACHE_DIR/bookworm-python-$BASE_KEY.tar

NAME=musegate-build-local-$$
GLOBAL=()  # podman's global options, as the probe below finds them
WORK=$(mktemp -d "${TMPDIR:-/tmp}/musegate-build-local.XXXXXX")
cleanup() {
  podman "${GLOBAL[@]}" rm -f -v "$NAME" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

REPORT=${MUSEGATE_BUILD_REPORT:-/dev/null}
: >"$REPORT"
report() { printf '%s=%s\n' "$1" "$2" >>"$REPORT"; }
say() { printf '== %s\n' "$*"; }
fail() { report RESULT failed; report REASON "$*"; printf 'build-local: FAILED: %s\n' "$*" >&2; exit 1; }
skip() { report RESULT skipped; report REASON "$*"; printf 'build-local: SKIP: %s\n' "$*" >&2; exit 77; }
now() { date +%s.%N; }
elapsed() { awk -v a="$1" -v b="$(now)" 'BEGIN { printf "%.1f", b - a }'; }

command -v podman >/dev/null || skip "podman is not installed (apt-get install podman)"
command -v mmdebstrap >/dev/null || skip "mmdebstrap is not installed (apt-get install mmdebstrap)"

# ---- 1. the base image -----------------------------------------------------
mkdir -p "$CACHE_DIR"
if [ ! -s "$BASE_TAR" ]; then
  say "mmdebstrap: Debian bookworm with $BASE_PACKAGES -> $BASE_TAR"
  started=$(now)
  # Documentation, man pages and translations are left out: nothing in the image reads them.
  mmdebstrap --variant=apt --include="$BASE_PACKAGES" \
    --dpkgopt='path-exclude=/usr/share/doc/*' \
    --dpkgopt='path-include=/usr/share/doc/*/copyright' \
    --dpkgopt='path-exclude=/usr/share/man/*' \
    --dpkgopt='path-exclude=/usr/share/info/*' \
    --dpkgopt='path-exclude=/usr/share/locale/*' \
    --format=tar bookworm "$BASE_TAR.part" \
    "deb $MIRROR/debian bookworm main" \
    "deb $MIRROR/debian bookworm-updates main" \
    "deb $MIRROR/debian-security bookworm-security main" >"$WORK/mmdebstrap.log" 2>&1 \
    || { tail -20 "$WORK/mmdebstrap.log" >&2; fail "mmdebstrap could not build the base"; }
  mv "$BASE_TAR.part" "$BASE_TAR"
  say "base tarball built in $(elapsed "$started") s"
fi
if [ "$(podman image inspect --format '{{index .Labels "musegate.base"}}' "$BASE_IMAGE" 2>/dev/null)" != "$IMPORT_KEY" ]; then
  say "podman import $BASE_TAR as $BASE_IMAGE"
  podman import --change "LABEL musegate.base=$IMPORT_KEY" --change "ENV PATH=$BASE_PATH" \
    --change 'CMD ["python3"]' \
    "$BASE_TAR" "$BASE_IMAGE" >/dev/null
fi

# ---- can podman run a container here? --------------------------------------
# Each attempt adds what a sandbox commonly lacks: permission to raise rlimits
# (podman asks for more open files and processes than the hard limit allows),
# and crun's refusal of hybrid cgroup v1/v2 hierarchies (runc accepts them).
# An empty name means "as configured".
NOFILE=$(ulimit -Hn)
[ "$NOFILE" = unlimited ] && NOFILE=1048576
RUN_OPTS=()
probe_log=$WORK/probe.log
: >"$probe_log"
probe() {
  local runtime=$1; shift
  local global=()
  [ -n "$runtime" ] && global=(--runtime "$runtime")
  printf -- '-- podman %s run --rm %s %s true\n' "${global[*]}" "$*" "$BASE_IMAGE" >>"$probe_log"
  if podman "${global[@]}" run --rm "$@" "$BASE_IMAGE" true >>"$probe_log" 2>&1; then
    GLOBAL=("${global[@]}")
    RUN_OPTS=("$@")
    return 0
  fi
  return 1
}
found=
for runtime in "" runc; do
  if [ -n "$runtime" ] && ! command -v "$runtime" >/dev/null; then continue; fi
  for nproc in "" "$(ulimit -Hu)" 32768 4096; do
    if [ -z "$nproc" ]; then
      probe "$runtime" && { found=1; break 2; }
    else
      [ "$nproc" = unlimited ] && continue
      probe "$runtime" --ulimit "nofile=$NOFILE:$NOFILE" --ulimit "nproc=$nproc:$nproc" \
        && { found=1; break 2; }
    fi
  done
done
if [ -z "$found" ]; then
  cat "$probe_log" >&2
  skip "podman cannot run a container here: $(grep -v '^--' "$probe_log" | tail -1)"
fi
say "podman runs containers with: podman ${GLOBAL[*]} run ${RUN_OPTS[*]}"
report PODMAN_GLOBAL "${GLOBAL[*]}"
report PODMAN_RUN_OPTS "${RUN_OPTS[*]}"

# ---- 2. the musegate image -------------------------------------------------
# --format docker: the OCI format has no HEALTHCHECK. --layers=false: no
# intermediate images pile up over repeated runs (pip reinstalls every time).
BUILD_OPTS=(--format docker --layers=false --build-arg "BASE=$BASE_IMAGE" -t "$IMAGE"
            -f podman/Containerfile)
# The ulimits the probe needed apply to the build's RUN steps as well.
BUILD_OPTS+=("${RUN_OPTS[@]}")
if [ -n "$BUILD_CA" ]; then
  BUILD_OPTS+=(--volume "$BUILD_CA:/run/musegate-build-ca.crt:ro"
               --build-arg PIP_CERT=/run/musegate-build-ca.crt)
fi
say "podman build ${BUILD_OPTS[*]} ."
OLD_ID=$(podman image inspect --format '{{.Id}}' "$IMAGE" 2>/dev/null || true)
started=$(now)
podman "${GLOBAL[@]}" build "${BUILD_OPTS[@]}" . >"$WORK/build.log" 2>&1 \
  || { tail -30 "$WORK/build.log" >&2; fail "podman build failed"; }
BUILD_SECONDS=$(elapsed "$started")
# The image this tag had before, now untagged (kept if a container still uses it).
if [ -n "$OLD_ID" ] && [ "$OLD_ID" != "$(podman image inspect --format '{{.Id}}' "$IMAGE")" ]; then
  podman rmi "$OLD_ID" >/dev/null 2>&1 || true
fi
SIZE_BYTES=$(podman image inspect --format '{{.Size}}' "$IMAGE")
SIZE_MB=$(awk -v b="$SIZE_BYTES" 'BEGIN { printf "%.0f", b / 1000000 }')
BASE_MB=$(awk -v b="$(podman image inspect --format '{{.Size}}' "$BASE_IMAGE")" 'BEGIN { printf "%.0f", b / 1000000 }')
say "built $IMAGE in $BUILD_SECONDS s: $SIZE_MB MB (the base alone is $BASE_MB MB)"
report IMAGE "$IMAGE"
report IMAGE_MB "$SIZE_MB"
report BUILD_SECONDS "$BUILD_SECONDS"

# ---- 3. run it on a demo library -------------------------------------------
# The image's own demo synthesiser writes the tracks, owned by the caller.
mkdir -p "$WORK/music"
podman "${GLOBAL[@]}" run --rm --no-healthcheck "${RUN_OPTS[@]}" --user "$(id -u):$(id -g)" \
  -v "$WORK/music:/out" --entrypoint /opt/musegate/bin/python "$IMAGE" -c '
import soundfile as sf
from musegate.demosynth import SR, STYLES, render_track
for style in STYLES[:3]:
    for variant in range(2):
        audio, tags = render_track(style, variant, seconds=12.0)
        sf.write(f"/out/{style.genre} {variant + 1}.wav", audio, SR, subtype="PCM_16")
' || fail "could not generate the demo library"
TRACKS=$(find "$WORK/music" -name '*.wav' | wc -l)
[ "$TRACKS" -gt 0 ] || fail "no demo tracks were written"
say "demo library: $TRACKS WAV files"

PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
API_KEY=$(od -An -N16 -tx1 /dev/urandom | tr -d ' \n')
# In a container musegate's JSON API answers only requests that carry the admin key.
ENV_OPTS=(-e "MUSEGATE_API_KEY=$API_KEY")
say "podman run $IMAGE on 127.0.0.1:$PORT"
podman "${GLOBAL[@]}" run -d --name "$NAME" "${RUN_OPTS[@]}" "${ENV_OPTS[@]}" \
  -p "127.0.0.1:$PORT:8765" -v "$WORK/music:/music:ro" "$IMAGE" >/dev/null \
  || fail "podman run failed"

# GET a path through the published port; prints the body, fails on non-2xx.
get() {
  python3 - "http://127.0.0.1:$PORT$1" "$API_KEY" <<'EOF'
import sys, urllib.request
req = urllib.request.Request(sys.argv[1], headers={"X-API-Key": sys.argv[2]})
with urllib.request.urlopen(req, timeout=10) as r:
    sys.stdout.write(r.read().decode())
EOF
}
# wait_for DESCRIPTION COMMAND...: rerun COMMAND until it succeeds or the deadline passes.
wait_for() {
  local what=$1; shift
  local deadline=$(( $(date +%s) + TIMEOUT ))
  until "$@" >/dev/null 2>&1; do
    if [ "$(podman inspect --format '{{.State.Running}}' "$NAME" 2>/dev/null)" != true ]; then
      podman logs "$NAME" 2>&1 | tail -30 >&2
      fail "the container stopped while waiting for: $what"
    fi
    [ "$(date +%s)" -lt "$deadline" ] || { podman logs "$NAME" 2>&1 | tail -30 >&2; fail "timed out waiting for: $what"; }
    sleep 1
  done
  say "ok: $what"
}
started=$(now)
wait_for "GET /musegate/health answers through the published port" get /musegate/health
say "answering $(elapsed "$started") s after start"
healthy() {
  podman "${GLOBAL[@]}" healthcheck run "$NAME" \
    && [ "$(podman inspect --format '{{.State.Health.Status}}' "$NAME")" = healthy ]
}
wait_for "podman healthcheck run: healthy" healthy
analysed() {
  get /musegate/api/status | python3 -c '
import json, sys
s = json.load(sys.stdin)
sys.exit(0 if s["tracks"] == int(sys.argv[1]) and s["analysed"] == s["tracks"] and s["pending"] == 0 else 1)
' "$TRACKS"
}
wait_for "every demo track analysed (GET /musegate/api/status)" analysed
say "status: $(get /musegate/api/status)"

say "podman stop"
started=$(now)
podman "${GLOBAL[@]}" stop -t 30 "$NAME" >/dev/null
STOP_SECONDS=$(elapsed "$started")
report STOP_SECONDS "$STOP_SECONDS"
EXIT_CODE=$(podman inspect --format '{{.State.ExitCode}}' "$NAME")
# The whole log to a file first: `podman logs | grep -q` can fail under pipefail
# when grep stops reading early.
podman logs "$NAME" >"$WORK/container.log" 2>&1
[ "$EXIT_CODE" = 0 ] || { tail -30 "$WORK/container.log" >&2; fail "exit code $EXIT_CODE after podman stop"; }
grep -q 'musegate stopping' "$WORK/container.log" \
  || { tail -30 "$WORK/container.log" >&2; fail "no 'musegate stopping' in the log after SIGTERM"; }
say "ok: stopped cleanly in $STOP_SECONDS s (exit code 0, 'musegate stopping' logged)"
report RESULT passed
printf 'build-local: PASSED: image %s %s MB, built in %s s\n' "$IMAGE" "$SIZE_MB" "$BUILD_SECONDS"
