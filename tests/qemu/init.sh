#!/bin/sh
# SPDX-License-Identifier: GPL-2.0
#
# /init of the test guest (busybox sh). Settings come from /etc/harness.conf:
#   MODE=check  load ksmdev, run every program in $TESTS, check the kernel log
#               after each, unload ksmdev, check again;
#   MODE=demo   load ksmdev, run /tests/demo (or show the counters).
# Results go to ttyS1 only, one framed block per test:
#   ### test NAME / <its output> / ### exit NAME RC
#   ### check NAME pass|fail   (details, if any, just before as "# " lines)
#   ### done                   (the last line; missing = the guest died)
# The console (ttyS0) has the kernel log and progress lines for humans.

export PATH=/bin:/sbin:/usr/bin:/usr/sbin HOME=/root
# shellcheck source=/dev/null
. /etc/harness.conf

RES=/dev/ttyS1
BAD='WARNING:|BUG:|Oops|Bad page state|soft lockup|hard LOCKUP|hung_task|blocked for more than|kmemleak|general protection|Call Trace'

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

# dmesg_clean: fail, showing the kernel log since the last scan, if it
# has anything bad in it. Reads and clears the ring buffer.
dmesg_clean() {
	dmesg -c > /tmp/dmesg
	if grep -Eq "$BAD" /tmp/dmesg; then
		grep -E "$BAD" /tmp/dmesg
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

poweroff_now() {
	# The last close of ttyS1 waits until its output has drained.
	exec 3>&-
	sync
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
echo 20 > /proc/sys/kernel/hung_task_timeout_secs
echo 1 > /proc/sys/kernel/sysrq
stty -F "$RES" raw -echo 2>/dev/null
# Hold ttyS1 open for the whole run: a killed test that happens to close it
# last would have the output still queued on it thrown away.
exec 3> "$RES"
hostname ksmdev-guest

say "guest $(uname -r): mode $MODE, $(nproc) CPUs, $(free -m | awk '/Mem:/ {print $2}') MiB"
res "### kernel $(uname -r)"
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

for t in $TESTS; do
	say "test $t"
	res "### test $t"
	cd /tests || exit
	{ timeout -k 10 "$TEST_TIMEOUT" "/tests/$t" 3>&-; echo $? > /tmp/rc; } < /dev/null > "$RES" 2>&1
	cd /
	rc=$(cat /tmp/rc)
	# Whatever the test left behind (children of a killed harness).
	kill -KILL -1 2>/dev/null
	case $rc in
	124|137|143) echo "# timeout: stopped after ${TEST_TIMEOUT}s" > "$RES" ;;
	esac
	res "### exit $t $rc"
	say "exit $t $rc"
	check "dmesg-after-$t" dmesg_clean
done

check rmmod ksmdev_unload
check dmesg-final dmesg_clean
res "### done"
say "done"
poweroff_now
