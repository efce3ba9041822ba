#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The whole test matrix (`make check`):
#   checkpatch; per kernel sparse, a W=1 build and a DKMS build + install;
#   the kselftest programs tests/*.c, built static; then, per kernel, a QEMU
#   guest (TCG) that loads the DKMS-installed module, runs every program,
#   checks the kernel log, unloads the module and checks again.
# Environment:
#   KERNELS       kernel series or full releases (default "6.1 6.12 sid":
#                 sid is the newest kernel of Debian unstable)
#   TESTS         test programs to run (default: all tests/*.c but demo, bench, fakevm)
#   TEST_TIMEOUT  seconds per test program in the guest (default 600)
#   QEMU_TIMEOUT  seconds per guest (default 2400)
#   RUN_BUDGET    seconds for the whole run, guests are cut short to fit
#                 (default 4800)
#   SKIP_STYLE=1  leave out checkpatch and sparse
# The last line of output is "N passed, N failed[, N skipped]"; the exit
# status is non-zero on any failure.
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/lib.sh"

export KERNELS=${KERNELS:-6.1 6.12 sid}
TESTS=${TESTS:-}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-2400}
RUN_BUDGET=${RUN_BUDGET:-4800}
START=$SECONDS

# run_style: checkpatch once, sparse per kernel.
run_style() {
	local kver
	log "checkpatch --strict"
	result_cmd checkpatch "$BUILD/logs/checkpatch.log" style_checkpatch || true
	for kver in "${KVERS[@]}"; do
		log "sparse (C=2 W=1) against $kver"
		result_cmd "sparse $kver" "$BUILD/logs/$kver/sparse.log" \
			style_sparse "$kver" || true
	done
}

# build_tests: every selected program; sets RUNNABLE to those that built.
build_tests() {
	local t
	RUNNABLE=()
	log "building test programs: ${SELECTED//$'\n'/ }"
	for t in $SELECTED; do
		if result_cmd "build tests/$t.c" "$BUILD/logs/tests/$t.build.log" \
			build_test "$t"; then
			RUNNABLE+=("$t")
		fi
	done
	result_cmd "build tools/ksmdevctl.c" "$BUILD/logs/tests/ksmdevctl.build.log" \
		build_tool ksmdevctl || true
	# The libvirt hook (tests/integrations.c runs it in the guest).
	install -D -m 0755 "$KSMDEV_ROOT/packaging/libvirt-hook-qemu" \
		"$BUILD/tests/libvirt-hook-qemu"
	result_cmd "build tools/ksmdev-preload.c, tests/fakevm.c" \
		"$BUILD/logs/tests/preload.build.log" build_preload || true
	# tests/hypervisor.c boots this kernel in QEMU inside the guest.
	case " ${RUNNABLE[*]} " in
	*" hypervisor "*)
		log "the inner guests' kernel (tinyconfig, linux-source-6.12)"
		result_cmd "build inner guest kernel" "$BUILD/logs/inner-kernel.log" \
			build_inner_kernel || true
		tail -n 1 "$BUILD/logs/inner-kernel.log"
		;;
	esac
	# Not run here (`make bench` does), but kept building.
	[ -n "${TESTS:-}" ] || result_cmd "build tests/bench.c" \
		"$BUILD/logs/tests/bench.build.log" build_test bench || true
}

# build_test_kmods_all: the test suite's modules (tests/kmod/) for every
# kernel of KVERS.
build_test_kmods_all() {
	local kver
	for kver in "${KVERS[@]}"; do
		log "test modules (tests/kmod/) against $kver"
		result_cmd "build tests/kmod $kver" \
			"$BUILD/logs/$kver/testmods.log" build_test_kmods "$kver" || true
	done
}

# tap_count FILE: print "pass fail skip plan" for the TAP lines in FILE.
tap_count() {
	awk '
	/^ok [0-9]+/ { if (tolower($0) ~ /# skip/) s++; else p++ }
	/^not ok [0-9]+/ { f++ }
	/^1\.\.[0-9]+/ { plan += substr($0, 4) }
	END { printf "%d %d %d %d\n", p, f, s, plan }' "$1"
}

# finish_test KVER NAME RC: results of one test program from its output.
# RC is empty if the guest died while it ran.
finish_test() {
	local kver=$1 name=$2 rc=$3 out=$BUILD/logs/$1/tests/$2.out
	local p f s plan line bad=0
	read -r p f s plan < <(tap_count "$out")
	while IFS= read -r line; do
		case $line in
		"not ok "[0-9]*) result fail "$kver $name: $line"; bad=1 ;;
		ok\ [0-9]*)
			shopt -s nocasematch
			if [[ $line == *"# SKIP"* ]]; then
				result skip "$kver $name: $line"
			else
				result pass "$kver $name: $line"
			fi
			shopt -u nocasematch ;;
		esac
	done < "$out"
	if [ -z "$rc" ]; then
		result fail "$kver $name: did not finish (the guest died)"
		bad=1
	elif [ $((p + f + s)) -eq 0 ]; then
		result fail "$kver $name: no results (exit $rc)"
		bad=1
	elif [ "$rc" -ne 0 ] && [ "$rc" -ne 4 ] && [ "$f" -eq 0 ]; then
		case $rc in
		124|137|143) result fail "$kver $name: timed out (exit $rc)" ;;
		*) result fail "$kver $name: exit status $rc" ;;
		esac
		bad=1
	elif [ $((p + f + s)) -lt "$plan" ] && [ "$f" -eq 0 ]; then
		result fail "$kver $name: $((p + f + s)) results of $plan planned"
		bad=1
	fi
	[ $bad -eq 0 ] || FAILED_TESTS+=("$name")
}

# parse_results KVER: read build/logs/KVER/result.txt (the guest's ttyS1).
parse_results() {
	local kver=$1 logs=$BUILD/logs/$1 line cur='' details='' done=0 t ran=''
	local name status
	FAILED_TESTS=()
	FAILED_CHECKS=0
	mkdir -p "$logs/tests"
	while IFS= read -r line || [ -n "$line" ]; do
		line=${line%$'\r'}
		# A test whose output does not end in a newline: its last line
		# and the guest's marker share a line.
		if [ -n "$cur" ] && [[ $line == ?*"### exit "* ]]; then
			printf '%s\n' "${line%%"### exit "*}" >> "$logs/tests/$cur.out"
			line="### exit ${line#*"### exit "}"
		fi
		case $line in
		"### test "*)
			cur=${line#\#\#\# test }
			ran="$ran $cur"
			: > "$logs/tests/$cur.out" ;;
		"### exit "*)
			# shellcheck disable=SC2086 # split the marker into words
			set -- $line
			finish_test "$kver" "$3" "$4"
			cur= ;;
		"### check "*)
			# shellcheck disable=SC2086
			set -- $line
			name=$3 status=$4
			[ "$status" = pass ] || status=fail
			result "$status" "$kver $name"
			if [ "$status" != pass ]; then
				FAILED_CHECKS=$((FAILED_CHECKS + 1))
				printf '%s\n' "$details" | sed 's/^/    | /'
			fi
			details= ;;
		"### done")
			done=1 ;;
		"### "*) ;;
		*)
			if [ -n "$cur" ]; then
				printf '%s\n' "$line" >> "$logs/tests/$cur.out"
			else
				details=${details:+$details$'\n'}${line#\# }
			fi ;;
		esac
	done < "$logs/result.txt"
	[ -z "$cur" ] || finish_test "$kver" "$cur" ""
	if [ $done -eq 1 ]; then
		result pass "$kver guest ran to the end"
	else
		if [ "${QEMU_RC:-0}" -eq 124 ] || [ "${QEMU_RC:-0}" -eq 137 ]; then
			result fail "$kver guest ran to the end (killed by the host after ${QEMU_SECS}s)"
		else
			result fail "$kver guest ran to the end (it panicked or died: see the console)"
		fi
		for t in "${RUNNABLE[@]}"; do
			[[ " $ran " == *" $t "* ]] || echo "    not run: $t"
		done
		FAILED_CHECKS=$((FAILED_CHECKS + 1))
	fi
	for t in "${FAILED_TESTS[@]}"; do
		echo
		echo "---- $kver: output of $t ----"
		cat "$logs/tests/$t.out"
	done
	if [ ${#FAILED_TESTS[@]} -gt 0 ] || [ "$FAILED_CHECKS" -gt 0 ]; then
		echo
		echo "---- $kver: last 60 lines of the guest console ($logs/console.log) ----"
		tail -n 60 "$logs/console.log" |
			sed -e 's/\x1b\[[0-9;?]*[A-Za-z]//g' -e 's/\x1b[A-Za-z]//g' -e 's/\r//g'
		echo "----"
	fi
}

# show_progress FILE PID: follow the guest's results while PID runs.
show_progress() {
	tail -n +1 -F --pid="$2" "$1" 2>/dev/null | awk '
	/^### test / { print "    guest: running " $3; fflush() }
	/^### exit / { print "    guest: " $3 " exited with status " $4 ($5 == "" ? "" : " after " $5 "s"); fflush() }
	/^### check .* fail/ { print "    guest: check " $3 " failed"; fflush() }'
}

# man_page_tags PAGE FIRST LAST: the words of the tags (the line after each
# .TP) between the lines matching FIRST and LAST, one per line.
man_page_tags() {
	awk -v first="$2" -v last="$3" '
	$0 ~ first { on = 1; next }
	on && $0 ~ last { on = 0 }
	on && prev == ".TP" {
		for (i = 2; i <= NF; i++) {
			gsub(/[",]/, "", $i)
			print $i
		}
	}
	{ prev = $0 }' "$1"
}

# uapi_fields STRUCT: the __u64 fields of struct STRUCT of the ABI header.
uapi_fields() {
	awk "/^struct $1 \\{/,/^\\};/" "$KSMDEV_ROOT/uapi/linux/ksmdev.h" |
		sed -nE 's/^[[:space:]]+__u64 ([a-z_]+);.*/\1/p'
}

# man_page_check: tools/ksmdevctl.8 renders without a groff warning, and has an
# entry for every field of the ABI: struct ksm_stats's under COUNTERS,
# struct ksm_config's in the list of `set`'s keys (a field added without a
# word in the man page fails here).
man_page_check() {
	local page=$KSMDEV_ROOT/tools/ksmdevctl.8 out name bad=0
	out=$(LC_ALL=C.UTF-8 groff -man -Tutf8 -ww -z "$page" 2>&1)
	if [ -n "$out" ]; then
		echo "$out"
		bad=1
	fi
	while read -r name; do
		man_page_tags "$page" '^\.SH COUNTERS' '^\.SH' | grep -qx "$name" && continue
		echo "ksmdevctl.8: no entry for counter $name under COUNTERS"
		bad=1
	done < <(uapi_fields ksm_stats)
	while read -r name; do
		man_page_tags "$page" '^\.RS' '^\.RE' | grep -qx "$name" && continue
		echo "ksmdevctl.8: no entry for setting $name among set's keys"
		bad=1
	done < <(uapi_fields ksm_config)
	return $bad
}

# package_checks: the man page, make install into a DESTDIR, and the
# Debian packages (debian/), built with dpkg-buildpackage in a copy of the
# tree and checked for what they ship.
package_checks() {
	local dir=$BUILD/deb ver src logs=$BUILD/logs/deb
	ver=$(module_version)
	src=$dir/ksmdev-$ver
	rm -rf "$dir"
	mkdir -p "$src" "$logs"
	for f in Kbuild Makefile dkms.conf LICENSE README.md NEWS src include uapi \
		 tools packaging debian; do
		cp -a "$KSMDEV_ROOT/$f" "$src/"
	done
	log "the man page, make install and uninstall (DESTDIR), Debian packages"
	result_cmd "ksmdevctl.8: renders, names every counter and setting" \
		"$logs/man.log" man_page_check || true
	result_cmd "dkms.conf: BUILD_EXCLUSIVE_CONFIG is Kbuild's list of needed options" \
		"$logs/dkms-conf.log" dkms_config_check || true
	result_cmd "one version: dkms.conf's, debian/changelog's and the module's" \
		"$logs/version.log" version_check || true
	result_cmd "make install DESTDIR=..., make uninstall" "$logs/make-install.log" \
		sh -c "cd '$src' && d=\$(mktemp -d) &&
		make install DESTDIR=\$d INSTALL_DKMS=0 &&
		test -x \$d/usr/sbin/ksmdevctl && test -f \$d/usr/include/linux/ksmdev.h &&
		test -f \$d/usr/share/man/man8/ksmdevctl.8 &&
		test -f \$d/usr/lib/udev/rules.d/60-ksmdev.rules &&
		test -f \$d/usr/src/ksmdev-$ver/dkms.conf &&
		ls \$d/usr/lib/*/ksmdev/libksmdev-preload.so &&
		ls \$d/usr/share/doc/ksmdev/examples/*/ksmdev.conf &&
		test -f \$d/usr/share/doc/ksmdev/examples/libvirt-hook-qemu &&
		test -f \$d/usr/lib/systemd/system/ksmdev.service &&
		test -f \$d/etc/ksmdev/ksmdev.conf &&
		make uninstall DESTDIR=\$d && ! find \$d -type f | grep . &&
		make clean > /dev/null && rm -rf \$d" || true
	result_cmd "ksmdev.service: systemd-analyze verify finds nothing (keys, commands, man page)" \
		"$logs/systemd.log" systemd_unit_check "$src" || true
	result_cmd "deb: dpkg-buildpackage" "$logs/build.log" \
		sh -c "cd '$src' && dpkg-buildpackage -us -uc -b" || return 0
	# What the packages would put on a machine, read from the .debs: they
	# are not installed here (dpkg -i would register ksmdev with the host's
	# DKMS, and replace a user's own ksmdev).
	result_cmd "deb: contents (the DKMS sources, ksmdevctl and its man page, the library, the header, the udev rule, ksmdev.service, its conffile, the libvirt hook)" \
		"$logs/contents.log" deb_contents_check "$dir" "$ver" || true
	# dpkg refuses to install two packages that ship one path (ksmctl was
	# ksmtuned's): none of ours may be in Debian 12's Contents index.
	result_cmd "deb: no file that another Debian package ships" \
		"$logs/foreign.log" deb_foreign_files_check "$dir" "$ver" || true
	# Every tag, pedantic and informational ones too; an override needs
	# its reason in debian/*.lintian-overrides.
	result_cmd "deb: lintian -I --pedantic finds nothing" "$logs/lintian.log" \
		lintian_check "$dir"/ksmdev_"$ver"_*.changes || true
	result_cmd "deb: dpkg -i in throwaway roots (Debian 12, unstable) builds and signs the module for every kernel; dpkg -r leaves nothing" \
		"$logs/install.log" package_install_check "$dir" "$ver" || true
}

# systemd_unit_check SRC: packaging/ksmdev.service as `make install` puts
# it (DESTDIR), checked by systemd-analyze verify in that root, where its
# commands must be: ksmdevctl from the install, modprobe (kmod's, which the
# module's package needs anyway) and systemd's units copied from the host. Any word it says
# fails (an unknown key is only a warning to it); its man page check finds
# ksmdevctl(8) through MANPATH.
systemd_unit_check() {
	local src=$1 d out rc=0
	d=$(mktemp -d)
	(cd "$src" && make install DESTDIR="$d" INSTALL_DKMS=0 > /dev/null) || rc=1
	mkdir -p "$d/sbin" "$d/lib/systemd"
	cp "$(PATH=$PATH:/usr/sbin:/sbin command -v modprobe)" "$d/sbin/modprobe" || rc=1
	# systemd's own units (sysinit.target, ...), which the unit's
	# default dependencies name.
	cp -a /lib/systemd/system "$d/lib/systemd/" || rc=1
	if [ $rc -eq 0 ]; then
		echo "systemd-analyze verify --root=$d ksmdev.service"
		out=$(MANPATH=$d/usr/share/man systemd-analyze verify --root="$d" \
			ksmdev.service 2>&1) || rc=1
		[ -z "$out" ] || { echo "$out"; rc=1; }
	fi
	rm -rf "$d"
	return $rc
}

# The throwaway root the packages are installed into: Debian 12 with dkms
# and a compiler, made with mmdebstrap and kept in .cache/ for a week.
PKGROOT_TAR=$CACHE/pkgroot/bookworm-dkms.tar

pkgroot_base() {
	local dir
	dir=$(dirname "$PKGROOT_TAR")
	[ -n "$(find "$PKGROOT_TAR" -mtime -7 2>/dev/null)" ] && return 0
	rm -rf "$dir"
	mkdir -p "$dir"
	mmdebstrap --format=tar --variant=apt --include=dkms,gcc,make,kmod,libc6-dev,dwarves,libelf-dev,openssl \
		bookworm "$PKGROOT_TAR.tmp" "deb http://deb.debian.org/debian bookworm main" \
		"deb http://deb.debian.org/debian-security bookworm-security main" &&
	mv "$PKGROOT_TAR.tmp" "$PKGROOT_TAR"
}

# in_pkgroot ROOT CMD: CMD (sh -e: write no "! cmd", which -e ignores) in
# the chroot ROOT, with /proc, /sys and /dev
# mounted in a private mount namespace (gone when CMD ends).
in_pkgroot() {
	unshare -m --fork sh -c 'mount -t proc proc "$1/proc" &&
		mount --rbind /sys "$1/sys" && mount --rbind /dev "$1/dev" &&
		exec chroot "$1" sh -ec "$2"' sh "$1" "$2"
}

# package_install_check DIR VER: install the packages of DIR as a user
# would, and their postinst builds the module with DKMS for every kernel
# (autoinstall_all_kernels: the roots do not run those kernels), signed
# with the key DKMS makes; then dpkg -r must leave nothing. For Debian 12's
# kernels, in a throwaway Debian 12 root that has their headers (copied from
# .cache/headers/, as linux-headers-* would install them); for sid's, in a
# throwaway layer over the sid root, where its headers are installed.
package_install_check() {
	local dir=$1 ver=$2 root=$BUILD/pkgroot kver kvers=() sid=()
	# A Debian 12 root builds for Debian 12's kernels, not for sid's
	# (gcc-16): the packages are installed in the sid root for that one.
	for kver in "${KVERS[@]}"; do
		if kernel_in_sid "$kver"; then
			sid+=("$kver")
		else
			kvers+=("$kver")
		fi
	done
	if [ ${#kvers[@]} -gt 0 ]; then
		pkgroot_base || return 1
		rm -rf --one-file-system "$root"
		mkdir -p "$root"
		tar -C "$root" -xf "$PKGROOT_TAR" || return 1
		for kver in "${kvers[@]}"; do
			cp -a "$(headers_root "$kver")/usr/." "$root/usr/"
			sed -i 's|^include .*/usr/src/|include /usr/src/|' \
				"$root/usr/src/linux-headers-$kver/Makefile"
			mkdir -p "$root/lib/modules/$kver"
			ln -sfn "/usr/src/linux-headers-$kver" "$root/lib/modules/$kver/build"
		done
		echo 'autoinstall_all_kernels="yes"' > "$root/etc/dkms/framework.conf.d/all-kernels.conf"
		cp "$dir"/ksmdev-dkms_"$ver"_all.deb "$dir"/ksmdev-tools_"$ver"_*.deb "$root/tmp/"
		echo "Debian 12 root:"
		in_pkgroot "$root" "$(package_install_cmd "$ver" "${kvers[@]}")" || return 1
		rm -rf --one-file-system "$root"
	fi
	[ ${#sid[@]} -eq 0 ] && return 0
	echo "Debian unstable root (a throwaway layer over $SID_ROOT):"
	in_sid_layer "$BUILD/sidlayer" "$dir" \
		"echo 'autoinstall_all_kernels=\"yes\"' > /etc/dkms/framework.conf.d/all-kernels.conf
		$(package_install_cmd "$ver" "${sid[@]}")"
}

# package_install_cmd VER KVER...: the shell commands that install the
# packages from /tmp/, check what they installed and built for each KVER,
# remove them and check that nothing is left.
package_install_cmd() {
	local ver=$1 kver
	shift
	echo "dpkg -i /tmp/ksmdev-dkms_*.deb /tmp/ksmdev-tools_*.deb
		ksmdevctl --help > /dev/null
		ksmdevctl --version | grep -x 'ksmdevctl $ver (built for ksmdev API version [0-9]*)'
		test -f /lib/systemd/system/ksmdev.service
		test -f /etc/ksmdev/ksmdev.conf
		test -f /usr/share/doc/ksmdev-tools/examples/libvirt-hook-qemu
		test -f /usr/share/man/man8/ksmdevctl.8.gz
		test -f /usr/lib/*/ksmdev/libksmdev-preload.so
		test -f /usr/include/linux/ksmdev.h
		test -f /usr/lib/udev/rules.d/60-ksmdev.rules"
	for kver; do
		echo "dkms status ksmdev/$ver -k $kver | grep installed
		modinfo -F signer /lib/modules/$kver/updates/dkms/ksmdev.ko* | grep -x 'DKMS module signing key'"
	done
	echo "dpkg -r ksmdev-tools ksmdev-dkms
		test -z \"\$(dkms status ksmdev/$ver)\"
		test ! -e /usr/src/ksmdev-$ver
		test ! -e /usr/sbin/ksmdevctl
		test -z \"\$(ls /lib/modules/*/updates/dkms/ksmdev.ko* 2> /dev/null)\"
		echo 'installed, built for $*, removed'"
}

# in_sid_layer DIR DEBS CMD: CMD (sh -e) as root of an overlay of a
# throwaway layer (DIR) on the sid root, with DEBS's ksmdev packages in
# its /tmp/; the layer is deleted after, the sid root never changes.
in_sid_layer() {
	local dir=$1 debs=$2 rc=0
	rm -rf --one-file-system "$dir"
	mkdir -p "$dir/upper/tmp" "$dir/work" "$dir/root"
	cp "$debs"/ksmdev-dkms_*_all.deb "$debs"/ksmdev-tools_*.deb "$dir/upper/tmp/"
	unshare -m --fork sh -c 'd=$1
		mount -t overlay overlay -o "lowerdir=$2,upperdir=$d/upper,workdir=$d/work" "$d/root" &&
		mount -t proc proc "$d/root/proc" && mount --rbind /sys "$d/root/sys" &&
		mount --rbind /dev "$d/root/dev" &&
		exec chroot "$d/root" sh -ec "$3"' sh "$dir" "$SID_ROOT" "$3" || rc=1
	rm -rf --one-file-system "$dir"
	return $rc
}

# lintian_check CHANGES: no tag at all (lintian says it runs as root).
lintian_check() {
	local out
	out=$(lintian -I --pedantic "$1" 2>&1 | grep -v '^running with root') || true
	[ -z "$out" ] && return 0
	echo "$out"
	return 1
}

# dkms_config_check: dkms.conf's BUILD_EXCLUSIVE_CONFIG names every option
# Kbuild's ksmdev-need does, so that DKMS refuses a kernel that lacks one
# with a message that names it, before any compile error.
dkms_config_check() {
	local need excl
	need=$(sed -n '/^ksmdev-need :=/,/[^\\]$/p' "$KSMDEV_ROOT/Kbuild" |
		grep -oE 'CONFIG_[A-Z0-9_]+' | LC_ALL=C sort -u)
	excl=$(sed -n 's/^BUILD_EXCLUSIVE_CONFIG="\(.*\)"$/\1/p' "$KSMDEV_ROOT/dkms.conf" |
		tr ' ' '\n' | grep . | LC_ALL=C sort -u)
	[ -n "$need" ] || { echo "no ksmdev-need in Kbuild"; return 1; }
	[ "$need" = "$excl" ] && return 0
	echo "Kbuild needs: $need"
	echo "dkms.conf BUILD_EXCLUSIVE_CONFIG: $excl"
	return 1
}

# version_check: one version number, dkms.conf's: the Debian changelog's
# and the built module's (Kbuild passes it on) are the same.
version_check() {
	local ver deb mod
	ver=$(module_version)
	deb=$(dpkg-parsechangelog -l "$KSMDEV_ROOT/debian/changelog" -S Version)
	mod=$(modinfo -F version "$(built_module "${KVERS[0]}")")
	echo "dkms.conf: $ver, debian/changelog: $deb, modinfo: $mod"
	[ -n "$ver" ] && [ "$ver" = "$deb" ] && [ "$ver" = "$mod" ]
}

# Debian 12's Contents indexes (main; this architecture's and "all"): each
# path a package ships, and which package. Downloaded into .cache/contents/
# (not through apt: the host's apt state stays as it is), again after a week.
CONTENTS_URL=http://deb.debian.org/debian/dists/bookworm/main
CONTENTS_DIR=$CACHE/contents

# contents_fetch NAME...: each index NAME (Contents-*.gz) in CONTENTS_DIR,
# downloaded unless it is less than a week old; to a .tmp first, so that an
# interrupted download is never taken for the index.
contents_fetch() {
	local f
	mkdir -p "$CONTENTS_DIR"
	for f in "$@"; do
		[ -n "$(find "$CONTENTS_DIR/$f" -mtime -7 2>/dev/null)" ] && continue
		curl -fsSL -o "$CONTENTS_DIR/$f.tmp" "$CONTENTS_URL/$f" || return 1
		mv "$CONTENTS_DIR/$f.tmp" "$CONTENTS_DIR/$f"
	done
}

# deb_foreign_files_check DIR VER: no regular file or symlink of the two
# packages is a path that a Debian 12 package ships (directories are shared
# by all and do not count). Prints each one found with its owner, as
# "usr/sbin/ksmctl: shipped by kernel/ksmtuned". Paths are compared with
# merged /usr (bookworm's /sbin/x is /usr/sbin/x on disk), as Contents
# lists them: no leading "./" or "/".
deb_foreign_files_check() {
	local dir=$1 ver=$2 arch ours hits idx
	arch=$(dpkg --print-architecture)
	idx=("Contents-$arch.gz" Contents-all.gz)
	ours=$(dpkg-deb -c "$dir/ksmdev-dkms_${ver}_all.deb" &&
	       dpkg-deb -c "$dir/ksmdev-tools_${ver}_$arch.deb") || return 1
	ours=$(sed -nE '/^[^d]/{s/^([^ ]+ +){5}\.\///; s/ (->|link to) .*//; p}' <<< "$ours")
	[ -n "$ours" ] || { echo "no files in the packages"; return 1; }
	contents_fetch "${idx[@]}" || { echo "cannot fetch $CONTENTS_URL/${idx[*]}"; return 1; }
	echo "$(wc -l <<< "$ours") files and symlinks; indexes: $CONTENTS_URL/{${idx[*]}}"
	hits=$(cd "$CONTENTS_DIR" && zcat "${idx[@]}" | awk '
		function canon(p) { sub(/^(bin|sbin|lib|lib32|lib64|libx32)\//, "usr/&", p); return p }
		NR == FNR { ours[canon($0)] = $0; next }
		{ owner = $NF; p = $0; sub(/[ \t]+[^ \t]+$/, "", p) }
		canon(p) in ours {
			print ours[canon(p)] ": shipped by " owner (p == ours[canon(p)] ? "" : " as " p)
		}' /dev/fd/3 - 3<<< "$ours") ||
		{ echo "cannot read the indexes in $CONTENTS_DIR"; return 1; }
	[ -z "$hits" ] && return 0
	echo "$hits"
	return 1
}

# deb_contents_check DIR VER: the files each package must ship.
deb_contents_check() {
	local dir=$1 ver=$2 arch f bad=0 list
	arch=$(dpkg --print-architecture)
	list=$(dpkg-deb -c "$dir/ksmdev-dkms_${ver}_all.deb"
	       dpkg-deb -c "$dir/ksmdev-tools_${ver}_$arch.deb") || return 1
	for f in "./usr/src/ksmdev-$ver/dkms.conf" "./usr/src/ksmdev-$ver/Kbuild" \
		 ./usr/sbin/ksmdevctl ./usr/share/man/man8/ksmdevctl.8.gz \
		 "./usr/lib/$(gcc -print-multiarch)/ksmdev/libksmdev-preload.so" \
		 ./usr/include/linux/ksmdev.h ./usr/lib/udev/rules.d/60-ksmdev.rules \
		 ./lib/systemd/system/ksmdev.service ./etc/ksmdev/ksmdev.conf \
		 ./usr/share/doc/ksmdev-tools/examples/libvirt-hook-qemu; do
		grep -qE " $f( |\$)" <<< "$list" && continue
		echo "missing from the packages: $f"
		bad=1
	done
	return $bad
}

# run_guest KVER: initramfs, boot, results.
run_guest() {
	local kver=$1 logs=$BUILD/logs/$1 initrd left secs t0
	if ! built_module "$kver" >/dev/null; then
		result fail "$kver guest not booted: no DKMS-installed module"
		return
	fi
	log "$kver: initramfs with ${RUNNABLE[*]:-no tests}"
	initrd=$(build_initramfs "$kver" check "${RUNNABLE[@]}")
	left=$((RUN_BUDGET - (SECONDS - START) - 60))
	secs=$((left < QEMU_TIMEOUT ? left : QEMU_TIMEOUT))
	if [ "$left" -lt 120 ]; then
		result fail "$kver guest not booted: out of time (RUN_BUDGET=$RUN_BUDGET)"
		return
	fi
	log "$kver: booting (at most ${secs}s; console in $logs/console.log)"
	t0=$SECONDS
	QEMU_SECS=$secs
	mkdir -p "$logs"
	for boot in 1 2 3; do
		QEMU_RC=0
		: > "$logs/result.txt"
		boot_guest "$kver" "$initrd" "$secs" "$logs/console.log" </dev/null &
		show_progress "$logs/result.txt" $!
		wait $! || QEMU_RC=$?
		[ "$QEMU_RC" -eq 0 ] || echo "    qemu exited with status $QEMU_RC"
		# /init writes "### kernel" first: a guest that died before
		# it ran (the stock kernel seldom oopses at boot under TCG)
		# tested nothing, and is booted again. Any later death counts.
		grep -q '^### kernel' "$logs/result.txt" && break
		cp "$logs/console.log" "$logs/console.boot$boot.log"
		echo "    the kernel died before /init (boot $boot; console.boot$boot.log): booting again"
	done
	log "$kver: guest done in $((SECONDS - t0))s"
	parse_results "$kver"
}

# Where a user's machine keeps kernels and modules: a run must leave them
# as they were (it writes only to .cache/ and build/).
HOST_DIRS="/boot /lib/modules /var/lib/dkms /usr/src"

# host_packages: kernel, headers and busybox packages installed on the host.
host_packages() {
	# dpkg-query fails when a pattern matches no package at all.
	{ dpkg-query -W -f='${db:Status-Abbrev} ${Package}\n' 'linux-image-*' \
		'linux-headers-*' 'linux-kbuild-*' 'busybox*' 2>/dev/null || true; } |
		awk '$1 ~ /^.i/ { print $2 }' | LC_ALL=C sort
}

# host_check STAMP PACKAGES: nothing under HOST_DIRS is newer than STAMP,
# and no package of host_packages is new since PACKAGES (a file).
host_check() {
	local stamp=$1 before=$2 newer added
	# shellcheck disable=SC2086
	newer=$(find $HOST_DIRS -newer "$stamp" 2>/dev/null | head -n 20)
	added=$(comm -13 "$before" <(host_packages))
	[ -z "$newer" ] && [ -z "$added" ] && return 0
	[ -z "$newer" ] || printf 'changed on the host:\n%s\n' "$newer"
	[ -z "$added" ] || printf 'installed on the host:\n%s\n' "$added"
	return 1
}

# on_exit: whatever stopped the run, the last line is the count.
on_exit() {
	local rc=$?
	trap - EXIT
	if [ "${SUMMARY_DONE:-0}" != 1 ]; then
		[ -n "$RESULTS" ] || result_init
		result fail "harness: check.sh stopped early (exit status $rc)"
		result_summary || true
		exit 1
	fi
	exit "$rc"
}

main() {
	local kver rc=0
	one_run_at_a_time
	rm -rf "$BUILD/logs" "$BUILD/tests"
	result_init
	trap on_exit EXIT
	host_packages > "$BUILD/host-packages.before"
	log "setup"
	bash "$QEMU_DIR/setup.sh"
	# Tool packages may add to /usr/src (linux-source-6.12); from here on
	# the run must write nothing there, nor to the other HOST_DIRS.
	touch "$BUILD/host.stamp"
	resolve_kernels "$KERNELS"
	SELECTED=$(test_names)
	log "kernels: ${KVERS[*]}; tests: ${SELECTED//$'\n'/ }"

	[ "${SKIP_STYLE:-0}" = 1 ] || run_style
	dkms_install_all "${KVERS[@]}"
	for kver in "${KVERS[@]}"; do
		log "W=1 build against $kver"
		result_cmd "build W=1 $kver" "$BUILD/logs/$kver/build-w1.log" \
			build_w1 "$kver" || true
	done
	build_tests
	build_test_kmods_all
	for kver in "${KVERS[@]}"; do
		run_guest "$kver"
	done
	[ -n "${TESTS:-}" ] || package_checks
	result_cmd "host: $HOST_DIRS unchanged, no kernel, headers or busybox package installed" \
		"$BUILD/logs/host.log" host_check "$BUILD/host.stamp" \
		"$BUILD/host-packages.before" || true
	log "done in $(((SECONDS - START) / 60))m$(((SECONDS - START) % 60))s"
	result_summary || rc=1
	SUMMARY_DONE=1
	return $rc
}

# check-debug.sh sources this file for its functions.
if [ "${BASH_SOURCE[0]}" = "$0" ]; then
	main "$@"
fi
