// SPDX-License-Identifier: GPL-2.0
/*
 * A real hypervisor in the loop: Debian's own qemu-system-x86_64, run twice
 * inside the test guest under libksmdev-preload.so, each with the same
 * kernel image loaded into its guest RAM. QEMU asks for KSM on guest RAM
 * (mem-merge, on by default: madvise(MADV_MERGEABLE)); the library hands
 * that to /dev/ksm, and the two copies of the image merge: pages_sharing
 * grows by at least the image's size in pages.
 *
 * The two guests stay paused (-S): QEMU's generic loader has put the image
 * into their RAM at reset, and software emulation inside software
 * emulation would take minutes to boot them, for nothing this shows.
 *
 * Runs as root in a QEMU guest with ksmdev loaded, QEMU and its libraries
 * and firmware copied into the image (the harness does it for this test);
 * never on a host.
 */
#define _GNU_SOURCE
#include <sys/stat.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#define QEMU		"/usr/bin/qemu-system-x86_64"
#define PRELOAD		"/tests/libksmdev-preload.so"
#define IMAGE		"/boot/inner-kernel"
#define NR_VMS		2
#define WAIT_S		300

FIXTURE(hypervisor) {
	int fd;
	struct ksm_config saved;
	struct ksm_stats base;
};

FIXTURE_SETUP(hypervisor)
{
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &self->base));
}

FIXTURE_TEARDOWN(hypervisor)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Start one paused QEMU with IMAGE in its RAM; its stderr goes to @err. */
static pid_t start_qemu(int err)
{
	pid_t pid = fork();

	if (pid)
		return pid;
	dup2(err, 2);
	setenv("LD_PRELOAD", PRELOAD, 1);
	execl(QEMU, "qemu-system-x86_64", "-S", "-accel", "tcg", "-m", "128M",
	      "-nodefaults", "-display", "none", "-monitor", "none",
	      "-serial", "none", "-machine", "mem-merge=on",
	      "-device", "loader,file=" IMAGE ",addr=0x1000000,force-raw=on",
	      (char *)NULL);
	_exit(127);
}

static bool sharing_at_least(const struct ksm_stats *s, const void *arg)
{
	return s->pages_sharing >= *(const uint64_t *)arg;
}

TEST_F_TIMEOUT(hypervisor, two_qemus_share_the_kernel_image, 600)
{
	uint64_t want, t0 = ksm_now_ms();
	struct ksm_stats s, last;
	pid_t pids[NR_VMS];
	char errbuf[2048];
	struct stat st;
	int i, status, err[2];
	ssize_t n;

	ASSERT_EQ(0, access(QEMU, X_OK)) TH_LOG(QEMU ": %s", strerror(errno));
	ASSERT_EQ(0, stat(IMAGE, &st)) TH_LOG(IMAGE ": %s", strerror(errno));
	ASSERT_EQ(0, pipe(err));
	for (i = 0; i < NR_VMS; i++) {
		pids[i] = start_qemu(err[1]);
		ASSERT_LT(0, pids[i]);
	}
	close(err[1]);

	/* The image's pages, less one at each end that it shares with RAM. */
	want = self->base.pages_sharing + st.st_size / ksm_page_size() - 2;
	EXPECT_EQ(0, ksm_wait_stats(self->fd, sharing_at_least, &want, &last,
				    WAIT_S))
		TH_LOG("pages_sharing %llu, want %llu",
		       (unsigned long long)last.pages_sharing,
		       (unsigned long long)want);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	TH_LOG("%d QEMUs, a %lld KiB image each: %llu contexts, %llu regions, %llu MiB registered; pages_shared %llu, pages_sharing %llu (%llu MiB saved) after %llu ms",
	       NR_VMS, (long long)st.st_size >> 10,
	       (unsigned long long)(s.mms - self->base.mms),
	       (unsigned long long)(s.regions - self->base.regions),
	       (unsigned long long)((s.registered_pages - self->base.registered_pages) *
				    ksm_page_size() >> 20),
	       (unsigned long long)s.pages_shared,
	       (unsigned long long)s.pages_sharing,
	       (unsigned long long)(s.pages_sharing * ksm_page_size() >> 20),
	       (unsigned long long)(ksm_now_ms() - t0));
	EXPECT_EQ(self->base.mms + NR_VMS, s.mms);

	for (i = 0; i < NR_VMS; i++) {
		kill(pids[i], SIGTERM);
		EXPECT_EQ(0, ksm_waitpid_timeout(pids[i], &status, 60));
	}
	n = read(err[0], errbuf, sizeof(errbuf) - 1);
	errbuf[n > 0 ? n : 0] = 0;
	close(err[0]);
	/* No "ksmdev-preload: ...": the library used /dev/ksm. */
	EXPECT_EQ(NULL, strstr(errbuf, "ksmdev-preload")) TH_LOG("%s", errbuf);
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &self->base, &s, 30));
}

TEST_HARNESS_MAIN
