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
# BENCH_ADVISOR_TARGET_MS (2000) for the advisor, BENCH_ROUNDS (2: the
# engines interleaved, ksmd, ksmdev, ksmd, ksmdev, for the workload and the
# micro benchmarks), BENCH_NUMA_MB (32, per process, for the numa phase),
# BENCH_ONLY (ksmd or ksmdev: one engine), BENCH_PHASES (of "upstream
# workload twopass micro sparse advisor numa vms", separated by commas or spaces, the default: all; upstream: Debian's own
# tools/testing/selftests/mm/ksm_tests -P/-H/-D/-C against ksmd). BENCH_RESULT=FILE only makes the
# table and the plot from an earlier run's result.txt. Not a test: prints
# numbers, asserts nothing about speed.
set -euo pipefail
# shellcheck source=tests/qemu/lib.sh
. "$(dirname "$0")/lib.sh"

export KERNELS=${BENCH_KERNEL:-6.12}
QEMU_TIMEOUT=${QEMU_TIMEOUT:-7200}
BENCH_OUT=$BUILD/bench
BENCH_VARS="BENCH_MB BENCH_PROCS BENCH_PAGES_TO_SCAN BENCH_SLEEP_MS BENCH_MERGE_MB BENCH_SPARSE_GB BENCH_TIMEOUT BENCH_ONLY BENCH_PHASES BENCH_STEADY_PAGES_TO_SCAN BENCH_STEADY_PASSES BENCH_ADVISOR_MB BENCH_ADVISOR_TARGET_MS BENCH_ROUNDS BENCH_NUMA_MB BENCH_VMS BENCH_VMS_PASSES"

# table RESULT: the markdown table of the ROW lines, ksmd next to ksmdev.
# With rounds (ROUND lines: the engines interleaved in one boot), each
# engine's figure is its median over the rounds, and the ratio the median of
# the rounds' ratios with their spread (lowest-highest). private_write, which
# neither engine affects, is the control: a round where its ratio is off by
# more than 10% was noisy, and the table says so. Then the goals of the
# figures that have one (issue 15), met or not.
table() {
	awk '
	function med(a, n,    i, j, t) {
		for (i = 2; i <= n; i++)
			for (j = i; j > 1 && a[j - 1] > a[j]; j--) {
				t = a[j]; a[j] = a[j - 1]; a[j - 1] = t
			}
		return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
	}
	function fmt(x) {
		return x == int(x) ? sprintf("%d", x) : sprintf("%.2f", x)
	}
	# The median of engine e for key k over the rounds ("" if none).
	function emed(e, k,    r, n, a) {
		n = 0
		for (r = 1; r <= nr; r++)
			if ((e, k, r) in val)
				a[++n] = val[e, k, r] + 0
		return n ? med(a, n) : ""
	}
	# The rounds ratios of key k: their median in ratio[k], the
	# spread in lo[k], hi[k], how many in cnt[k].
	function ratios(k,    r, n, a, x) {
		n = 0
		for (r = 1; r <= nr; r++)
			if (("ksmd", k, r) in val && ("ksmdev", k, r) in val &&
			    val["ksmd", k, r] + 0 != 0) {
				x = val["ksmdev", k, r] / val["ksmd", k, r]
				a[++n] = x; rr[k, r] = x
				if (n == 1 || x < lo[k]) lo[k] = x
				if (n == 1 || x > hi[k]) hi[k] = x
			}
		cnt[k] = n
		if (n) ratio[k] = med(a, n)
	}
	function goal(k, what, limit,    s) {
		if (k == "metadata_per_page_peak") {
			s = emed("ksmdev", k)
			if (s == "") { printf "- %s: no figure\n", what; return }
			printf "- %s: %s B, goal at most %s B: %s\n", what, fmt(s), limit, (s + 0 <= limit ? "met" : "not met")
			return
		}
		if (!cnt[k]) { printf "- %s: no figure\n", what; return }
		printf "- %s: %.2fx (%.2f-%.2f over %d rounds), goal at most %sx: %s\n", what, ratio[k], lo[k], hi[k], cnt[k], limit, (ratio[k] <= limit ? "met" : "not met")
	}
	$1 == "ROUND" { round = $2 + 0; if (round > nr) nr = round; next }
	$1 == "ROW" {
		if (!round) { round = 1; nr = 1 }
		key = $3; unit = $5
		if (!(key in seen)) { seen[key] = 1; order[n++] = key }
		val[$2, key, round] = $4; units[key] = unit
	}
	END {
		if (!nr) nr = 1
		print "| figure | ksmd (reference) | ksmdev | ksmdev / ksmd | spread (rounds) |"
		print "|---|---:|---:|---:|---:|"
		for (i = 0; i < n; i++) {
			k = order[i]; a = emed("ksmd", k); b = emed("ksmdev", k)
			ratios(k)
			r = cnt[k] ? sprintf("%.2f", ratio[k]) : "-"
			sp = cnt[k] > 1 ? sprintf("%.2f-%.2f (%d)", lo[k], hi[k], cnt[k]) : "-"
			u = units[k]; sub(/^of_/, "of ", u)
			printf "| %s (%s) | %s | %s | %s | %s |\n", k, u, (a == "" ? "-" : fmt(a)), (b == "" ? "-" : fmt(b)), r, sp
		}
		print ""
		noisy = 0; list = ""
		for (r = 1; r <= nr; r++) {
			if (("private_write", r) in rr) {
				x = rr["private_write", r]
				list = list (list == "" ? "" : ", ") sprintf("round %d %.2f", r, x)
				if (x > 1.10 || x < 1 / 1.10) noisy++
			}
		}
		if (list == "")
			print "Control: no private_write figure in this run: its noise is unknown."
		else if (noisy)
			printf "**Noisy run**: the control, private_write (which neither engine affects), ksmdev/ksmd: %s; %d round(s) off by more than 10%%. Read the ratios of this run with that in mind.\n", list, noisy
		else
			printf "Control: private_write (which neither engine affects), ksmdev/ksmd: %s; within 10%%: a quiet run.\n", list
		print ""
		print "Goals (ksmdev against ksmd in the same boot, median over the rounds):"
		print ""
		goal("time_to_90", "time to 90% of the pages saved", "0.5")
		goal("scanner_cpu", "scanner CPU to convergence", "0.5")
		goal("steady_cpu_per_gib_per_pass", "steady-state CPU per GiB per pass", "0.3")
		goal("metadata_per_page_peak", "metadata per page, peak over a pass", "16")
	}' "$1"
}

# plot RESULT PNG: pages saved over time, a line per engine (gnuplot).
plot() {
	local e title cmd=""
	for e in ksmd ksmdev ksmdev_eqcpu; do
		awk -v e="$e" '$1 == "ROUND" { r = $2 } $1 == "TS" && $2 == e && r + 0 <= 1 { print $3 / 1000, $4 }' "$1" \
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
	# The vms phase: QEMU guests under the preload library, inside the
	# bench guest, on the inner kernel of tests/hypervisor.c.
	build_preload || warn "the preload library did not build: no vms figures for ksmdev"
	mkdir -p "$BUILD/logs"
	build_inner_kernel > "$BUILD/logs/inner-kernel.log" 2>&1 ||
		warn "the inner kernel did not build (log: $BUILD/logs/inner-kernel.log): no vms figures"
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
