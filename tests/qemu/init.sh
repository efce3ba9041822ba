#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# /init of the test guest (busybox sh). Settings come from /etc/harness.conf:
#   MODE=check  load ksmdev, run every program in $TESTS, check the kernel log
#               after each, unload ksmdev, check again;
#   MODE=demo   load ksmdev, run /tests/demo (or show the counters);
#   MODE=bench  load ksmdev, run /tests/bench, its output to ttyS1.
# Results go to ttyS1 only, one framed block per test:
#   ### test NAME / <its output> / ### exit NAME RC SECONDS
#   ### check NAME pass|fail   (details, if any, just before as "# " lines)
#   ### done                   (the last line; missing = the guest died)
# The console (ttyS0) has the kernel log and progress lines for humans.
# On a kernel with kmemleak (the debug lane), leaks are looked for after
# the tests: "### check kmemleak" fails on any that ksmdev allocated.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
# shellcheck source=/dev/null
. /etc/harness.conf

RES=/dev/ttyS1
# Covers, among others: KASAN ("BUG: KASAN: ..."), lockdep ("WARNING: possible
# circular locking dependency", "WARNING: inconsistent lock state"),
# might_sleep ("BUG: sleeping function called from invalid context"), page
# table check and VM_BUG_ON ("kernel BUG at mm/..."), "BUG: Bad page map",
# RCU stalls.
BAD='WARNING:|BUG:|kernel BUG at|Oops|Bad page state|soft lockup|hard LOCKUP|hung_task|blocked for more than|detected stall|detected expedited stall|kmemleak|general protection|UBSAN:|Call Trace'
# kmemleak's own scans (check kmemleak) say this; what they found is judged
# there, with ksmdev's leaks told apart from the kernel's.
KMEMLEAK_SCAN_LINE='kmemleak: [0-9]+ new suspected memory leaks'
KMEMLEAK=/sys/kernel/debug/kmemleak

say() { echo "### $*" > /dev/console; }
res() { echo "$*" > "$RES"; }

# check NAME CMD...: one harness result; CMD's output becomes its details.
check() {
	name=$1
	shift
	if out=$("$@" 2>&1); then
		[ -n "$out" ] && echo "$out" | sed 's/^/# /' > "$RES"
		res "### check $name pass"
	else
		echo "$out" | sed 's/^/# /' > "$RES"
		res "### check $name fail"
		say "check $name FAILED"
	fi
}

# A test that makes the kernel print OOM reports on purpose (tests/oom.c)
# writes these to /dev/kmsg around them: the call traces of those reports
# are forgiven between the two lines, and nothing else is.
OOM_BEGIN='ksmdev-test: oom reports expected'
OOM_END='ksmdev-test: oom reports no longer expected'

# dmesg_bad: the bad lines of /tmp/dmesg.
dmesg_bad() {
	awk -v bad="$BAD" -v scan="$KMEMLEAK_SCAN_LINE" \
	    -v begin="$OOM_BEGIN" -v end="$OOM_END" '
		index($0, begin) { oom = 1; next }
		index($0, end) { oom = 0; next }
		$0 ~ scan { next }
		$0 ~ bad && !(oom && /Call Trace/) { print }
	' /tmp/dmesg
}

# dmesg_clean: fail, showing the kernel log since the last scan, if it
# has anything bad in it. Reads and clears the ring buffer.
dmesg_clean() {
	dmesg -c > /tmp/dmesg
	if [ -n "$(dmesg_bad)" ]; then
		dmesg_bad
		echo "--- kernel log since the last check:"
		tail -n 80 /tmp/dmesg
		return 1
	fi
}

ksmdev_loaded() { grep -q '^ksmdev ' /proc/modules; }
ksmdev_unload() {
	ksmdev_loaded || { echo "ksmdev is not loaded"; return 1; }
	rmmod ksmdev && ! ksmdev_loaded
}

# kmemleak_scan: a scan, of which only objects older than 5 s are reported.
kmemleak_scan() {
	echo scan > "$KMEMLEAK" || { echo "kmemleak: scan refused (disabled?)"; return 1; }
}

# kmemleak_start: before ksmdev is loaded, stop the periodic scans (the
# harness scans when it wants to) and forget what the kernel leaked so far.
kmemleak_start() {
	echo scan=off > "$KMEMLEAK" &&
	kmemleak_scan &&
	cat "$KMEMLEAK" > /tmp/kmemleak.boot &&
	echo clear > "$KMEMLEAK" || return 1
	n=$(grep -c '^unreferenced object' /tmp/kmemleak.boot)
	echo "kmemleak: $n leaks before ksmdev was loaded (not ours, forgotten)"
}

# kmemleak_loaded: a scan while ksmdev is still loaded, so that the
# backtraces of its leaks name its functions.
kmemleak_loaded() {
	kmemleak_scan && cat "$KMEMLEAK" > /tmp/kmemleak.loaded
}

# kmemleak_check: after rmmod, two scans a few seconds apart; fail on any
# leak whose backtrace is ksmdev's: one that names it (seen while it was
# loaded), or has frames that no longer resolve (code that was unloaded:
# ksmdev is the only module this guest ever loads).
kmemleak_check() {
	[ -f /tmp/kmemleak.loaded ] || : > /tmp/kmemleak.loaded
	kmemleak_scan || return 1
	sleep 6
	kmemleak_scan || return 1
	cat "$KMEMLEAK" > /tmp/kmemleak.final
	awk '
	function flush() {
		if (rec == "" || (addr in seen)) { rec = ""; return }
		seen[addr] = 1
		if (ours) { printf "%s", rec; nours++ } else nother++
		rec = ""
	}
	/^unreferenced object/ { flush(); addr = $3; ours = 0 }
	{ rec = rec $0 "\n" }
	/ksmdev/ || /^ +0x[0-9a-f]+$/ { ours = 1 }
	END {
		flush()
		printf "kmemleak: %d leaks of ksmdev, %d others\n", nours, nother
		exit (nours > 0 ? 1 : 0)
	}' /tmp/kmemleak.loaded /tmp/kmemleak.final > /tmp/kmemleak.ours
	rc=$?
	cat /tmp/kmemleak.ours
	if [ $rc -eq 0 ] && grep -q '^unreferenced object' /tmp/kmemleak.final; then
		echo "--- leaks not traced to ksmdev (the kernel's own?):"
		head -n 40 /tmp/kmemleak.final
	fi
	# Anything else the scans brought to the kernel log.
	dmesg_clean || rc=1
	return $rc
}

poweroff_now() {
	# The last close of ttyS1 waits until its output has drained.
	exec 3>&-
	sync
	# Without ACPI (the debug kernel) power-off only halts; a reset ends
	# qemu -no-reboot just as well.
	[ -d /sys/firmware/acpi ] || reboot -f
	poweroff -f
	echo o > /proc/sysrq-trigger
	sleep 60
}

mount -t proc proc /proc
mount -t sysfs sysfs /sys
mount -t devtmpfs devtmpfs /dev 2>/dev/null
mount -t debugfs debugfs /sys/kernel/debug
mount -t cgroup2 cgroup2 /sys/fs/cgroup
mount -t tmpfs tmpfs /tmp
mount -t tmpfs tmpfs /run
echo +memory > /sys/fs/cgroup/cgroup.subtree_control 2>/dev/null
echo "${HUNG_TASK_TIMEOUT:-20}" > /proc/sys/kernel/hung_task_timeout_secs
echo 1 > /proc/sys/kernel/sysrq
stty -F "$RES" raw -echo 2>/dev/null
# Hold ttyS1 open for the whole run: a killed test that happens to close it
# last would have the output still queued on it thrown away.
exec 3> "$RES"
hostname ksmdev-guest

say "guest $(uname -r): mode $MODE, $(nproc) CPUs, $(free -m | awk '/Mem:/ {print $2}') MiB"
res "### kernel $(uname -r)"
[ -f "$KMEMLEAK" ] && check kmemleak-start kmemleak_start
dmesg -c > /tmp/dmesg.boot

check modprobe sh -c 'modprobe ksmdev && grep "^ksmdev " /proc/modules && ls -l /dev/ksm'
check dmesg-after-modprobe dmesg_clean

if [ "$MODE" = demo ]; then
	say "$(grep '^ksmdev ' /proc/modules || echo 'ksmdev did not load')"
	cd /tests || exit
	if [ -x /tests/demo ]; then
		/tests/demo
	elif ! ls /sys/kernel/debug/ksm/* > /dev/null 2>&1; then
		say "no /tests/demo and nothing in /sys/kernel/debug/ksm/"
	else
		for i in 1 2 3 4 5; do
			say "counters ($i of 5)"
			for f in /sys/kernel/debug/ksm/*; do
				[ -f "$f" ] && echo "$f: $(cat "$f")"
			done
			sleep 1
		done
	fi
	res "### done"
	poweroff_now
fi

if [ "$MODE" = bench ]; then
	(cd /tests && ./bench) > "$RES" 2>&1
	say "bench exited with $?"
	res "### done"
	poweroff_now
fi

for t in $TESTS; do
	say "test $t"
	res "### test $t"
	cd /tests || exit
	t0=$(date +%s)
	{ timeout -k 10 "$TEST_TIMEOUT" "/tests/$t" 3>&-; echo $? > /tmp/rc; } < /dev/null > "$RES" 2>&1
	secs=$(($(date +%s) - t0))
	cd /
	rc=$(cat /tmp/rc)
	# Whatever the test left behind (children of a killed harness).
	kill -KILL -1 2>/dev/null
	case $rc in
	124|137|143) echo "# timeout: stopped after ${TEST_TIMEOUT}s" > "$RES" ;;
	esac
	res "### exit $t $rc $secs"
	say "exit $t $rc after ${secs}s"
	check "dmesg-after-$t" dmesg_clean
done

[ -f "$KMEMLEAK" ] && check kmemleak-loaded kmemleak_loaded
check rmmod ksmdev_unload
check dmesg-final dmesg_clean
[ -f "$KMEMLEAK" ] && check kmemleak kmemleak_check
res "### done"
say "done"
poweroff_now
