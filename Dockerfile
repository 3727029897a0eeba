# The sidekick image: a drop-in for rancher/rke-tools (CONTRACT.md section 1.3).
#
# Build with scripts/image/build (it prepares the context: wheels, CA certificates, a
# cri-dockerd stand-in when needed). BuildKit is required (RUN --mount).
#
# /opt/rke-tools (the VOLUME other containers take with --volumes-from) holds a relocatable
# CPython with its own dynamic loader and libraries, so entrypoint.sh and friends run inside
# foreign images (hyperkube) that have no Python and any C library; the image's own tools
# (cert-deployer, nginx-proxy, rke-etcd-backup) use the same copy: there is no second Python.

# Public defaults; CI builds these locally with scripts/image/base-images.
ARG BASE_IMAGE=debian:bookworm-slim
ARG CRI_DOCKERD_URL=https://github.com/Mirantis/cri-dockerd/releases/download/v0.3.16/cri-dockerd-0.3.16.amd64.tgz
# apt trusts the machine's CA certificates (staged by scripts/image/build, mounted at build
# time only) for https mirrors and proxies; they never land in a layer.

# --- builder: the volume's Python, sidekick and its dependencies, the static launcher ------
FROM ${BASE_IMAGE} AS builder
RUN --mount=type=bind,source=build/image/build-ca.crt,target=/run/build-ca.crt \
    --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get -o Acquire::https::CAInfo=/run/build-ca.crt update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::https::CAInfo=/run/build-ca.crt install -y -qq --no-install-recommends \
      python3 python3-pip gcc libc6-dev musl-tools >/dev/null
# The dependencies at the versions constraints.txt pins (`sidekick --version` lists them);
# versions.txt in the volume records every installed distribution.
RUN --mount=type=bind,source=build/image/wheels,target=/wheels \
    --mount=type=bind,source=build/image/constraints.txt,target=/constraints.txt \
    python3 -m pip install -q --no-index --find-links /wheels --no-compile --no-warn-script-location \
      --break-system-packages --constraint /constraints.txt --target /opt/rke-tools/lib/python3/site-packages sidekick \
 && rm -rf /opt/rke-tools/lib/python3/site-packages/bin \
 && python3 -m pip list --format freeze --disable-pip-version-check --path /opt/rke-tools/lib/python3/site-packages > /opt/rke-tools/versions.txt
RUN --mount=type=bind,source=scripts/image,target=/src \
    /src/assemble-volume /opt/rke-tools /src/launcher.c

# --- the CNI plugins the weave deployer copies (only two files are kept) -----------------
FROM ${BASE_IMAGE} AS cni
RUN --mount=type=bind,source=build/image/build-ca.crt,target=/run/build-ca.crt \
    --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    apt-get -o Acquire::https::CAInfo=/run/build-ca.crt update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::https::CAInfo=/run/build-ca.crt install -y -qq --no-install-recommends \
      containernetworking-plugins >/dev/null

# --- cri-dockerd: the upstream release tarball, or a local one (extracted by ADD) ---------
FROM ${BASE_IMAGE} AS cri
ARG CRI_DOCKERD_URL
ADD ${CRI_DOCKERD_URL} /cri/
RUN set -e; cd /cri; \
    for t in *.tgz; do [ -f "$t" ] && tar -xzf "$t"; done; \
    install -D -m 0755 cri-dockerd/cri-dockerd /out/cri-dockerd

# --- the image ------------------------------------------------------------------------------
FROM ${BASE_IMAGE}
RUN --mount=type=bind,source=build/image/build-ca.crt,target=/run/build-ca.crt \
    --mount=type=cache,target=/var/cache/apt,sharing=locked \
    --mount=type=cache,target=/var/lib/apt/lists,sharing=locked \
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d && chmod 755 /usr/sbin/policy-rc.d \
 && apt-get -o Acquire::https::CAInfo=/run/build-ca.crt update -qq \
 && DEBIAN_FRONTEND=noninteractive apt-get -o Acquire::https::CAInfo=/run/build-ca.crt install -y -qq --no-install-recommends \
      nginx libnginx-mod-stream etcd-client acl netcat-openbsd >/dev/null \
 && rm -f /usr/sbin/policy-rc.d \
 && rm -rf /usr/share/doc/* /usr/share/man/* /usr/share/info/* /var/log/* /var/cache/debconf/*-old \
 # RKE's helper containers run `sh -c` lines written for bash (echo -e), as the original
 # image makes /bin/sh bash.
 && ln -sf bash /bin/sh \
 && ln -s /usr/bin/etcdctl /usr/local/bin/etcdctl
# nc as RKE's port listener and checker call it (see the script).
COPY scripts/image/nc /usr/local/bin/nc
COPY --from=cni /usr/lib/cni/loopback /usr/lib/cni/portmap /tmp/
COPY --from=cri /out/cri-dockerd /opt/rke-tools/bin/cri-dockerd
COPY --from=builder /opt/rke-tools /opt/rke-tools
RUN /opt/rke-tools/sidekick install --prefix / --target /opt/rke-tools/sidekick \
 && ln -s /opt/rke-tools/sidekick /usr/local/bin/sidekick
VOLUME /opt/rke-tools
# No ENTRYPOINT: RKE sets only Cmd for most helpers. Without a TTY or stdin this exits 0 at once.
CMD ["/bin/bash"]
