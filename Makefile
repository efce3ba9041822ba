# SPDX-License-Identifier: GPL-2.0
#
# A thin wrapper around the kernel's build system and the test harness.
#
#   make [KDIR=/lib/modules/<ver>/build]   build ksmdev.ko
#   make check [KERNELS="6.1 6.12"] [TESTS="abi scanner"]
#                                          the whole test matrix in QEMU guests
#   make check-debug [DEBUG_TESTS="abi"]   the suite on a KASAN/lockdep/kmemleak
#                                          kernel built from linux-source-6.12
#   make soak [DURATION=3600] [KERNELS=6.12]
#                                          the torture test for DURATION seconds
#   make demo [DEMO_KERNEL=6.1]            a guest with live counters
#   make bench [BENCH_MB=256 ...]          ksmdev against the in-kernel KSM,
#                                          one 6.12 guest (bench/README.md)
#   make ksmctl                            tools/ksmctl, the command-line tool
#   make style / make sparse               checkpatch --strict / sparse + W=1

KVER ?= $(shell uname -r)
KDIR ?= /lib/modules/$(KVER)/build
KERNELS ?= 6.1 6.12
DEMO_KERNEL ?= 6.12
DURATION ?= 3600
TESTS ?=

export KERNELS TESTS

all: module

module:
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) clean 2>/dev/null || true
	rm -rf build tools/ksmctl

# W=1 and sparse over every file, for one kernel tree.
sparse:
	$(MAKE) -C $(KDIR) M=$(CURDIR) W=1 C=2 modules

setup:
	bash tests/qemu/setup.sh

check:
	bash tests/qemu/check.sh

check-debug:
	bash tests/qemu/check-debug.sh

soak:
	KSMDEV_TORTURE_SECONDS=$(DURATION) TEST_TIMEOUT=$$(($(DURATION) + 600)) \
	QEMU_TIMEOUT=$$(($(DURATION) + 1200)) RUN_BUDGET=$$(($(DURATION) + 3000)) \
	TESTS=torture bash tests/qemu/check.sh

demo:
	KERNELS=$(DEMO_KERNEL) bash tests/qemu/demo.sh

bench:
	bash tests/qemu/bench.sh

ksmctl: tools/ksmctl

tools/ksmctl: tools/ksmctl.c uapi/linux/ksmdev.h
	$(CC) -O2 -Wall -Wextra -I uapi -o $@ $<

style:
	bash tests/style.sh

.PHONY: all module clean sparse setup check check-debug soak demo bench ksmctl style
