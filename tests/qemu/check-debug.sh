#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# The debug-kernel lane (`make check-debug`): Debian's linux-source-6.12,
# built from `allnoconfig` plus tests/qemu/debug-kernel.config (what the
# guest and ksmdev need, and KASAN, lockdep, DEBUG_VM, page table check,
# DEBUG_ATOMIC_SLEEP, kmemleak, DEBUG_PAGEALLOC), cached in
# .cache/debug-kernel/<key>/ (key: source version, compiler, config); ksmdev
# built against that tree (no DKMS); then the test programs in a QEMU guest
# with the same /init and result lines as `make check`, plus kmemleak's
# verdict after rmmod. Logs in build/debug/logs/.
#   check-debug.sh          the whole lane
#   check-debug.sh kernel   only build (or find) the kernel, e.g. as a CI step
#                           whose result is cached
# Environment (measured: tests take 1x to 3x as long as on the stock 6.12,
# the whole guest ~4.5 min against ~2 min; boot ~4 s):
#   DEBUG_TESTS    test programs to run (default: $TESTS, else all)
#   TEST_TIMEOUT   seconds per test program in the guest (default 1200)
#   QEMU_TIMEOUT   seconds for the guest (default 3600)
#   RUN_BUDGET     seconds for the run once the kernel is built (default
#                  QEMU_TIMEOUT + 600)
#   GUEST_MEM      guest memory (default 3G: KASAN's shadow is 1/8 of it)
#   HUNG_TASK_TIMEOUT  the guest's hung-task timeout (default 120)
#   KSMDEV_UNMERGE_MB  the seed-001 unmerge tests' region (default 256;
#                  1024 on the stock kernels)
#   DEBUG_CMDLINE  added to the kernel command line (default "loglevel=8
#                  panic_on_warn=0": every report in full on the console,
#                  and the run goes on past the first one; each still
#                  fails the dmesg check that follows it)
#   DEBUG_KERNEL_JOBS  make -j for the kernel (default: nproc)
# The last line of output is "N passed, N failed[, N skipped]"; the exit
# status is non-zero on any failure.
set -euo pipefail

export TESTS=${DEBUG_TESTS:-${TESTS:-}}
export TEST_TIMEOUT=${TEST_TIMEOUT:-1200}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-3600}
RUN_BUDGET=${RUN_BUDGET:-$((QEMU_TIMEOUT + 600))}
export GUEST_MEM=${GUEST_MEM:-3G}
# The seed-001 unmerge tests' region (1 GiB on the stock kernels): merging
# and unmerging run ~3x slower under KASAN and DEBUG_PAGEALLOC.
export KSMDEV_UNMERGE_MB=${KSMDEV_UNMERGE_MB:-256}
export HUNG_TASK_TIMEOUT=${HUNG_TASK_TIMEOUT:-120}
DEBUG_CMDLINE=${DEBUG_CMDLINE-loglevel=8 panic_on_warn=0}

# check.sh's functions (parse_results, run_guest, ...) and lib.sh's.
# shellcheck source=tests/qemu/check.sh
. "$(dirname "$0")/check.sh"

BUILD=$KSMDEV_ROOT/build/debug
DEBUG_CONFIG=$QEMU_DIR/debug-kernel.config
DEBUG_CACHE=$CACHE/debug-kernel
DKVER=
DKDIR=

# The debug kernel where lib.sh looks for a kernel: the image in
# $DKDIR/boot/, what modules_install wrote in $DKDIR/lib/modules/, the
# build tree for external modules in $DKDIR/linux.
kernel_dir() {
	if [ -n "$DKVER" ] && [ "$1" = "$DKVER" ]; then
		echo "$DKDIR"
	else
		echo "$CACHE/kernels/$1"
	fi
}
kernel_image() { echo "$(kernel_dir "$1")/boot/vmlinuz-$1"; }
kernel_headers() { echo "$DKDIR/linux"; }

# debug_kernel_key: what the built kernel depends on, hashed.
debug_kernel_key() {
	{
		dpkg-query -W -f='${Package} ${Version}\n' linux-source-6.12
		gcc --version | head -n 1
		echo ARCH=x86_64 allnoconfig
		cat "$DEBUG_CONFIG"
	} | sha256sum | cut -c 1-16
}

# build_debug_kernel: find the kernel of this key in the cache or build it;
# sets DKVER and DKDIR. A build that was cut short resumes where it was.
build_debug_kernel() {
	local key tree logf jobs t0 times wall user sys old
	key=$(debug_kernel_key)
	DKDIR=$DEBUG_CACHE/$key
	tree=$DKDIR/linux
	logf=$DKDIR/build.log
	mkdir -p "$DKDIR"
	exec 8> "$DEBUG_CACHE/.lock"
	if ! flock -n 8; then
		log "waiting for another run building the debug kernel"
		flock 8
	fi
	if [ -f "$DKDIR/.done" ]; then
		DKVER=$(cat "$DKDIR/kernel.release")
		log "debug kernel $DKVER: cached in $DKDIR ($(cat "$DKDIR/build-time.txt"))"
		flock -u 8
		return 0
	fi
	log "debug kernel: building in $DKDIR (log: $logf)"
	t0=$SECONDS
	if [ ! -f "$tree/.ksmdev-extracted" ]; then
		log "extracting $KERNEL_SOURCE_TARBALL"
		rm -rf "$tree"
		mkdir -p "$tree"
		tar -C "$tree" --strip-components=1 -xf "$KERNEL_SOURCE_TARBALL"
		touch "$tree/.ksmdev-extracted"
		: > "$logf"
	fi
	if [ ! -f "$tree/.ksmdev-configured" ]; then
		log "config: allnoconfig + $(config_lines "$DEBUG_CONFIG" | wc -l) settings of ${DEBUG_CONFIG#"$KSMDEV_ROOT"/}"
		# ARCH=x86_64: else allnoconfig makes a 32-bit kernel, and
		# what it chose for that (FRAME_WARN=1024, ...) would stay.
		make -C "$tree" ARCH=x86_64 allnoconfig >> "$logf" 2>&1
		config_apply "$tree" "$DEBUG_CONFIG"
		make -C "$tree" olddefconfig >> "$logf" 2>&1
		if ! config_verify "$tree" "$DEBUG_CONFIG"; then
			die "the debug kernel's .config lacks the settings above (fix ${DEBUG_CONFIG#"$KSMDEV_ROOT"/})"
		fi
		cp "$tree/.config" "$DKDIR/config"
		touch "$tree/.ksmdev-configured"
	fi
	jobs=${DEBUG_KERNEL_JOBS:-$(nproc)}
	log "make -j$jobs bzImage modules (about 4 minutes on 2 cores)"
	TIMEFORMAT='%0R %0U %0S'
	if ! { time make -C "$tree" -j"$jobs" bzImage modules >> "$logf" 2>&1; } 2> "$DKDIR/make-time.txt"; then
		tail -n 40 "$logf" | sed 's/^/    | /'
		die "the debug kernel did not build (log: $logf)"
	fi
	read -r wall user sys < "$DKDIR/make-time.txt"
	DKVER=$(make -s -C "$tree" kernelrelease)
	make -C "$tree" INSTALL_MOD_PATH="$DKDIR" modules_install >> "$logf" 2>&1 ||
		die "modules_install failed (log: $logf)"
	mkdir -p "$DKDIR/boot"
	cp "$tree/arch/x86/boot/bzImage" "$DKDIR/boot/vmlinuz-$DKVER"
	echo "$DKVER" > "$DKDIR/kernel.release"
	times="make: ${wall}s wall, ${user}s user, ${sys}s sys; this run: $((SECONDS - t0))s"
	echo "built in $((SECONDS - t0))s ($times)" > "$DKDIR/build-time.txt"
	touch "$DKDIR/.done"
	log "debug kernel $DKVER built ($times)"
	# Kernels of other keys are of no more use.
	for old in "$DEBUG_CACHE"/*/; do
		[ "${old%/}" = "$DKDIR" ] || rm -rf "$old"
	done
	flock -u 8
}

# build_debug_module: ksmdev against the debug tree, into build/debug/modules/
# where the initramfs looks for it.
build_debug_module() {
	local tree=$BUILD/module
	copy_module_tree "$tree"
	make -C "$(kernel_headers "$DKVER")" M="$tree" modules || return 1
	rm -rf "$BUILD/modules/$DKVER"
	mkdir -p "$BUILD/modules/$DKVER"
	cp "$tree/ksmdev.ko" "$BUILD/modules/$DKVER/"
}

main() {
	local rc=0
	if [ "${1:-}" = kernel ]; then
		bash "$QEMU_DIR/setup.sh" --debug-kernel
		build_debug_kernel
		log "debug kernel: $(kernel_image "$DKVER")"
		return 0
	fi
	one_run_at_a_time
	rm -rf "$BUILD/logs" "$BUILD/tests"
	result_init
	trap on_exit EXIT
	log "setup"
	bash "$QEMU_DIR/setup.sh" --debug-kernel
	build_debug_kernel
	result pass "build debug kernel $DKVER"
	START=$SECONDS
	KVERS=("$DKVER")
	SELECTED=$(test_names)
	log "kernel: $DKVER; tests: ${SELECTED//$'\n'/ }"
	log "building ksmdev against $DKVER"
	if result_cmd "build $DKVER" "$BUILD/logs/$DKVER/build.log" build_debug_module; then
		grep 'warning:' "$BUILD/logs/$DKVER/build.log" || true
	fi
	build_tests
	build_test_kmods_all
	KERNEL_EXTRA_CMDLINE="${KERNEL_EXTRA_CMDLINE:-} $DEBUG_CMDLINE"
	log "guest: -m $GUEST_MEM, per test ${TEST_TIMEOUT}s, extra command line: $KERNEL_EXTRA_CMDLINE"
	run_guest "$DKVER"
	log "done in $(((SECONDS - START) / 60))m$(((SECONDS - START) % 60))s after the kernel build"
	result_summary || rc=1
	SUMMARY_DONE=1
	return $rc
}

main "$@"
