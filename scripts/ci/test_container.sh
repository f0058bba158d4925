#!/usr/bin/env bash
# Build the bids_denoise Docker image and check it, from a clean machine (make test-container).
#
# Usage: scripts/ci/test_container.sh [STEP ...]      (no STEP: all, in this order)
#
#   daemon    install Debian's docker.io if needed and start dockerd (reused when running)
#   base      the Dockerfile's BASE_IMAGE: reused, pulled (registry tag), or made with
#             debootstrap + docker import (the default local tag; no registry needed)
#   build     build the production and test images (BuildKit; host CA bundle as a secret)
#   version   docker run IMAGE --version prints the package version; labels and env are set
#   image-tests  pytest -m container on the host against the image (tests/system/test_container_image.py)
#   check-ca  no layer of the image holds the host's extra CA certificates
#   smoke     the example dataset, as the image's non-root user: --network none, --read-only,
#             input mounted :ro; output list = .circleci/example_ds_outputs.txt; the derivative
#             passes the BIDS validator; GeneratedBy.Container names the image
#   rerun     a second run with the same work dir recomputes nothing and rewrites the same bytes
#   uid       a run as an arbitrary uid:gid (docker run -u) on one participant
#   compare   the image's package is this tree's, and the smoke outputs equal a host run
#             (scripts/ci/compare_derivatives.py: NIfTI within 1e-3, JSON minus volatile keys
#             and the paths and image details that differ between container and host)
#   unit      the unit tests inside the test image
#   save/load write/read both images to/from $IMAGE_ARCHIVE (CircleCI workspace)
#
# Settings (environment): IMAGE, TEST_IMAGE, BASE_IMAGE, DOCKER (client), CI_DIR (scratch,
# default /tmp/bids_denoise-container-ci), CA_BUNDLE (default the host's, given to the build
# as the BuildKit secret "ca" when the file exists), HOST_PYTHON (python with bids_denoise
# for the reference run, default .venv/bin/python), REFERENCE_DIR (use these outputs instead
# of a host run), NPROCS (default 2), IMAGE_ARCHIVE, BUILD_ARGS (extra docker build args).
# Timings go to $CI_DIR/timings.tsv and are printed at the end.
#
# BuildKit (needed for the CA secret and the pip cache mount): "docker buildx build" when the
# buildx plugin is installed (CircleCI); otherwise Debian's docker.io 20.10 client with
# DOCKER_BUILDKIT=1, whose built-in BuildKit needs no plugin. A docker CLI 23+ without buildx
# (e.g. a 28.x client on PATH) refuses DOCKER_BUILDKIT=1, and bookworm packages no buildx, so
# the script then calls /usr/bin/docker explicitly (see pick_docker_client in docker_lib.sh).
set -euo pipefail

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
cd "$REPO"
# shellcheck source=scripts/ci/docker_lib.sh
source scripts/ci/docker_lib.sh

VERSION=$(sed -n -E 's/^__version__ = "([^"]+)"/\1/p' bids_denoise/__about__.py)
: "${IMAGE_REPO:=bidsdenoise/bids-denoise}"
: "${IMAGE:=${IMAGE_REPO}:${VERSION}}"
: "${TEST_IMAGE:=${IMAGE}-test}"
: "${BASE_IMAGE:=$(dockerfile_arg_default BASE_IMAGE)}"
: "${CI_DIR:=${TMPDIR:-/tmp}/bids_denoise-container-ci}"
: "${CA_BUNDLE:=/etc/ssl/certs/ca-certificates.crt}"
: "${HOST_PYTHON:=$REPO/.venv/bin/python}"
: "${NPROCS:=2}"
: "${IMAGE_ARCHIVE:=$CI_DIR/images/bids_denoise-images.tar.gz}"
: "${BUILD_ARGS:=}"
EXPECTED_OUTPUTS=$REPO/.circleci/example_ds_outputs.txt
EXAMPLE_DS=$REPO/bids_denoise/data/example_ds
SMOKE=$CI_DIR/smoke
TIMINGS=$CI_DIR/timings.tsv
export BASE_IMAGE
mkdir -p "$CI_DIR"
# Progress messages go to fd 3 (the terminal), so "timed STEP ... >log 2>&1" does not swallow them.
exec 3>&2

# The user the container runs as: the image's own non-root user when this script runs as
# root; otherwise the caller's uid:gid (also non-root), so the outputs belong to the caller.
if [[ "$(id -u)" == 0 ]]; then RUN_AS=(); else RUN_AS=(-u "$(id -u):$(id -g)"); fi

timed() {  # timed LABEL COMMAND...: run, and append "LABEL<TAB>seconds" to $TIMINGS
    local label=$1 start status=0 ms
    shift
    start=$(date +%s%N)
    "$@" || status=$?
    ms=$(( ($(date +%s%N) - start) / 1000000 ))
    printf '%s\t%d.%d\n' "$label" $((ms / 1000)) $((ms % 1000 / 100)) >>"$TIMINGS"
    log "$label: $((ms / 1000)).$((ms % 1000 / 100)) s (exit $status)" 2>&3
    return "$status"
}

# Output folders the container user can write to (it may be another uid than ours).
fresh_dir() {
    if ! rm -rf "$1" 2>/dev/null; then
        # Files left by another uid (docker run -u): remove them as root inside a container.
        "$DOCKER" run --rm --network none -u 0 -v "$(dirname "$1"):/parent" --entrypoint rm \
            "$IMAGE" -rf "/parent/$(basename "$1")"
    fi
    mkdir -p "$1"
    chmod 0777 "$1"
}

# Sorted relative paths of the files under $1, as in .circleci/example_ds_outputs.txt: the
# advisory lock file left out, run identifiers (logs/config-<run_uuid>.toml) replaced.
output_list() {
    (cd "$1" && find . -type f ! -name .bids_denoise.lock | sed -e 's|^\./||' \
        -E -e 's/[0-9]{8}-[0-9]{6}_[0-9a-f]{8}/<run_uuid>/g' | LC_ALL=C sort -u)
}

# "sha256 relative-path" for every file of the bids_denoise package under $1 (bytecode left out).
PACKAGE_LISTING='import hashlib, pathlib, sys
root = pathlib.Path(sys.argv[1])
for p in sorted(root.rglob("*")):
    if p.is_file() and "__pycache__" not in p.parts and p.suffix != ".pyc":
        print(hashlib.sha256(p.read_bytes()).hexdigest(), p.relative_to(root).as_posix())'

# The package installed in the image is the one in this tree (same files, same bytes): the
# host run is then a fair reference, and no file of the tree is missing from the wheel.
check_image_matches_tree() {
    "$DOCKER" run --rm -i --network none --entrypoint python "$IMAGE" -c \
        "import bids_denoise, pathlib, sys; sys.argv[1:] = [str(pathlib.Path(bids_denoise.__file__).parent)]; exec(sys.stdin.read())" \
        <<<"$PACKAGE_LISTING" >"$CI_DIR/image-package.txt"
    python3 -c "$PACKAGE_LISTING" "$REPO/bids_denoise" >"$CI_DIR/tree-package.txt"
    if ! diff -u "$CI_DIR/tree-package.txt" "$CI_DIR/image-package.txt" >"$CI_DIR/package.diff"; then
        grep -E '^[-+][0-9a-f]' "$CI_DIR/package.diff" | head -n 20 >&2
        die "the package in $IMAGE differs from bids_denoise/ in this tree (- tree, + image): rebuild, or fix package-data"
    fi
    log "OK: the image's bids_denoise package is this tree's ($(wc -l <"$CI_DIR/tree-package.txt") files)"
}

run_app() {  # run_app OUT WORK [docker options --] [app options]
    local out=$1 work=$2
    shift 2
    local docker_opts=()
    while [[ $# -gt 0 && "$1" != -- ]]; do docker_opts+=("$1"); shift; done
    [[ "${1:-}" == -- ]] && shift
    "$DOCKER" run --rm --network none --read-only --tmpfs /tmp:exec,mode=1777 \
        --tmpfs /home/bidsdenoise:mode=1777 \
        -v "$EXAMPLE_DS:/data:ro" -v "$out:/out" -v "$work:/work" \
        "${docker_opts[@]}" "$IMAGE" /data /out participant -w /work \
        --nprocs "$NPROCS" --omp-nthreads 1 --stop-on-first-crash "$@"
}

step_daemon() { ensure_docker; }

step_base() { ensure_base_image "$BASE_IMAGE"; }

step_build() {
    local vcs_ref secret=()
    vcs_ref=$(git -C "$REPO" rev-parse --short=12 HEAD 2>/dev/null || echo unknown)
    if ! git -C "$REPO" diff --quiet HEAD 2>/dev/null; then vcs_ref="${vcs_ref}-dirty"; fi
    [[ -s "$CA_BUNDLE" ]] && secret=(--secret "id=ca,src=$CA_BUNDLE")
    log "Building $IMAGE (base $BASE_IMAGE, revision $vcs_ref, $(build_mode) BuildKit via $DOCKER)"
    # shellcheck disable=SC2086
    timed build-production docker_build --progress=plain "${secret[@]}" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" --build-arg "VERSION=$VERSION" \
        --build-arg "VCS_REF=$vcs_ref" --build-arg "IMAGE_NAME=${IMAGE%:*}" $BUILD_ARGS \
        --target production -t "$IMAGE" . >"$CI_DIR/build-production.log" 2>&1 \
        || { tail -n 40 "$CI_DIR/build-production.log" >&2; die "build failed (log: $CI_DIR/build-production.log)"; }
    # shellcheck disable=SC2086
    timed build-test docker_build --progress=plain "${secret[@]}" \
        --build-arg "BASE_IMAGE=$BASE_IMAGE" $BUILD_ARGS \
        --target test -t "$TEST_IMAGE" . >"$CI_DIR/build-test.log" 2>&1 \
        || { tail -n 40 "$CI_DIR/build-test.log" >&2; die "test image build failed (log: $CI_DIR/build-test.log)"; }
    # Images replaced by this build (now untagged); their big layers are shared and stay.
    "$DOCKER" image prune -f --filter "label=org.opencontainers.image.title=bids_denoise" >/dev/null || true
    local cached
    cached=$(grep -c '^#[0-9]* CACHED' "$CI_DIR/build-production.log" || true)
    log "Built $IMAGE: $(image_size "$IMAGE") ($cached cached steps); $TEST_IMAGE: $(image_size "$TEST_IMAGE")"
}

image_size() {
    "$DOCKER" image inspect --format '{{.Size}}' "$1" | awk '{printf "%.2f GB", $1 / 1e9}'
}

step_version() {
    local printed label env
    printed=$("$DOCKER" run --rm --network none "$IMAGE" --version)
    [[ "$printed" == *"$VERSION"* ]] || die "--version printed '$printed', expected $VERSION"
    [[ "$("$DOCKER" run --rm --network none --entrypoint cat "$IMAGE" /version)" == "$VERSION" ]] \
        || die "/version does not hold $VERSION"
    label=$("$DOCKER" image inspect --format '{{index .Config.Labels "org.opencontainers.image.version"}}' "$IMAGE")
    [[ "$label" == "$VERSION" ]] || die "label org.opencontainers.image.version is '$label'"
    env=$("$DOCKER" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE")
    grep -qx "BIDS_DENOISE_CONTAINER_IMAGE=${IMAGE%:*}:$VERSION" <<<"$env" \
        || die "BIDS_DENOISE_CONTAINER_IMAGE is not ${IMAGE%:*}:$VERSION"
    [[ "$("$DOCKER" image inspect --format '{{.Config.User}}' "$IMAGE")" == bidsdenoise ]] \
        || die "the image does not run as the non-root user bidsdenoise"
    log "OK: $printed; labels, /version, user and BIDS_DENOISE_CONTAINER_IMAGE set"
}

# The host bundle = Debian's Mozilla set + the machine's own CAs (a TLS-intercepting proxy's).
# Those extra certificates are only needed by pip during the build; no layer may keep them.
step_check_ca() {
    local patterns=$CI_DIR/host-ca-patterns.txt
    python3 - "$CA_BUNDLE" "$patterns" <<'EOF'
import base64, glob, sys
from pathlib import Path

def blocks(text):
    out, cur = [], None
    for line in text.splitlines():
        if "BEGIN CERTIFICATE" in line:
            cur = []
        elif "END CERTIFICATE" in line and cur is not None:
            out.append("".join(cur)); cur = None
        elif cur is not None:
            cur.append(line.strip())
    return out

bundle, target = sys.argv[1:]
host = blocks(Path(bundle).read_text()) if Path(bundle).is_file() else []
debian = set()
for crt in glob.glob("/usr/share/ca-certificates/mozilla/*.crt"):
    debian.update(blocks(Path(crt).read_text()))
extra = [b for b in host if b not in debian] if debian else host
# One 64-character line from the middle of each extra certificate: distinctive, and found
# whatever the line ending of a copy.
lines = []
for b in extra:
    text = base64.b64encode(base64.b64decode(b)).decode()
    lines.append(text[128:192])
Path(target).write_text("".join(l + "\n" for l in lines))
print(f"{len(host)} certificates in {bundle}, {len(extra)} not from Debian's ca-certificates")
EOF
    if [[ ! -s "$patterns" ]]; then
        log "No host-specific CA certificate to look for; check-ca passes trivially"
        return
    fi
    # Positive control: the patterns are found in the host bundle itself.
    grep -qF -f "$patterns" "$CA_BUNDLE" || die "check-ca patterns do not match the host bundle"
    # Every layer, including files deleted by later layers: docker save streams the layer tars.
    local hits
    hits=$("$DOCKER" save "$IMAGE" | LC_ALL=C grep -a -c -F -f "$patterns" || true)
    [[ "$hits" == 0 ]] || die "$hits line(s) of the image's layers hold a host CA certificate"
    # The secret leaves no trace in the configuration either.
    if "$DOCKER" history --no-trunc --format '{{.CreatedBy}}' "$IMAGE" | grep -q 'BEGIN CERT'; then
        die "the image history holds certificate data"
    fi
    if "$DOCKER" image inspect --format '{{range .Config.Env}}{{println .}}{{end}}' "$IMAGE" \
        | grep -qE '^(PIP_CERT|REQUESTS_CA_BUNDLE|SSL_CERT_FILE)='; then
        die "the image keeps a CA bundle setting in its environment"
    fi
    log "OK: none of the $(wc -l <"$patterns") host-specific CA certificate(s) is in any layer of $IMAGE"
}

step_smoke() {
    fresh_dir "$SMOKE"
    fresh_dir "$SMOKE/out"
    fresh_dir "$SMOKE/work"
    timed container-run run_app "$SMOKE/out" "$SMOKE/work" "${RUN_AS[@]}" -- \
        >"$SMOKE/run1.log" 2>&1 \
        || { tail -n 60 "$SMOKE/run1.log" >&2; die "the container run failed (log: $SMOKE/run1.log)"; }
    output_list "$SMOKE/out" >"$SMOKE/outputs.txt"
    if ! diff -u "$EXPECTED_OUTPUTS" "$SMOKE/outputs.txt"; then
        die "the outputs differ from $EXPECTED_OUTPUTS (if intended: scripts/ci/test_container.sh smoke, then copy $SMOKE/outputs.txt there)"
    fi
    log "OK: $(wc -l <"$SMOKE/outputs.txt") output files as listed in .circleci/example_ds_outputs.txt"
    local tag
    tag=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d["GeneratedBy"][0]["Container"]["Type"], d["GeneratedBy"][0]["Container"]["Tag"])' \
        "$SMOKE/out/dataset_description.json")
    [[ "$tag" == "docker ${IMAGE%:*}:$VERSION" ]] || die "GeneratedBy.Container is '$tag'"
    log "OK: GeneratedBy.Container = $tag"
    "$DOCKER" run --rm --network none --read-only --tmpfs /tmp:exec,mode=1777 "${RUN_AS[@]}" \
        -v "$SMOKE/out:/out:ro" --entrypoint python "$IMAGE" -c \
        'import sys; from bids_denoise.utils.validator import validate_derivatives as v; ok, r = v("/out"); print(r); sys.exit(0 if ok else 1)' \
        >"$SMOKE/validate.log" 2>&1 \
        || { cat "$SMOKE/validate.log" >&2; die "the derivative failed bids-validator-deno"; }
    log "OK: the derivative passes bids-validator-deno (in the container)"
}

pklz_mtimes() { find "$1" -path '*/denoise/mapflow/*' -name 'result_*.pklz' -printf '%p %T@\n' | LC_ALL=C sort; }
# Checksums of the derivatives; the HTML reports and logs/config-<run_uuid>.toml record each
# invocation, so they are left out.
tree_digest() {
    (cd "$1" && find . -type f ! -name .bids_denoise.lock ! -name '*.html' ! -path './logs/config-*' -print0 \
        | LC_ALL=C sort -z | xargs -0 sha256sum)
}

step_rerun() {
    [[ -s "$SMOKE/outputs.txt" ]] || die "run the smoke step first"
    local before digest
    before=$(pklz_mtimes "$SMOKE/work")
    [[ -n "$before" ]] || die "no cached denoising results (*/denoise/mapflow/*/result_*.pklz) in $SMOKE/work"
    digest=$(tree_digest "$SMOKE/out")
    timed container-rerun run_app "$SMOKE/out" "$SMOKE/work" "${RUN_AS[@]}" -- \
        >"$SMOKE/run2.log" 2>&1 \
        || { tail -n 60 "$SMOKE/run2.log" >&2; die "the rerun failed (log: $SMOKE/run2.log)"; }
    [[ "$(pklz_mtimes "$SMOKE/work")" == "$before" ]] || die "the rerun recomputed denoising nodes"
    [[ "$(tree_digest "$SMOKE/out")" == "$digest" ]] || die "the rerun changed the outputs"
    log "OK: the rerun reused $(wc -l <<<"$before") cached denoising results; outputs unchanged"
}

step_uid() {
    local dir=$CI_DIR/uid
    fresh_dir "$dir"; fresh_dir "$dir/out"; fresh_dir "$dir/work"
    # An arbitrary uid:gid with no /etc/passwd entry; HOME (a+rwX in the image) is writable.
    timed container-run-uid "$DOCKER" run --rm --network none -u 4242:4242 \
        -v "$EXAMPLE_DS:/data:ro" -v "$dir/out:/out" -v "$dir/work:/work" \
        "$IMAGE" /data /out participant -w /work --participant-label 02 \
        --nprocs "$NPROCS" --omp-nthreads 1 >"$dir/run.log" 2>&1 \
        || { tail -n 60 "$dir/run.log" >&2; die "the run as uid 4242 failed (log: $dir/run.log)"; }
    local expected
    expected=$(grep -v -E '^sub-01([/._]|$)' "$EXPECTED_OUTPUTS")
    diff -u <(echo "$expected") <(output_list "$dir/out") || die "outputs of the uid 4242 run differ"
    [[ "$(stat -c %u "$dir/out/dataset_description.json")" == 4242 ]] || die "outputs not owned by 4242"
    log "OK: run as uid:gid 4242:4242 (no passwd entry) wrote sub-02's outputs"
}

step_compare() {
    [[ -s "$SMOKE/outputs.txt" ]] || die "run the smoke step first"
    local ref=${REFERENCE_DIR:-}
    check_image_matches_tree
    if [[ -z "$ref" ]]; then
        [[ -x "$HOST_PYTHON" ]] || die "no host Python with bids_denoise at $HOST_PYTHON (make venv, or set HOST_PYTHON / REFERENCE_DIR)"
        ref=$CI_DIR/host/out
        rm -rf "$CI_DIR/host"
        mkdir -p "$CI_DIR/host"
        timed host-run "$HOST_PYTHON" -m bids_denoise.cli.run "$EXAMPLE_DS" "$ref" participant \
            -w "$CI_DIR/host/work" --nprocs "$NPROCS" --omp-nthreads 1 --stop-on-first-crash \
            >"$CI_DIR/host/run.log" 2>&1 \
            || { tail -n 60 "$CI_DIR/host/run.log" >&2; die "the host run failed"; }
    fi
    # The image has its own PyTorch and NumPy builds, not the host's: allow 1e-3 in the
    # data's units (both runs have so far been bit-identical).
    "$HOST_PYTHON" scripts/ci/compare_derivatives.py "$SMOKE/out" "$ref" --atol 1e-3 \
        --ignore-key DatasetLinks --ignore-key Container | tee "$CI_DIR/compare.txt"
}

step_image_tests() {
    [[ -x "$HOST_PYTHON" ]] || die "no host Python with bids_denoise and pytest at $HOST_PYTHON"
    timed image-tests env BIDS_DENOISE_TEST_IMAGE="$IMAGE" DOCKER="$DOCKER" \
        "$HOST_PYTHON" -m pytest -q -p no:cacheprovider -m container tests/system/test_container_image.py \
        >"$CI_DIR/image-tests.log" 2>&1 \
        || { tail -n 60 "$CI_DIR/image-tests.log" >&2; die "image tests failed (log: $CI_DIR/image-tests.log)"; }
    log "OK: $(tail -n 1 "$CI_DIR/image-tests.log")"
}

step_unit() {
    timed container-unit-tests "$DOCKER" run --rm --network none "${RUN_AS[@]}" "$TEST_IMAGE" \
        -q -n "$NPROCS" -m "not slow and not container and not gpu and not slurm" tests \
        >"$CI_DIR/unit.log" 2>&1 \
        || { tail -n 60 "$CI_DIR/unit.log" >&2; die "unit tests failed in $TEST_IMAGE (log: $CI_DIR/unit.log)"; }
    log "OK: $(tail -n 1 "$CI_DIR/unit.log")"
}

step_save() {
    mkdir -p "$(dirname "$IMAGE_ARCHIVE")"
    timed save-images bash -c "set -o pipefail; '$DOCKER' save '$IMAGE' '$TEST_IMAGE' | gzip -1 > '$IMAGE_ARCHIVE'"
    log "Saved $IMAGE and $TEST_IMAGE to $IMAGE_ARCHIVE ($(du -h "$IMAGE_ARCHIVE" | cut -f1))"
}

step_load() {
    timed load-images bash -c "set -o pipefail; gzip -dc '$IMAGE_ARCHIVE' | '$DOCKER' load"
}

ALL_STEPS=(daemon base build version image-tests check-ca smoke rerun uid compare unit)
steps=("$@")
[[ ${#steps[@]} -gt 0 ]] || steps=("${ALL_STEPS[@]}")
[[ " ${steps[*]} " == *" all "* ]] && steps=("${ALL_STEPS[@]}")

: >"$TIMINGS"
# Every step but daemon needs a daemon; ensure_docker only checks when one already runs.
[[ " ${steps[*]} " == *" daemon "* ]] || ensure_docker
for step in "${steps[@]}"; do
    case "$step" in
        daemon | base | build | version | image-tests | check-ca | smoke | rerun | uid | compare | unit | save | load)
            log "=== $step"
            "step_${step//-/_}"
            ;;
        *) die "unknown step '$step' (steps: ${ALL_STEPS[*]} save load all)" ;;
    esac
done
log "=== timings (s)"
while IFS=$'\t' read -r label seconds; do printf '  %-24s %8s\n' "$label" "$seconds" >&2; done <"$TIMINGS"
[[ " ${steps[*]} " == *" build "* ]] && log "image $IMAGE: $(image_size "$IMAGE")"
log "All container checks passed: ${steps[*]}"
