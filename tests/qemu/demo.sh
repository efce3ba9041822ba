#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# `make demo`: a 6.12 guest that loads the DKMS-installed ksmdev and runs
# tests/demo.c (or, without it, shows the counters in debugfs), with the
# console on this terminal. KERNELS picks another kernel (one).
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/lib.sh"

export KERNELS=${KERNELS:-6.12}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-1800}

main() {
	local kver initrd programs=()
	single_kernel_setup "the demo"
	kver=$KVER
	if [ -f "$KSMDEV_ROOT/tests/demo.c" ]; then
		log "building tests/demo.c"
		build_test demo
		programs=(demo)
	fi
	log "$kver: initramfs"
	initrd=$(build_initramfs "$kver" demo "${programs[@]}")
	log "$kver: booting (Ctrl-C ends it)"
	boot_until_init "$kver" "$initrd" "$QEMU_TIMEOUT"
}

main "$@"
