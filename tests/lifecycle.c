// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev lifecycle: register, unregister, close and exit give back every
 * byte of bookkeeping. The global counters are system-wide, so each test
 * takes its own baseline.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <poll.h>
#include <sys/prctl.h>

#include "ksmdev_test.h"

FIXTURE(lifecycle) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	struct ksm_stats base;
};

FIXTURE_SETUP(lifecycle)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &self->base));
}

FIXTURE_TEARDOWN(lifecycle)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Wait (10 s at most) for the bookkeeping counters to be back at @base. */
static void expect_back_to(struct __test_metadata *_metadata, int fd,
			   const struct ksm_stats *base)
{
	struct ksm_stats s;
	int ret = ksm_wait_bookkeeping(fd, base, &s, 10);

	EXPECT_EQ(0, ret);
	EXPECT_EQ(base->regions, s.regions);
	EXPECT_EQ(base->mms, s.mms);
	EXPECT_EQ(base->registered_pages, s.registered_pages);
	EXPECT_EQ(base->metadata_bytes, s.metadata_bytes);
}

/* The global counters, relative to @base. */
static void expect_global(struct __test_metadata *_metadata, int fd,
			  const struct ksm_stats *base, uint64_t mms,
			  uint64_t regions, uint64_t pages)
{
	struct ksm_stats s;

	ASSERT_EQ(0, ksm_get_stats(fd, &s));
	EXPECT_EQ(base->mms + mms, s.mms);
	EXPECT_EQ(base->regions + regions, s.regions);
	EXPECT_EQ(base->registered_pages + pages, s.registered_pages);
	if (regions) {
		EXPECT_LT(base->metadata_bytes, s.metadata_bytes);
	} else if (!mms) {
		EXPECT_EQ(base->metadata_bytes, s.metadata_bytes);
	}
}

/* This context's counters, and the same seen globally. */
static void expect_counts(struct __test_metadata *_metadata, int fd,
			  const struct ksm_stats *base, uint64_t mms,
			  uint64_t regions, uint64_t pages)
{
	struct ksm_mm_stats ms;

	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(regions, ms.regions);
	EXPECT_EQ(pages, ms.registered_pages);
	expect_global(_metadata, fd, base, mms, regions, pages);
}

TEST_F(lifecycle, register_unregister_reregister)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(16 * ps);
	int i;

	ASSERT_NE(NULL, p);
	ksm_fill_pages(p, 16, 1);
	for (i = 0; i < 3; i++) {
		ASSERT_EQ(0, ksm_register(self->fd, p, 16 * ps, 0));
		expect_counts(_metadata, self->fd, &self->base, 0, 1, 16);
		ASSERT_EQ(0, ksm_unregister(self->fd, p, 16 * ps));
		expect_counts(_metadata, self->fd, &self->base, 0, 0, 0);
	}
	for (i = 0; i < 16; i++) {
		EXPECT_TRUE(ksm_check_page(p, i, 1));
	}
	munmap(p, 16 * ps);
}

TEST_F(lifecycle, mm_stats_follow)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(16 * ps);

	ASSERT_NE(NULL, p);
	ksm_fill_pages(p, 16, 2);
	ASSERT_EQ(0, ksm_register(self->fd, p, ps, 0));
	expect_counts(_metadata, self->fd, &self->base, 0, 1, 1);
	ASSERT_EQ(0, ksm_register(self->fd, p + 2 * ps, 3 * ps,
				  KSM_REGION_SCOPE_MM));
	expect_counts(_metadata, self->fd, &self->base, 0, 2, 4);
	ASSERT_EQ(0, ksm_register(self->fd, p + 8 * ps, 8 * ps, 0));
	expect_counts(_metadata, self->fd, &self->base, 0, 3, 12);
	ASSERT_EQ(0, ksm_unregister(self->fd, p + 2 * ps, 3 * ps));
	expect_counts(_metadata, self->fd, &self->base, 0, 2, 9);
	/* Failed calls change nothing. */
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p + 7 * ps, 2 * ps, 0));
	EXPECT_EQ(-EINVAL, ksm_unregister(self->fd, p + 8 * ps, ps));
	expect_counts(_metadata, self->fd, &self->base, 0, 2, 9);
	ASSERT_EQ(0, ksm_unregister(self->fd, p, 16 * ps));
	expect_counts(_metadata, self->fd, &self->base, 0, 0, 0);
	munmap(p, 16 * ps);
}

TEST_F(lifecycle, close_with_regions)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(32 * ps);
	int fd2, i;

	ASSERT_NE(NULL, p);
	ksm_fill_pages(p, 32, 3);
	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ksm_register(fd2, p, 16 * ps, 0));
	ASSERT_EQ(0, ksm_register(fd2, p + 16 * ps, 16 * ps, KSM_REGION_SCOPE_MM));
	expect_counts(_metadata, fd2, &self->base, 1, 2, 32);
	ASSERT_EQ(0, close(fd2));
	expect_back_to(_metadata, self->fd, &self->base);
	/* The memory is the process's as before. */
	for (i = 0; i < 32; i++) {
		EXPECT_TRUE(ksm_check_page(p, i, 3));
	}
	ksm_fill_pages(p, 32, 4);
	for (i = 0; i < 32; i++) {
		EXPECT_TRUE(ksm_check_page(p, i, 4));
	}
	munmap(p, 32 * ps);
}

TEST_F(lifecycle, two_fds_two_contexts)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(8 * ps);
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int fd2, fd3;

	ASSERT_NE(NULL, p);
	fd2 = ksm_open();
	fd3 = ksm_open();
	ASSERT_LE(0, fd2);
	ASSERT_LE(0, fd3);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 2, s.mms);
	ASSERT_EQ(0, ksm_register(fd2, p, 2 * ps, 0));
	ASSERT_EQ(0, ksm_register(fd3, p + 4 * ps, 4 * ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(fd2, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(2, ms.registered_pages);
	ASSERT_EQ(0, ksm_get_mm_stats(fd3, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(4, ms.registered_pages);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.regions);
	/* A region belongs to its context. */
	EXPECT_EQ(-ENOENT, ksm_unregister(fd2, p + 4 * ps, 4 * ps));
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p, 2 * ps));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.regions + 2, s.regions);
	EXPECT_EQ(self->base.registered_pages + 6, s.registered_pages);
	close(fd2);
	ASSERT_EQ(0, ksm_get_mm_stats(fd3, &ms));
	EXPECT_EQ(1, ms.regions);
	close(fd3);
	expect_back_to(_metadata, self->fd, &self->base);
	munmap(p, 8 * ps);
}

/*
 * Overlap is refused across the contexts of one mm (hardening item 4: a
 * page registered twice was counted twice); once the first context lets
 * the range go, the second may take it.
 */
TEST_F(lifecycle, same_range_two_contexts)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(8 * ps);
	int fd2;

	ASSERT_NE(NULL, p);
	ksm_fill_pages(p, 8, 5);
	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ksm_register(self->fd, p, 8 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(fd2, p, 8 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(fd2, p + 7 * ps, 2 * ps, 0));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, 8 * ps));
	EXPECT_EQ(0, ksm_register(fd2, p, 8 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p, ps, 0));
	EXPECT_EQ(0, ksm_unregister(fd2, p, 8 * ps));
	close(fd2);
	expect_back_to(_metadata, self->fd, &self->base);
	munmap(p, 8 * ps);
}

TEST_F_TIMEOUT(lifecycle, open_register_close_cycles, 300)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(8 * ps);
	int i, fd;

	ASSERT_NE(NULL, p);
	ksm_fill_pages(p, 8, 6);
	for (i = 0; i < 1000; i++) {
		fd = ksm_open();
		ASSERT_LE(0, fd) TH_LOG("cycle %d", i);
		ASSERT_EQ(0, ksm_register(fd, p, 4 * ps, 0)) TH_LOG("cycle %d", i);
		ASSERT_EQ(0, ksm_register(fd, p + 4 * ps, 4 * ps, 0));
		if (i % 2) {
			ASSERT_EQ(0, ksm_unregister(fd, p, 4 * ps));
		}
		ASSERT_EQ(0, close(fd));
	}
	expect_back_to(_metadata, self->fd, &self->base);
	munmap(p, 8 * ps);
}

/* ---- a child process that registers memory, then exits ---- */

enum {
	HOLD_MLOCK	= 1 << 0,	/* mlockall() before mmap + register */
	HOLD_BUSY	= 1 << 1,	/* keep writing its pages until killed */
	HOLD_NOWAIT	= 1 << 2,	/* exit as soon as registered */
};

struct holder {
	pid_t pid;
	int go;		/* closing it lets the child exit */
};

/* In the child: map, fill and register @npages; 0 or the failed step. */
static int holder_setup(size_t npages, int flags, char **pp)
{
	size_t ps = ksm_page_size();
	char *p;
	int fd;

	if ((flags & HOLD_MLOCK) && mlockall(MCL_CURRENT | MCL_FUTURE))
		return 1;
	fd = ksm_open();
	if (fd < 0)
		return 2;
	p = ksm_mmap_anon(npages * ps);
	if (!p)
		return 3;
	ksm_fill_pages(p, npages, getpid());
	if (ksm_register(fd, p, npages * ps, 0))
		return 4;
	*pp = p;
	return 0;
}

static void holder_main(pid_t parent, int ready, int go, size_t npages,
			int flags)
{
	size_t ps = ksm_page_size(), i;
	unsigned char err;
	char c, *p = NULL;

	/* Never outlive a test that bailed out. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		_exit(9);
	err = holder_setup(npages, flags, &p);
	if (write(ready, &err, 1) != 1 || err)
		_exit(10 + err);
	if (flags & HOLD_BUSY)
		for (;;)
			for (i = 0; i < npages; i++)
				p[i * ps]++;
	if (!(flags & HOLD_NOWAIT))
		while (read(go, &c, 1) > 0)
			;
	_exit(0);
}

/*
 * Start a holder and wait (30 s at most) until it has registered: 0, -errno,
 * or the step holder_setup() failed at; on failure the child is reaped.
 */
static int holder_start(struct holder *h, size_t npages, int flags)
{
	int ready[2], go[2];
	pid_t parent = getpid();
	struct pollfd pfd;
	unsigned char err;
	int ret = 0;

	if (pipe(ready) || pipe(go))
		return -errno;
	h->pid = fork();
	if (h->pid < 0)
		return -errno;
	if (h->pid == 0) {
		close(ready[0]);
		close(go[1]);
		holder_main(parent, ready[1], go[0], npages, flags);
	}
	close(ready[1]);
	close(go[0]);
	h->go = go[1];
	pfd = (struct pollfd){ .fd = ready[0], .events = POLLIN };
	if (poll(&pfd, 1, 30000) != 1 || read(ready[0], &err, 1) != 1)
		ret = -ETIMEDOUT;
	else if (err)
		ret = err;
	close(ready[0]);
	if (ret) {
		close(h->go);
		kill(h->pid, SIGKILL);
		waitpid(h->pid, NULL, 0);
	}
	return ret;
}

static void run_exit_test(struct __test_metadata *_metadata, int fd,
			  const struct ksm_stats *base, int flags, int sig)
{
	const size_t npages = 512;
	struct holder h;
	int status;

	ASSERT_EQ(0, ksm_set_fast_config(fd));
	ASSERT_EQ(0, holder_start(&h, npages, flags));
	if (!(flags & HOLD_NOWAIT))
		expect_global(_metadata, fd, base, 1, 1, npages);
	/* Let the scanner walk the child's pages before it goes. */
	EXPECT_EQ(0, ksm_wait_pages_scanned(fd, 2 * npages, 60));
	if (sig)
		kill(h.pid, sig);
	close(h.go);
	ASSERT_EQ(0, ksm_waitpid_timeout(h.pid, &status, 30))
		TH_LOG("child did not exit within 30 s");
	if (sig) {
		EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == sig);
	} else {
		EXPECT_EQ(0, ksm_exit_code(status));
	}
	expect_back_to(_metadata, fd, base);
}

TEST_F_TIMEOUT(lifecycle, exit_normal, 180)
{
	run_exit_test(_metadata, self->fd, &self->base, 0, 0);
}

TEST_F_TIMEOUT(lifecycle, exit_sigkill_busy, 180)
{
	run_exit_test(_metadata, self->fd, &self->base, HOLD_BUSY, SIGKILL);
}

/* seed 000: exit_mmap() munlocking an mlock'ed mm must not wait on us. */
TEST_F_TIMEOUT(lifecycle, exit_mlockall, 180)
{
	run_exit_test(_metadata, self->fd, &self->base, HOLD_MLOCK, 0);
}

/* seed 000 again, by SIGKILL while the scanner is busy on the child. */
TEST_F_TIMEOUT(lifecycle, exit_mlockall_sigkill_busy, 180)
{
	run_exit_test(_metadata, self->fd, &self->base, HOLD_MLOCK | HOLD_BUSY,
		      SIGKILL);
}

/* The same, many times, exiting while the scanner is on the child's pages. */
TEST_F_TIMEOUT(lifecycle, exit_mlockall_churn, 300)
{
	struct holder h;
	int i, status;

	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	for (i = 0; i < 20; i++) {
		ASSERT_EQ(0, holder_start(&h, 256, HOLD_MLOCK | HOLD_NOWAIT))
			TH_LOG("child %d", i);
		close(h.go);
		ASSERT_EQ(0, ksm_waitpid_timeout(h.pid, &status, 30))
			TH_LOG("child %d did not exit within 30 s", i);
		EXPECT_EQ(0, ksm_exit_code(status));
	}
	expect_back_to(_metadata, self->fd, &self->base);
}

TEST_HARNESS_MAIN
