#!/bin/bash -e
# Install peerproxyd in the image: a venv at /opt/peerproxyd from the wheel and the pinned
# requirements in files/dist/ (build.sh puts them there), the systemd units, the example
# configurations in /etc/peerproxyd/ and the first-boot step that gives the device its
# identity. pi-gen runs this on the build host with ROOTFS_DIR set and on_chroot defined.
# (python3-dev and the -dev packages of 00-packages build what has no wheel on armhf.)

install -d -m 755 "${ROOTFS_DIR}/tmp/peerproxyd"
install -m 644 files/dist/* "${ROOTFS_DIR}/tmp/peerproxyd/"

install -m 644 files/peerproxyd@.service files/peerproxy-signal.service \
    files/peerproxyd-firstboot.service "${ROOTFS_DIR}/etc/systemd/system/"
install -D -m 755 files/peerproxyd-firstboot.py \
    "${ROOTFS_DIR}/usr/local/lib/peerproxyd/firstboot.py"
install -D -m 644 files/60-peerproxyd.conf "${ROOTFS_DIR}/etc/sysctl.d/60-peerproxyd.conf"

# Configurations are world-readable (the service runs as a dynamic user); the device key
# that first boot creates in each instance's state directory is the service's only.
install -d -m 755 "${ROOTFS_DIR}/etc/peerproxyd"
install -m 644 files/camera.toml files/homeassistant.toml files/signal.toml \
    "${ROOTFS_DIR}/etc/peerproxyd/"

on_chroot << EOF
set -e
python3 -m venv /opt/peerproxyd
/opt/peerproxyd/bin/pip install --no-cache-dir --disable-pip-version-check \
    -r /tmp/peerproxyd/requirements.lock
/opt/peerproxyd/bin/pip install --no-cache-dir --disable-pip-version-check --no-deps \
    /tmp/peerproxyd/peerproxyd-*.whl
/opt/peerproxyd/bin/peerproxyd --version
rm -rf /tmp/peerproxyd
systemctl enable peerproxyd-firstboot.service
EOF
