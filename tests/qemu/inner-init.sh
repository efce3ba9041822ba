#!/bin/busybox sh
# shellcheck shell=dash
# SPDX-License-Identifier: GPL-2.0
#
# /init of the guests QEMU boots inside the test guest (tests/hypervisor.c):
# say so on the console, then idle. The test waits for this line.
/bin/busybox echo "ksmdev inner guest: up"
while :; do
	/bin/busybox sleep 3600
done
