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
	log "setup"
	bash "$QEMU_DIR/setup.sh"
	resolve_kernels "$KERNELS"
	[ ${#KVERS[@]} -eq 1 ] || die "the demo runs on one kernel (KERNELS=$KERNELS)"
	kver=${KVERS[0]}
	result_init
	dkms_install_all "$kver"
	built_module "$kver" >/dev/null || die "DKMS could not build ksmdev for $kver"
	if [ -f "$KSMDEV_ROOT/tests/demo.c" ]; then
		log "building tests/demo.c"
		build_test demo
		programs=(demo)
	fi
	log "$kver: initramfs"
	initrd=$(build_initramfs "$kver" demo "${programs[@]}")
	log "$kver: booting (Ctrl-C ends it)"
	boot_guest "$kver" "$initrd" "$QEMU_TIMEOUT"
}

main "$@"
