#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prepare this machine for the QEMU harness; safe to run again (it only does
# what is missing):
#  - the Debian packages the harness needs (with what building a kernel from
#    linux-source-6.12 takes: tests/hypervisor.c boots a small one), and the
#    headers of each kernel;
#  - the unsigned Debian kernel images, extracted into .cache/kernels/<kver>/;
#  - kselftest*.h and checkpatch.pl from linux-source-6.12, into .cache/.
# KERNELS selects the series ("6.1 6.12" by default).
# `setup.sh --debug-kernel` (check-debug.sh) prepares for building a kernel
# from linux-source-6.12 instead: the same host packages, no Debian kernel
# images or headers.
# `setup.sh --bench` (bench.sh) adds what the benchmark's plot needs.
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/lib.sh"

KERNELS=${KERNELS:-6.1 6.12}
APT_OPTS=(-o DPkg::Lock::Timeout=600 -o Acquire::Retries=3)

# apt-get update once, if the package lists are missing or older than a day.
apt_update_if_stale() {
	if [ -z "$(find /var/lib/apt/lists -maxdepth 1 -name '*_Packages*' -mtime -1 2>/dev/null)" ]; then
		log "apt-get update"
		apt-get "${APT_OPTS[@]}" update -q
	fi
}

# apt_install PKG...: install those not installed yet.
apt_install() {
	local p missing=()
	for p in "$@"; do
		dpkg-query -W -f='${Status}\n' "$p" 2>/dev/null |
			grep -q 'install ok installed' || missing+=("$p")
	done
	[ ${#missing[@]} -eq 0 ] && return 0
	log "apt-get install ${missing[*]}"
	DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" install -y -q \
		--no-install-recommends "${missing[@]}"
}

# fetch_kernel KVER: the unsigned image, extracted into .cache/kernels/KVER.
fetch_kernel() {
	local kver=$1 dir dl deb
	dir=$(kernel_dir "$kver")
	[ -f "$dir/.done" ] && [ -f "$(kernel_image "$kver")" ] && return 0
	log "downloading linux-image-$kver-unsigned"
	dl=$CACHE/kernels/deb
	mkdir -p "$dl"
	(cd "$dl" && rm -f linux-image-"$kver"-unsigned_*.deb &&
		apt-get "${APT_OPTS[@]}" -o APT::Sandbox::User=root download -q "linux-image-$kver-unsigned")
	deb=$(ls "$dl"/linux-image-"$kver"-unsigned_*.deb)
	rm -rf "$dir"
	mkdir -p "$dir"
	dpkg -x "$deb" "$dir"
	[ -f "$(kernel_image "$kver")" ] || die "no vmlinuz in $deb"
	rm -f "$deb"
	touch "$dir/.done"
}

# fetch_source_parts: kselftest headers and checkpatch from linux-source-6.12.
fetch_source_parts() {
	local tarball=/usr/src/linux-source-6.12.tar.xz stamp=$SRC_CACHE/.done
	[ -f "$stamp" ] && [ "$stamp" -nt "$tarball" ] && return 0
	log "extracting kselftest headers and checkpatch from $tarball"
	rm -rf "$SRC_CACHE"
	mkdir -p "$CACHE"
	tar -C "$CACHE" -xf "$tarball" --wildcards \
		'*/tools/testing/selftests/kselftest*.h' \
		'*/scripts/checkpatch.pl' '*/scripts/spelling.txt' \
		'*/scripts/const_structs.checkpatch'
	[ -f "$SELFTESTS_DIR/kselftest_harness.h" ] || die "no kselftest_harness.h in $tarball"
	[ -f "$CHECKPATCH" ] || die "no checkpatch.pl in $tarball"
	touch "$stamp"
}

main() {
	local kver headers=()
	[ "$(id -u)" -eq 0 ] || die "run as root (apt-get, dkms)"
	mkdir -p "$CACHE"
	apt_update_if_stale
	# shellcheck disable=SC2086
	apt_install $HOST_PACKAGES $KERNEL_BUILD_PACKAGES
	[ -f "$KERNEL_SOURCE_TARBALL" ] ||
		die "no $KERNEL_SOURCE_TARBALL (is linux-source-6.12 installed?)"
	if [ "${1:-}" = --debug-kernel ]; then
		fetch_source_parts
		return 0
	fi
	# shellcheck disable=SC2086
	[ "${1:-}" = --bench ] && apt_install $BENCH_PACKAGES
	resolve_kernels "$KERNELS"
	for kver in "${KVERS[@]}"; do
		headers+=("linux-headers-$kver")
	done
	apt_install "${headers[@]}"
	for kver in "${KVERS[@]}"; do
		fetch_kernel "$kver"
	done
	fetch_source_parts
	for kver in "${KVERS[@]}"; do
		log "kernel $kver: $(kernel_image "$kver")"
	done
}

main "$@"
