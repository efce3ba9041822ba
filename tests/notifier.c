// SPDX-License-Identifier: GPL-2.0
/*
 * Secondary MMUs: merging under an interval notifier that refuses
 * non-blockable invalidations, as GPU userptr, RDMA ODP and Xen gntdev
 * drivers do. ksmdev must send blockable invalidations (a refused one would
 * leave the device mapping the page that the merge frees), every merged
 * page must have been invalidated, and mmu_interval_notifier_remove() must
 * return afterwards (an invalidation ended twice leaves the mm
 * "invalidating" for ever, and remove waits for the end of that).
 *
 * The subscriber is the test suite's own module, tests/kmod/
 * ksmdev_test_notifier.c, which the harness puts in /tests/ and this
 * program loads (in the guest only).
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <sys/syscall.h>

#include "ksmdev_test.h"
#include "kmod/ksmdev_test_notifier.h"

#define TN_MODULE	"/tests/ksmdev_test_notifier.ko"
#define TN_DEV		"/dev/" KSMDEV_TN_DEV_NAME
#define NPAGES		64
#define VAL_A		0x2a00	/* a pattern (ksm_fill_val()) */
#define WAIT_S		120	/* the bound of every wait for merging */
/* Removing a subscription takes microseconds; a hang fails after this. */
#define REMOVE_S	15

/* Load the test module (once per boot) and open its device. */
static int tn_open(void)
{
	uint64_t end = ksm_now_ms() + 10000;
	int fd, ret;

	fd = open(TN_MODULE, O_RDONLY | O_CLOEXEC);
	if (fd < 0)
		return -errno;
	ret = syscall(SYS_finit_module, fd, "", 0);
	ret = ret && errno != EEXIST ? -errno : 0;
	close(fd);
	if (ret)
		return ret;
	/* devtmpfs makes the node at registration; wait a little anyway. */
	for (;;) {
		fd = open(TN_DEV, O_RDWR | O_CLOEXEC);
		if (fd >= 0 || errno != ENOENT || ksm_now_ms() > end)
			return fd >= 0 ? fd : -errno;
		ksm_sleep_ms(10);
	}
}

static int tn_insert(int fd, const void *addr, size_t len)
{
	struct ksmdev_tn_range r = { (uintptr_t)addr, len };

	return ioctl(fd, KSMDEV_TN_INSERT, &r) ? -errno : 0;
}

static int tn_counts(int fd, struct ksmdev_tn_counts *c)
{
	return ioctl(fd, KSMDEV_TN_COUNTS, c) ? -errno : 0;
}

/*
 * Wait at most @timeout_s for the child @pid to exit; then its exit code,
 * -ECHILD if it was killed, or -ETIMEDOUT. A remove that hangs sleeps
 * uninterruptibly, where no signal reaches it: such a child is sent
 * SIGKILL but not waited for (ksm_waitpid_timeout() would wait for ever),
 * and the guest's hung-task check reports it too.
 */
static int wait_child_bounded(pid_t pid, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	int status;
	pid_t r;

	for (;;) {
		r = waitpid(pid, &status, WNOHANG);
		if (r == pid)
			return WIFEXITED(status) ? WEXITSTATUS(status) : -ECHILD;
		if (r < 0)
			return -errno;
		if (ksm_now_ms() > end)
			break;
		ksm_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	return -ETIMEDOUT;
}

/* KSMDEV_TN_REMOVE in a child, bounded: 0, the ioctl's -errno or -ETIMEDOUT. */
static int tn_remove_bounded(int fd, unsigned int timeout_s)
{
	pid_t pid;
	int ret;

	pid = fork();
	if (pid < 0)
		return -errno;
	if (!pid)
		_exit(ioctl(fd, KSMDEV_TN_REMOVE) ? errno : 0);
	ret = wait_child_bounded(pid, timeout_s);
	return ret > 0 ? -ret : ret;
}

FIXTURE(notifier) {
	int fd;		/* /dev/ksm */
	int tn;		/* the test module's device */
	struct ksm_config saved;
	size_t ps;
	char *p;
};

FIXTURE_SETUP(notifier)
{
	struct ksm_stats s;

	self->ps = ksm_page_size();
	self->p = NULL;
	self->tn = tn_open();
	ASSERT_LE(0, self->tn) TH_LOG(TN_MODULE ": %s", strerror(-self->tn));
	self->fd = ksm_open_fast(&self->saved, &s);
	ASSERT_LE(0, self->fd) TH_LOG(KSM_DEV_PATH ": %s", strerror(-self->fd));
	/* The contexts of earlier tests may take a moment to go. */
	ASSERT_EQ(0, ksm_wait_merge_idle(self->fd, &s, 10))
		TH_LOG("the merge counters are not 0 at start");
	self->p = ksm_mmap_anon(NPAGES * self->ps);
	ASSERT_NE(NULL, self->p);
}

FIXTURE_TEARDOWN(notifier)
{
	if (self->fd >= 0) {
		EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
		close(self->fd);
	}
	if (self->p)
		munmap(self->p, NPAGES * self->ps);
	/* A subscription still there (a failed test) is removed by close. */
	if (self->tn >= 0)
		close(self->tn);
}

/*
 * Fill the range (@zero: zero-filled, else NPAGES identical pages),
 * subscribe, register, wait until every page is merged, check the PFNs and
 * the counts, then remove the subscription.
 */
static void merge_under_notifier(struct __test_metadata *_metadata,
				 FIXTURE_DATA(notifier) *self, bool zero)
{
	struct ksmdev_tn_counts before, after;
	uint64_t pfns[NPAGES];
	struct ksm_stats s;
	size_t i;
	int ret;

	/* Written: real pages, zero-filled or not. */
	if (zero)
		memset(self->p, 0, NPAGES * self->ps);
	else
		ksm_fill_vals(self->p, 0, NPAGES, VAL_A);
	ASSERT_EQ(0, ksm_pfns(self->p, NPAGES, pfns));
	ASSERT_TRUE(ksm_pfns_distinct(pfns, NPAGES));

	ASSERT_EQ(0, tn_insert(self->tn, self->p, NPAGES * self->ps));
	ASSERT_EQ(0, tn_counts(self->tn, &before));
	ASSERT_EQ(0, ksm_set_use_zero_pages(self->fd, zero));
	ASSERT_EQ(0, ksm_register(self->fd, self->p, NPAGES * self->ps, 0));

	if (zero)
		ret = ksm_wait_merged(self->fd, 0, 0, NPAGES, &s, WAIT_S);
	else
		ret = ksm_wait_merged(self->fd, 1, NPAGES - 1, 0, &s, WAIT_S);
	ASSERT_EQ(0, ret) TH_LOG("not merged in %d s: pages_shared %llu pages_sharing %llu ksm_zero_pages %llu",
				 WAIT_S, (unsigned long long)s.pages_shared,
				 (unsigned long long)s.pages_sharing,
				 (unsigned long long)s.ksm_zero_pages);
	ASSERT_EQ(0, ksm_pfns(self->p, NPAGES, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, NPAGES))
		TH_LOG("%zu distinct PFNs", ksm_count_distinct(pfns, NPAGES));
	for (i = 0; i < NPAGES; i++)
		ASSERT_TRUE(zero ? !self->p[i * self->ps] :
				   ksm_check_val(self->p, i, VAL_A));

	ASSERT_EQ(0, tn_counts(self->tn, &after));
	TH_LOG("invalidations while merging %d pages: %llu, of which non-blockable %llu",
	       NPAGES,
	       (unsigned long long)(after.invalidations - before.invalidations),
	       (unsigned long long)(after.nonblockable - before.nonblockable));
	/* Every page that merged had its old mapping invalidated first. */
	EXPECT_LE(NPAGES, after.invalidations - before.invalidations);
	EXPECT_EQ(0, after.nonblockable);

	ret = tn_remove_bounded(self->tn, REMOVE_S);
	EXPECT_EQ(0, ret) TH_LOG("mmu_interval_notifier_remove(): %s",
				 ret == -ETIMEDOUT ? "hangs" : strerror(-ret));
	if (ret == -ETIMEDOUT) {
		/* Its release would hang too; leave the fd to the child. */
		self->tn = -1;
		return;
	}
	EXPECT_EQ(0, ksm_unregister(self->fd, self->p, NPAGES * self->ps));
}

/* Identical pages merge into one stable page under the notifier. */
TEST_F_TIMEOUT(notifier, merge_then_remove, 300)
{
	merge_under_notifier(_metadata, self, false);
}

/* use_zero_pages=1: zero-filled pages become the zero page, the same way. */
TEST_F_TIMEOUT(notifier, zero_pages_then_remove, 300)
{
	merge_under_notifier(_metadata, self, true);
}

/*
 * A subscription left in place when its process exits goes with its file,
 * after exit_mmap() has invalidated everything: that remove must not hang
 * either. The process is a child, with its own /dev/ksm and subscription.
 */
TEST_F_TIMEOUT(notifier, merge_then_exit, 300)
{
	struct ksm_stats s;
	int fd, tn, ret;
	pid_t pid;

	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		fd = ksm_open();
		tn = tn_open();
		ksm_fill_vals(self->p, 0, NPAGES, VAL_A);
		if (fd < 0 || tn < 0 ||
		    tn_insert(tn, self->p, NPAGES * self->ps) ||
		    ksm_register(fd, self->p, NPAGES * self->ps, 0))
			_exit(2);
		if (ksm_wait_merged(fd, 1, NPAGES - 1, 0, &s, WAIT_S))
			_exit(3);
		/* Exit with both files open: their release does the rest. */
		_exit(0);
	}
	ret = wait_child_bounded(pid, WAIT_S + REMOVE_S);
	EXPECT_EQ(0, ret) TH_LOG("the child %s", ret == -ETIMEDOUT ?
				 "did not finish (its exit hangs?)" :
				 ret == 3 ? "saw no merge" : "failed");
}

TEST_HARNESS_MAIN
