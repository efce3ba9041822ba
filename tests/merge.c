// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev merge engine: identical pages merge into one read-only page (one
 * PFN), within a process and across processes; a write gets a private copy;
 * fork, THP, zero pages, unregister, run=2, max_kernel_pages, per-mm scope,
 * mlock and writers racing the scanner behave as ABI.md says. Truth comes
 * from userspace: PFNs in /proc/self/pagemap, page contents, the counters.
 *
 * The program runs alone in the guest: once the contexts of earlier tests
 * are closed, the global merge counters are 0, so every test starts from 0
 * (the fixture checks it) and expects exact values. Every wait is bounded.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <pthread.h>

#include "ksmdev_test.h"

#define WAIT_S		120	/* the bound of every wait for merging */

/* Page contents (ksm_fill_val()): values above 255 are patterns. */
#define VAL_A		0x1a00
#define VAL_B		0x1b00
#define VAL_UNIQ	0x10000	/* + i: unique pages */

FIXTURE(merge) {
	int fd;
	size_t ps;
};

FIXTURE_SETUP(merge)
{
	struct ksm_stats s;
	int ret;

	self->ps = ksm_page_size();
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	/* The contexts of earlier tests may take a moment to go. */
	ret = ksm_wait_merge_idle(self->fd, &s, 10);
	if (ret)
		ksm_log_stats(_metadata, "at start", &s);
	ASSERT_EQ(0, ret) TH_LOG("the merge counters are not 0 at start");
}

FIXTURE_TEARDOWN(merge)
{
	EXPECT_EQ(0, ksm_set_default_config(self->fd));
	close(self->fd);
}

/* Wait @n more full scans (the state has settled), then read the counters. */
static void settle(struct __test_metadata *_metadata, int fd, uint64_t n,
		   struct ksm_stats *s)
{
	ASSERT_EQ(0, ksm_wait_full_scans(fd, n, WAIT_S))
		TH_LOG("full_scans did not advance by %llu in %d s",
		       (unsigned long long)n, WAIT_S);
	ASSERT_EQ(0, ksm_get_stats(fd, s));
}

static void expect_mm(struct __test_metadata *_metadata, int fd,
		      uint64_t merging, uint64_t zero)
{
	struct ksm_mm_stats ms;

	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(merging, ms.merging_pages);
	EXPECT_EQ(zero, ms.ksm_zero_pages);
}

/* Map @npages pages of content @val and register them. */
static char *map_same(struct __test_metadata *_metadata, int fd,
		      size_t npages, uint64_t val, uint64_t flags)
{
	char *p = ksm_mmap_anon(npages * ksm_page_size());

	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, val);
	ASSERT_EQ(0, ksm_register(fd, p, npages * ksm_page_size(), flags));
	return p;
}

/*
 * Map @npages identical pages, register them and wait until they are one
 * merged page (alone in the system); its PFN goes to *@kpfn.
 */
static char *map_merged(struct __test_metadata *_metadata, int fd,
			size_t npages, uint64_t val, uint64_t *kpfn)
{
	uint64_t *pfns = calloc(npages, sizeof(*pfns));
	char *p;

	ASSERT_NE(NULL, pfns);
	p = map_same(_metadata, fd, npages, val, 0);
	ksm_assert_merged(_metadata, fd, 1, npages - 1, 0, npages);
	ASSERT_EQ(0, ksm_pfns(p, npages, pfns));
	ASSERT_TRUE(ksm_pfns_merged(pfns, npages))
		TH_LOG("%zu distinct PFNs after merging",
		       ksm_count_distinct(pfns, npages));
	*kpfn = pfns[0];
	free(pfns);
	return p;
}

/* The PFN of the zero page: what a read fault on untouched memory maps. */
static uint64_t zero_pfn(struct __test_metadata *_metadata)
{
	char *q = ksm_mmap_anon(ksm_page_size());
	uint64_t pfn;

	ASSERT_NE(NULL, q);
	/* A read fault on untouched memory. */
	ASSERT_EQ(0, *(volatile char *)q);
	pfn = ksm_pfn(q);
	munmap(q, ksm_page_size());
	ASSERT_NE(0, pfn);
	return pfn;
}

/* 1. Identical pages of one process become one page; unique ones stay. */
TEST_F_TIMEOUT(merge, within_process, 180)
{
	const size_t nsame = 64, nuniq = 16, n = nsame + nuniq;
	uint64_t pfns[80];
	struct ksm_stats s;
	size_t i;
	char *p;

	p = ksm_mmap_anon(n * self->ps);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, nsame, VAL_A);
	for (i = 0; i < nuniq; i++)
		ksm_fill_val(p, nsame + i, VAL_UNIQ + i);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ksm_assert_merged(_metadata, self->fd, 1, nsame - 1, 0, nsame);

	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, nsame))
		TH_LOG("%zu distinct PFNs among the identical pages",
		       ksm_count_distinct(pfns, nsame));
	/* The merged page and the unique pages: all different. */
	EXPECT_TRUE(ksm_pfns_distinct(pfns + nsame - 1, nuniq + 1));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, nsame, VAL_A));
	for (i = 0; i < nuniq; i++) {
		EXPECT_TRUE(ksm_check_val(p, nsame + i, VAL_UNIQ + i))
			TH_LOG("unique page %zu changed", i);
	}

	/* Settled: the unique pages are in the unstable tree, none volatile. */
	settle(_metadata, self->fd, 2, &s);
	ksm_log_stats(_metadata, "settled", &s);
	EXPECT_EQ(1, s.pages_shared);
	EXPECT_EQ(nsame - 1, s.pages_sharing);
	EXPECT_EQ(nuniq, s.pages_unshared);
	EXPECT_EQ(0, s.pages_volatile);
	EXPECT_EQ(0, s.ksm_zero_pages);
	expect_mm(_metadata, self->fd, nsame, 0);
	munmap(p, n * self->ps);
}

/* Start @n children of @npages pages each, contents @vals[i], @flags. */
static void start_children(struct __test_metadata *_metadata,
			   struct ksm_child *ch, int n, size_t npages,
			   const uint64_t *vals, uint64_t flags)
{
	int i, ret;

	for (i = 0; i < n; i++) {
		ret = ksm_child_start(&ch[i], npages, vals[i], flags);
		ASSERT_EQ(0, ret) TH_LOG("child %d: %d", i, ret);
	}
}

static void stop_children(struct __test_metadata *_metadata,
			  struct ksm_child *ch, int n)
{
	int i;

	for (i = 0; i < n; i++) {
		EXPECT_EQ(0, ksm_child_check(&ch[i])) TH_LOG("child %d", i);
		EXPECT_EQ(0, ksm_child_stop(&ch[i])) TH_LOG("child %d", i);
	}
}

/* 2a. Two processes with the same pages share one page. */
TEST_F_TIMEOUT(merge, two_processes, 180)
{
	const uint64_t vals[2] = { 'a', 'a' };
	const size_t n = 64;
	uint64_t pfns[2][64];
	struct ksm_child ch[2];
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int i;

	start_children(_metadata, ch, 2, n, vals, 0);
	ksm_assert_merged(_metadata, self->fd, 1, 2 * n - 1, 0, -1);
	settle(_metadata, self->fd, 2, &s);
	ksm_log_stats(_metadata, "2 x 64 pages 'a'", &s);
	EXPECT_EQ(1, s.pages_shared);
	EXPECT_EQ(2 * n - 1, s.pages_sharing);
	EXPECT_EQ(0, s.pages_unshared);
	EXPECT_EQ(0, s.pages_volatile);

	for (i = 0; i < 2; i++) {
		ASSERT_EQ(0, ksm_child_pfns(&ch[i], pfns[i]));
		EXPECT_TRUE(ksm_pfns_merged(pfns[i], n)) TH_LOG("child %d", i);
		ASSERT_EQ(0, ksm_child_mm_stats(&ch[i], &ms));
		EXPECT_EQ(n, ms.merging_pages);
	}
	EXPECT_EQ(pfns[0][0], pfns[1][0]);
	stop_children(_metadata, ch, 2);
	/* Their contexts closed: merged pages leave the counters. */
	EXPECT_EQ(0, ksm_wait_merge_idle(self->fd, &s, 10));
}

/*
 * 2b. The classic sequence of the in-kernel KSM tests, ported: P1 all 'c',
 * P2 and P3 all 'a'; then P3 changes one page to a unique content.
 */
TEST_F_TIMEOUT(merge, three_processes_classic, 240)
{
	const uint64_t vals[3] = { 'c', 'a', 'a' };
	const size_t n = 64;
	uint64_t pfns[3][64];
	struct ksm_child ch[3];
	struct ksm_stats s;
	int i;

	start_children(_metadata, ch, 3, n, vals, 0);
	ksm_assert_merged(_metadata, self->fd, 2, 3 * n - 2, 0, -1);
	settle(_metadata, self->fd, 2, &s);
	ksm_log_stats(_metadata, "'c', 'a', 'a' (3 x 64 pages)", &s);
	EXPECT_EQ(2, s.pages_shared);
	EXPECT_EQ(3 * n - 2, s.pages_sharing);
	EXPECT_EQ(0, s.pages_unshared);
	EXPECT_EQ(0, s.pages_volatile);
	for (i = 0; i < 3; i++) {
		ASSERT_EQ(0, ksm_child_pfns(&ch[i], pfns[i]));
		EXPECT_TRUE(ksm_pfns_merged(pfns[i], n)) TH_LOG("child %d", i);
	}
	EXPECT_NE(pfns[0][0], pfns[1][0]);
	EXPECT_EQ(pfns[1][0], pfns[2][0]);

	/* P3: one page becomes unique. */
	ASSERT_EQ(0, ksm_child_set(&ch[2], 0, VAL_UNIQ));
	ksm_assert_merged(_metadata, self->fd, 2, 3 * n - 3, 0, -1);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	ksm_log_stats(_metadata, "P3 changed one page", &s);
	settle(_metadata, self->fd, 2, &s);
	ksm_log_stats(_metadata, "two full scans later", &s);
	EXPECT_EQ(2, s.pages_shared);
	EXPECT_EQ(3 * n - 3, s.pages_sharing);
	EXPECT_EQ(1, s.pages_unshared);
	EXPECT_EQ(0, s.pages_volatile);
	ASSERT_EQ(0, ksm_child_pfns(&ch[2], pfns[2]));
	EXPECT_NE(pfns[1][0], pfns[2][0]);
	EXPECT_NE(0, pfns[2][0]);
	EXPECT_TRUE(ksm_pfns_merged(pfns[2] + 1, n - 1));
	EXPECT_EQ(pfns[1][0], pfns[2][1]);
	stop_children(_metadata, ch, 3);
	EXPECT_EQ(0, ksm_wait_merge_idle(self->fd, &s, 10));
}

/* 3. A write to a merged page gives it a private copy; the rest still share. */
TEST_F_TIMEOUT(merge, write_after_merge, 180)
{
	const size_t n = 64, w = 5;
	uint64_t pfns[64], kpfn;
	char *p;

	p = map_merged(_metadata, self->fd, n, VAL_A, &kpfn);
	ksm_fill_val(p, w, VAL_B);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_NE(kpfn, pfns[w]);
	EXPECT_NE(0, pfns[w]);
	EXPECT_EQ(n - 1, ksm_count_eq(pfns, n, kpfn));
	EXPECT_TRUE(ksm_check_val(p, w, VAL_B));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, w, VAL_A));
	EXPECT_EQ(0, ksm_count_bad_vals(p, w + 1, n - w - 1, VAL_A));
	/* The scanner sees the copy at its next visit. */
	ksm_assert_merged(_metadata, self->fd, 1, n - 2, 0, n - 1);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(n - 1, ksm_count_eq(pfns, n, kpfn));
	EXPECT_TRUE(ksm_check_val(p, w, VAL_B));
	munmap(p, n * self->ps);
}

/*
 * In a child forked after merging: the pages read the same through the same
 * PFN; writes give the child private copies. 0, or the failed step.
 */
static int fork_child_check(char *p, size_t n, uint64_t kpfn, size_t nwrite)
{
	uint64_t pfns[64];
	size_t i;

	if (ksm_count_bad_vals(p, 0, n, VAL_A))
		return 1;
	if (ksm_pfns(p, n, pfns) || ksm_count_eq(pfns, n, kpfn) != n)
		return 2;
	ksm_fill_vals(p, 0, nwrite, VAL_B);
	if (ksm_count_bad_vals(p, 0, nwrite, VAL_B) ||
	    ksm_count_bad_vals(p, nwrite, n - nwrite, VAL_A))
		return 3;
	if (ksm_pfns(p, n, pfns))
		return 4;
	for (i = 0; i < nwrite; i++)
		if (pfns[i] == kpfn || !pfns[i])
			return 5;
	if (!ksm_pfns_distinct(pfns, nwrite) ||
	    ksm_count_eq(pfns, n, kpfn) != n - nwrite)
		return 6;
	return 0;
}

/* 4. fork() after merging: the child shares, then copies on write. */
TEST_F_TIMEOUT(merge, fork_after_merge, 180)
{
	const size_t n = 64, nwrite = 8;
	uint64_t pfns[64], kpfn;
	struct ksm_stats s;
	int status;
	pid_t pid;
	char *p;

	p = map_merged(_metadata, self->fd, n, VAL_A, &kpfn);
	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(fork_child_check(p, n, kpfn, nwrite));
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	EXPECT_EQ(0, ksm_exit_code(status))
		TH_LOG("the child failed at step %d", ksm_exit_code(status));

	/* The parent's pages are still merged and intact. */
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(n, ksm_count_eq(pfns, n, kpfn));
	settle(_metadata, self->fd, 2, &s);
	EXPECT_EQ(1, s.pages_shared);
	EXPECT_EQ(n - 1, s.pages_sharing);
	expect_mm(_metadata, self->fd, n, 0);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(n, ksm_count_eq(pfns, n, kpfn));
	munmap(p, n * self->ps);
}

/* THP is usable: "always" or "madvise". */
static bool thp_enabled(void)
{
	char buf[128];

	return ksm_read_text("/sys/kernel/mm/transparent_hugepage/enabled",
			     buf, sizeof(buf)) > 0 && !strstr(buf, "[never]");
}

/* 5. Identical 4 KiB pages inside huge pages: split and merged. */
TEST_F_TIMEOUT(merge, thp_region, 240)
{
	const size_t huge = 2UL << 20, len = 4UL << 20;
	size_t n = len / self->ps;
	long kb_before, kb_after;
	uint64_t *pfns;
	char *raw, *p;

	if (!thp_enabled())
		SKIP(return, "transparent huge pages are not available");
	raw = mmap(NULL, len + huge, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, raw);
	p = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	ASSERT_EQ(0, madvise(p, len, MADV_HUGEPAGE));
	ksm_fill_vals(p, 0, n, VAL_A);
	kb_before = ksm_smaps_kb(p, "AnonHugePages");
	if (kb_before <= 0) {
		munmap(raw, len + huge);
		SKIP(return, "no huge page after touching (AnonHugePages %ld kB)",
		     kb_before);
	}
	TH_LOG("AnonHugePages before merging: %ld kB", kb_before);

	pfns = calloc(n, sizeof(*pfns));
	ASSERT_NE(NULL, pfns);
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n))
		TH_LOG("%zu distinct PFNs", ksm_count_distinct(pfns, n));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	kb_after = ksm_smaps_kb(p, "AnonHugePages");
	TH_LOG("AnonHugePages after merging: %ld kB", kb_after);
	EXPECT_EQ(0, kb_after);
	free(pfns);
	munmap(raw, len + huge);
}

/*
 * Merged pages of a THP region, all written again (COW): khugepaged's work
 * (MADV_COLLAPSE) then makes a huge page of them, with every byte kept; and
 * once its pages are identical again, the scanner splits it and merges them.
 */
TEST_F_TIMEOUT(merge, thp_collapse_after_cow, 240)
{
	const size_t huge = 2UL << 20;
	size_t n = huge / self->ps, i, bad;
	int ret, tries = 0;
	char *raw, *p;
	long kb;

	if (!thp_enabled())
		SKIP(return, "transparent huge pages are not available");
	raw = mmap(NULL, 2 * huge, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, raw);
	p = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	ASSERT_EQ(0, madvise(p, huge, MADV_HUGEPAGE));
	ksm_fill_vals(p, 0, n, VAL_A);
	ASSERT_EQ(0, ksm_register(self->fd, p, huge, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);

	for (i = 0; i < n; i++)
		ksm_fill_val(p, i, VAL_UNIQ + i);
	ksm_assert_merged(_metadata, self->fd, 0, 0, 0, 0);
	/* A scanner's passing page reference makes a collapse fail: retry. */
	while ((ret = madvise(p, huge, MADV_COLLAPSE)) && errno == EAGAIN &&
	       ++tries < 100)
		ksm_sleep_ms(20);
	ASSERT_EQ(0, ret) TH_LOG("MADV_COLLAPSE: %s after %d tries",
				 strerror(errno), tries);
	kb = ksm_smaps_kb(p, "AnonHugePages");
	EXPECT_EQ((long)(huge >> 10), kb);
	for (i = 0, bad = 0; i < n; i++)
		bad += !ksm_check_val(p, i, VAL_UNIQ + i);
	EXPECT_EQ(0, bad) TH_LOG("pages changed by the collapse");
	TH_LOG("collapsed after %d busy tries: AnonHugePages %ld kB", tries, kb);

	ksm_fill_vals(p, 0, n, VAL_B);
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_B));
	EXPECT_EQ(0, ksm_smaps_kb(p, "AnonHugePages"));
	munmap(raw, 2 * huge);
}

/* Map @n pages and make them real zero-filled pages (write faults). */
static char *map_zeroed(struct __test_metadata *_metadata, int fd, size_t n,
			uint64_t zpfn)
{
	uint64_t pfns[64];
	char *p;

	p = ksm_mmap_anon(n * ksm_page_size());
	ASSERT_NE(NULL, p);
	memset(p, 0, n * ksm_page_size());
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	ASSERT_EQ(0, ksm_count_eq(pfns, n, zpfn));
	ASSERT_EQ(0, ksm_count_eq(pfns, n, 0));
	ASSERT_EQ(0, ksm_register(fd, p, n * ksm_page_size(), 0));
	return p;
}

/* 6a. use_zero_pages=0: zero-filled pages merge like any other content. */
TEST_F_TIMEOUT(merge, zero_pages_as_content, 180)
{
	const size_t n = 64;
	uint64_t pfns[64], zpfn;
	char *p;

	zpfn = zero_pfn(_metadata);
	ASSERT_EQ(0, ksm_set_use_zero_pages(self->fd, 0));
	p = map_zeroed(_metadata, self->fd, n, zpfn);
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	expect_mm(_metadata, self->fd, n, 0);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_NE(zpfn, pfns[0]);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, 0));
	munmap(p, n * self->ps);
}

/* 6b. use_zero_pages=1: zero-filled pages map the kernel's zero page. */
TEST_F_TIMEOUT(merge, zero_pages_use_zero_page, 180)
{
	const size_t n = 64, w = 3;
	uint64_t pfns[64], zpfn;
	char *p;

	zpfn = zero_pfn(_metadata);
	ASSERT_EQ(0, ksm_set_use_zero_pages(self->fd, 1));
	p = map_zeroed(_metadata, self->fd, n, zpfn);
	ksm_assert_merged(_metadata, self->fd, 0, 0, n, n);
	expect_mm(_metadata, self->fd, n, n);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(n, ksm_count_eq(pfns, n, zpfn));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, 0));

	/* A write gets a private page; the others stay on the zero page. */
	ksm_fill_val(p, w, VAL_B);
	EXPECT_TRUE(ksm_check_val(p, w, VAL_B));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_NE(zpfn, pfns[w]);
	EXPECT_NE(0, pfns[w]);
	EXPECT_EQ(n - 1, ksm_count_eq(pfns, n, zpfn));
	ksm_assert_merged(_metadata, self->fd, 0, 0, n - 1, n - 1);
	expect_mm(_metadata, self->fd, n - 1, n - 1);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, w, 0));
	EXPECT_EQ(0, ksm_count_bad_vals(p, w + 1, n - w - 1, 0));
	munmap(p, n * self->ps);
}

/* After unmerging: nothing merged is left, and this context has no region. */
static void expect_unmerged_counts(struct __test_metadata *_metadata, int fd,
				   uint64_t regions)
{
	struct ksm_mm_stats ms;
	struct ksm_stats s;

	ASSERT_EQ(0, ksm_get_stats(fd, &s));
	EXPECT_EQ(0, s.pages_shared);
	EXPECT_EQ(0, s.pages_sharing);
	EXPECT_EQ(0, s.ksm_zero_pages);
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(0, ms.merging_pages);
	EXPECT_EQ(0, ms.ksm_zero_pages);
	EXPECT_EQ(regions, ms.regions);
}

/* PFNs of @n pages at @p: present, distinct, none of them @kpfn. */
static void expect_private(struct __test_metadata *_metadata, char *p,
			   size_t n, uint64_t kpfn)
{
	uint64_t pfns[64];

	ASSERT_GE(64, n);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(0, ksm_count_eq(pfns, n, kpfn));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, n))
		TH_LOG("%zu distinct PFNs of %zu, %zu absent",
		       ksm_count_distinct(pfns, n), n, ksm_count_eq(pfns, n, 0));
}

/* 7a. Unregistering gives every merged page a private copy. */
TEST_F_TIMEOUT(merge, unregister_unmerges, 180)
{
	const size_t n = 64;
	uint64_t kpfn;
	char *p;

	p = map_merged(_metadata, self->fd, n, VAL_A, &kpfn);
	ASSERT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	expect_private(_metadata, p, n, kpfn);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	expect_unmerged_counts(_metadata, self->fd, 0);
	/* Private and writable in place. */
	ksm_fill_val(p, 0, VAL_B);
	EXPECT_TRUE(ksm_check_val(p, 0, VAL_B));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 1, n - 1, VAL_A));
	munmap(p, n * self->ps);
}

/*
 * 7b. The same with part of the region dropped by MADV_DONTNEED: once seen
 * by the scanner (the counters follow), once just before unregistering.
 */
TEST_F_TIMEOUT(merge, unregister_after_dontneed, 180)
{
	const size_t n = 64, seen = 16, unseen = 8, gone = seen + unseen;
	uint64_t pfns[64], kpfn;
	char *p;

	p = map_merged(_metadata, self->fd, n, VAL_A, &kpfn);
	ASSERT_EQ(0, madvise(p, seen * self->ps, MADV_DONTNEED));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(seen, ksm_count_eq(pfns, n, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - seen - 1, 0, n - seen);

	ASSERT_EQ(0, madvise(p + seen * self->ps, unseen * self->ps,
			     MADV_DONTNEED));
	ASSERT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	expect_unmerged_counts(_metadata, self->fd, 0);
	expect_private(_metadata, p + gone * self->ps, n - gone, kpfn);
	EXPECT_EQ(0, ksm_count_bad_vals(p, gone, n - gone, VAL_A));
	/* Dropped pages read back as zeros. */
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, gone, 0));
	munmap(p, n * self->ps);
}

/* 7c. The same for a region made read-only (mprotect) after merging. */
TEST_F_TIMEOUT(merge, unregister_read_only, 180)
{
	const size_t n = 64;
	uint64_t kpfn;
	char *p;

	p = map_merged(_metadata, self->fd, n, VAL_A, &kpfn);
	ASSERT_EQ(0, mprotect(p, n * self->ps, PROT_READ));
	ASSERT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	expect_private(_metadata, p, n, kpfn);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	expect_unmerged_counts(_metadata, self->fd, 0);
	ASSERT_EQ(0, mprotect(p, n * self->ps, PROT_READ | PROT_WRITE));
	ksm_fill_val(p, 0, VAL_B);
	EXPECT_TRUE(ksm_check_val(p, 0, VAL_B));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 1, n - 1, VAL_A));
	munmap(p, n * self->ps);
}

/* 8. run=2 unmerges everything (zero pages too) and stops; run=1 merges. */
TEST_F_TIMEOUT(merge, run2_unmerges_all, 240)
{
	const size_t n = 64, nz = 16;
	uint64_t pfns[64], kpfn, zpfn;
	struct ksm_config c;
	struct ksm_stats s;
	char *p, *z;

	zpfn = zero_pfn(_metadata);
	ASSERT_EQ(0, ksm_set_use_zero_pages(self->fd, 1));
	p = map_same(_metadata, self->fd, n, VAL_A, 0);
	z = map_zeroed(_metadata, self->fd, nz, zpfn);
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, nz, n + nz);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	ASSERT_TRUE(ksm_pfns_merged(pfns, n));
	kpfn = pfns[0];

	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_UNMERGE));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(KSM_RUN_UNMERGE, c.run);
	expect_unmerged_counts(_metadata, self->fd, 2);
	expect_private(_metadata, p, n, kpfn);
	expect_private(_metadata, z, nz, zpfn);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	EXPECT_EQ(0, ksm_count_bad_vals(z, 0, nz, 0));
	/* Stopped: nothing merges again. */
	ksm_sleep_ms(1000);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(0, s.pages_shared);
	EXPECT_EQ(0, s.pages_sharing);
	EXPECT_EQ(0, s.ksm_zero_pages);

	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, nz, n + nz);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	ASSERT_EQ(0, ksm_pfns(z, nz, pfns));
	EXPECT_EQ(nz, ksm_count_eq(pfns, nz, zpfn));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	EXPECT_EQ(0, ksm_count_bad_vals(z, 0, nz, 0));
	munmap(p, n * self->ps);
	munmap(z, nz * self->ps);
}

/* 9. max_kernel_pages caps the stable pages; the refusals are counted. */
TEST_F_TIMEOUT(merge, max_kernel_pages, 240)
{
	const size_t groups = 8, per = 16, n = groups * per;
	const uint64_t limit = 3;
	uint64_t pfns[128], base_hits, max_shared = 0, end;
	size_t g, nmerged = 0;
	struct ksm_config saved;
	struct ksm_stats s;
	char *p;

	ASSERT_EQ(0, ksm_get_config(self->fd, &saved));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	base_hits = s.stable_nodes_limit_hits;
	ASSERT_EQ(0, ksm_set_max_kernel_pages(self->fd, limit));

	p = ksm_mmap_anon(n * self->ps);
	ASSERT_NE(NULL, p);
	for (g = 0; g < groups; g++)
		ksm_fill_vals(p, g * per, per, VAL_A + g);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));

	/* Poll by hand, to see that pages_shared never goes past the limit. */
	end = ksm_now_ms() + WAIT_S * 1000ULL;
	for (;;) {
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
		if (s.pages_shared > max_shared)
			max_shared = s.pages_shared;
		if (s.pages_shared == limit && s.pages_sharing == limit * (per - 1) &&
		    s.stable_nodes_limit_hits > base_hits)
			break;
		if (ksm_now_ms() > end)
			break;
		ksm_sleep_ms(10);
	}
	ksm_log_stats(_metadata, "max_kernel_pages=3", &s);
	TH_LOG("stable_nodes_limit_hits +%llu, pages_shared at most %llu",
	       (unsigned long long)(s.stable_nodes_limit_hits - base_hits),
	       (unsigned long long)max_shared);
	ASSERT_EQ(limit, s.pages_shared);
	ASSERT_EQ(limit * (per - 1), s.pages_sharing);
	EXPECT_LT(base_hits, s.stable_nodes_limit_hits);
	EXPECT_GE(limit, max_shared);

	base_hits = s.stable_nodes_limit_hits;
	settle(_metadata, self->fd, 2, &s);
	EXPECT_EQ(limit, s.pages_shared);
	EXPECT_EQ(limit * (per - 1), s.pages_sharing);
	EXPECT_LT(base_hits, s.stable_nodes_limit_hits);

	/* Exactly @limit groups share a page each; the others are private. */
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	for (g = 0; g < groups; g++) {
		if (ksm_pfns_merged(pfns + g * per, per)) {
			nmerged++;
		} else {
			EXPECT_TRUE(ksm_pfns_distinct(pfns + g * per, per))
				TH_LOG("group %zu", g);
		}
	}
	EXPECT_EQ(limit, nmerged);
	for (g = 0; g < groups; g++) {
		EXPECT_EQ(0, ksm_count_bad_vals(p, g * per, per, VAL_A + g));
	}

	/* Restored, the other groups merge too. */
	ASSERT_EQ(0, ksm_set_max_kernel_pages(self->fd, saved.max_kernel_pages));
	ksm_assert_merged(_metadata, self->fd, groups, groups * (per - 1), 0, n);
	munmap(p, n * self->ps);
}

/*
 * 10. KSM_REGION_SCOPE_MM: two processes with the same pages never share a
 * page with each other, but each one's own duplicates merge; nor do they
 * share with a third process registering the same content globally.
 */
TEST_F_TIMEOUT(merge, scope_mm, 240)
{
	const uint64_t vals[3] = { VAL_A, VAL_A, VAL_A };
	const size_t n = 32;
	uint64_t pfns[3][32];
	struct ksm_child ch[3];
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int i, round;

	start_children(_metadata, ch, 2, n, vals, KSM_REGION_SCOPE_MM);
	start_children(_metadata, ch + 2, 1, n, vals + 2, 0);
	ksm_assert_merged(_metadata, self->fd, 3, 3 * (n - 1), 0, -1);
	for (round = 0; round < 2; round++) {
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
		ksm_log_stats(_metadata, round ? "two full scans later" : "merged", &s);
		EXPECT_EQ(3, s.pages_shared);
		EXPECT_EQ(3 * (n - 1), s.pages_sharing);
		for (i = 0; i < 3; i++) {
			ASSERT_EQ(0, ksm_child_pfns(&ch[i], pfns[i]));
			EXPECT_TRUE(ksm_pfns_merged(pfns[i], n))
				TH_LOG("child %d", i);
			ASSERT_EQ(0, ksm_child_mm_stats(&ch[i], &ms));
			EXPECT_EQ(n, ms.merging_pages);
		}
		for (i = 0; i < 3; i++) {
			EXPECT_EQ(0, ksm_count_eq(pfns[(i + 1) % 3], n, pfns[i][0]))
				TH_LOG("children %d and %d share a page", i,
				       (i + 1) % 3);
		}
		if (!round)
			settle(_metadata, self->fd, 2, &s);
	}
	stop_children(_metadata, ch, 3);
	EXPECT_EQ(0, ksm_wait_merge_idle(self->fd, &s, 10));
}

/*
 * 11. Pages of an mlock()ed range merge, and stay merged through munlock
 * (no fault). Mlocked accounting: tests/mlock.c.
 */
TEST_F_TIMEOUT(merge, mlocked_merged, 180)
{
	const size_t n = 32;
	uint64_t pfns[32];
	char *p;

	p = ksm_mmap_anon(n * self->ps);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, mlock(p, n * self->ps)) TH_LOG("mlock: %s", strerror(errno));
	ksm_fill_vals(p, 0, n, VAL_A);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	ASSERT_EQ(0, munlock(p, n * self->ps));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_A));
	munmap(p, n * self->ps);
}

/* ---- 12. writers racing the scanner ---- */

#define RACE_THREADS	2
#define RACE_PAGES	256
#define RACE_HOT	32	/* pages of the window most writes go to */
#define RACE_HOT_MS	200	/* how long the window stays */
#define RACE_MIN_MS	20000
#define RACE_MIN_SCANS	30
#define RACE_MAX_MS	90000

static const uint64_t race_vals[] = { VAL_A, VAL_B, 'r', 0x7700 };

struct racer {
	pthread_t thread;
	char *p;		/* RACE_PAGES registered pages */
	char *shadow;		/* their private copy, not registered */
	uint64_t vals[RACE_PAGES];
	uint32_t seed;
	int *stop;
	uint64_t writes;
	uint64_t mismatches;
};

static uint32_t race_rand(uint32_t *x)
{
	*x ^= *x << 13;
	*x ^= *x >> 17;
	*x ^= *x << 5;
	return *x;
}

static bool race_page_ok(struct racer *r, size_t i)
{
	size_t ps = ksm_page_size();

	return !memcmp(r->p + i * ps, r->shadow + i * ps, ps);
}

/*
 * Most writes go to a window of RACE_HOT pages that moves every
 * RACE_HOT_MS (so the others keep still long enough to merge, and a moving
 * window lands on merged pages); one in 16 goes anywhere. Each write is
 * checked at once, and one more page, in turn, after every write. A short
 * pause every 64 writes leaves the scanner some CPU.
 */
static void *racer_main(void *arg)
{
	struct racer *r = arg;
	size_t hot = 0, verify = 0, i;
	uint64_t next_move = ksm_now_ms() + RACE_HOT_MS, val;
	uint32_t x;

	while (!__atomic_load_n(r->stop, __ATOMIC_RELAXED)) {
		x = race_rand(&r->seed);
		val = race_vals[x % ARRAY_SIZE(race_vals)];
		if ((x >> 4) % 16 == 0)
			i = (x >> 8) % RACE_PAGES;
		else
			i = (hot + (x >> 8) % RACE_HOT) % RACE_PAGES;
		ksm_fill_val(r->p, i, val);
		ksm_fill_val(r->shadow, i, val);
		r->vals[i] = val;
		r->writes++;
		r->mismatches += !race_page_ok(r, i);
		r->mismatches += !race_page_ok(r, verify);
		verify = (verify + 1) % RACE_PAGES;
		if (ksm_now_ms() >= next_move) {
			hot = race_rand(&r->seed) % RACE_PAGES;
			next_move += RACE_HOT_MS;
		}
		if (r->writes % 64 == 0)
			ksm_sleep_ms(1);
	}
	for (i = 0; i < RACE_PAGES; i++)
		r->mismatches += !race_page_ok(r, i);
	return NULL;
}

TEST_F_TIMEOUT(merge, writers_race_scanner, 360)
{
	const size_t n = RACE_THREADS * RACE_PAGES;
	uint64_t count[ARRAY_SIZE(race_vals)] = { 0 };
	uint64_t start, elapsed, scans0, writes = 0, mismatches = 0;
	uint64_t max_sharing = 0, shared = 0, sharing = 0;
	struct racer r[RACE_THREADS];
	struct ksm_stats s;
	size_t i, t, v;
	int stop = 0;
	char *p, *shadow;

	p = ksm_mmap_anon(n * self->ps);
	shadow = ksm_mmap_anon(n * self->ps);
	ASSERT_NE(NULL, p);
	ASSERT_NE(NULL, shadow);
	memset(r, 0, sizeof(r));
	for (t = 0; t < RACE_THREADS; t++) {
		r[t].p = p + t * RACE_PAGES * self->ps;
		r[t].shadow = shadow + t * RACE_PAGES * self->ps;
		r[t].seed = 0x9e3779b9U * (t + 1);
		r[t].stop = &stop;
		for (i = 0; i < RACE_PAGES; i++) {
			r[t].vals[i] = race_vals[i % ARRAY_SIZE(race_vals)];
			ksm_fill_val(r[t].p, i, r[t].vals[i]);
			ksm_fill_val(r[t].shadow, i, r[t].vals[i]);
		}
	}
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	scans0 = s.full_scans;
	start = ksm_now_ms();
	for (t = 0; t < RACE_THREADS; t++) {
		ASSERT_EQ(0, pthread_create(&r[t].thread, NULL, racer_main,
					    &r[t]));
	}
	do {
		ksm_sleep_ms(50);
		EXPECT_EQ(0, ksm_get_stats(self->fd, &s));
		if (s.pages_sharing > max_sharing)
			max_sharing = s.pages_sharing;
		elapsed = ksm_now_ms() - start;
	} while (elapsed < RACE_MAX_MS &&
		 (elapsed < RACE_MIN_MS || s.full_scans - scans0 < RACE_MIN_SCANS));
	__atomic_store_n(&stop, 1, __ATOMIC_RELAXED);
	for (t = 0; t < RACE_THREADS; t++) {
		ASSERT_EQ(0, pthread_join(r[t].thread, NULL));
		writes += r[t].writes;
		mismatches += r[t].mismatches;
	}
	ksm_log_stats(_metadata, "at the end of the race", &s);
	TH_LOG("%llu writes by %d threads in %llu ms, %llu full scans, pages_sharing up to %llu, %llu mismatches",
	       (unsigned long long)writes, RACE_THREADS,
	       (unsigned long long)elapsed,
	       (unsigned long long)(s.full_scans - scans0),
	       (unsigned long long)max_sharing,
	       (unsigned long long)mismatches);
	EXPECT_EQ(0, mismatches);
	EXPECT_LT(0, max_sharing) TH_LOG("nothing merged during the race");

	/* Still: every value held by two pages or more is one merged page. */
	for (t = 0; t < RACE_THREADS; t++)
		for (i = 0; i < RACE_PAGES; i++)
			for (v = 0; v < ARRAY_SIZE(race_vals); v++)
				count[v] += r[t].vals[i] == race_vals[v];
	for (v = 0; v < ARRAY_SIZE(race_vals); v++) {
		if (count[v] < 2)
			continue;
		shared++;
		sharing += count[v] - 1;
	}
	ksm_assert_merged(_metadata, self->fd, shared, sharing, 0, shared + sharing);
	for (t = 0; t < RACE_THREADS; t++) {
		for (i = 0; i < RACE_PAGES; i++) {
			EXPECT_TRUE(race_page_ok(&r[t], i))
				TH_LOG("thread %zu page %zu after merging", t, i);
		}
	}
	munmap(p, n * self->ps);
	munmap(shadow, n * self->ps);
}

TEST_HARNESS_MAIN
