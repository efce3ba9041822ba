#!/usr/bin/env bash
# SPDX-License-Identifier: GPL-2.0
#
# `make bench`: one guest boot of the stock 6.12 kernel (BENCH_KERNEL picks
# another) runs tests/bench.c: the in-kernel KSM (ksmd, the reference) and
# ksmdev one after the other on the same workloads. Writes, under
# build/bench/: the raw output (result.txt), the console, a markdown table
# (table.md) and a plot of pages saved over time (saved.png); and copies the
# table and the plot into bench/ (bench/README.md keeps the latest table).
#
# Environment (passed to the guest): BENCH_MB (256), BENCH_PROCS (4),
# BENCH_PAGES_TO_SCAN (100), BENCH_SLEEP_MS (20), BENCH_MERGE_MB (100),
# BENCH_SPARSE_GB (64), BENCH_TIMEOUT (900 s for the workload, per engine),
# BENCH_STEADY_PAGES_TO_SCAN (1000) and BENCH_STEADY_PASSES (8) for the
# steady state after convergence, BENCH_ADVISOR_MB (64) and
# BENCH_ADVISOR_TARGET_MS (2000) for the advisor,
# BENCH_ONLY (ksmd or ksmdev: one engine), BENCH_PHASES (of "upstream
# workload twopass micro sparse advisor", separated by commas or spaces, the default: all; upstream: Debian's own
# tools/testing/selftests/mm/ksm_tests -P/-H/-D/-C against ksmd). BENCH_RESULT=FILE only makes the
# table and the plot from an earlier run's result.txt. Not a test: prints
# numbers, asserts nothing about speed.
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/lib.sh"

export KERNELS=${BENCH_KERNEL:-6.12}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-7200}
BENCH_OUT=$BUILD/bench
BENCH_VARS="BENCH_MB BENCH_PROCS BENCH_PAGES_TO_SCAN BENCH_SLEEP_MS BENCH_MERGE_MB BENCH_SPARSE_GB BENCH_TIMEOUT BENCH_ONLY BENCH_PHASES BENCH_STEADY_PAGES_TO_SCAN BENCH_STEADY_PASSES BENCH_ADVISOR_MB BENCH_ADVISOR_TARGET_MS"

# table RESULT: the markdown table of the ROW lines, ksmd next to ksmdev.
table() {
	awk '
	$1 == "ROW" {
		key = $3; unit = $5
		if (!(key in seen)) { seen[key] = 1; order[n++] = key }
		val[$2, key] = $4; units[key] = unit
	}
	END {
		print "| figure | ksmd (reference) | ksmdev | ksmdev / ksmd |"
		print "|---|---:|---:|---:|"
		for (i = 0; i < n; i++) {
			k = order[i]; a = val["ksmd", k]; b = val["ksmdev", k]
			r = (a != "" && b != "" && a + 0 != 0) ? sprintf("%.2f", b / a) : "-"
			u = units[k]; sub(/^of_/, "of ", u)
			printf "| %s (%s) | %s | %s | %s |\n", k, u, (a == "" ? "-" : a), (b == "" ? "-" : b), r
		}
	}' "$1"
}

# plot RESULT PNG: pages saved over time, a line per engine (gnuplot).
plot() {
	local e title cmd=""
	for e in ksmd ksmdev ksmdev_eqcpu; do
		awk -v e="$e" '$1 == "TS" && $2 == e { print $3 / 1000, $4 }' "$1" \
			> "$BENCH_OUT/$e.dat"
		[ -s "$BENCH_OUT/$e.dat" ] || continue
		case $e in
		ksmd) title="ksmd (in-kernel KSM)" ;;
		ksmdev) title="ksmdev" ;;
		*) title="ksmdev at ksmd's CPU ($(awk '$1 == "ROW" && $2 == "ksmdev" && $3 == "pages_to_scan_eqcpu" { print $4 }' "$1") pages a batch)" ;;
		esac
		cmd="${cmd:+$cmd, }\"$BENCH_OUT/$e.dat\" using 1:2 with lines lw 2 title \"$title\""
	done
	gnuplot <<-EOF
		set terminal png noenhanced size 900,500
		set output "$2"
		set title "Pages saved over time ($(grep -m1 '^# [0-9]* processes' "$1" | sed 's/^# //'))"
		set xlabel "seconds since the scanner started"
		set ylabel "pages saved"
		set key top left
		set grid
		plot $cmd
	EOF
}

# build_ksm_tests: upstream's tools/testing/selftests/mm/ksm_tests from
# Debian's linux-source-6.12, unmodified, static, into build/tests/ (cached
# in .cache/ksm_tests). Its headers need the 6.12 uapi: `make headers` in a
# full extraction of the tarball, removed afterwards.
build_ksm_tests() {
	local bin=$CACHE/ksm_tests src=$CACHE/ksm_tests-src mm
	if [ ! -x "$bin" ] || [ "$bin" -ot "$KERNEL_SOURCE_TARBALL" ]; then
		log "building upstream ksm_tests from $KERNEL_SOURCE_TARBALL"
		rm -rf "$src"
		mkdir -p "$src"
		tar -C "$src" --strip-components=1 -xf "$KERNEL_SOURCE_TARBALL"
		mm=$src/tools/testing/selftests/mm
		if ! { make -s -C "$src" ARCH=x86_64 headers &&
			gcc -static -O2 -isystem "$src/usr/include" -I "$src" \
				-I "$src/tools" -I "$mm" -o "$bin" "$mm/ksm_tests.c" \
				"$mm/vm_util.c" "$mm/thp_settings.c" -lnuma
		} > "$CACHE/ksm_tests.log" 2>&1; then
			rm -rf "$src" "$bin"
			warn "upstream ksm_tests did not build (log: $CACHE/ksm_tests.log)"
			return 0
		fi
		rm -rf "$src"
	fi
	mkdir -p "$BUILD/tests"
	cp "$bin" "$BUILD/tests/ksm_tests"
}

# render RESULT: the table and the plot of a bench output.
render() {
	local res=$1 kver
	grep -q '^### done' "$res" || die "the guest did not finish (see $BENCH_OUT/console.log)"
	grep -q '^ROW ' "$res" || die "no figures in $res"
	kver=$(sed -n 's/^### kernel //p' "$res")
	mkdir -p "$BENCH_OUT" "$KSMDEV_ROOT/bench"
	{
		echo "Kernel $kver (Debian stock), QEMU TCG guest (-cpu max, 2 CPUs and 2 NUMA nodes, -m ${GUEST_MEM:-3G}) on $(nproc) host cores ($(grep -m1 'model name' /proc/cpuinfo | sed 's/.*: //')), $(date -u +%Y-%m-%d)."
		echo
		grep '^# ' "$res" | grep -v '^# needs' | sed 's/^# /    /'
		echo
		table "$res"
	} > "$BENCH_OUT/table.md"
	plot "$res" "$BENCH_OUT/saved.png"
	cp "$BENCH_OUT/saved.png" "$KSMDEV_ROOT/bench/saved.png"
	awk -v table="$BENCH_OUT/table.md" '
		/^<!-- table -->/ { print; while ((getline l < table) > 0) print l; skip = 1; next }
		/^<!-- end -->/ { skip = 0 }
		!skip' "$KSMDEV_ROOT/bench/README.md" > "$BENCH_OUT/README.md"
	cp "$BENCH_OUT/README.md" "$KSMDEV_ROOT/bench/README.md"
	cat "$BENCH_OUT/table.md"
	log "table: bench/README.md; plot: bench/saved.png"
}

main() {
	local kver initrd v res=$BENCH_OUT/result.txt
	if [ -n "${BENCH_RESULT:-}" ]; then
		# Only the table and the plot, from an earlier run's output.
		[ "$BENCH_RESULT" -ef "$res" ] || { mkdir -p "$BENCH_OUT"; cp "$BENCH_RESULT" "$res"; }
		render "$res"
		return
	fi
	one_run_at_a_time
	single_kernel_setup "the bench" --bench
	kver=$KVER
	log "building tests/bench.c"
	build_test bench
	build_ksm_tests
	{
		for v in $BENCH_VARS; do
			[ -n "${!v:-}" ] && echo "export $v='${!v}'"
		done
		true
	} > "$BUILD/bench.env"
	log "$kver: initramfs"
	initrd=$(BENCH_ENV=$BUILD/bench.env build_initramfs "$kver" bench bench ksm_tests)
	mkdir -p "$BENCH_OUT"
	log "$kver: booting (console in $BENCH_OUT/console.log; 10 to 15 minutes)"
	GUEST_MEM=${GUEST_MEM:-3G} KERNEL_EXTRA_CMDLINE="slab_nomerge ${KERNEL_EXTRA_CMDLINE:-}" \
		boot_until_init "$kver" "$initrd" "$QEMU_TIMEOUT" "$BENCH_OUT/console.log" || true
	cp "$BUILD/logs/$kver/result.txt" "$res"
	render "$res"
}

main "$@"
