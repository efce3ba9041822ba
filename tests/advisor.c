// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev scanner advisor (ABI.md, "Counters and settings added"): with
 * advisor_target_scan_ms set, the scanner sizes its batches so that a full
 * scan takes about that long, whatever pages_to_scan says; it never uses
 * more than advisor_max_cpu_percent of one CPU; advisor_pages_to_scan shows
 * the batch size in use, and pages_to_scan again once the advisor is off.
 *
 * The workloads are sized for TCG, and smaller (with longer sleeps) on the
 * debug kernel, which runs the scanner some 40x slower: a pass must cost
 * well under the target's CPU time, and pages_to_scan=1 must take far
 * longer than the target. scan_all_pages=1 keeps every pass the same size
 * (smart scan would pass by all these unique pages at once, every few
 * passes).
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <dirent.h>

#include "ksmdev_test.h"

/* One workload: the region, the pause between batches, the target. */
struct advisor_load {
	size_t npages;
	uint64_t sleep_ms;
	uint64_t target_ms;
};

/*
 * The debug kernel has kmemleak (its lane mounts debugfs for it; Debian's
 * kernels have none).
 */
static bool debug_kernel(void)
{
	return !access("/sys/kernel/debug/kmemleak", F_OK);
}

/*
 * pages_to_scan=1 still scans a page table's gathering (up to 32 pages) a
 * batch, so without the advisor a pass takes npages / 32 * sleep_ms or
 * more: 5 s on stock kernels (5x the target), 8 s on the debug kernel (4x).
 */
static struct advisor_load advisor_load(void)
{
	if (debug_kernel())
		return (struct advisor_load){ 512, 500, 2000 };
	return (struct advisor_load){ 8192, 20, 1000 };
}

FIXTURE(advisor) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	char *p;
	size_t npages;
};

FIXTURE_SETUP(advisor)
{
	struct ksm_stats s;

	self->ps = ksm_page_size();
	self->p = NULL;
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	/* Another program's pages would make the passes longer. */
	ASSERT_EQ(0, s.regions) TH_LOG("%llu regions registered elsewhere",
				       (unsigned long long)s.regions);
}

FIXTURE_TEARDOWN(advisor)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	if (self->p)
		munmap(self->p, self->npages * self->ps);
	close(self->fd);
}

/* Map @npages of unique content and register them. */
static void map_unique(struct __test_metadata *_metadata,
		       FIXTURE_DATA(advisor) *self, size_t npages)
{
	self->npages = npages;
	self->p = ksm_mmap_anon(npages * self->ps);
	ASSERT_NE(NULL, self->p);
	ksm_fill_pages(self->p, npages, 11);
	ASSERT_EQ(0, ksm_register(self->fd, self->p, npages * self->ps, 0));
}

/* run=1, scan_all_pages=1, and the rest as given. */
static int set_scanner(int fd, uint64_t pages_to_scan, uint64_t sleep_ms,
		       uint64_t target_ms, uint64_t cpu)
{
	struct ksm_config c;
	int ret = ksm_get_config(fd, &c);

	if (ret)
		return ret;
	c.run = KSM_RUN_MERGE;
	c.scan_all_pages = 1;
	c.pages_to_scan = pages_to_scan;
	c.sleep_millisecs = sleep_ms;
	c.advisor_target_scan_ms = target_ms;
	c.advisor_max_cpu_percent = cpu;
	return ksm_set_config(fd, &c);
}

static uint64_t stat_of(struct __test_metadata *_metadata, int fd,
			size_t offset)
{
	struct ksm_stats s;

	EXPECT_EQ(0, ksm_get_stats(fd, &s));
	return *(uint64_t *)((char *)&s + offset);
}

#define STAT(fd, field) stat_of(_metadata, fd, offsetof(struct ksm_stats, field))

/*
 * The time (ms) a pass over @npages would take at the present rate: the
 * time pages_scanned takes to advance by an eighth of them, times 8; -1 if
 * that took longer than @bound_s.
 */
static int64_t projected_pass_ms(int fd, size_t npages, unsigned int bound_s)
{
	uint64_t t0 = ksm_now_ms();

	if (ksm_wait_pages_scanned(fd, npages / 8, bound_s))
		return -1;
	return (int64_t)(ksm_now_ms() - t0) * 8;
}

/*
 * The mean time (ms) of @n full scans, timed from the end of one to the
 * end of the n-th next; -1 if they took longer than @bound_s.
 */
static int64_t pass_ms(int fd, unsigned int n, unsigned int bound_s)
{
	uint64_t t0;

	if (ksm_wait_full_scans(fd, 1, bound_s))
		return -1;
	t0 = ksm_now_ms();
	if (ksm_wait_full_scans(fd, n, bound_s))
		return -1;
	return (int64_t)(ksm_now_ms() - t0) / n;
}

/* Wait (@bound_s) until advisor_pages_to_scan is no longer @from. */
static int wait_advisor_moved(int fd, uint64_t from, unsigned int bound_s)
{
	uint64_t end = ksm_now_ms() + bound_s * 1000ULL;
	struct ksm_stats s;

	for (;;) {
		if (ksm_get_stats(fd, &s))
			return -errno;
		if (s.advisor_pages_to_scan != from)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(10);
	}
}

/*
 * pages_to_scan=1 makes a pass take several times the target; with the
 * advisor on, a pass takes about the target (0.3x .. 3x, TCG's timers being
 * what they are), and switched off again, a pass is as slow as before.
 */
TEST_F_TIMEOUT(advisor, pass_time_follows_target, 300)
{
	struct advisor_load w = advisor_load();
	int64_t slow, slow_again, pass;
	uint64_t target = w.target_ms;

	map_unique(_metadata, self, w.npages);
	ASSERT_EQ(0, set_scanner(self->fd, 1, w.sleep_ms, 0, 100));
	/* A first pass has seen every page: the next ones cost the same. */
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 1, 120));
	slow = projected_pass_ms(self->fd, w.npages, 60);
	ASSERT_LT(0, slow) TH_LOG("pages_to_scan=1: an eighth of a pass took over 60 s");
	EXPECT_EQ(1, STAT(self->fd, advisor_pages_to_scan));

	ASSERT_EQ(0, set_scanner(self->fd, 1, w.sleep_ms, target, 100));
	ASSERT_EQ(0, wait_advisor_moved(self->fd, 1, 30))
		TH_LOG("advisor_pages_to_scan stayed 1 for 30 s");
	/* Settle: a pass begun before the advisor was on is not timed. */
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, 60));
	pass = pass_ms(self->fd, 3, 60);
	TH_LOG("%zu pages, sleep %llu ms, target %llu ms: pass %lld ms with the advisor (%llu pages a batch), %lld ms projected with pages_to_scan=1",
	       w.npages, (unsigned long long)w.sleep_ms,
	       (unsigned long long)target, (long long)pass,
	       (unsigned long long)STAT(self->fd, advisor_pages_to_scan),
	       (long long)slow);
	ASSERT_LT(0, pass) TH_LOG("3 passes took over 60 s with the advisor");
	EXPECT_LE(target * 3 / 10, (uint64_t)pass);
	EXPECT_GE(target * 3, (uint64_t)pass);
	/* Far slower without: the advisor did the work, not pages_to_scan. */
	EXPECT_LE(3 * pass, slow);

	/* Off again: back to pages_to_scan=1, and as slow as before. */
	ASSERT_EQ(0, set_scanner(self->fd, 1, w.sleep_ms, 0, 100));
	EXPECT_EQ(1, STAT(self->fd, advisor_pages_to_scan));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 1, 120));
	slow_again = projected_pass_ms(self->fd, w.npages, 60);
	TH_LOG("advisor off again: %lld ms projected", (long long)slow_again);
	ASSERT_LT(0, slow_again);
	EXPECT_LE(3 * pass, slow_again);
	EXPECT_EQ(1, STAT(self->fd, advisor_pages_to_scan));
}

/*
 * The same with smart scan on (scan_all_pages=0, the default): once these
 * unique pages have failed to merge three times, whole passes pass them
 * by, and only one in two, three, five, nine looks at them all. A pass
 * still takes about the target, on average over the cycle: the advisor
 * counts the pages passed by (looked at, at next to no cost), not only the
 * ones hashed as pages_to_scan does; counting as pages_to_scan does, the
 * passes came out at 0.4x the target in the bench, 0.25x here.
 */
TEST_F_TIMEOUT(advisor, pass_time_follows_target_smart_scan, 300)
{
	struct advisor_load w = advisor_load();
	uint64_t target = w.target_ms, skipped0, skipped1;
	int64_t pass;

	map_unique(_metadata, self, w.npages);
	ASSERT_EQ(0, set_scanner(self->fd, 1, w.sleep_ms, target, 100));
	ASSERT_EQ(0, ksm_set_config_field(self->fd,
					  offsetof(struct ksm_config,
						   scan_all_pages), 0));
	/* Three failed visits, then the pages' skip cycles (up to 9 passes). */
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 12, 120));
	ASSERT_EQ(0, ksm_read_debugfs("pages_skipped", &skipped0));
	pass = pass_ms(self->fd, 9, 120);
	ASSERT_EQ(0, ksm_read_debugfs("pages_skipped", &skipped1));
	TH_LOG("%zu pages, sleep %llu ms, target %llu ms, smart scan: pass %lld ms on average (%llu pages a batch), %llu pages passed by",
	       w.npages, (unsigned long long)w.sleep_ms,
	       (unsigned long long)target, (long long)pass,
	       (unsigned long long)STAT(self->fd, advisor_pages_to_scan),
	       (unsigned long long)(skipped1 - skipped0));
	ASSERT_LT(0, pass) TH_LOG("9 passes took over 120 s");
	/* Smart scan did pass pages by: more than a pass's worth. */
	EXPECT_LT(w.npages, skipped1 - skipped0);
	EXPECT_LE(target * 6 / 10, (uint64_t)pass);
	EXPECT_GE(target * 3, (uint64_t)pass);
}

/* ---- the CPU cap ---- */

/* utime + stime of @pid, in clock ticks, or -1. */
static int64_t cpu_ticks(pid_t pid)
{
	unsigned long long ut, st;
	char path[64], buf[1024], *s;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return -1;
	s = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
	fclose(f);
	/* After "pid (comm)": state is field 3, utime 14, stime 15. */
	if (!s || sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
			 &ut, &st) != 2)
		return -1;
	return (int64_t)(ut + st);
}

/* The share (percent of one CPU) of @pid over @ms; -1 on error. */
static double cpu_share(pid_t pid, unsigned int ms)
{
	int64_t a, b;
	uint64_t t0, t1;

	a = cpu_ticks(pid);
	t0 = ksm_now_ms();
	ksm_sleep_ms(ms);
	b = cpu_ticks(pid);
	t1 = ksm_now_ms();
	if (a < 0 || b < 0 || t1 <= t0)
		return -1;
	return (double)(b - a) * 1000 / sysconf(_SC_CLK_TCK) * 100 / (t1 - t0);
}

/*
 * A target the scanner cannot reach (100 ms for a pass over four times the
 * first test's region: 6.12 on TCG takes some 4 us of CPU a page, so 130
 * ms a pass): without a cap it takes most of a CPU; with
 * advisor_max_cpu_percent=10 it stays near 10% (at most 20%), and still
 * scans; also with sleep_millisecs=0.
 */
TEST_F_TIMEOUT(advisor, cpu_cap, 300)
{
	struct advisor_load w = advisor_load();
	unsigned int window = debug_kernel() ? 8000 : 4000;
	double uncapped, capped, nosleep;
	uint64_t scanned, scanned0;
	pid_t pid;

	pid = ksm_find_kthread("ksmdev");
	ASSERT_LT(0, pid) TH_LOG("no single kthread named ksmdev (%d)", pid);
	map_unique(_metadata, self, 4 * w.npages);
	ASSERT_EQ(0, set_scanner(self->fd, 1, 20, 100, 100));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, 120));
	uncapped = cpu_share(pid, window);

	ASSERT_EQ(0, set_scanner(self->fd, 1, 20, 100, 10));
	/* Let a batch sized before the change end, and its rest. */
	ksm_sleep_ms(1000);
	scanned = STAT(self->fd, pages_scanned);
	capped = cpu_share(pid, window);
	scanned = STAT(self->fd, pages_scanned) - scanned;
	TH_LOG("%zu pages, target 100 ms: scanner at %.1f%% of a CPU uncapped, %.1f%% capped at 10%% (%llu pages scanned in %u ms, %llu a batch)",
	       4 * w.npages, uncapped, capped, (unsigned long long)scanned,
	       window, (unsigned long long)STAT(self->fd, advisor_pages_to_scan));
	ASSERT_LE(0, uncapped);
	ASSERT_LE(0, capped);
	/* The cap is what holds it back: uncapped, it takes far more. */
	EXPECT_LE(40.0, uncapped);
	EXPECT_GE(20.0, capped);
	/* Still scanning, not stopped. */
	EXPECT_LT(0, scanned);

	/*
	 * sleep_millisecs=0: no pause between batches but the rests the cap
	 * asks for (small batches alone would still take the whole CPU).
	 */
	ASSERT_EQ(0, set_scanner(self->fd, 1, 0, 100, 10));
	ksm_sleep_ms(1000);
	scanned0 = STAT(self->fd, pages_scanned);
	nosleep = cpu_share(pid, window);
	scanned0 = STAT(self->fd, pages_scanned) - scanned0;
	TH_LOG("sleep_millisecs=0: %.1f%% capped at 10%% (%llu pages scanned, %llu a batch)",
	       nosleep, (unsigned long long)scanned0,
	       (unsigned long long)STAT(self->fd, advisor_pages_to_scan));
	ASSERT_LE(0, nosleep);
	EXPECT_GE(20.0, nosleep);
	EXPECT_LT(0, scanned0);
}

/* ---- switching it off ---- */

/*
 * advisor_pages_to_scan is the advisor's choice while it is on, and
 * pages_to_scan as soon as it is off, also after further batches (the
 * scanner does not publish a choice made before the switch).
 */
TEST_F_TIMEOUT(advisor, off_shows_pages_to_scan, 120)
{
	struct advisor_load w = advisor_load();
	struct ksm_stats s;

	map_unique(_metadata, self, w.npages);
	ASSERT_EQ(0, set_scanner(self->fd, 777, 20, 0, 25));
	EXPECT_EQ(777, STAT(self->fd, advisor_pages_to_scan));
	ASSERT_EQ(0, set_scanner(self->fd, 777, 20, 1000, 25));
	ASSERT_EQ(0, wait_advisor_moved(self->fd, 777, 30))
		TH_LOG("advisor_pages_to_scan stayed at pages_to_scan for 30 s");

	ASSERT_EQ(0, set_scanner(self->fd, 777, 20, 0, 25));
	EXPECT_EQ(777, STAT(self->fd, advisor_pages_to_scan));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, 60));
	EXPECT_EQ(777, STAT(self->fd, advisor_pages_to_scan));
	/* And it follows pages_to_scan while off. */
	ASSERT_EQ(0, set_scanner(self->fd, 300, 20, 0, 25));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 1, 60));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(300, s.advisor_pages_to_scan);
}

TEST_HARNESS_MAIN
