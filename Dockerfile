# syntax=docker/dockerfile:1
# peerproxyd container: the daemon (default) or the signaling server (`signal`).
#
#   docker buildx build --platform linux/amd64,linux/arm64,linux/arm/v7 -t peerproxyd .
#   docker run -d --name peerproxyd --network host --stop-timeout 30 \
#       -v "$PWD/camera.toml:/etc/peerproxyd/peerproxyd.toml:ro" \
#       -v peerproxyd-state:/var/lib/peerproxyd peerproxyd
#
# /var/lib/peerproxyd is the state directory: the device key, created on the first start,
# from which the device id is derived. Keep it in a volume, or every new container is a new
# device. `docker run ... peerproxyd id` prints the id.
#
# --network host: ICE offers the host's own addresses (LAN viewers connect directly) and
# the upstreams on 127.0.0.1 are the host's. See docs/deploy.md.

# The base: Debian trixie, whose python3 is 3.13 (glibc): requirements.lock's
# libdatachannel-py (the native WebRTC backend, [transport] backend = "auto" picks it) has
# wheels for it on amd64 and arm64; arm/v7 skips it by its marker and runs on aiortc.
# BUILD_FROM (the Home Assistant add-on's name for it) takes any image of that release, e.g.
# one imported from a debootstrap root where no registry is reachable (docs/deploy.md).
ARG BUILD_FROM=debian:trixie-slim

# ---- build: a venv at /opt/peerproxyd from the pinned requirements
FROM ${BUILD_FROM} AS build
ARG TARGETARCH
# linux/arm/v7 has no wheels for cffi, pylibsrtp, uvloop and google-crc32c: build them.
# (amd64 and arm64 install from wheels only; see docs/deploy.md for what was checked.)
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 python3-venv \
    && if [ "$TARGETARCH" = "arm" ]; then \
        apt-get install -y --no-install-recommends \
            build-essential pkg-config python3-dev libffi-dev libssl-dev libsrtp2-dev; \
    fi \
    && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python3 -m venv /opt/peerproxyd
COPY requirements.lock /tmp/requirements.lock
RUN /opt/peerproxyd/bin/pip install -r /tmp/requirements.lock
COPY pyproject.toml README.md /src/
COPY peerproxyd /src/peerproxyd
RUN /opt/peerproxyd/bin/pip install --no-deps /src \
    && /opt/peerproxyd/bin/peerproxyd --version
# The signaling server serves webclient/ from beside the package.
COPY webclient /opt/peerproxyd/webclient
RUN ln -s /opt/peerproxyd/webclient \
        "$(/opt/peerproxyd/bin/python -c 'import sysconfig; print(sysconfig.get_path("purelib"))')/webclient"

# ---- runtime
FROM ${BUILD_FROM}
# python3: the venv's interpreter (the same path as in the build stage); tini: PID 1 that
# forwards signals and reaps; libsrtp2-1: pylibsrtp built on armv7 links it.
RUN apt-get update \
    && apt-get install -y --no-install-recommends python3 tini libsrtp2-1 \
    && rm -rf /var/lib/apt/lists/* \
    && useradd --system --uid 10001 --user-group --home-dir /var/lib/peerproxyd \
        --create-home --shell /usr/sbin/nologin peerproxyd \
    && mkdir -p /etc/peerproxyd
COPY --from=build /opt/peerproxyd /opt/peerproxyd
COPY docker/entrypoint.sh /usr/local/bin/docker-entrypoint
COPY docker/healthcheck.sh /usr/local/bin/docker-healthcheck
COPY config/camera.toml config/homeassistant.toml config/signal.toml config/example.toml \
    /usr/share/peerproxyd/examples/
ENV PATH=/opt/peerproxyd/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    PYTHONDONTWRITEBYTECODE=1 \
    PEERPROXYD_HEALTH_FILE=/tmp/peerproxyd.health \
    STATE_DIRECTORY=/var/lib/peerproxyd
USER peerproxyd:peerproxyd
WORKDIR /var/lib/peerproxyd
VOLUME /var/lib/peerproxyd
# Only the signaling server listens (TCP); the daemon dials out.
EXPOSE 8787
HEALTHCHECK --interval=30s --timeout=10s --start-period=60s --retries=3 \
    CMD ["/usr/local/bin/docker-healthcheck"]
STOPSIGNAL SIGTERM
ENTRYPOINT ["/usr/bin/tini", "-g", "--", "/usr/local/bin/docker-entrypoint"]
CMD ["serve"]
