#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# Prepare this machine for the QEMU harness; safe to run again (it only does
# what is missing):
#  - the Debian tool packages the harness needs (with what building a kernel
#    from linux-source-6.12 takes: tests/hypervisor.c boots a small one);
#  - the headers of each kernel (with their -common and kbuild packages) and
#    the unsigned Debian kernel images, fetched with `apt-get download` and
#    unpacked with `dpkg -x` into .cache/headers/<kver>/ and
#    .cache/kernels/<kver>/. Never `apt-get install linux-headers-*`: a
#    backport's headers package depends on its kernel image, which would
#    become the host's next boot kernel;
#  - busybox for the guests, unpacked from busybox-static into
#    .cache/busybox/ (installing it would replace the host's busybox);
#  - kselftest*.h and checkpatch.pl from linux-source-6.12, into .cache/.
#  - for the series "sid" (Debian unstable's newest kernel), a Debian
#    unstable root in .cache/sid/ where that kernel's headers are installed
#    and its modules are built (lib.sh: in_toolchain), and its image and
#    modules unpacked into .cache/kernels/<kver>/;
# KERNELS selects the series ("6.1 6.12 sid" by default).
# `setup.sh --debug-kernel` (check-debug.sh) prepares for building a kernel
# from linux-source-6.12 instead: the same host packages, no Debian kernel
# images or headers.
# `setup.sh --bench` (bench.sh) adds what the benchmark's plot needs.
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/lib.sh"

KERNELS=${KERNELS:-6.1 6.12 sid}
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

# apt_fetch DIR PKG...: download PKGs (the candidate versions) into DIR.
apt_fetch() {
	local dir=$1
	shift
	mkdir -p "$dir"
	(cd "$dir" && apt-get "${APT_OPTS[@]}" -o APT::Sandbox::User=root \
		download -q "$@")
}

# fetch_kernel KVER: the unsigned image, extracted into .cache/kernels/KVER.
fetch_kernel() {
	local kver=$1 dir dl deb
	dir=$(kernel_dir "$kver")
	[ -f "$dir/.done" ] && [ -f "$(kernel_image "$kver")" ] && return 0
	log "downloading linux-image-$kver-unsigned"
	dl=$CACHE/kernels/deb
	rm -rf "$dl"
	apt_fetch "$dl" "linux-image-$kver-unsigned"
	deb=$(ls "$dl"/linux-image-"$kver"-unsigned_*.deb)
	rm -rf "$dir"
	mkdir -p "$dir"
	dpkg -x "$deb" "$dir"
	[ -f "$(kernel_image "$kver")" ] || die "no vmlinuz in $deb"
	rm -rf "$dl"
	touch "$dir/.done"
}

# depends_on PKG PATTERN: the package of PKG's Depends that matches PATTERN.
depends_on() {
	apt-cache show --no-all-versions "$1" |
		sed -n 's/^Depends: //p' | tr ',|' '\n\n' |
		sed -e 's/^ *//' -e 's/ .*//' | grep -E -m 1 "$2"
}

# fetch_headers KVER: linux-headers-KVER, its -common package and the
# kbuild tools it links to, unpacked together into .cache/headers/KVER
# (their relative links then resolve). The one absolute path, the arch
# package's "include /usr/src/linux-headers-...-common/Makefile", is made
# to point into the same tree.
fetch_headers() {
	local kver=$1 dir dl pkgs deb mk
	dir=$(headers_root "$kver")
	[ -f "$dir/.done" ] && [ -f "$(kernel_headers "$kver")/Makefile" ] && return 0
	pkgs=("linux-headers-$kver")
	pkgs+=("$(depends_on "linux-headers-$kver" '^linux-headers-.*-common$')") ||
		die "linux-headers-$kver: no -common package among its Depends"
	pkgs+=("$(depends_on "linux-headers-$kver" '^linux-kbuild-')") ||
		die "linux-headers-$kver: no linux-kbuild package among its Depends"
	log "downloading ${pkgs[*]}"
	dl=$CACHE/headers/deb
	rm -rf "$dl" "$dir"
	apt_fetch "$dl" "${pkgs[@]}"
	mkdir -p "$dir"
	for deb in "$dl"/*.deb; do
		dpkg -x "$deb" "$dir"
	done
	rm -rf "$dl"
	mk=$(kernel_headers "$kver")/Makefile
	[ -f "$mk" ] || die "no $mk in ${pkgs[*]}"
	sed -i "s|^include /usr/src/|include $dir/usr/src/|" "$mk"
	grep -q "^include $dir/" "$mk" || die "$mk: unexpected content: $(cat "$mk")"
	touch "$dir/.done"
}

# What the sid root has besides apt: what DKMS and a kernel's build tree
# need there (the compiler and kbuild tools come with the headers).
SID_PACKAGES=dkms,kmod,make,libc6-dev,openssl,pahole,sparse,xz-utils,zstd
SID_MIRROR=http://deb.debian.org/debian

# fetch_sid_root: the Debian unstable root (lib.sh: SID_ROOT), made with
# mmdebstrap when missing or a week old; its package lists brought up to
# date when a day old. The archive's sid Release file may be past its
# Valid-Until (a mirror that is a snapshot): apt still checks its
# signature, but not its date.
fetch_sid_root() {
	local stamp=$SID_ROOT/.done
	if [ -z "$(find "$stamp" -mtime -7 2>/dev/null)" ]; then
		log "making a Debian unstable root in $SID_ROOT (mmdebstrap)"
		rm -rf --one-file-system "$SID_ROOT"
		mkdir -p "$(dirname "$SID_ROOT")"
		mmdebstrap --variant=apt --skip=cleanup/apt/lists \
			--aptopt='Acquire::Check-Valid-Until "false"' \
			--include="$SID_PACKAGES" sid "$SID_ROOT" "deb $SID_MIRROR sid main" ||
			die "mmdebstrap of Debian unstable failed"
		touch "$stamp"
	elif [ -z "$(find "$SID_ROOT/var/lib/apt/lists" -maxdepth 1 -name '*_Packages*' -mtime -1)" ]; then
		log "apt-get update in the Debian unstable root"
		in_sid apt-get "${APT_OPTS[@]}" update -q
	fi
}

# fetch_sid_kernel KVER: KVER's headers installed in the sid root (with
# the compiler and kbuild tools they depend on), and its image and modules
# (linux-binary-KVER, linux-modules-KVER, linux-base-KVER: the packages
# linux-image-KVER depends on) unpacked into .cache/kernels/KVER, with the
# paths the harness reads (boot/vmlinuz-KVER, lib/modules/KVER) linked to
# where they are (usr/lib/modules/KVER/).
fetch_sid_kernel() {
	local kver=$1 dir dl pkgs deb
	if ! kernel_in_sid "$kver"; then
		log "installing linux-headers-$kver in the Debian unstable root"
		in_sid env DEBIAN_FRONTEND=noninteractive apt-get "${APT_OPTS[@]}" \
			install -y -q --no-install-recommends "linux-headers-$kver" ||
			die "cannot install linux-headers-$kver in $SID_ROOT"
	fi
	dir=$(kernel_dir "$kver")
	[ -f "$dir/.done" ] && [ -f "$(kernel_image "$kver")" ] && return 0
	pkgs=$(in_sid apt-cache show --no-all-versions "linux-image-$kver" |
		sed -n 's/^Depends: //p' | tr ',|' '\n\n' | sed -e 's/^ *//' -e 's/ .*//' |
		grep -Fx -e "linux-binary-$kver" -e "linux-modules-$kver" \
			-e "linux-base-$kver" | sort -u)
	[ "$(wc -w <<< "$pkgs")" -eq 3 ] ||
		die "linux-image-$kver: no linux-binary, -modules and -base among its Depends: $pkgs"
	log "downloading $(echo $pkgs) from Debian unstable"
	dl=$CACHE/kernels/deb
	rm -rf "$dl" "$dir"
	mkdir -p "$dl" "$dir"
	# shellcheck disable=SC2086
	in_sid sh -c 'cd "$1" && shift && apt-get -o APT::Sandbox::User=root download -q "$@"' \
		sh "$dl" $pkgs || die "apt-get download $pkgs failed"
	for deb in "$dl"/*.deb; do
		dpkg -x "$deb" "$dir"
	done
	rm -rf "$dl"
	[ -f "$dir/usr/lib/modules/$kver/vmlinuz" ] || die "no usr/lib/modules/$kver/vmlinuz in $pkgs"
	mkdir -p "$dir/boot"
	ln -sfn "../usr/lib/modules/$kver/vmlinuz" "$dir/boot/vmlinuz-$kver"
	[ -e "$dir/lib" ] || ln -sfn usr/lib "$dir/lib"
	touch "$dir/.done"
}

# fetch_busybox: busybox-static's binary, unpacked into .cache/busybox/.
fetch_busybox() {
	local dir=$CACHE/busybox dl=$CACHE/busybox.deb
	[ -x "$BUSYBOX" ] && return 0
	log "downloading busybox-static"
	rm -rf "$dir" "$dl"
	apt_fetch "$dl" busybox-static
	mkdir -p "$dir"
	dpkg -x "$dl"/busybox-static_*.deb "$dir/root"
	mkdir -p "$dir/bin"
	mv "$dir/root/bin/busybox" "$BUSYBOX"
	rm -rf "$dir/root" "$dl"
	"$BUSYBOX" true || die "$BUSYBOX does not run"
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
	local kver
	[ "$(id -u)" -eq 0 ] || die "run as root (apt-get)"
	mkdir -p "$CACHE"
	apt_update_if_stale
	# shellcheck disable=SC2086
	apt_install $HOST_PACKAGES $KERNEL_BUILD_PACKAGES
	[ -f "$KERNEL_SOURCE_TARBALL" ] ||
		die "no $KERNEL_SOURCE_TARBALL (is linux-source-6.12 installed?)"
	fetch_busybox
	if [ "${1:-}" = --debug-kernel ]; then
		fetch_source_parts
		return 0
	fi
	# shellcheck disable=SC2086
	[ "${1:-}" = --bench ] && apt_install $BENCH_PACKAGES
	case " $KERNELS " in
	*" sid "*) fetch_sid_root ;;
	esac
	resolve_kernels "$KERNELS"
	for kver in "${KVERS[@]}"; do
		case " $KERNELS " in
		*" sid "*)
			if [ "$kver" = "$(resolve_kver sid)" ]; then
				fetch_sid_kernel "$kver"
				continue
			fi ;;
		esac
		fetch_headers "$kver"
		fetch_kernel "$kver"
	done
	fetch_source_parts
	for kver in "${KVERS[@]}"; do
		log "kernel $kver: $(kernel_image "$kver"), headers $(kernel_headers "$kver")$(kernel_in_sid "$kver" && echo " in $SID_ROOT")"
	done
}

main "$@"
