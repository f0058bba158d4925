# shellcheck shell=bash
# Helpers shared by the container CI scripts (sourced, not executed).
#
#   ensure_docker        a Docker daemon that answers, and a client that can build with BuildKit
#   ensure_base_image    the Dockerfile's BASE_IMAGE: present, pulled, or bootstrapped locally
#
# Both are idempotent: a running daemon and an existing base image are reused.
#
# Settings (environment; read when this file is sourced):
#   DOCKER                client to use (default: see pick_docker_client)
#   DOCKER_STORAGE_DRIVER force dockerd's storage driver (default: overlay2 if it mounts, else vfs)
#   DOCKER_DATA_ROOT      dockerd --data-root (default /var/lib/docker; kept between CI runs)
#   DOCKERD_LOG           dockerd log file (default /var/log/bids-denoise-dockerd.log)
#   BASE_IMAGE            default: the Dockerfile's ARG BASE_IMAGE
#   DEBIAN_MIRROR         debootstrap mirror (default http://deb.debian.org/debian)
#   DEBIAN_DOCKER_CLIENT  where docker.io puts its client (default /usr/bin/docker), and
#   DEBIAN_DOCKERD        its daemon (default /usr/sbin/dockerd); tests point them elsewhere

: "${DOCKERD_LOG:=/var/log/bids-denoise-dockerd.log}"
: "${DOCKER_DATA_ROOT:=/var/lib/docker}"
: "${DEBIAN_MIRROR:=http://deb.debian.org/debian}"
: "${DEBIAN_SUITE:=bookworm}"
: "${DEBIAN_DOCKER_CLIENT:=/usr/bin/docker}"
: "${DEBIAN_DOCKERD:=/usr/sbin/dockerd}"
# ensure_docker sets and exports DOCKER itself, so later the variable no longer tells a user's
# choice from the library's: keep the user's (set before sourcing) apart. "=" not ":=": sourcing
# again after ensure_docker must not take the library's pick for the user's.
: "${_docker_user_client=${DOCKER:-}}"

log() { printf '[%s] %s\n' "$(date +%H:%M:%S)" "$*" >&2; }
die() { log "ERROR: $*"; exit 1; }

as_root() {
    if [[ "$(id -u)" == 0 ]]; then "$@"; else sudo -n "$@"; fi
}

apt_install() {
    # Waits for the dpkg lock: other CI steps may be installing packages at the same time.
    as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 \
        install -y -q --no-install-recommends "$@" >/dev/null \
        || { as_root apt-get -o DPkg::Lock::Timeout=900 update -q >/dev/null \
             && as_root env DEBIAN_FRONTEND=noninteractive apt-get -o DPkg::Lock::Timeout=900 \
                    install -y -q --no-install-recommends "$@" >/dev/null; }
}

# The Dockerfile's default for ARG NAME (first "ARG NAME=value" line).
dockerfile_arg_default() {
    local name=$1 file=${2:-Dockerfile}
    sed -n -E "s/^ARG ${name}=\"?([^\"]*)\"?[[:space:]]*$/\1/p" "$file" | head -n 1
}

# A client that can run "docker build --secret": buildx if installed, else a client whose
# built-in BuildKit session needs no buildx (Debian's docker.io 20.10 client). The docker CLI
# 23+ refuses DOCKER_BUILDKIT=1 without the buildx plugin. Only the user's DOCKER is final: a
# DOCKER this library picked before docker.io was installed may be that buildx-less CLI.
pick_docker_client() {
    if [[ -n "$_docker_user_client" ]]; then
        echo "$_docker_user_client"
        return
    fi
    if docker buildx version >/dev/null 2>&1; then
        echo docker
    elif [[ -x "$DEBIAN_DOCKER_CLIENT" ]]; then
        echo "$DEBIAN_DOCKER_CLIENT"
    else
        echo docker
    fi
}

# "buildx" when the client builds through the buildx plugin, "builtin" for DOCKER_BUILDKIT=1.
build_mode() {
    if "$DOCKER" buildx version >/dev/null 2>&1; then echo buildx; else echo builtin; fi
}

# docker build with BuildKit, whatever the client (extra arguments are passed through).
docker_build() {
    if [[ "$(build_mode)" == buildx ]]; then
        "$DOCKER" buildx build --load "$@"
    else
        DOCKER_BUILDKIT=1 "$DOCKER" build "$@"
    fi
}

daemon_answers() { "$DOCKER" info >/dev/null 2>&1; }

# overlay2 needs a kernel overlayfs that mounts on the data root's filesystem; probe it.
probe_storage_driver() {
    if [[ -n "${DOCKER_STORAGE_DRIVER:-}" ]]; then
        echo "$DOCKER_STORAGE_DRIVER"
        return
    fi
    local probe
    as_root mkdir -p "$DOCKER_DATA_ROOT"
    probe=$(as_root mktemp -d "$DOCKER_DATA_ROOT/.overlay-probe.XXXXXX")
    as_root mkdir -p "$probe"/{lower,upper,work,merged}
    if as_root mount -t overlay overlay \
        -o "lowerdir=$probe/lower,upperdir=$probe/upper,workdir=$probe/work" "$probe/merged" 2>/dev/null; then
        as_root umount "$probe/merged"
        echo overlay2
    else
        echo vfs
    fi
    as_root rm -rf "$probe"
}

ensure_docker() {
    if ! command -v dockerd >/dev/null 2>&1 && ! [[ -x "$DEBIAN_DOCKERD" ]]; then
        log "Installing Debian's docker.io (dockerd, containerd, runc)"
        apt_install docker.io
    fi
    # Picked only now: docker.io brings $DEBIAN_DOCKER_CLIENT, which beats a buildx-less docker.
    DOCKER=$(pick_docker_client)
    export DOCKER
    if daemon_answers; then
        log "Docker daemon already running ($("$DOCKER" info --format '{{.ServerVersion}}, storage {{.Driver}}'))"
        return
    fi
    local driver dockerd_bin
    driver=$(probe_storage_driver)
    dockerd_bin=$(command -v dockerd || echo "$DEBIAN_DOCKERD")
    log "Starting dockerd (storage driver $driver, data root $DOCKER_DATA_ROOT, log $DOCKERD_LOG)"
    as_root mkdir -p "$(dirname "$DOCKERD_LOG")"
    # setsid: the daemon outlives this script and is not killed with its process group.
    as_root setsid "$dockerd_bin" --storage-driver "$driver" --data-root "$DOCKER_DATA_ROOT" \
        >>"$DOCKERD_LOG" 2>&1 </dev/null &
    local i
    for i in $(seq 1 60); do
        if daemon_answers; then
            log "dockerd is up after ${i}s ($("$DOCKER" info --format '{{.ServerVersion}}, storage {{.Driver}}'))"
            return
        fi
        sleep 1
    done
    tail -n 30 "$DOCKERD_LOG" >&2 || true
    die "dockerd did not answer within 60 s (see $DOCKERD_LOG)"
}

image_exists() { "$DOCKER" image inspect "$1" >/dev/null 2>&1; }

# A Debian base image made with debootstrap: no registry is needed. Trimmed like the official
# debian:*-slim images (no docs, man pages or locales; apt lists and caches emptied).
bootstrap_base_image() {
    local tag=$1 root
    command -v debootstrap >/dev/null 2>&1 || { log "Installing debootstrap"; apt_install debootstrap; }
    root=$(mktemp -d "${TMPDIR:-/tmp}/bids-denoise-rootfs.XXXXXX")
    log "debootstrap --variant=minbase $DEBIAN_SUITE $root $DEBIAN_MIRROR"
    as_root debootstrap --variant=minbase "$DEBIAN_SUITE" "$root" "$DEBIAN_MIRROR" >"$root.log" 2>&1 \
        || { tail -n 30 "$root.log" >&2; die "debootstrap failed (log: $root.log)"; }
    as_root tee "$root/etc/apt/sources.list" >/dev/null <<EOF
deb $DEBIAN_MIRROR $DEBIAN_SUITE main
deb $DEBIAN_MIRROR $DEBIAN_SUITE-updates main
deb http://deb.debian.org/debian-security $DEBIAN_SUITE-security main
EOF
    as_root tee "$root/etc/dpkg/dpkg.cfg.d/docker-slim" >/dev/null <<'EOF'
path-exclude /usr/share/doc/*
path-include /usr/share/doc/*/copyright
path-exclude /usr/share/man/*
path-exclude /usr/share/info/*
path-exclude /usr/share/locale/*
path-exclude /usr/share/lintian/*
EOF
    as_root tee "$root/etc/apt/apt.conf.d/docker-clean" >/dev/null <<'EOF'
DPkg::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
APT::Update::Post-Invoke { "rm -f /var/cache/apt/archives/*.deb /var/cache/apt/archives/partial/*.deb /var/cache/apt/*.bin || true"; };
Dir::Cache::pkgcache "";
Dir::Cache::srcpkgcache "";
EOF
    as_root find "$root/usr/share/doc" -mindepth 2 ! -name copyright ! -type d -delete 2>/dev/null || true
    as_root rm -rf "$root"/usr/share/man/* "$root"/usr/share/info/* "$root"/usr/share/locale/* \
        "$root"/var/lib/apt/lists/* "$root"/var/cache/apt/* "$root"/var/log/*.log \
        "$root"/var/log/apt/* "$root"/tmp/* "$root"/root/.bash_history
    # debootstrap copies the host's resolv.conf and hostname; the engine provides its own.
    as_root rm -f "$root/etc/resolv.conf" "$root/etc/hostname"
    log "Importing the root file system as $tag"
    as_root tar --numeric-owner -C "$root" -c . | "$DOCKER" import \
        --change 'CMD ["bash"]' --change 'ENV LANG=C.UTF-8' \
        --message "debootstrap --variant=minbase $DEBIAN_SUITE $DEBIAN_MIRROR" - "$tag" >/dev/null
    as_root rm -rf "$root" "$root.log"
}

ensure_base_image() {
    local tag=${1:-${BASE_IMAGE:-$(dockerfile_arg_default BASE_IMAGE)}}
    [[ -n "$tag" ]] || die "no BASE_IMAGE given and none found in the Dockerfile"
    if image_exists "$tag"; then
        log "Base image $tag already present (reused)"
        return
    fi
    # A registry image (e.g. debian:bookworm-slim on CircleCI) is pulled; a local-only tag is
    # bootstrapped, as is any image that cannot be pulled (no registry reachable).
    if [[ "$tag" != "$(dockerfile_arg_default BASE_IMAGE)" ]] && "$DOCKER" pull -q "$tag" >/dev/null 2>&1; then
        log "Pulled base image $tag"
        return
    fi
    bootstrap_base_image "$tag"
}
