// SPDX-License-Identifier: GPL-2.0
/*
 * KSM_MERGE_REGION (ABI.md, "Merge now"): the caller merges a range at first
 * sight, on its own CPU, whatever run is. Every rule and error code of that
 * section has an assertion here.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/syscall.h>
#include <sys/time.h>

#include "ksmdev_test.h"

#ifndef SYS_pidfd_open
#define SYS_pidfd_open 434
#endif

FIXTURE(mergenow) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	struct ksm_stats base;
};

/* run=0: nothing but the calls of the test merges. */
FIXTURE_SETUP(mergenow)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG("open: %s", strerror(-self->fd));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &self->base));
}

FIXTURE_TEARDOWN(mergenow)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

static int merge_now(int fd, const void *addr, uint64_t len, uint64_t flags)
{
	return ksm_region_ioctl(fd, KSM_MERGE_REGION, addr, len, flags);
}

static char *map_vals(size_t npages, uint64_t val)
{
	char *p = ksm_mmap_anon(npages * ksm_page_size());

	if (p)
		ksm_fill_vals(p, 0, npages, val);
	return p;
}

/*
 * The example: two processes with 64 identical pages each, run=0;
 * one call each, and all 128 map one page. No pass of the scanner ran.
 */
TEST_F(mergenow, two_processes_run0)
{
	const size_t n = 64;
	uint64_t pfns[64], cpfns[64];
	struct ksm_mm_stats ms;
	struct ksm_child ch;
	struct ksm_stats st;
	char *p = map_vals(n, 0x6e6f77);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_child_start(&ch, n, 0x6e6f77, 0));

	EXPECT_EQ((int)n, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ((int64_t)n, ksm_child_call(&ch, KSM_CHILD_MERGE, 0, 0, NULL, 0));
	ASSERT_EQ(0, ksm_child_pfns(&ch, cpfns));
	EXPECT_EQ(n, ksm_count_eq(cpfns, n, pfns[0]));
	EXPECT_EQ(0, ksm_child_check(&ch));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, 0x6e6f77));

	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_EQ(self->base.pages_shared + 1, st.pages_shared);
	EXPECT_EQ(self->base.pages_sharing + 2 * n - 1, st.pages_sharing);
	/* Not the scanner's work: run=0, and pages_scanned is ksmd's. */
	EXPECT_EQ(self->base.full_scans, st.full_scans);
	EXPECT_EQ(self->base.pages_scanned, st.pages_scanned);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(n, ms.merging_pages);

	/* A second call finds them merged: the same count, nothing new. */
	EXPECT_EQ((int)n, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_EQ(self->base.pages_shared + 1, st.pages_shared);
	EXPECT_EQ(0, ksm_child_stop(&ch));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n * self->ps);
}

/*
 * First sight: a page rewritten after a merge (a COW break) merges again
 * on the very next call, without a second visit; a page that differs is
 * left alone, and the count returned is of the range only.
 */
TEST_F(mergenow, first_sight_after_write)
{
	const size_t n = 32;
	char *p = map_vals(n, 0x6669);
	uint64_t pfns[32];

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ASSERT_EQ((int)n, merge_now(self->fd, p, n * self->ps, 0));

	ksm_fill_val(p, 3, 0x1234);		/* COW, new content */
	ksm_fill_val(p, 5, 0x5678);
	ksm_fill_val(p, 5, 0x6669);		/* COW, the old content */
	EXPECT_EQ((int)n - 1, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(n - 1, ksm_count_eq(pfns, n, pfns[0]));
	EXPECT_NE(pfns[0], pfns[3]);
	EXPECT_EQ(pfns[0], pfns[5]);
	EXPECT_TRUE(ksm_check_val(p, 3, 0x1234));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 5, 1, 0x6669));

	/* Part of the range: the pages of that part only. */
	EXPECT_EQ(4, merge_now(self->fd, p + 8 * self->ps, 4 * self->ps, 0));
	EXPECT_EQ(3, merge_now(self->fd, p + 2 * self->ps, 4 * self->ps, 0));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n * self->ps);
}

/*
 * Pages outside registered regions are left alone, however identical: the
 * range may span registered and unregistered memory, and holes.
 */
TEST_F(mergenow, outside_regions_left_alone)
{
	const size_t n = 48;
	char *p = map_vals(n, 0x6f7574);
	uint64_t pfns[48];

	ASSERT_NE(NULL, p);
	/* Registered: [8, 16) and [24, 32); a hole at [40, 44). */
	ASSERT_EQ(0, ksm_register(self->fd, p + 8 * self->ps, 8 * self->ps, 0));
	ASSERT_EQ(0, ksm_register(self->fd, p + 24 * self->ps, 8 * self->ps, 0));
	ASSERT_EQ(0, munmap(p + 40 * self->ps, 4 * self->ps));
	EXPECT_EQ(16, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_pfns(p, 40, pfns));
	EXPECT_EQ(16, ksm_count_eq(pfns, 40, pfns[8]));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, 8));
	EXPECT_NE(pfns[8], pfns[16]);
	EXPECT_EQ(pfns[8], pfns[31]);

	/* Nothing registered in the range: 0, not an error. */
	EXPECT_EQ(0, merge_now(self->fd, p, 8 * self->ps, 0));
	EXPECT_EQ(0, ksm_unregister(self->fd, p + 8 * self->ps, 8 * self->ps));
	EXPECT_EQ(0, ksm_unregister(self->fd, p + 24 * self->ps, 8 * self->ps));
	munmap(p, 40 * self->ps);
	munmap(p + 44 * self->ps, 4 * self->ps);
}

/*
 * The count is of pages mapped when the call returns: a hole punched
 * since the last call counts no more (review: slots of holes were kept).
 */
TEST_F(mergenow, count_after_munmap)
{
	const size_t n = 32;
	char *p = map_vals(n, 0x686f6c65);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ASSERT_EQ((int)n, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, munmap(p + n / 2 * self->ps, n / 2 * self->ps));
	EXPECT_EQ((int)n / 2, merge_now(self->fd, p, n * self->ps, 0));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n / 2 * self->ps);
}

/*
 * With run=0 no pass resets the unstable tree: calls on pages rewritten
 * in between must not pile up nodes (review: 25k nodes after 400 calls on
 * 64 pages). A context keeps at most about one per registered page.
 */
TEST_F(mergenow, unstable_nodes_bounded)
{
	const size_t n = 64, rounds = 300;
	char *p = ksm_mmap_anon(n * self->ps);
	struct ksm_mm_stats ms;
	uint64_t first;
	size_t r;

	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, 1);
	for (r = 0; r < n; r++)
		ksm_fill_val(p, r, 0x10000 + r);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	first = ms.metadata_bytes;
	for (r = 1; r <= rounds; r++) {
		size_t i;

		for (i = 0; i < n; i++)
			ksm_fill_val(p, i, (r << 20) + i);
		ASSERT_EQ(0, merge_now(self->fd, p, n * self->ps, 0));
	}
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	/* Two nodes' worth per page at most (a node is under 128 bytes). */
	EXPECT_GT(first + 2 * n * 128, ms.metadata_bytes)
		TH_LOG("metadata_bytes %llu after one call, %llu after %zu",
		       (unsigned long long)first,
		       (unsigned long long)ms.metadata_bytes, rounds + 1);
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n * self->ps);
}

/* KSM_REGION_ALL, addr = len = 0: every region of the context. */
TEST_F(mergenow, whole_context)
{
	const size_t n = 16;
	char *a = map_vals(n, 0x616c6c);
	char *b = map_vals(n, 0x616c6c);
	uint64_t pa[16], pb[16];
	int fd2;

	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	ASSERT_EQ(0, ksm_register(self->fd, a, n * self->ps, 0));
	ASSERT_EQ(0, ksm_register(self->fd, b, n * self->ps, 0));
	EXPECT_EQ(2 * (int)n, merge_now(self->fd, NULL, 0, KSM_REGION_ALL));
	ASSERT_EQ(0, ksm_pfns(a, n, pa));
	ASSERT_EQ(0, ksm_pfns(b, n, pb));
	EXPECT_EQ(n, ksm_count_eq(pa, n, pa[0]));
	EXPECT_EQ(n, ksm_count_eq(pb, n, pa[0]));
	EXPECT_EQ(0, ksm_unregister(self->fd, a, n * self->ps));
	EXPECT_EQ(0, ksm_unregister(self->fd, b, n * self->ps));

	/* A context that registered the whole address space (version 2). */
	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	ksm_fill_vals(a, 0, n, 0x616c6d);
	ksm_fill_vals(b, 0, n, 0x616c6d);
	ASSERT_EQ(0, ksm_register(fd2, NULL, 0, KSM_REGION_ALL));
	EXPECT_LE(2 * (int)n, merge_now(fd2, NULL, 0, KSM_REGION_ALL));
	ASSERT_EQ(0, ksm_pfns(a, n, pa));
	ASSERT_EQ(0, ksm_pfns(b, n, pb));
	EXPECT_EQ(n, ksm_count_eq(pa, n, pa[0]));
	EXPECT_EQ(n, ksm_count_eq(pb, n, pa[0]));
	/* And a range of it. */
	EXPECT_EQ((int)n, merge_now(fd2, b, n * self->ps, 0));
	close(fd2);
	munmap(a, n * self->ps);
	munmap(b, n * self->ps);
}

/* use_zero_pages: zero-filled pages merge with the zero page, and count. */
TEST_F(mergenow, zero_pages)
{
	const size_t n = 8;
	char *p = ksm_mmap_anon(n * self->ps);
	struct ksm_mm_stats ms;
	size_t i;

	ASSERT_NE(NULL, p);
	for (i = 0; i < n; i++)
		p[i * self->ps] = 1;	/* fault in, then zero again */
	for (i = 0; i < n; i++)
		p[i * self->ps] = 0;
	ASSERT_EQ(0, ksm_set_use_zero_pages(self->fd, 1));
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	EXPECT_EQ((int)n, merge_now(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(n, ms.ksm_zero_pages);
	EXPECT_EQ(n, ms.merging_pages);
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n * self->ps);
}

/* max_kernel_pages holds: a merge past it is refused and counted. */
TEST_F(mergenow, max_kernel_pages)
{
	const size_t n = 8;
	char *a = map_vals(n, 0x6d6178);
	char *b = map_vals(n, 0x6d6179);
	struct ksm_stats st;

	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	ksm_wait_orphans_reaped(self->fd, 10);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	ASSERT_EQ(0, st.pages_orphaned);
	ASSERT_EQ(0, ksm_set_max_kernel_pages(self->fd, st.pages_shared + 1));
	ASSERT_EQ(0, ksm_register(self->fd, a, n * self->ps, 0));
	ASSERT_EQ(0, ksm_register(self->fd, b, n * self->ps, 0));
	EXPECT_EQ((int)n, merge_now(self->fd, a, n * self->ps, 0));
	EXPECT_EQ(0, merge_now(self->fd, b, n * self->ps, 0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_LT(self->base.stable_nodes_limit_hits, st.stable_nodes_limit_hits);
	EXPECT_EQ(self->base.pages_shared + 1, st.pages_shared);
	EXPECT_EQ(0, ksm_unregister(self->fd, a, n * self->ps));
	EXPECT_EQ(0, ksm_unregister(self->fd, b, n * self->ps));
	munmap(a, n * self->ps);
	munmap(b, n * self->ps);
}

/* Domains hold: merged now, pages still meet only their own domain's. */
TEST_F(mergenow, domains_hold)
{
	const size_t n = 8;
	char *a = map_vals(n, 0x646f6d);
	char *b = map_vals(n, 0x646f6d);
	struct ksm_region r = {
		.addr = (uintptr_t)b, .len = n * self->ps, .domain = 77,
	};
	uint64_t pa[8], pb[8];

	ASSERT_NE(NULL, a);
	ASSERT_NE(NULL, b);
	ASSERT_EQ(0, ksm_register(self->fd, a, n * self->ps, 0));
	ASSERT_EQ(0, ksm_ioctl(self->fd, KSM_REGISTER_REGION, &r));
	EXPECT_EQ(2 * (int)n, merge_now(self->fd, NULL, 0, KSM_REGION_ALL));
	ASSERT_EQ(0, ksm_pfns(a, n, pa));
	ASSERT_EQ(0, ksm_pfns(b, n, pb));
	EXPECT_EQ(n, ksm_count_eq(pa, n, pa[0]));
	EXPECT_EQ(n, ksm_count_eq(pb, n, pb[0]));
	EXPECT_NE(pa[0], pb[0]);
	EXPECT_EQ(0, ksm_unregister(self->fd, a, n * self->ps));
	EXPECT_EQ(0, ksm_unregister(self->fd, b, n * self->ps));
	munmap(a, n * self->ps);
	munmap(b, n * self->ps);
}

/* The argument checks, as for register; the domain is the regions'. */
TEST_F(mergenow, bad_arguments)
{
	size_t ps = self->ps;
	char *p = map_vals(4, 1);
	struct ksm_region r = { .addr = (uintptr_t)p, .len = ps, .domain = 1 };
	uint64_t big[6] = { 0 };

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, 4 * ps, 0));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p + 1, ps, 0));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p, ps + 1, 0));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p, 0, 0));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, (void *)(-2 * ps), 4 * ps, 0));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p, ps, KSM_REGION_ALL));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, NULL, ps, KSM_REGION_ALL));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p, ps, KSM_REGION_SCOPE_MM));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p, ps, KSM_REGION_SPLIT));
	EXPECT_EQ(-EINVAL, merge_now(self->fd, p, ps, 1ULL << 40));
	EXPECT_EQ(-EINVAL, ksm_ioctl(self->fd, KSM_MERGE_REGION, &r));
	ASSERT_EQ(4, merge_now(self->fd, p, 4 * ps, 0));
	/* A version-1 (3-field) structure works; a newer one with a tail: E2BIG. */
	r.domain = 0;
	EXPECT_EQ(1, ksm_ioctl_sized(self->fd, KSM_MERGE_REGION, 24, &r));
	big[0] = (uintptr_t)p;
	big[1] = ps;
	big[5] = 1;
	EXPECT_EQ(-E2BIG, ksm_ioctl_sized(self->fd, KSM_MERGE_REGION,
					   sizeof(big), big));
	big[5] = 0;
	EXPECT_EQ(1, ksm_ioctl_sized(self->fd, KSM_MERGE_REGION, sizeof(big),
				     big));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, 4 * ps));
	munmap(p, 4 * ps);
}

/*
 * Only the opener's mm (EPERM otherwise, as for register): a holder of the
 * file could otherwise read the opener's pages, a guess per call, from the
 * exact count (review). Nothing merged by the refused call.
 */
TEST_F(mergenow, other_holder_eperm)
{
	const size_t n = 8;
	char *p = map_vals(n, 0x686f6c);
	uint64_t pfns[8];
	int status;
	pid_t pid;

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(merge_now(self->fd, p, n * self->ps, 0) == -EPERM ? 0 : 1);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	EXPECT_EQ(0, ksm_exit_code(status));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, n));
	EXPECT_EQ((int)n, merge_now(self->fd, p, n * self->ps, 0));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n * self->ps);
}

/* An attached context whose process exited: ESRCH. */
TEST_F(mergenow, attached_target_gone)
{
	struct ksm_attach at = { 0 };
	int fd2, status;
	pid_t pid;

	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		pause();
		_exit(0);
	}
	at.pidfd = syscall(SYS_pidfd_open, pid, 0);
	ASSERT_LE(0, (int)at.pidfd);
	ASSERT_EQ(0, ksm_ioctl(fd2, KSM_ATTACH_PROCESS, &at));
	ASSERT_EQ(0, ksm_register(fd2, NULL, 0, KSM_REGION_ALL));
	EXPECT_LE(0, merge_now(fd2, NULL, 0, KSM_REGION_ALL));
	ASSERT_EQ(0, kill(pid, SIGKILL));
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	EXPECT_EQ(-ESRCH, merge_now(fd2, NULL, 0, KSM_REGION_ALL));
	close((int)at.pidfd);
	close(fd2);
}

/* ---- EINTR and EBUSY: a long call ---- */

/* Pages for a call that takes a while: fewer on the debug kernel. */
static size_t long_pages(void)
{
	const char *s = getenv("KSMDEV_UNMERGE_MB");
	size_t mb = s && atoi(s) > 0 ? atoi(s) : 384;

	return (mb << 20) / ksm_page_size();
}

static void on_alarm(int sig)
{
	(void)sig;
}

/*
 * A signal: EINTR, and what merged stays merged (the next call finds it
 * and goes on from there).
 */
TEST_F_TIMEOUT(mergenow, signal_eintr, 600)
{
	size_t n = long_pages(), len = n * self->ps, i;
	struct sigaction sa = { .sa_handler = on_alarm };
	struct itimerval it = { .it_value = { .tv_usec = 20000 } };
	struct ksm_mm_stats ms;
	int ret, merged;
	char *p;

	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	/* Unique pages: each is hashed, none merges; pairs merge. */
	for (i = 0; i < n; i++)
		ksm_fill_val(p, i, i / 2);
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ASSERT_EQ(0, sigaction(SIGALRM, &sa, NULL));	/* no SA_RESTART */
	ASSERT_EQ(0, setitimer(ITIMER_REAL, &it, NULL));
	ret = merge_now(self->fd, p, len, 0);
	EXPECT_EQ(-EINTR, ret) TH_LOG("a %zu MiB call took less than 20 ms?",
				      len >> 20);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	merged = (int)ms.merging_pages;
	EXPECT_GT((int)n, merged);
	/* The rest, and the count covers what the first call merged. */
	ret = merge_now(self->fd, p, len, 0);
	EXPECT_EQ((int)n, ret);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(n, ms.merging_pages);
	TH_LOG("%d of %zu pages merged before the signal", merged, n);
	signal(SIGALRM, SIG_DFL);
	EXPECT_EQ(0, ksm_unregister(self->fd, p, len));
	munmap(p, len);
}

struct unmerge_all_arg {
	int fd;
	int ret;
	volatile bool done;
};

static void *unmerge_all_thread(void *data)
{
	struct unmerge_all_arg *a = data;

	a->ret = ksm_set_run(a->fd, KSM_RUN_UNMERGE);
	a->done = true;
	return NULL;
}

/*
 * During an unmerge-all (run=2): EBUSY, and nothing merged behind it. A
 * big merged region keeps the unmerge busy for a while; a small one is
 * merged now over and over meanwhile.
 */
TEST_F_TIMEOUT(mergenow, busy_during_unmerge_all, 600)
{
	size_t n = long_pages(), len = n * self->ps;
	struct unmerge_all_arg a = { .fd = self->fd };
	unsigned long busy = 0, calls = 0;
	struct ksm_mm_stats ms;
	pthread_t t;
	char *big, *small;
	int fd2, ret;

	big = map_vals(n, 0x627573);
	small = map_vals(8, 0x736d6c);
	ASSERT_NE(NULL, big);
	ASSERT_NE(NULL, small);
	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ksm_register(self->fd, big, len, 0));
	ASSERT_EQ(0, ksm_register(fd2, small, 8 * self->ps, 0));
	ASSERT_EQ((int)n, merge_now(self->fd, big, len, 0));

	/*
	 * Calls until 100 of them were refused: the last one was, so none
	 * merged after the unmerge-all began (a call after it ends may merge:
	 * run=2 is over then).
	 */
	ASSERT_EQ(0, pthread_create(&t, NULL, unmerge_all_thread, &a));
	while (!a.done && busy < 100) {
		ret = merge_now(fd2, small, 8 * self->ps, 0);
		calls++;
		if (ret == -EBUSY)
			busy++;
		else
			EXPECT_EQ(8, ret);
	}
	pthread_join(t, NULL);
	EXPECT_EQ(0, a.ret);
	EXPECT_EQ(100, busy) TH_LOG("%lu calls during the unmerge-all", calls);
	TH_LOG("%lu calls, %lu EBUSY", calls, busy);
	/* Every page private again, the small region's too. */
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.merging_pages);
	ASSERT_EQ(0, ksm_get_mm_stats(fd2, &ms));
	EXPECT_EQ(0, ms.merging_pages);
	/* run=2 stays; merging now still works (whatever run is). */
	EXPECT_EQ(8, merge_now(fd2, small, 8 * self->ps, 0));
	close(fd2);
	EXPECT_EQ(0, ksm_unregister(self->fd, big, len));
	munmap(big, len);
	munmap(small, 8 * self->ps);
}

TEST_HARNESS_MAIN
