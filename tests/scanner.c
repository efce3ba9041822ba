// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev scanner: it walks registered pages, never faults pages in, stops
 * with run=0, keeps quiet (no CPU, no wakeups) when it has nothing to do,
 * and passes by pages that keep failing to merge (scan_all_pages=0).
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <pthread.h>

#include "ksmdev_test.h"

#define SCAN_TIMEOUT_S	60

FIXTURE(scanner) {
	int fd;
	size_t ps;
	struct ksm_config saved;
};

FIXTURE_SETUP(scanner)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
}

FIXTURE_TEARDOWN(scanner)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Map @npages, write every @stride-th page (0 = none), register them all. */
static char *map_and_register(struct __test_metadata *_metadata, int fd,
			      size_t npages, size_t stride)
{
	size_t ps = ksm_page_size(), i;
	char *p = ksm_mmap_anon(npages * ps);

	if (!p)
		return NULL;
	for (i = 0; stride && i < npages; i += stride)
		ksm_fill_page(p, i, 7);
	EXPECT_EQ(0, ksm_register(fd, p, npages * ps, 0));
	return p;
}

TEST_F_TIMEOUT(scanner, counters_advance, 120)
{
	const size_t npages = 256;
	struct ksm_stats s0, s1;
	struct ksm_mm_stats ms;
	char *p;

	p = map_and_register(_metadata, self->fd, npages, 1);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, SCAN_TIMEOUT_S))
		TH_LOG("full_scans did not advance by 2 in %d s", SCAN_TIMEOUT_S);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	/* Two full scans contain one whole pass over our pages. */
	EXPECT_LE(s0.pages_scanned + npages, s1.pages_scanned);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(npages, ms.registered_pages);
	munmap(p, npages * ksm_page_size());
}

TEST_F_TIMEOUT(scanner, untouched_pages_stay_absent, 120)
{
	const size_t npages = 64;
	size_t ps = self->ps, i;
	struct ksm_stats s0, s1;
	char *p;

	p = map_and_register(_metadata, self->fd, npages, 2);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 3, SCAN_TIMEOUT_S))
		TH_LOG("full_scans did not advance by 3 in %d s", SCAN_TIMEOUT_S);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	EXPECT_LE(s0.pages_scanned + npages / 2, s1.pages_scanned);
	/* Look at presence before reading anything: a read faults in. */
	for (i = 0; i < npages; i++) {
		EXPECT_EQ(i % 2 == 0, ksm_page_present(p + i * ps))
			TH_LOG("page %zu: present %d", i,
			       ksm_page_present(p + i * ps));
	}
	for (i = 0; i < npages; i += 2) {
		EXPECT_TRUE(ksm_check_page(p, i, 7))
			TH_LOG("page %zu changed", i);
	}
	munmap(p, npages * ps);
}

/* Poll until a @window_ms window shows no scanner progress; bounded. */
static int wait_scanner_still(int fd, unsigned int window_ms,
			      unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats a, b;
	int ret;

	do {
		ret = ksm_get_stats(fd, &a);
		if (ret)
			return ret;
		ksm_sleep_ms(window_ms);
		ret = ksm_get_stats(fd, &b);
		if (ret)
			return ret;
		if (a.full_scans == b.full_scans &&
		    a.pages_scanned == b.pages_scanned)
			return 0;
	} while (ksm_now_ms() < end);
	return -ETIMEDOUT;
}

TEST_F_TIMEOUT(scanner, run0_stops_run1_resumes, 180)
{
	const size_t npages = 256;
	struct ksm_stats a, b;
	char *p;

	p = map_and_register(_metadata, self->fd, npages, 1);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 1, SCAN_TIMEOUT_S));

	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	ASSERT_EQ(0, wait_scanner_still(self->fd, 500, 10))
		TH_LOG("the scanner kept going after run=0");
	ASSERT_EQ(0, ksm_get_stats(self->fd, &a));
	ksm_sleep_ms(2000);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &b));
	EXPECT_EQ(a.full_scans, b.full_scans);
	EXPECT_EQ(a.pages_scanned, b.pages_scanned);

	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	EXPECT_EQ(0, ksm_wait_full_scans(self->fd, 1, SCAN_TIMEOUT_S))
		TH_LOG("full_scans did not resume after run=1");
	ASSERT_EQ(0, ksm_get_stats(self->fd, &b));
	EXPECT_LT(a.pages_scanned, b.pages_scanned);
	munmap(p, npages * self->ps);
}

/* ---- the kthread keeps quiet ---- */

struct activity {
	uint64_t ticks;		/* utime + stime */
	uint64_t switches;	/* voluntary + nonvoluntary */
};

static int read_activity(pid_t pid, struct activity *a)
{
	unsigned long long ut, st, v;
	char path[64], buf[1024], *s;
	int ok = 0;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/stat", pid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	s = fgets(buf, sizeof(buf), f) ? strrchr(buf, ')') : NULL;
	fclose(f);
	/* After "pid (comm)": state is field 3, utime 14, stime 15. */
	if (!s || sscanf(s + 2, "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %llu %llu",
			 &ut, &st) != 2)
		return -EINVAL;
	a->ticks = ut + st;
	a->switches = 0;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(buf, sizeof(buf), f)) {
		if (sscanf(buf, "voluntary_ctxt_switches: %llu", &v) == 1 ||
		    sscanf(buf, "nonvoluntary_ctxt_switches: %llu", &v) == 1) {
			a->switches += v;
			ok++;
		}
	}
	fclose(f);
	return ok == 2 ? 0 : -EINVAL;
}

/*
 * The kthread is idle if one of up to 5 windows of 3 s shows no CPU time and
 * no context switch (the first ones may still see it settle).
 */
static void expect_kthread_idle(struct __test_metadata *_metadata)
{
	struct activity a, b;
	pid_t pid = ksm_find_kthread("ksmdev");
	int i;

	ASSERT_LT(0, pid) TH_LOG("no single kthread named ksmdev (%d)", pid);
	for (i = 0; i < 5; i++) {
		ASSERT_EQ(0, read_activity(pid, &a));
		ksm_sleep_ms(3000);
		ASSERT_EQ(0, read_activity(pid, &b));
		if (a.ticks == b.ticks && a.switches == b.switches)
			return;
		TH_LOG("window %d: +%llu ticks, +%llu context switches", i,
		       (unsigned long long)(b.ticks - a.ticks),
		       (unsigned long long)(b.switches - a.switches));
	}
	EXPECT_TRUE(false) TH_LOG("the ksmdev kthread never went quiet");
}

TEST_F_TIMEOUT(scanner, kthread_quiet_without_regions, 60)
{
	struct ksm_stats s;

	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	ASSERT_EQ(0, s.regions) TH_LOG("regions are registered elsewhere");
	/* The fastest setting: a scanner that polls would spin. */
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	expect_kthread_idle(_metadata);
}

TEST_F_TIMEOUT(scanner, kthread_quiet_when_stopped, 120)
{
	const size_t npages = 256;
	char *p;

	p = map_and_register(_metadata, self->fd, npages, 1);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 1, SCAN_TIMEOUT_S));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	expect_kthread_idle(_metadata);
	munmap(p, npages * self->ps);
}

/* Takes the mmap lock for write, over and over, while the scanner runs. */
static void *mmap_writer(void *arg)
{
	volatile int *stop = arg;
	size_t ps = ksm_page_size();
	long rounds = 0;

	while (!*stop) {
		char *q = mmap(NULL, ps, PROT_READ | PROT_WRITE,
			       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

		if (q == MAP_FAILED)
			return (void *)-1L;
		q[0] = 1;
		munmap(q, ps);
		rounds++;
	}
	return (void *)rounds;
}

/*
 * A 64 GiB region with one page written every 256 MiB: full scans complete
 * (the walk skips empty page tables), nothing is faulted in, and the mmap
 * lock keeps changing hands with a thread that maps and unmaps meanwhile
 * (a stall would trip the guest's hung-task and lockup detectors).
 */
TEST_F_TIMEOUT(scanner, sparse_64g_region, 180)
{
	const size_t len = 64ULL << 30, step = 256ULL << 20;
	size_t off, touched = 0;
	volatile int stop = 0;
	struct ksm_stats s0, s1;
	pthread_t writer;
	void *rounds;
	char *p;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(MAP_FAILED, p) TH_LOG("mmap 64 GiB: %s", strerror(errno));
	ASSERT_EQ(0, madvise(p, len, MADV_NOHUGEPAGE));
	for (off = 0; off < len; off += step, touched++)
		p[off] = 1 + touched % 251;
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, pthread_create(&writer, NULL, mmap_writer, (void *)&stop));

	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	EXPECT_EQ(0, ksm_wait_full_scans(self->fd, 3, SCAN_TIMEOUT_S))
		TH_LOG("full_scans did not advance by 3 in %d s", SCAN_TIMEOUT_S);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	stop = 1;
	ASSERT_EQ(0, pthread_join(writer, &rounds));
	EXPECT_LT(0, (long)rounds);
	TH_LOG("%zu pages present in 64 GiB; %llu pages scanned in %llu full scans; %ld map/unmap rounds meanwhile",
	       touched, (unsigned long long)(s1.pages_scanned - s0.pages_scanned),
	       (unsigned long long)(s1.full_scans - s0.full_scans), (long)rounds);
	/* Only present pages are scanned (at most 4 passes in the window). */
	EXPECT_LE(s1.pages_scanned - s0.pages_scanned,
		  (s1.full_scans - s0.full_scans + 1) * touched);
	/* A page between two written ones was never faulted in. */
	EXPECT_EQ(0, ksm_page_present(p + step / 2));
	EXPECT_EQ(1, ksm_page_present(p + step));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, len));
	munmap(p, len);
}

/*
 * Smart scan: unique pages are looked at less and less often once they have
 * failed to merge three times, yet stay counted as unshared; one that turns
 * into a duplicate still merges; scan_all_pages=1 looks at every page again.
 */
TEST_F_TIMEOUT(scanner, smart_scan_skips, 240)
{
	const size_t npages = 256;
	uint64_t skipped0, skipped1, skipped2, passes;
	struct ksm_stats s0, s1;
	char *p;

	ASSERT_EQ(0, ksm_set_config_field(self->fd,
			offsetof(struct ksm_config, scan_all_pages), 0));
	ASSERT_EQ(0, ksm_read_debugfs("pages_skipped", &skipped0));
	p = map_and_register(_metadata, self->fd, npages, 1);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 12, SCAN_TIMEOUT_S));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	ASSERT_EQ(0, ksm_read_debugfs("pages_skipped", &skipped1));
	passes = s1.full_scans - s0.full_scans;
	TH_LOG("%llu passes over %zu unique pages: %llu looked at, %llu passed by",
	       (unsigned long long)passes, npages,
	       (unsigned long long)(s1.pages_scanned - s0.pages_scanned),
	       (unsigned long long)(skipped1 - skipped0));
	/*
	 * A page is looked at on its first four visits, then on one in 2,
	 * 3, 5 and at last 9: of 12 or more, on at most half and 4 more.
	 * (Polling sees 12 passes go by late: there may be many more.)
	 */
	EXPECT_LE(skipped0 + 4 * npages, skipped1);
	EXPECT_GE(s0.pages_scanned + (passes / 2 + 4) * npages,
		  s1.pages_scanned);
	EXPECT_EQ(npages, s1.pages_unshared);
	EXPECT_EQ(0, s1.pages_volatile);

	/* Page 1 becomes a copy of page 0: passed by or not, it merges. */
	memcpy(p + self->ps, p, self->ps);
	EXPECT_EQ(0, ksm_wait_merged(self->fd, 1, 1, 0, &s1, SCAN_TIMEOUT_S));
	EXPECT_TRUE(ksm_check_page(p, 0, 7));
	EXPECT_TRUE(ksm_check_page(p + self->ps, 0, 7));

	/* Every page on every pass again. */
	ASSERT_EQ(0, ksm_set_config_field(self->fd,
			offsetof(struct ksm_config, scan_all_pages), 1));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 1, SCAN_TIMEOUT_S));
	ASSERT_EQ(0, ksm_read_debugfs("pages_skipped", &skipped1));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 3, SCAN_TIMEOUT_S));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	ASSERT_EQ(0, ksm_read_debugfs("pages_skipped", &skipped2));
	EXPECT_EQ(skipped1, skipped2);
	EXPECT_LE(s0.pages_scanned + 2 * npages, s1.pages_scanned);
	munmap(p, npages * self->ps);
}

/* ---- first-sight merging ---- */

#define FS_PAGES	64
#define FS_VAL		0x66697273ULL
#define FS_SLEEP_MS	300

/*
 * Flush every CPU's LRU batches, where freshly written pages wait with an
 * extra reference that fails a merge: KSM_MERGE_REGION drains them (on a
 * page of our own, which merges with nothing).
 */
static void drain_lru(struct __test_metadata *_metadata, int fd)
{
	char *p = ksm_mmap_anon(ksm_page_size());

	ASSERT_NE(NULL, p);
	ksm_fill_page(p, 0, 0x6472);
	ASSERT_EQ(0, ksm_register(fd, p, ksm_page_size(), 0));
	ASSERT_LE(0, ksm_region_ioctl(fd, KSM_MERGE_REGION, p,
				      ksm_page_size(), 0));
	ASSERT_EQ(0, ksm_unregister(fd, p, ksm_page_size()));
	munmap(p, ksm_page_size());
}

/*
 * What passes_until() waits for: pages saved (pages_sharing and
 * ksm_zero_pages), or debugfs merge_events.
 */
static uint64_t fs_value(int fd, bool merges)
{
	struct ksm_stats s;
	uint64_t v = 0;

	if (merges)
		return ksm_read_debugfs("merge_events", &v) ? 0 : v;
	return ksm_get_stats(fd, &s) ? 0 : s.pages_sharing + s.ksm_zero_pages;
}

/*
 * Batches of the scanner (each a whole pass: pages_to_scan is far more
 * than there are pages, sleep_millisecs FS_SLEEP_MS) until the value
 * (fs_value()) reaches @want: full_scans counted once the batch that got
 * there is over (it takes far less than 100 ms), against @f0.
 */
static long passes_until(struct __test_metadata *_metadata, int fd,
			 uint64_t f0, bool merges, uint64_t want)
{
	uint64_t end = ksm_now_ms() + SCAN_TIMEOUT_S * 1000ULL;
	struct ksm_stats s;

	while (fs_value(fd, merges) < want && ksm_now_ms() < end)
		ksm_sleep_ms(2);
	EXPECT_LE(want, fs_value(fd, merges));
	ksm_sleep_ms(100);
	if (ksm_get_stats(fd, &s))
		return -1;
	return (long)(s.full_scans - f0);
}

/*
 * Identical pages of two processes (of content @val): with first_sight (the
 * default) they merge in the first pass that meets them; without it, as
 * mm/ksm.c, on the second. Zero-filled ones (@val 0) wait for the second
 * pass either way (scan.c: a young zero-filled page is most often about to
 * be written). A page whose merge a write broke must prove quiet again
 * over two visits even with first_sight: the churn it may cost is once per
 * page.
 */
static void first_sight_passes(struct __test_metadata *_metadata, int fd,
			       bool first_sight, uint64_t val,
			       uint64_t use_zero_pages)
{
	struct ksm_child ch[2];
	struct ksm_config c;
	struct ksm_stats s0;
	uint64_t f0, m0;
	int i;

	ASSERT_EQ(0, ksm_write_param("first_sight", first_sight));
	ASSERT_EQ(0, ksm_set_run(fd, KSM_RUN_STOP));
	for (i = 0; i < 2; i++)
		ASSERT_EQ(0, ksm_child_start(&ch[i], FS_PAGES, val, 0));
	drain_lru(_metadata, fd);
	ASSERT_EQ(0, ksm_get_stats(fd, &s0));
	f0 = s0.full_scans;
	ASSERT_EQ(0, ksm_get_config(fd, &c));
	c.run = KSM_RUN_MERGE;
	c.use_zero_pages = use_zero_pages;
	c.pages_to_scan = KSM_FAST_PAGES_TO_SCAN;
	c.sleep_millisecs = FS_SLEEP_MS;
	c.scan_all_pages = 1;
	ASSERT_EQ(0, ksm_set_config(fd, &c));
	/* One merged page for all, or the zero page for each (use_zero_pages). */
	EXPECT_EQ(first_sight && val ? 1 : 2,
		  passes_until(_metadata, fd, f0, false,
			       s0.pages_sharing + s0.ksm_zero_pages +
			       2 * FS_PAGES - (val || !use_zero_pages)));

	/*
	 * A COW break (the same content written): two visits to merge
	 * again. The scanner stopped meanwhile, so that the passes count
	 * from the write.
	 */
	ASSERT_EQ(0, ksm_set_run(fd, KSM_RUN_STOP));
	ASSERT_EQ(0, ksm_child_set(&ch[0], 5, val));
	drain_lru(_metadata, fd);
	ASSERT_EQ(0, ksm_get_stats(fd, &s0));
	m0 = fs_value(fd, true);
	ASSERT_EQ(0, ksm_set_run(fd, KSM_RUN_MERGE));
	EXPECT_EQ(2, passes_until(_metadata, fd, s0.full_scans, true, m0 + 1));
	for (i = 0; i < 2; i++) {
		EXPECT_EQ(0, ksm_child_check(&ch[i]));
		EXPECT_EQ(0, ksm_child_stop(&ch[i]));
	}
	EXPECT_EQ(0, ksm_write_param("first_sight", 1));
}

TEST_F_TIMEOUT(scanner, first_sight_one_pass, 180)
{
	first_sight_passes(_metadata, self->fd, true, FS_VAL, 0);
}

/*
 * Zero-filled pages met anew wait a pass, merged with each other or mapped
 * to the zero page (seen failing: one pass when they did not).
 */
TEST_F_TIMEOUT(scanner, first_sight_spares_zero_pages, 180)
{
	first_sight_passes(_metadata, self->fd, true, 0, 0);
}

TEST_F_TIMEOUT(scanner, first_sight_spares_zero_pages_use_zero_pages, 180)
{
	first_sight_passes(_metadata, self->fd, true, 0, 1);
}

TEST_F_TIMEOUT(scanner, two_passes_without_first_sight, 180)
{
	first_sight_passes(_metadata, self->fd, false, FS_VAL, 0);
}

TEST_HARNESS_MAIN
