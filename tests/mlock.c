// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev and mlock: pages of an mlock()ed (or mlockall()ed) range merge, as
 * the in-kernel KSM merges them, and Mlocked in /proc/meminfo follows as it
 * does with the in-kernel KSM: the locked pages that merging freed stop
 * counting, the merged page counts once; a COW copy counts, and so does
 * the merged page while a sharer still locks it; munlock, munmap and
 * module unload give everything back, with no "Bad page state" (the
 * harness fails the run on any kernel warning).
 *
 * The same scenario runs with ksmd (madvise(MADV_MERGEABLE), the in-kernel
 * KSM at /sys/kernel/mm/ksm) for comparison: both must give the same
 * numbers. Unevictable is logged, not asserted: ksmd's page sits on the
 * unevictable LRU list, ours on no LRU list at all.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <sched.h>

#include "ksmdev_test.h"

#define WAIT_S		120	/* the bound of every wait for merging */
#define NPAGES		64
#define VAL_LOCK	0x4c00
#define MAGIC		0x6d6c6f636b656421ULL

/* The in-kernel KSM's settings that the ksmd runs change, put back after. */
static const char *const ksmd_knobs[] = { "run", "pages_to_scan",
					  "sleep_millisecs" };

FIXTURE(mlock) {
	int fd;
	size_t ps;
	long pkb;		/* the page size in kB */
	char *dummy;		/* a page to mlock and munlock: see mlocked_kb */
	bool ksmd_saved;
	bool unloaded;		/* ksmdev unloaded: teardown loads it back */
	uint64_t ksmd[3];
	struct ksm_config saved;	/* put back at teardown */
	struct ksm_stats base;
};

FIXTURE_SETUP(mlock)
{
	struct ksm_stats s;
	int ret;

	self->ps = ksm_page_size();
	self->pkb = self->ps / 1024;
	self->ksmd_saved = false;
	self->unloaded = false;
	self->dummy = ksm_mmap_anon(self->ps);
	ASSERT_NE(NULL, self->dummy);
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s",
				      strerror(-self->fd));
	ret = ksm_wait_merge_idle(self->fd, &s, 10);
	if (ret)
		ksm_log_stats(_metadata, "at start", &s);
	ASSERT_EQ(0, ret) TH_LOG("the merge counters are not 0 at start");
}

FIXTURE_TEARDOWN(mlock)
{
	size_t i;

	munlockall();
	if (self->ksmd_saved) {
		/* Unmerge what ksmd merged, then put its settings back. */
		EXPECT_EQ(0, ksm_ksmd_write("run", 2));
		for (i = 0; i < ARRAY_SIZE(ksmd_knobs); i++)
			EXPECT_EQ(0, ksm_ksmd_write(ksmd_knobs[i], self->ksmd[i]));
	}
	if (self->unloaded) {
		EXPECT_EQ(0, ksm_load_module(""));
		self->fd = ksm_open();
	}
	if (self->fd >= 0) {
		EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
		close(self->fd);
	}
}

/*
 * Mlocked as it is once every CPU's pending mlock/munlock batch is drained
 * (mlock() and munlock() of @dummy on each CPU drain that CPU's, in
 * mlock_vma_pages_range(), and do_mlock()'s lru_add_drain() its LRU batch)
 * and every per-CPU counter delta folded in (vm.stat_refresh): what
 * /proc/meminfo shows otherwise lags by up to a stat threshold of pages per
 * CPU. Unevictable, read at the same time, goes to *@unevictable.
 */
static long mlocked_kb(void *dummy, long *unevictable)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN), cpu;
	size_t ps = ksm_page_size();
	cpu_set_t old, one;

	if (sched_getaffinity(0, sizeof(old), &old))
		return -1;
	for (cpu = 0; cpu < ncpu; cpu++) {
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if (sched_setaffinity(0, sizeof(one), &one))
			return -1;
		if (mlock(dummy, ps) || munlock(dummy, ps))
			return -1;
	}
	if (sched_setaffinity(0, sizeof(old), &old) ||
	    ksm_write_str_file("/proc/sys/vm/stat_refresh", "1"))
		return -1;
	if (unevictable)
		*unevictable = ksm_meminfo_kb("Unevictable");
	return ksm_meminfo_kb("Mlocked");
}

/* Who merges: ksmdev (registered) or ksmd (MADV_MERGEABLE). */
enum merger { BY_KSMDEV, BY_KSMD };

/*
 * Mlocked and Unevictable against the baseline, logged with @what; the
 * Mlocked delta, in pages, is returned.
 */
static long locked_pages(struct __test_metadata *_metadata,
			 FIXTURE_DATA(mlock) *self, long base, long ubase,
			 const char *what)
{
	long unev = -1, kb = mlocked_kb(self->dummy, &unev);

	TH_LOG("%-28s Mlocked %+ld kB, Unevictable %+ld kB", what, kb - base,
	       unev - ubase);
	return (kb - base) / self->pkb;
}

/*
 * Wait (bounded) for the Mlocked delta to be @want pages; the delta seen
 * last is returned. The mlock batches are drained at each read, so what
 * can lag is the merging itself, or a correction by the scanner.
 */
static long wait_locked(FIXTURE_DATA(mlock) *self, long base, long want)
{
	uint64_t end = ksm_now_ms() + WAIT_S * 1000ULL;
	long kb;

	for (;;) {
		kb = (mlocked_kb(self->dummy, NULL) - base) / self->pkb;
		if (kb == want || ksm_now_ms() > end)
			return kb;
		ksm_sleep_ms(50);
	}
}

/* Wait (bounded) until the @n pages at @p share @want PFNs: 1, merged. */
static bool wait_pfns(const char *p, size_t n, size_t want, uint64_t *pfns)
{
	uint64_t end = ksm_now_ms() + WAIT_S * 1000ULL;

	for (;;) {
		if (!ksm_pfns(p, n, pfns) && ksm_count_distinct(pfns, n) == want)
			return true;
		if (ksm_now_ms() > end)
			return false;
		ksm_sleep_ms(20);
	}
}

static void ksmd_start(struct __test_metadata *_metadata,
		       FIXTURE_DATA(mlock) *self)
{
	size_t i;

	for (i = 0; i < ARRAY_SIZE(ksmd_knobs); i++)
		ASSERT_EQ(0, ksm_ksmd_read(ksmd_knobs[i], &self->ksmd[i]));
	self->ksmd_saved = true;
	ASSERT_EQ(0, ksm_ksmd_write("pages_to_scan", 1000));
	ASSERT_EQ(0, ksm_ksmd_write("sleep_millisecs", 10));
	ASSERT_EQ(0, ksm_ksmd_write("run", 1));
}

/* Stop (run=0: no unmerge) or restart @who's merging. */
static int merger_run(FIXTURE_DATA(mlock) *self, enum merger who, bool on)
{
	if (who == BY_KSMDEV)
		return ksm_set_run(self->fd, on ? KSM_RUN_MERGE : KSM_RUN_STOP);
	return ksm_ksmd_write("run", on);
}

/*
 * The scenario: @NPAGES identical pages, mlock()ed (or, @all, under
 * mlockall(MCL_CURRENT | MCL_FUTURE) from before the mmap), merged by @who;
 * Mlocked checked after merging, after a write to one page, after munlock,
 * after mlock again (which faults for write: unmerges) and merging again,
 * and after munmap.
 */
static void scenario(struct __test_metadata *_metadata,
		     FIXTURE_DATA(mlock) *self, enum merger who, bool all)
{
	const size_t n = NPAGES;
	size_t len = n * self->ps;
	uint64_t pfns[NPAGES];
	long base, ubase, seen;
	char *p;

	if (who == BY_KSMD) {
		if (access(KSMD_DIR "run", W_OK))
			SKIP(return, "no in-kernel KSM (" KSMD_DIR ")");
		ksmd_start(_metadata, self);
	}
	if (all) {
		ASSERT_EQ(0, mlockall(MCL_CURRENT | MCL_FUTURE))
			TH_LOG("mlockall: %s", strerror(errno));
	}
	base = mlocked_kb(self->dummy, &ubase);
	ASSERT_LE(0, base) TH_LOG("Mlocked cannot be read exactly");

	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, VAL_LOCK);
	if (!all) {
		ASSERT_EQ(0, mlock(p, len)) TH_LOG("mlock: %s", strerror(errno));
	}
	ASSERT_EQ((long)n, locked_pages(_metadata, self, base, ubase,
					"locked:"));

	if (who == BY_KSMDEV) {
		ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	} else {
		ASSERT_EQ(0, madvise(p, len, MADV_MERGEABLE));
	}
	ASSERT_TRUE(wait_pfns(p, n, 1, pfns))
		TH_LOG("%zu distinct PFNs, not merged in %d s",
		       ksm_count_distinct(pfns, n), WAIT_S);
	if (who == BY_KSMDEV)
		ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	/* The n locked pages are one now, counted once. */
	seen = wait_locked(self, base, 1);
	locked_pages(_metadata, self, base, ubase, "merged:");
	EXPECT_EQ(1, seen) TH_LOG("Mlocked %ld pages after merging", seen);

	/*
	 * A write: the copy is locked (the fault mlocks it), and the merged
	 * page still is, for the others lock it still.
	 */
	*(volatile uint64_t *)p = MAGIC;
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(2, ksm_count_distinct(pfns, n));
	seen = wait_locked(self, base, 2);
	locked_pages(_metadata, self, base, ubase, "one page written:");
	EXPECT_EQ(2, seen) TH_LOG("Mlocked %ld pages after a COW", seen);

	/*
	 * munlock: nothing locked, and still merged (no fault). Of the range
	 * only, in both cases: munlockall() would unlock the rest of the
	 * process too, counted in the baseline.
	 */
	ASSERT_EQ(0, munlock(p, len));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(2, ksm_count_distinct(pfns, n));
	if (who == BY_KSMDEV) {
		/* Two full scans: nothing of ours locks the page again. */
		ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, WAIT_S));
	}
	seen = locked_pages(_metadata, self, base, ubase, "munlocked:");
	EXPECT_EQ(0, seen) TH_LOG("Mlocked %ld pages after munlock", seen);

	/*
	 * mlock again (a writable range: faulted for write, so each page gets
	 * a locked copy of its own, the merged page is freed: seen with the
	 * merging stopped, else ksmdev merges them back at once), then merged
	 * again, locked.
	 */
	ASSERT_EQ(0, merger_run(self, who, false));
	ASSERT_EQ(0, mlock(p, len));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, n));
	seen = locked_pages(_metadata, self, base, ubase, "locked again:");
	EXPECT_EQ((long)n, seen) TH_LOG("Mlocked %ld pages locked again", seen);
	ASSERT_EQ(0, merger_run(self, who, true));
	ksm_fill_val(p, 0, VAL_LOCK);
	ASSERT_TRUE(wait_pfns(p, n, 1, pfns))
		TH_LOG("%zu distinct PFNs, not merged again in %d s",
		       ksm_count_distinct(pfns, n), WAIT_S);
	seen = wait_locked(self, base, 1);
	locked_pages(_metadata, self, base, ubase, "merged again:");
	EXPECT_EQ(1, seen) TH_LOG("Mlocked %ld pages merged again", seen);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_LOCK));

	ASSERT_EQ(0, munmap(p, len));
	seen = wait_locked(self, base, 0);
	locked_pages(_metadata, self, base, ubase, "unmapped:");
	EXPECT_EQ(0, seen) TH_LOG("Mlocked %ld pages after munmap", seen);
	if (all)
		munlockall();
}

TEST_F_TIMEOUT(mlock, ksmdev_mlock, 300)
{
	scenario(_metadata, self, BY_KSMDEV, false);
}

TEST_F_TIMEOUT(mlock, ksmd_mlock, 300)
{
	scenario(_metadata, self, BY_KSMD, false);
}

TEST_F_TIMEOUT(mlock, ksmdev_mlockall, 300)
{
	scenario(_metadata, self, BY_KSMDEV, true);
}

TEST_F_TIMEOUT(mlock, ksmd_mlockall, 300)
{
	scenario(_metadata, self, BY_KSMD, true);
}

/*
 * Unregister (run=2's path too: the unshare fault) of a locked merged
 * range: each page gets a locked copy, the merged page is freed.
 */
TEST_F_TIMEOUT(mlock, unregister_locked, 300)
{
	const size_t n = NPAGES;
	size_t len = n * self->ps;
	uint64_t pfns[NPAGES];
	long base, ubase, seen;
	char *p;

	base = mlocked_kb(self->dummy, &ubase);
	ASSERT_LE(0, base);
	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, VAL_LOCK);
	ASSERT_EQ(0, mlock(p, len));
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	seen = wait_locked(self, base, 1);
	EXPECT_EQ(1, seen) TH_LOG("Mlocked %ld pages after merging", seen);
	ASSERT_EQ(0, ksm_unregister(self->fd, p, len));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, n));
	seen = locked_pages(_metadata, self, base, ubase, "unregistered:");
	EXPECT_EQ((long)n, seen) TH_LOG("Mlocked %ld pages unmerged", seen);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_LOCK));
	ASSERT_EQ(0, munmap(p, len));
	seen = wait_locked(self, base, 0);
	EXPECT_EQ(0, seen) TH_LOG("Mlocked %ld pages after munmap", seen);
}

/*
 * A child that mlock()s, merges with us and exits: its locked pages all
 * go back (Mlocked to the baseline), the shared page counted while it was
 * mapped in both.
 */
TEST_F_TIMEOUT(mlock, exit_locked, 300)
{
	const size_t n = NPAGES;
	size_t len = n * self->ps;
	long base, ubase, seen;
	int status, go[2];
	pid_t pid;
	char *p, c;

	base = mlocked_kb(self->dummy, &ubase);
	ASSERT_LE(0, base);
	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, VAL_LOCK);
	ASSERT_EQ(0, mlock(p, len));
	ASSERT_EQ(0, pipe(go));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		/*
		 * The child: its own fd, its own locked copy of p (mlock
		 * faults it for write); not mlockall(), which would lock and
		 * count the whole process.
		 */
		int fd = ksm_open();

		close(go[1]);
		if (fd < 0 || mlock(p, len))
			_exit(1);
		if (ksm_register(fd, p, len, 0))
			_exit(2);
		if (read(go[0], &c, 1) != 1)
			_exit(3);
		_exit(0);
	}
	close(go[0]);
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ksm_assert_merged(_metadata, self->fd, 1, 2 * n - 1, 0, n);
	seen = wait_locked(self, base, 1);
	locked_pages(_metadata, self, base, ubase, "merged with a child:");
	EXPECT_EQ(1, seen) TH_LOG("Mlocked %ld pages, merged", seen);
	ASSERT_EQ(1, write(go[1], "x", 1));
	close(go[1]);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, WAIT_S));
	ASSERT_EQ(0, ksm_exit_code(status));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	/* The child's exit munlocked the page; we lock it still. */
	seen = wait_locked(self, base, 1);
	locked_pages(_metadata, self, base, ubase, "child gone:");
	EXPECT_EQ(1, seen) TH_LOG("Mlocked %ld pages, child gone", seen);
	ASSERT_EQ(0, munmap(p, len));
	seen = wait_locked(self, base, 0);
	EXPECT_EQ(0, seen) TH_LOG("Mlocked %ld pages after munmap", seen);
}

/*
 * Module unload with locked merged pages still mapped: the page outlives
 * the module, locked; a write, munlock and munmap give it all back, and
 * the page is freed clean (no "Bad page state" from a PG_mlocked left on
 * it). The module is loaded again at the end.
 */
TEST_F_TIMEOUT(mlock, rmmod_locked, 300)
{
	const size_t n = NPAGES;
	size_t len = n * self->ps;
	uint64_t pfns[NPAGES];
	long base, ubase, seen;
	char *p;

	base = mlocked_kb(self->dummy, &ubase);
	ASSERT_LE(0, base);
	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, VAL_LOCK);
	ASSERT_EQ(0, mlock(p, len));
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	/* The last close drops the region, not the merge. */
	close(self->fd);
	self->fd = -1;
	self->unloaded = true;
	ASSERT_EQ(0, ksm_unload_module());
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	seen = locked_pages(_metadata, self, base, ubase, "module unloaded:");
	EXPECT_EQ(1, seen) TH_LOG("Mlocked %ld pages, module unloaded", seen);
	*(volatile uint64_t *)(p + self->ps) = MAGIC;
	seen = locked_pages(_metadata, self, base, ubase, "one page written:");
	/* No scanner now to count the page again for the others. */
	EXPECT_LE(1, seen);
	EXPECT_GE(2, seen);
	ASSERT_EQ(0, munlock(p, len));
	seen = locked_pages(_metadata, self, base, ubase, "munlocked:");
	EXPECT_EQ(0, seen) TH_LOG("Mlocked %ld pages after munlock", seen);
	ASSERT_EQ(0, mlock(p, len));
	ASSERT_EQ(0, munmap(p, len));
	seen = wait_locked(self, base, 0);
	EXPECT_EQ(0, seen) TH_LOG("Mlocked %ld pages after munmap", seen);
	ASSERT_EQ(0, ksm_load_module(""));
	self->unloaded = false;
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd);
}

TEST_HARNESS_MAIN
