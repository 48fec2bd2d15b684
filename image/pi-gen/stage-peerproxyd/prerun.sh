#!/bin/bash -e
# Start from stage2's root filesystem (pi-gen's copy_previous), as every stage does.
if [ ! -d "${ROOTFS_DIR}" ]; then
    copy_previous
fi
