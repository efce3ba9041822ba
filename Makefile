# SPDX-License-Identifier: GPL-2.0
#
# A thin wrapper around the kernel's build system and the test harness.
#
#   make [KDIR=/lib/modules/<ver>/build]   build ksmdev.ko
#   make check [KERNELS="6.1 6.12 sid"] [TESTS="abi scanner"]
#                                          the whole test matrix in QEMU guests
#   make check-debug [DEBUG_TESTS="abi"]   the suite on a KASAN/lockdep/kmemleak
#                                          kernel built from linux-source-6.12
#   make soak [DURATION=3600] [KERNELS=6.12]
#                                          the torture test for DURATION seconds
#   make demo [DEMO_KERNEL=6.1]            a guest with live counters
#   make demo-qemu [DEMO_KERNEL=6.1]       two QEMUs inside a guest, merged
#                                          through the preload library
#   make bench [BENCH_MB=256 ...]          ksmdev against the in-kernel KSM,
#                                          one 6.12 guest (bench/README.md)
#   make ksmdevctl                         tools/ksmdevctl, the command-line tool
#   make preload                           tools/libksmdev-preload.so
#   make install [DESTDIR=] [INSTALL_DKMS=0]
#                                          the header, ksmdevctl, the preload
#                                          library, the udev rule,
#                                          ksmdev.service and its
#                                          /etc/ksmdev/ksmdev.conf, examples,
#                                          the module's sources for DKMS (and,
#                                          without DESTDIR, dkms install for
#                                          KVER; nothing is loaded)
#   make uninstall                         the reverse
#   make style / make sparse               checkpatch --strict / sparse + W=1

KVER ?= $(shell uname -r)
VERSION := $(shell sed -n 's/^PACKAGE_VERSION="\(.*\)"/\1/p' dkms.conf)
PREFIX ?= /usr
LIBDIR ?= $(PREFIX)/lib/$(shell $(CC) -print-multiarch 2>/dev/null)
# The preload library has no SONAME (nothing links against it, LD_PRELOAD
# names its path): a private directory, not the public library one.
PRELOADDIR ?= $(LIBDIR)/ksmdev
DOCDIR ?= $(PREFIX)/share/doc/ksmdev
MANDIR ?= $(PREFIX)/share/man
SYSCONFDIR ?= /etc
SYSTEMDUNITDIR ?= $(PREFIX)/lib/systemd/system
INSTALL_DKMS ?= 1
KDIR ?= /lib/modules/$(KVER)/build
KERNELS ?= 6.1 6.12 sid
DEMO_KERNEL ?= 6.12
DURATION ?= 3600
TESTS ?=

export KERNELS TESTS

all: module

module:
	$(MAKE) -C $(KDIR) M=$(CURDIR) modules

clean:
	$(MAKE) -C $(KDIR) M=$(CURDIR) clean 2>/dev/null || true
	rm -rf build tools/ksmdevctl tools/libksmdev-preload.so

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

demo-qemu:
	KERNELS=$(DEMO_KERNEL) TESTS=hypervisor SKIP_STYLE=1 bash tests/qemu/check.sh
	@grep -h 'hypervisor.c:.*QEMUs' build/logs/*/tests/hypervisor.out | sed 's/^# [^:]*:[0-9]*:[^:]*://'

bench:
	bash tests/qemu/bench.sh

ksmdevctl: tools/ksmdevctl

preload: tools/libksmdev-preload.so

# CFLAGS, CPPFLAGS and LDFLAGS from the environment (dpkg-buildflags, in
# the Debian packages: hardening and debug information).
CFLAGS ?= -O2 -g
TOOL_CFLAGS = $(CPPFLAGS) $(CFLAGS) -Wall -Wextra -I uapi

tools/libksmdev-preload.so: tools/ksmdev-preload.c uapi/linux/ksmdev.h
	$(CC) -shared -fPIC $(TOOL_CFLAGS) $(LDFLAGS) -o $@ $<

# The tool's version is dkms.conf's, as the module's (Kbuild).
tools/ksmdevctl: tools/ksmdevctl.c uapi/linux/ksmdev.h dkms.conf
	$(CC) $(TOOL_CFLAGS) -DKSMDEV_VERSION='"$(VERSION)"' $(LDFLAGS) -o $@ $<

# What make install writes (below DESTDIR), for uninstall.
INSTALLED = $(PREFIX)/include/linux/ksmdev.h $(PREFIX)/sbin/ksmdevctl \
	$(MANDIR)/man8/ksmdevctl.8 \
	$(PRELOADDIR)/libksmdev-preload.so $(PREFIX)/lib/udev/rules.d/60-ksmdev.rules \
	$(DOCDIR)/examples/modules-load.d/ksmdev.conf \
	$(DOCDIR)/examples/modprobe.d/ksmdev.conf \
	$(DOCDIR)/examples/libvirt-hook-qemu $(SYSTEMDUNITDIR)/ksmdev.service

install: tools/ksmdevctl tools/libksmdev-preload.so
	install -D -m 0644 uapi/linux/ksmdev.h $(DESTDIR)$(PREFIX)/include/linux/ksmdev.h
	install -D -m 0755 tools/ksmdevctl $(DESTDIR)$(PREFIX)/sbin/ksmdevctl
	install -D -m 0644 tools/ksmdevctl.8 $(DESTDIR)$(MANDIR)/man8/ksmdevctl.8
	install -D -m 0644 tools/libksmdev-preload.so $(DESTDIR)$(PRELOADDIR)/libksmdev-preload.so
	install -D -m 0644 packaging/60-ksmdev.rules \
		$(DESTDIR)$(PREFIX)/lib/udev/rules.d/60-ksmdev.rules
	install -D -m 0644 packaging/modules-load.conf \
		$(DESTDIR)$(DOCDIR)/examples/modules-load.d/ksmdev.conf
	install -D -m 0644 packaging/modprobe.conf \
		$(DESTDIR)$(DOCDIR)/examples/modprobe.d/ksmdev.conf
	install -D -m 0644 packaging/libvirt-hook-qemu \
		$(DESTDIR)$(DOCDIR)/examples/libvirt-hook-qemu
	install -D -m 0644 packaging/ksmdev.service \
		$(DESTDIR)$(SYSTEMDUNITDIR)/ksmdev.service
	# The settings are the administrator's: an existing file stays.
	[ -e $(DESTDIR)$(SYSCONFDIR)/ksmdev/ksmdev.conf ] || \
		install -D -m 0644 packaging/ksmdev.conf \
			$(DESTDIR)$(SYSCONFDIR)/ksmdev/ksmdev.conf
	rm -rf $(DESTDIR)/usr/src/ksmdev-$(VERSION)
	mkdir -p $(DESTDIR)/usr/src/ksmdev-$(VERSION)
	cp -r Kbuild Makefile dkms.conf src include uapi $(DESTDIR)/usr/src/ksmdev-$(VERSION)/
	if [ -z "$(DESTDIR)" ] && [ "$(INSTALL_DKMS)" = 1 ]; then \
		dkms status ksmdev/$(VERSION) | grep -q . || dkms add ksmdev/$(VERSION); \
		dkms install ksmdev/$(VERSION) -k $(KVER); \
	fi

uninstall:
	if [ -z "$(DESTDIR)" ] && dkms status ksmdev/$(VERSION) 2>/dev/null | grep -q .; then \
		dkms remove ksmdev/$(VERSION) --all; \
	fi
	rm -f $(addprefix $(DESTDIR),$(INSTALLED))
	# ... unless it was changed.
	if cmp -s packaging/ksmdev.conf $(DESTDIR)$(SYSCONFDIR)/ksmdev/ksmdev.conf; then \
		rm -f $(DESTDIR)$(SYSCONFDIR)/ksmdev/ksmdev.conf; \
		rmdir $(DESTDIR)$(SYSCONFDIR)/ksmdev 2>/dev/null || true; \
	elif [ -e $(DESTDIR)$(SYSCONFDIR)/ksmdev/ksmdev.conf ]; then \
		echo "kept $(DESTDIR)$(SYSCONFDIR)/ksmdev/ksmdev.conf (changed)"; \
	fi
	rm -rf $(DESTDIR)/usr/src/ksmdev-$(VERSION)
	-rmdir -p --ignore-fail-on-non-empty $(dir $(addprefix $(DESTDIR),$(INSTALLED))) 2>/dev/null

style:
	bash tests/style.sh

.PHONY: all module clean sparse setup check check-debug soak demo demo-qemu bench ksmdevctl \
	preload install uninstall style
