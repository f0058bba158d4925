# bids_denoise: BIDS App that denoises diffusion MRI (Patch2Self, DDM2).
#
# Build (BuildKit is required for the secret and cache mounts):
#   DOCKER_BUILDKIT=1 docker build -t bidsdenoise/bids-denoise:<version> .
#   # behind a TLS-intercepting proxy, give pip the CA bundle without storing it in the image:
#   DOCKER_BUILDKIT=1 docker build --secret id=ca,src=/etc/ssl/certs/ca-certificates.crt ...
#   # the test image (production image + test dependencies and the test suite):
#   DOCKER_BUILDKIT=1 docker build --target test -t bidsdenoise/bids-denoise:<version>-test .
# scripts/ci/test_container.sh builds and checks both (make test-container).
#
# Run:
#   docker run --rm -v BIDS:/data:ro -v OUT:/out IMAGE /data /out participant
#   docker run --rm --gpus all ...                 # CUDA for --device cuda / DDM2
#
# No "# syntax=" line on purpose: it would make BuildKit pull a frontend image from Docker Hub.
# The built-in frontend of Docker >= 20.10 understands RUN --mount (secret, cache).
# No heredocs or COPY --chmod/--link for the same reason.

# Debian bookworm (slim). Default: a local image made by scripts/ci/docker_lib.sh
# (debootstrap --variant=minbase + docker import); any bookworm image works, e.g.
# --build-arg BASE_IMAGE=debian:bookworm-slim where Docker Hub is reachable.
ARG BASE_IMAGE=bids-denoise/debian:bookworm-slim

# ---------------------------------------------------------------------------------- base
# The OS layer shared by every stage: Debian's Python 3.11 (the venv links to it).
FROM ${BASE_IMAGE} AS base
# An ARG, not an ENV: it applies to the builds' apt-get and does not stay in the image.
ARG DEBIAN_FRONTEND=noninteractive
ENV LANG=C.UTF-8 \
    LC_ALL=C.UTF-8
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 \
    && apt-get clean \
    && rm -rf /var/lib/apt/lists/* /var/cache/apt/* /var/log/apt/* /var/log/dpkg.log

# ---------------------------------------------------------------------------------- requirements
# The dependencies (and the validator extra) read from pyproject.toml into requirements.txt.
FROM base AS requirements
COPY pyproject.toml /tmp/pyproject.toml
RUN python3 -c 'import tomllib; p = tomllib.load(open("/tmp/pyproject.toml", "rb"))["project"]; print("\n".join(p["dependencies"] + p["optional-dependencies"]["validator"]))' \
        > /requirements.txt

# ---------------------------------------------------------------------------------- deps
# The virtual environment with every dependency, but not bids_denoise itself: this stage only
# depends on the dependency list, so source changes rebuild none of its (multi-GB) layers.
FROM base AS deps
ARG DEBIAN_FRONTEND=noninteractive
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3-venv \
    && rm -rf /var/lib/apt/lists/*
ENV VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:$PATH \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    PIP_DEFAULT_TIMEOUT=180
RUN python3 -m venv /opt/venv

# PyTorch first and on its own (the largest layer, changed only with TORCH_VERSION). The
# PyPI wheel for Linux x86_64 is the CUDA build: it bundles the CUDA runtime libraries
# (nvidia-* wheels), so only the host driver is needed (docker --gpus all, apptainer --nv).
# TORCH_INDEX_URL may name another wheel index, e.g. https://download.pytorch.org/whl/cpu
# for a CPU-only image that is about 4 GB smaller.
ARG TORCH_VERSION=2.13.0
ARG TORCH_INDEX_URL=
# The optional secret "ca" is a CA bundle for pip (TLS-intercepting proxies). It is mounted for
# one command only and never written to a layer. The cache mount keeps pip's downloads between
# builds (outside the image), so a rebuild after a dependency change does not fetch torch again.
RUN --mount=type=secret,id=ca \
    --mount=type=cache,id=bids-denoise-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && if [ -n "${TORCH_INDEX_URL}" ]; then set -- --index-url "${TORCH_INDEX_URL}"; fi \
    && pip install "$@" "torch==${TORCH_VERSION}" \
    && echo "torch==${TORCH_VERSION}" > /opt/venv/constraints.txt

# Runtime dependencies and the "validator" extra (bids-validator-deno), as listed by the
# requirements stage: edits to pyproject.toml that leave the dependencies alone (pytest
# markers, metadata) rebuild nothing here.
COPY --from=requirements /requirements.txt /tmp/requirements.txt
RUN --mount=type=secret,id=ca \
    --mount=type=cache,id=bids-denoise-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install -c /opt/venv/constraints.txt -r /tmp/requirements.txt \
    && rm /tmp/requirements.txt

# ---------------------------------------------------------------------------------- wheel
# The bids_denoise wheel, built from the source tree (see .dockerignore).
FROM deps AS wheel
RUN --mount=type=secret,id=ca \
    --mount=type=cache,id=bids-denoise-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install "setuptools>=68" wheel
COPY pyproject.toml README.md /src/
COPY bids_denoise /src/bids_denoise
RUN pip wheel --no-deps --no-build-isolation --wheel-dir /wheels /src

# ---------------------------------------------------------------------------------- runtime
FROM base AS runtime
# A non-root user. HOME and the caches under it are writable by any uid, so the image also
# runs with "docker run -u $(id -u):$(id -g)". Under Apptainer the image is read-only and HOME
# is the user's own; singularity.def points the caches there (or to /tmp).
RUN useradd --create-home --home-dir /home/bidsdenoise --uid 1000 --user-group \
        --shell /bin/bash bidsdenoise \
    && mkdir -p /home/bidsdenoise/.cache/torch /home/bidsdenoise/.cache/triton \
        /home/bidsdenoise/.config/matplotlib /home/bidsdenoise/.nipype \
        /data /out /work \
    && chmod -R a+rwX /home/bidsdenoise \
    && chmod a+rwx /out /work
ENV HOME=/home/bidsdenoise \
    VIRTUAL_ENV=/opt/venv \
    PATH=/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin \
    XDG_CACHE_HOME=/home/bidsdenoise/.cache \
    MPLCONFIGDIR=/home/bidsdenoise/.config/matplotlib \
    TORCH_HOME=/home/bidsdenoise/.cache/torch \
    TRITON_CACHE_DIR=/home/bidsdenoise/.cache/triton \
    NIPYPE_NO_ET=1 \
    DENO_NO_UPDATE_CHECK=1 \
    PYTHONNOUSERSITE=1 \
    PYTHONUNBUFFERED=1 \
    OMP_NUM_THREADS=1 \
    MKL_NUM_THREADS=1 \
    OPENBLAS_NUM_THREADS=1

COPY --from=deps /opt/venv /opt/venv
COPY --from=wheel /wheels /tmp/wheels
RUN pip install --no-deps --no-index --no-cache-dir /tmp/wheels/*.whl \
    && rm -rf /tmp/wheels \
    && bids-denoise --version | sed -E 's/^[^0-9]*//' > /version \
    && python3 -c "import bids_denoise, nipype, bids, torch; print('bids_denoise', bids_denoise.__version__, '| torch', torch.__version__, '| CUDA', torch.version.cuda)"

LABEL org.opencontainers.image.title="bids_denoise" \
      org.opencontainers.image.description="BIDS App that denoises diffusion MRI with Patch2Self and DDM2" \
      org.opencontainers.image.source="https://github.com/bids-denoise/bids_denoise" \
      org.opencontainers.image.url="https://github.com/bids-denoise/bids_denoise" \
      org.opencontainers.image.licenses="Apache-2.0" \
      org.opencontainers.image.vendor="The bids_denoise developers"
USER bidsdenoise
WORKDIR /tmp
ENTRYPOINT ["bids-denoise"]
CMD ["--help"]

# ---------------------------------------------------------------------------------- test
# The test image: production + the "test" extra and the test suite, run from /src without the
# package sources so that the installed package is what gets tested:
#   docker run --rm --entrypoint pytest IMAGE-test -m "not slow" tests
FROM runtime AS test
USER root
RUN --mount=type=secret,id=ca \
    --mount=type=cache,id=bids-denoise-pip,target=/var/cache/pip \
    export PIP_CACHE_DIR=/var/cache/pip \
    && if [ -s /run/secrets/ca ]; then export PIP_CERT=/run/secrets/ca; fi \
    && pip install -c /opt/venv/constraints.txt "pytest>=7" "pytest-xdist>=3" "dipy==1.12.1"
COPY pyproject.toml README.md Makefile Dockerfile singularity.def .dockerignore /src/
COPY tests /src/tests
COPY workflows /src/workflows
COPY scripts /src/scripts
COPY .circleci /src/.circleci
RUN chmod -R a+rX /src
USER bidsdenoise
WORKDIR /src
ENV PYTEST_ADDOPTS="-p no:cacheprovider"
ENTRYPOINT ["pytest"]
CMD ["-m", "not slow and not container and not gpu and not slurm", "tests"]

# ---------------------------------------------------------------------------------- production
# The default (last) target. The build-specific labels and the image name come last so that a
# new commit or tag rebuilds no layer (the other OCI labels are set in the runtime stage).
FROM runtime AS production
ARG VERSION=0.1.0
ARG VCS_REF=unknown
ARG IMAGE_NAME=bidsdenoise/bids-denoise
LABEL org.opencontainers.image.version="${VERSION}" \
      org.opencontainers.image.revision="${VCS_REF}"
# Fills GeneratedBy[].Container in the derivative dataset_description.json.
ENV BIDS_DENOISE_CONTAINER_IMAGE="${IMAGE_NAME}:${VERSION}" \
    BIDS_DENOISE_CONTAINER_TYPE=docker
