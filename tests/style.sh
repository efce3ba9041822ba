#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# `make style`: checkpatch --strict over src/ include/ uapi/, and sparse with
# W=1 (C=2: every file) against each kernel of KERNELS ("6.1 6.12 sid").
# Prints the problems; exits non-zero if there are any.
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/qemu/lib.sh"

export KERNELS=${KERNELS:-6.1 6.12 sid}

main() {
	local kver rc=0
	bash "$QEMU_DIR/setup.sh"
	resolve_kernels "$KERNELS"
	log "checkpatch --strict"
	style_checkpatch || rc=1
	for kver in "${KVERS[@]}"; do
		log "sparse (C=2 W=1) against $kver"
		style_sparse "$kver" || rc=1
	done
	if [ $rc -eq 0 ]; then
		log "style: no problems"
	else
		log "style: problems found (above)"
	fi
	return $rc
}

main "$@"
