# SPDX-License-Identifier: GPL-2.0
# shellcheck shell=bash
#
# Functions shared by setup.sh, check.sh, demo.sh and ../style.sh.
# Sourced, never run. Everything the harness downloads or extracts lives in
# .cache/ (reused between runs); everything it builds lives in build/.

KSMDEV_ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
CACHE=$KSMDEV_ROOT/.cache
BUILD=$KSMDEV_ROOT/build
QEMU_DIR=$KSMDEV_ROOT/tests/qemu

# Files that make up the module (what DKMS and the host builds get).
MODULE_FILES="Kbuild Makefile dkms.conf src include uapi"

# Packages the harness needs on the host; kernel headers are added per kernel.
# shellcheck disable=SC2034 # used by setup.sh
# Kernel headers and busybox are not among them: installing a backport's
# headers package pulls in its kernel image (the host's next boot kernel),
# and busybox-static replaces a host's busybox. setup.sh fetches both with
# `apt-get download` and unpacks them into .cache/ instead.
# systemd: for systemd-analyze (check.sh verifies ksmdev.service), already
# there on a machine that boots with systemd.
HOST_PACKAGES="qemu-system-x86 kmod dkms sparse cpio gcc make
	xz-utils libc6-dev perl linux-source-6.12
	dpkg-dev debhelper dh-dkms groff-base dwarves lintian mmdebstrap systemd"
# What building a kernel from linux-source-6.12 needs on top (the debug
# kernel of check-debug.sh, the inner guests' kernel of tests/hypervisor.c).
# shellcheck disable=SC2034 # used by setup.sh
KERNEL_BUILD_PACKAGES="flex bison bc libelf-dev libssl-dev"
# What `make bench` needs on top: the plot, and libnuma for upstream's
# ksm_tests.
# shellcheck disable=SC2034 # used by setup.sh
BENCH_PACKAGES="gnuplot-nox libnuma-dev"
# shellcheck disable=SC2034 # used by setup.sh, check-debug.sh, bench.sh
KERNEL_SOURCE_TARBALL=/usr/src/linux-source-6.12.tar.xz

log() { printf '==> %s\n' "$*"; }
warn() { printf '==> WARNING: %s\n' "$*" >&2; }
die() { printf '==> ERROR: %s\n' "$*" >&2; exit 1; }

# one_run_at_a_time: wait while another check.sh or check-debug.sh runs on
# this machine: two TCG guests on two cores make each other's time-bounded
# tests fail. The lock is held (fd 7) until the run and its children end.
one_run_at_a_time() {
	exec 7> /var/lock/ksmdev-check.lock
	if ! flock -n 7; then
		log "waiting for another make check / check-debug on this machine"
		flock 7
	fi
}

# Run a command, showing it first.
run() { printf '+ %s\n' "$*"; "$@"; }

# resolve_kver SERIES: print the full kernel release ("6.1.0-56-amd64",
# "6.12.117+deb12-amd64") of the newest Debian image of SERIES ("6.1", "6.12")
# that the archive has as an unsigned image *and* as headers. A full release
# is accepted as is.
resolve_kver() {
	local series=$1 re kver pkgs
	case $series in
	*-amd64) echo "$series"; return 0 ;;
	sid) resolve_sid_kver; return ;;
	esac
	re="^linux-image-${series//./\\.}\\.[0-9]+(-[0-9]+|\\+deb[0-9]+)-amd64-unsigned\$"
	pkgs=$(apt-cache pkgnames linux-image-"$series". | grep -E "$re" |
		sed -e 's/^linux-image-//' -e 's/-unsigned$//' | sort -rV)
	for kver in $pkgs; do
		# pkgnames also lists names only referenced by other packages.
		if apt-cache show "linux-image-$kver-unsigned" >/dev/null 2>&1 &&
		   apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
			echo "$kver"
			return 0
		fi
	done
	die "no linux-image-$series.*-amd64-unsigned with matching headers in the archive (apt-get update?)"
}

# resolve_sid_kver: the newest kernel of Debian unstable ("7.2.13+deb14-amd64")
# that has headers, from the sid root's package lists (setup.sh made them).
# From 7.2 on, Debian has no linux-image-*-unsigned: linux-image-KVER
# depends on linux-binary-KVER (the image) and linux-modules-KVER.
resolve_sid_kver() {
	local kver pkgs
	[ -f "$SID_ROOT/.done" ] || die "no Debian unstable root in $SID_ROOT (run tests/qemu/setup.sh with sid in KERNELS)"
	pkgs=$(in_sid apt-cache pkgnames linux-image- |
		grep -E '^linux-image-[0-9]+\.[0-9]+\.[0-9]+\+deb[0-9]+-amd64$' |
		sed 's/^linux-image-//' | sort -rV)
	for kver in $pkgs; do
		if in_sid apt-cache show "linux-headers-$kver" >/dev/null 2>&1; then
			echo "$kver"
			return 0
		fi
	done
	die "no linux-image-*-amd64 with matching headers in Debian unstable"
}

# resolve_kernels "6.1 6.12 sid": set the array KVERS to the full releases.
resolve_kernels() {
	local s
	KVERS=()
	for s in $1; do
		KVERS+=("$(resolve_kver "$s")")
	done
	[ ${#KVERS[@]} -gt 0 ] || die "no kernel selected (KERNELS is empty)"
}

kernel_dir() { echo "$CACHE/kernels/$1"; }
kernel_image() { echo "$CACHE/kernels/$1/boot/vmlinuz-$1"; }
# The headers of KVER, unpacked by setup.sh (fetch_headers) with the
# kbuild tools they link to; never installed on the host. A kernel of
# Debian unstable has them installed in the sid root instead (below).
headers_root() {
	if kernel_in_sid "$1"; then
		echo "$SID_ROOT"
	else
		echo "$CACHE/headers/$1"
	fi
}
# The build tree of KVER, as the commands that in_toolchain runs see it.
kernel_headers() {
	if kernel_in_sid "$1"; then
		echo "/usr/src/linux-headers-$1"
	else
		echo "$CACHE/headers/$1/usr/src/linux-headers-$1"
	fi
}

# The kernel of Debian unstable (KERNELS="... sid"). Its headers need
# sid's compiler (gcc-16) and kbuild tools, which do not run on a Debian 12
# host. So they are installed, as a sid user would install them, into a
# Debian unstable root that setup.sh makes with mmdebstrap in .cache/sid/
# (remade when a week old), and everything built for that kernel (DKMS,
# W=1, sparse, the test modules) is built there: in_toolchain runs it in
# that root, with this checkout mounted at its own path, in a private
# mount namespace that ends with the command. The host is not touched.
SID_ROOT=$CACHE/sid/root

# kernel_in_sid KVER: KVER's headers are installed in the sid root.
kernel_in_sid() { [ -f "$SID_ROOT/usr/src/linux-headers-$1/Makefile" ]; }

# in_sid [--dkms-conf DIR] CMD...: CMD in the sid root, with /proc, /sys,
# /dev and the checkout mounted; DIR, if given, as its
# /etc/dkms/framework.conf.d (see ksm_dkms_signing).
in_sid() {
	local conf=
	if [ "$1" = --dkms-conf ]; then
		conf=$2
		shift 2
	fi
	unshare -m --fork sh -c 'r=$1 top=$2 conf=$3
		shift 3
		mount -t proc proc "$r/proc" && mount --rbind /sys "$r/sys" &&
		mount --rbind /dev "$r/dev" && mkdir -p "$r$top" &&
		mount --bind "$top" "$r$top" &&
		if [ -n "$conf" ]; then
			mount --bind "$conf" "$r/etc/dkms/framework.conf.d"
		fi &&
		exec chroot "$r" "$@"' sh "$SID_ROOT" "$KSMDEV_ROOT" "$conf" "$@"
}

# in_toolchain [--dkms-conf DIR] KVER CMD...: CMD (a command or a function
# of this file) where KVER's modules are built: on the host, or in the sid
# root. With --dkms-conf, DIR replaces /etc/dkms/framework.conf.d there.
in_toolchain() {
	local dkconf=()
	if [ "$1" = --dkms-conf ]; then
		dkconf=(--dkms-conf "$2")
		shift 2
	fi
	local kver=$1
	shift
	if kernel_in_sid "$kver"; then
		in_sid "${dkconf[@]}" bash -c '. "$1"; shift; "$@"' sh "$QEMU_DIR/lib.sh" "$@"
	elif [ ${#dkconf[@]} -gt 0 ]; then
		unshare -m sh -c 'mount --bind "$1" /etc/dkms/framework.conf.d && shift && exec "$@"' \
			sh "${dkconf[1]}" bash -c '. "$1"; shift; "$@"' sh "$QEMU_DIR/lib.sh" "$@"
	else
		"$@"
	fi
}

# busybox for the guests, unpacked from busybox-static by setup.sh.
BUSYBOX=$CACHE/busybox/bin/busybox

# The pieces of Debian's linux-source-6.12 the harness uses, never copied
# into the repository.
SRC_CACHE=$CACHE/linux-source-6.12
SELFTESTS_DIR=$SRC_CACHE/tools/testing/selftests
CHECKPATCH=$SRC_CACHE/scripts/checkpatch.pl

module_version() {
	sed -n 's/^PACKAGE_VERSION="\{0,1\}\([^"]*\)"\{0,1\}$/\1/p' \
		"$KSMDEV_ROOT/dkms.conf"
}

# copy_module_tree DEST: a fresh copy of the module sources.
copy_module_tree() {
	local dest=$1 f
	rm -rf "$dest"
	mkdir -p "$dest"
	for f in $MODULE_FILES; do
		[ -e "$KSMDEV_ROOT/$f" ] || die "missing $f in $KSMDEV_ROOT"
		cp -a "$KSMDEV_ROOT/$f" "$dest/"
	done
}

# ---------------------------------------------------------------------------
# Results. Every check adds one line to $RESULTS ("pass|fail|skip<TAB>name"),
# and failures may attach a text to show at the end.

RESULTS=${RESULTS:-}

result_init() {
	RESULTS=$BUILD/results.tsv
	mkdir -p "$BUILD"
	: > "$RESULTS"
}

# result STATUS NAME: record one result (STATUS is pass, fail or skip).
result() {
	printf '%s\t%s\n' "$1" "$2" >> "$RESULTS"
	case $1 in
	pass) printf '    PASS  %s\n' "$2" ;;
	fail) printf '    FAIL  %s\n' "$2" ;;
	skip) printf '    SKIP  %s\n' "$2" ;;
	esac
}

# result_cmd NAME LOGFILE CMD...: run CMD with its output in LOGFILE, record
# pass or fail, show the log on failure.
result_cmd() {
	local name=$1 logf=$2
	shift 2
	mkdir -p "$(dirname "$logf")"
	printf '+ %s\n' "$*" > "$logf"
	if "$@" >> "$logf" 2>&1; then
		result pass "$name"
		return 0
	fi
	result fail "$name"
	sed 's/^/    | /' "$logf"
	return 1
}

# result_summary: per-kernel and total lines; the last line of the output is
# exactly "N passed, N failed[, N skipped]". Returns non-zero on any failure
# or if nothing passed.
result_summary() {
	local total
	echo
	echo "Summary:"
	awk -F'\t' '
	{
		n = split($2, w, " ")
		grp = "host"
		for (i = 1; i <= n && grp == "host"; i++)
			if (w[i] ~ /^[0-9]+\.[0-9]+.*-amd64:?$/) { grp = w[i]; sub(/:$/, "", grp) }
		c[grp, $1]++; g[grp] = 1
	}
	END {
		for (k in g) {
			line = sprintf("  %-24s %d passed, %d failed", k ":", c[k, "pass"], c[k, "fail"])
			if (c[k, "skip"]) line = line sprintf(", %d skipped", c[k, "skip"])
			print line
		}
	}' "$RESULTS" | sort
	total=$(awk -F'\t' '
	{ c[$1]++ }
	END {
		line = sprintf("%d passed, %d failed", c["pass"], c["fail"])
		if (c["skip"]) line = line sprintf(", %d skipped", c["skip"])
		print line
	}' "$RESULTS")
	echo "$total"
	echo "$total" > "$BUILD/summary.txt"
	case $total in
	"0 passed"*) return 1 ;;
	*", 0 failed"*) return 0 ;;
	*) return 1 ;;
	esac
}

# ---------------------------------------------------------------------------
# Building.

# DKMS with trees of this run's own (build/dkms/), so that the host's
# /var/lib/dkms, /usr/src and /lib/modules stay as they are: a DKMS tree
# there would rebuild ksmdev for every kernel the host installs later.
# Kernel headers come from .cache/headers/ (--kernelsourcedir).
DKMS_DIR=$BUILD/dkms
ksm_dkms() {
	dkms --dkmstree "$DKMS_DIR/tree" --sourcetree "$DKMS_DIR/source" \
		--installtree "$DKMS_DIR/install" "$@"
}

# ksm_dkms_signing KVER CMD...: CMD (a ksm_dkms call) with DKMS signing as
# it does on a user's machine, where Debian's dkms signs every module with
# /var/lib/dkms/mok.key (made on first use) for Secure Boot, but with a key
# of this run's own (build/dkms/mok.*) and KVER's sign-file. DKMS reads
# these settings only from /etc/dkms/framework.conf.d/, so that directory
# is replaced by ours in a private mount namespace (in_toolchain): the
# host's stays as it is.
ksm_dkms_signing() {
	local kver=$1 conf=$DKMS_DIR/framework-$1.d
	shift
	mkdir -p "$conf"
	cat > "$conf/ksmdev-test.conf" <<-EOF
	sign_file="$(kernel_headers "$kver")/scripts/sign-file"
	mok_signing_key="$DKMS_DIR/mok.key"
	mok_certificate="$DKMS_DIR/mok.pub"
	EOF
	in_toolchain --dkms-conf "$conf" "$kver" "$@"
}

# dkms_install_all KVER...: register the current sources with the run's
# DKMS and build and install them for every kernel (nothing is loaded:
# DKMS only compiles and copies). One result per kernel. What DKMS
# installed is kept in build/modules/KVER/.
dkms_install_all() {
	local ver kver mod mk
	ver=$(module_version)
	[ -n "$ver" ] || die "no PACKAGE_VERSION in dkms.conf"
	log "DKMS: ksmdev/$ver from $DKMS_DIR/source (private trees)"
	rm -rf "$BUILD/modules" "$DKMS_DIR"
	mkdir -p "$DKMS_DIR/tree" "$DKMS_DIR/install"
	copy_module_tree "$DKMS_DIR/source/ksmdev-$ver"
	run ksm_dkms add ksmdev/"$ver"
	for kver in "$@"; do
		if result_cmd "dkms $kver" "$BUILD/logs/$kver/dkms.log" \
			ksm_dkms_build_install "$ver" "$kver" &&
		   mod=$(dkms_module "$kver"); then
			mkdir -p "$BUILD/modules/$kver"
			cp "$mod" "$BUILD/modules/$kver/"
			result_cmd "dkms $kver: the module carries the signature of DKMS's key (Secure Boot)" \
				"$BUILD/logs/$kver/dkms-signed.log" module_signed_by_dkms "$mod" || true
		else
			mk=$DKMS_DIR/tree/ksmdev/$ver/build/make.log
			[ -f "$mk" ] && sed 's/^/    | /' "$mk" | tail -n 60
		fi
	done
}

# module_signed_by_dkms KO: KO ends in a module signature made with the key
# DKMS generates ("DKMS module signing key").
module_signed_by_dkms() {
	local signer
	signer=$(modinfo -F signer "$1") || return 1
	echo "signer: ${signer:-none}"
	[ "$signer" = "DKMS module signing key" ] &&
	[ "$(tail -c 28 "$1")" = "~Module signature appended~" ]
}

# ksm_dkms_build_install VER KVER
ksm_dkms_build_install() {
	local k=(-k "$2" --kernelsourcedir "$(kernel_headers "$2")")
	mkdir -p "$DKMS_DIR/install/$2"
	ksm_dkms_signing "$2" ksm_dkms build ksmdev/"$1" "${k[@]}" &&
	in_toolchain "$2" ksm_dkms install ksmdev/"$1" "${k[@]}" --force --no-depmod
}

# single_kernel_setup WHAT [SETUP_ARGS...]: setup.sh (with SETUP_ARGS), the
# one kernel $KERNELS names (WHAT, e.g. "the demo", runs on one only), and
# ksmdev built for it with DKMS. Sets KVER.
single_kernel_setup() {
	local what=$1
	shift
	log "setup"
	bash "$QEMU_DIR/setup.sh" "$@"
	resolve_kernels "$KERNELS"
	[ ${#KVERS[@]} -eq 1 ] || die "$what runs on one kernel (KERNELS=$KERNELS)"
	KVER=${KVERS[0]}
	result_init
	dkms_install_all "$KVER"
	built_module "$KVER" > /dev/null || die "DKMS could not build ksmdev for $KVER"
}

# dkms_module KVER: path of the module DKMS installed for KVER (may be .xz).
dkms_module() {
	local m
	for m in "$DKMS_DIR/install/$1"/updates/dkms/ksmdev.ko*; do
		[ -f "$m" ] && { echo "$m"; return 0; }
	done
	return 1
}

# built_module KVER: this run's DKMS-built module for KVER (may be .xz).
built_module() {
	local m
	for m in "$BUILD/modules/$1"/ksmdev.ko*; do
		[ -f "$m" ] && { echo "$m"; return 0; }
	done
	return 1
}

# test_names: the test programs selected by $TESTS (default: every
# tests/*.c but demo, bench and fakevm), module_lifecycle last since it
# unloads the module.
test_names() {
	local all t sel=()
	all=$(find "$KSMDEV_ROOT/tests" -maxdepth 1 -name '*.c' -printf '%f\n' |
		sed 's/\.c$//' | grep -vxE 'demo|bench|fakevm' | LC_ALL=C sort || true)
	if [ -n "${TESTS:-}" ]; then
		for t in $TESTS; do
			grep -qx -- "$t" <<< "$all" ||
				die "no test program tests/$t.c (TESTS=$TESTS)"
			sel+=("$t")
		done
		all=$(printf '%s\n' "${sel[@]}" | LC_ALL=C sort -u)
	fi
	grep -vx module_lifecycle <<< "$all" || true
	grep -x module_lifecycle <<< "$all" || true
}

# build_test NAME: build tests/NAME.c into build/tests/NAME (static), with
# every warning an error.
build_test() {
	local name=$1
	mkdir -p "$BUILD/tests"
	gcc -static -O2 -Wall -Wextra -Werror -pthread \
		-I "$KSMDEV_ROOT/uapi" -I "$KSMDEV_ROOT/tests" -I "$SELFTESTS_DIR" \
		-o "$BUILD/tests/$name" "$KSMDEV_ROOT/tests/$name.c"
}

# build_test_kmods KVER: the test suite's own modules (tests/kmod/, GPL),
# built with W=1 against KVER's build tree in a copy (nothing lands in the
# worktree), into build/testmods/KVER/; build_initramfs puts them in the
# guest's /tests/, where the programs that need one load it. A warning fails.
build_test_kmods() {
	local kver=$1 tree=$BUILD/testmods/$1/src
	rm -rf "$BUILD/testmods/$kver"
	mkdir -p "$tree"
	cp -a "$KSMDEV_ROOT/tests/kmod/." "$tree/"
	in_toolchain "$kver" make -C "$(kernel_headers "$kver")" M="$tree" W=1 modules 2>&1 |
		tee "$tree.log"
	[ "${PIPESTATUS[0]}" -eq 0 ] || return 1
	! grep -q 'warning:' "$tree.log" || return 1
	cp "$tree"/*.ko "$BUILD/testmods/$kver/"
}

# add_test_kmods ROOT KVER: what build_test_kmods built for KVER, into the
# guest's /tests/ (loaded there by the tests, never on the host).
add_test_kmods() {
	local f
	for f in "$BUILD/testmods/$2"/*.ko; do
		[ -f "$f" ] && cp "$f" "$1/tests/"
	done
	return 0
}

# build_tool NAME: tools/NAME.c (a userspace helper) into build/tests/NAME
# (static), with every warning an error, and dkms.conf's version (as the
# Makefile passes it).
build_tool() {
	mkdir -p "$BUILD/tests"
	gcc -static -O2 -Wall -Wextra -Werror -I "$KSMDEV_ROOT/uapi" \
		-DKSMDEV_VERSION="\"$(module_version)\"" \
		-o "$BUILD/tests/$1" "$KSMDEV_ROOT/tools/$1.c"
}

# build_preload: tools/ksmdev-preload.c into build/tests/libksmdev-preload.so,
# and tests/fakevm.c (dynamic: LD_PRELOAD needs the loader) beside it.
build_preload() {
	mkdir -p "$BUILD/tests"
	gcc -shared -fPIC -O2 -Wall -Wextra -Werror -I "$KSMDEV_ROOT/uapi" \
		-o "$BUILD/tests/libksmdev-preload.so" \
		"$KSMDEV_ROOT/tools/ksmdev-preload.c" &&
	gcc -O2 -Wall -Wextra -Werror -pthread -o "$BUILD/tests/fakevm" \
		"$KSMDEV_ROOT/tests/fakevm.c"
}

# copy_dynamic_libs ROOT FILE...: the host's shared libraries and loader
# that FILEs need, at the same paths under ROOT.
copy_dynamic_libs() {
	local root=$1 lib f
	shift
	# One file a call: given several, ldd heads each list with "FILE:".
	for lib in $(for f; do ldd "$f" 2>/dev/null; done |
		     grep -oE '/[^ :]+\.so[^ :]*( |$)' | sort -u); do
		[ -e "$root$lib" ] && continue
		mkdir -p "$root$(dirname "$lib")"
		cp -L "$lib" "$root$lib"
	done
}

# build_w1 KVER: build the module with W=1 in a copy of the tree; fails if
# the build fails or says "warning:".
build_w1() {
	local kver=$1 tree=$BUILD/w1/$1
	copy_module_tree "$tree"
	in_toolchain "$kver" make -C "$(kernel_headers "$kver")" M="$tree" W=1 modules 2>&1 |
		tee "$tree.log"
	[ "${PIPESTATUS[0]}" -eq 0 ] || return 1
	! grep -q 'warning:' "$tree.log"
}

# ---------------------------------------------------------------------------
# Style: checkpatch and sparse (used by ../style.sh and check.sh).

# The only checkpatch types ignored: FILE_PATH_CHANGES and SPDX_LICENSE_TAG
# are about the layout of the kernel tree (MAINTAINERS, where SPDX lines go
# in-tree), LINUX_VERSION_CODE is how our compat code is keyed.
CHECKPATCH_IGNORE=FILE_PATH_CHANGES,SPDX_LICENSE_TAG,LINUX_VERSION_CODE

# style_checkpatch: checkpatch --strict --no-tree on every file of src/,
# include/ and uapi/, and of the test suite's kernel modules (tests/kmod/). The files are checked where they would sit in the
# kernel tree (uapi/ as include/uapi/), so that checkpatch applies the rules
# it has for uapi headers (no BIT() there, for one); its messages are shown
# with our own paths.
style_checkpatch() {
	local tree=$BUILD/checkpatch files rc=0
	rm -rf "$tree"
	mkdir -p "$tree/include"
	cp -a "$KSMDEV_ROOT/src" "$tree/src"
	cp -a "$KSMDEV_ROOT/include/." "$tree/include/"
	cp -a "$KSMDEV_ROOT/uapi" "$tree/include/uapi"
	mkdir -p "$tree/tests"
	cp -a "$KSMDEV_ROOT/tests/kmod" "$tree/tests/kmod"
	files=$(cd "$tree" && find src include tests/kmod -type f \
		\( -name '*.c' -o -name '*.h' \) | LC_ALL=C sort)
	[ -n "$files" ] || { echo "no source files in src/ include/ uapi/"; return 1; }
	# shellcheck disable=SC2086
	(cd "$tree" && perl "$CHECKPATCH" --strict --no-tree --terse --show-types \
		--ignore "$CHECKPATCH_IGNORE" --file $files) > "$tree.log" 2>&1 || rc=1
	sed 's|^include/uapi/|uapi/|' "$tree.log"
	return $rc
}

# style_sparse KVER: W=1 C=2 (sparse on every file) in a copy of the tree.
# Fails on any warning or error about our own files; what sparse says about
# the kernel's headers is shown but is not ours to fix.
style_sparse() {
	local kver=$1 tree=$BUILD/sparse/$1 out ours
	copy_module_tree "$tree"
	out=$tree.log
	in_toolchain "$kver" make -C "$(kernel_headers "$kver")" M="$tree" W=1 C=2 modules \
		> "$out" 2>&1 || {
		cat "$out"; return 1; }
	ours=$(grep -E '(warning|error):' "$out" | grep -F "$tree/" || true)
	if [ -n "$ours" ]; then
		echo "${ours//$tree\//}"
		return 1
	fi
	if grep -qE '(warning|error):' "$out"; then
		echo "(sparse on kernel headers, not ours:)"
		grep -E '(warning|error):' "$out" | sort -u | head -n 20
	fi
	return 0
}

# ---------------------------------------------------------------------------
# Kernels built from linux-source-6.12: the debug kernel (check-debug.sh) and
# the small kernel QEMU boots inside the test guest (tests/hypervisor.c).

# config_lines FRAGMENT: the settings of a config fragment, one per line.
config_lines() {
	grep -E '^CONFIG_[A-Za-z0-9_]+=' "$1"
}

# config_apply TREE FRAGMENT: the fragment onto TREE/.config (scripts/config).
config_apply() {
	local tree=$1 line name val args=()
	while IFS= read -r line; do
		name=${line%%=*}
		name=${name#CONFIG_}
		val=${line#*=}
		case $val in
		y) args+=(--enable "$name") ;;
		m) args+=(--module "$name") ;;
		n) args+=(--disable "$name") ;;
		\"*\") val=${val#\"}; args+=(--set-str "$name" "${val%\"}") ;;
		*) args+=(--set-val "$name" "$val") ;;
		esac
	done < <(config_lines "$2")
	"$tree/scripts/config" --file "$tree/.config" "${args[@]}"
}

# config_verify TREE FRAGMENT: every line of the fragment holds in the final
# TREE/.config; names those that do not (a dependency the fragment lacks,
# or a symbol that is gone from this kernel).
config_verify() {
	local tree=$1 line name have bad=0
	while IFS= read -r line; do
		name=${line%%=*}
		if [ "${line#*=}" = n ]; then
			grep -qx "$name=[ym]" "$tree/.config" || continue
		elif grep -qxF -- "$line" "$tree/.config"; then
			continue
		fi
		have=$(grep -E "^$name=|^# $name is not set" "$tree/.config" || true)
		echo "    wanted $line, got: ${have:-nothing (no such symbol, or its dependencies are off)}"
		bad=1
	done < <(config_lines "$2")
	return $bad
}

INNER_CONFIG=$QEMU_DIR/inner-kernel.config

# inner_kernel_image: where the inner guests' kernel is cached, by what it
# depends on (source version, compiler, config).
inner_kernel_image() {
	local key
	key=$({
		dpkg-query -W -f='${Package} ${Version}\n' linux-source-6.12
		gcc --version | head -n 1
		echo ARCH=x86_64 tinyconfig
		cat "$INNER_CONFIG"
	} | sha256sum | cut -c 1-16)
	echo "$CACHE/inner-kernel/$key/bzImage"
}

# build_inner_kernel: the small kernel tests/hypervisor.c boots in QEMU
# inside the test guest: `tinyconfig` plus tests/qemu/inner-kernel.config
# (serial console, initramfs, ELF), from linux-source-6.12, ~1 MiB, booting
# to its /init in under a second under TCG. Cached; about 2 minutes on two
# cores when it is not.
build_inner_kernel() {
	local img dir tree
	img=$(inner_kernel_image)
	if [ -f "$img" ]; then
		echo "cached: $img"
		return 0
	fi
	dir=$(dirname "$img")
	tree=$dir/linux
	# Kernels of other keys are of no more use.
	rm -rf "$CACHE/inner-kernel"
	mkdir -p "$tree"
	tar -C "$tree" --strip-components=1 -xf "$KERNEL_SOURCE_TARBALL" || return 1
	make -C "$tree" ARCH=x86_64 tinyconfig || return 1
	config_apply "$tree" "$INNER_CONFIG" || return 1
	make -C "$tree" ARCH=x86_64 olddefconfig || return 1
	config_verify "$tree" "$INNER_CONFIG" || return 1
	make -C "$tree" ARCH=x86_64 -j"$(nproc)" bzImage || return 1
	cp "$tree/.config" "$dir/config" || return 1
	cp "$tree/arch/x86/boot/bzImage" "$img.tmp" || return 1
	mv "$img.tmp" "$img" || return 1
	rm -rf "$tree"
	echo "built: $img ($(stat -c %s "$img") bytes)"
}

# build_inner_initramfs OUT: busybox and tests/qemu/inner-init.sh as /init,
# an uncompressed cpio archive, the same bytes for every inner guest.
build_inner_initramfs() {
	local root=$BUILD/inner-initramfs
	rm -rf "$root"
	mkdir -p "$root/bin"
	cp "$BUSYBOX" "$root/bin/busybox"
	install -m 0755 "$QEMU_DIR/inner-init.sh" "$root/init"
	(cd "$root" && find . -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc --quiet --owner=0:0) > "$1"
}

# ---------------------------------------------------------------------------
# The guest.

# copy_module ROOT KVER NAME: copy module NAME and the modules it depends on
# from the kernel image into ROOT, decompressed.
copy_module() {
	local root=$1 kver=$2 name=$3 kmods path
	kmods=$(kernel_dir "$kver")/lib/modules/$kver
	# dpkg -x leaves the index to the package's postinst, never run here.
	[ -f "$kmods/modules.dep" ] || depmod -b "$(kernel_dir "$kver")" "$kver" ||
		die "depmod for $kver failed"
	path=$(grep -E "/${name//_/[-_]}\\.ko(\\.[a-z]+)?:" "$kmods/modules.dep" |
		head -n 1 | cut -d: -f1)
	[ -n "$path" ] || die "module $name is not in $kver"
	[ -f "$root/lib/modules/$kver/${path%.xz}" ] && return 0
	install_module_file "$kmods/$path" "$root/lib/modules/$kver/${path%.xz}"
	copy_module_deps "$root" "$kver" "$root/lib/modules/$kver/${path%.xz}"
}

# copy_module_deps ROOT KVER MODULE: copy the modules MODULE (a file)
# depends on, and theirs.
copy_module_deps() {
	local dep
	for dep in $(modinfo -F depends "$3" | tr ',' ' '); do
		copy_module "$1" "$2" "$dep"
	done
}

# add_qemu ROOT: the host's Debian QEMU, its libraries, its TCG module and
# firmware, and the inner guests' kernel and initramfs as /boot/inner-kernel
# and /boot/inner-initrd, into ROOT (tests/hypervisor.c runs QEMU inside the
# test guest; build_inner_kernel has run).
add_qemu() {
	local root=$1 q=/usr/bin/qemu-system-x86_64 mods img
	mods=/usr/lib/$(gcc -print-multiarch)/qemu
	mkdir -p "$root/usr/bin" "$root$mods" "$root/usr/share" "$root/boot"
	cp "$q" "$root/usr/bin/"
	cp "$mods"/accel-tcg-*.so "$root$mods/"
	copy_dynamic_libs "$root" "$q" "$mods"/accel-tcg-*.so
	cp -a /usr/share/qemu "$root/usr/share/"
	if [ -d /usr/share/seabios ]; then
		cp -a /usr/share/seabios "$root/usr/share/"
	fi
	img=$(inner_kernel_image)
	[ -f "$img" ] && cp "$img" "$root/boot/inner-kernel"
	build_inner_initramfs "$root/boot/inner-initrd"
}

# install_module_file SRC DEST: copy a module, decompressing an .xz one.
install_module_file() {
	mkdir -p "$(dirname "$2")"
	case $1 in
	*.xz) xz -dc "$1" > "$2" ;;
	*.zst) zstd -qdc "$1" > "$2" ;;
	*.gz) gzip -dc "$1" > "$2" ;;
	*) cp "$1" "$2" ;;
	esac
}

# build_initramfs KVER MODE PROGRAMS...: build/initramfs/KVER.cpio.gz with
# busybox, /init (MODE is "check" or "demo"), the given programs from
# build/tests/ and the DKMS-installed module.
build_initramfs() {
	local kver=$1 mode=$2 root img mod kmods a f
	shift 2
	root=$BUILD/initramfs/$kver
	img=$BUILD/initramfs/$kver.cpio.gz
	kmods=$(kernel_dir "$kver")/lib/modules/$kver
	rm -rf "$root"
	mkdir -p "$root"/{bin,sbin,usr/bin,usr/sbin,etc,proc,sys,dev,tmp,run,root,tests}
	cp "$BUSYBOX" "$root/bin/busybox"
	for a in $("$BUSYBOX" --list-full); do
		[ "$a" = bin/busybox ] && continue
		ln -sf /bin/busybox "$root/$a"
	done
	install -m 0755 "$QEMU_DIR/init.sh" "$root/init"
	{
		echo "MODE=$mode"
		echo "TESTS=\"$*\""
		echo "TEST_TIMEOUT=${TEST_TIMEOUT:-600}"
		echo "HUNG_TASK_TIMEOUT=${HUNG_TASK_TIMEOUT:-20}"
		# For the test programs (tests/torture.c); empty: their default.
		echo "export KSMDEV_TORTURE_SECONDS=${KSMDEV_TORTURE_SECONDS:-}"
		echo "export KSMDEV_UNMERGE_MB=${KSMDEV_UNMERGE_MB:-}"
		# The benchmark's settings (bench.sh).
		[ -n "${BENCH_ENV:-}" ] && cat "$BENCH_ENV"
		true
	} > "$root/etc/harness.conf"
	for f in "$@" $GUEST_TOOLS; do
		[ -f "$BUILD/tests/$f" ] && cp "$BUILD/tests/$f" "$root/tests/"
	done
	add_test_kmods "$root" "$kver"
	# The dynamic ones (fakevm, the preload library) need libc and ld.so.
	copy_dynamic_libs "$root" "$root"/tests/*
	# tests/integrations.c starts a QEMU for the libvirt hook too, and
	# the bench (tests/bench.c, its vms phase) four.
	case " $* " in
	*" hypervisor "*|*" integrations "*|*" bench "*) add_qemu "$root" ;;
	esac

	mod=$(built_module "$kver") || die "no DKMS-installed ksmdev for $kver"
	install_module_file "$mod" "$root/lib/modules/$kver/updates/dkms/ksmdev.ko"
	for f in modules.builtin modules.builtin.modinfo modules.builtin.alias.bin \
		 modules.order; do
		[ -f "$kmods/$f" ] && cp "$kmods/$f" "$root/lib/modules/$kver/"
	done
	copy_module_deps "$root" "$kver" "$root/lib/modules/$kver/updates/dkms/ksmdev.ko"
	# The tests' own: null_blk, a block device with slow completions
	# (robust.c: pages pinned by O_DIRECT).
	for f in $GUEST_MODULES; do
		copy_module "$root" "$kver" "$f"
	done
	depmod -b "$root" "$kver"

	(cd "$root" && find . -print0 | LC_ALL=C sort -z |
		cpio --null -o -H newc --quiet --owner=0:0) | gzip -1 > "$img"
	echo "$img"
}

GUEST_MODULES="null_blk"
# Userspace helpers the tests run (tests/cli.c, tests/preload.c); never
# run as tests themselves.
GUEST_TOOLS="ksmdevctl libksmdev-preload.so fakevm libvirt-hook-qemu"

KERNEL_CMDLINE="console=ttyS0 panic=-1 panic_on_warn=1 oops=panic softlockup_panic=1 hung_task_panic=1 nmi_watchdog=0 numa_balancing=disable quiet loglevel=4"

# guest_topology_args MEM: QEMU options for two CPUs and two NUMA nodes of
# MEM/2 each (MEM as for -m: a number with M or G), a CPU each, in sockets
# of their own (a last-level cache shared across nodes is a WARN at boot),
# so that tests/numa.c can bind processes to either (merge_across_nodes).
# GUEST_NUMA=0: one node. The guest boots with numa_balancing=disable
# (KERNEL_CMDLINE): pages that move between nodes under a test would only
# make it flaky.
guest_topology_args() {
	local mem=$1 mib
	if [ "${GUEST_NUMA:-1}" != 1 ]; then
		echo "-smp 2"
		return 0
	fi
	echo "-smp 2,sockets=2,cores=1,threads=1"
	case $mem in
	*G) mib=$((${mem%G} * 1024)) ;;
	*M) mib=${mem%M} ;;
	*) die "GUEST_MEM=$mem: give it in M or G" ;;
	esac
	echo "-object memory-backend-ram,id=node0,size=$((mib / 2))M" \
		"-object memory-backend-ram,id=node1,size=$((mib - mib / 2))M" \
		"-numa node,nodeid=0,cpus=0,memdev=node0" \
		"-numa node,nodeid=1,cpus=1,memdev=node1"
}

# boot_guest KVER INITRD SECONDS [CONSOLE]: boot under TCG, bounded by
# `timeout`. The console goes to the file CONSOLE (default: the terminal);
# the guest's ttyS1 (results only) goes to build/logs/KVER/result.txt.
boot_guest() {
	local kver=$1 initrd=$2 secs=$3 console=${4:-} logs serial0
	logs=$BUILD/logs/$kver
	mkdir -p "$logs"
	: > "$logs/result.txt"
	if [ -n "$console" ]; then
		serial0=file:$console
	else
		serial0=mon:stdio
	fi
	run timeout --foreground -k 10 "$secs" qemu-system-x86_64 \
		-accel tcg -cpu max -m "${GUEST_MEM:-2G}" \
		$(guest_topology_args "${GUEST_MEM:-2G}") \
		-nographic -no-reboot -monitor none \
		-kernel "$(kernel_image "$kver")" -initrd "$initrd" \
		-append "$KERNEL_CMDLINE ${KERNEL_EXTRA_CMDLINE:-}" \
		-serial "$serial0" -serial file:"$logs/result.txt"
}

# boot_until_init KVER INITRD SECONDS [CONSOLE]: boot_guest, again (three
# boots at most) while the guest dies before its /init writes "### kernel":
# the stock 6.12 kernel seldom oopses at boot under TCG (check.sh does the
# same, with its progress lines).
boot_until_init() {
	local boot rc=0
	for boot in 1 2 3; do
		rc=0
		boot_guest "$@" || rc=$?
		grep -q '^### kernel' "$BUILD/logs/$1/result.txt" && return "$rc"
		log "the kernel died before /init (boot $boot): booting again"
	done
	return "$rc"
}
