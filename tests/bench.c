// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev benchmark (`make bench`): the same workloads, in the same guest
 * boot, merged by ksmdev (/dev/ksm) and by the in-kernel KSM (ksmd, through
 * madvise(MADV_MERGEABLE) and /sys/kernel/mm/ksm with its defaults, which
 * is the reference), one engine after the other, with the same
 * pages_to_scan and sleep_millisecs. Prints numbers; asserts nothing about
 * speed.
 *
 * Output (stdout), parsed by tests/qemu/bench.sh:
 *   TS engine ms saved              pages saved over time (the workload)
 *   ROW engine figure value unit    one figure
 *   # ...                           comments
 *
 * Workload (upstream's "4 VMs"): BENCH_PROCS processes x BENCH_MB MiB; of
 * their pages, 50% are the same in every process, 10% zero-filled, 10%
 * rewritten every second, the rest unique. Then the analogues of upstream
 * ksm_tests: merging BENCH_MERGE_MB of identical pages (-P), the same on
 * THP (-H), unmerging them (-D), the cost of a write to a merged page (-C);
 * a 64 GiB sparse region with 1% of its pages present; and the advisor
 * (ksmd's from 6.8 on): pass time against its target, CPU share against its
 * cap.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <dirent.h>
#include <sys/resource.h>

#define KSMDEV_NO_HARNESS
#include "ksmdev_test.h"

#define SYSFS_KSM	"/sys/kernel/mm/ksm/"

static unsigned long bench_mb = 256, bench_procs = 4, merge_mb = 100;
static unsigned long pages_to_scan = 100, sleep_ms = 20, timeout_s = 900;
static unsigned long sparse_gb = 64;
static unsigned long steady_pages = 1000, steady_passes = 8;
static unsigned long advisor_mb = 64, advisor_target_ms = 2000;
static unsigned long rounds = 2, numa_mb = 32;
static unsigned long vms_nr = 4, vms_passes = 6;

static unsigned long env_ul(const char *name, unsigned long def)
{
	const char *s = getenv(name);

	return s && strtoul(s, NULL, 0) ? strtoul(s, NULL, 0) : def;
}

/* ---- the two engines ---- */

struct engine {
	const char *name;
	const char *thread;		/* the scanner's comm */
	int fd;				/* ksmdev: /dev/ksm of the bench */
};

struct counters {
	uint64_t shared, sharing, zero, scanned, full_scans;
};

static uint64_t sysfs_ksm(const char *name)
{
	char path[128];
	uint64_t v = 0;

	snprintf(path, sizeof(path), SYSFS_KSM "%s", name);
	if (ksm_read_u64_file(path, &v, false))
		return 0;
	return v;
}

static int sysfs_ksm_set(const char *name, uint64_t v)
{
	char path[128];

	snprintf(path, sizeof(path), SYSFS_KSM "%s", name);
	return ksm_write_u64_file(path, v);
}

static bool is_ksmd(const struct engine *e)
{
	return !strcmp(e->name, "ksmd");
}

static int read_counters(const struct engine *e, struct counters *c)
{
	struct ksm_stats s;

	if (is_ksmd(e)) {
		c->shared = sysfs_ksm("pages_shared");
		c->sharing = sysfs_ksm("pages_sharing");
		c->zero = sysfs_ksm("ksm_zero_pages");
		c->scanned = sysfs_ksm("pages_scanned");
		c->full_scans = sysfs_ksm("full_scans");
		return 0;
	}
	if (ksm_get_stats(e->fd, &s))
		return -1;
	c->shared = s.pages_shared;
	c->sharing = s.pages_sharing;
	c->zero = s.ksm_zero_pages;
	c->scanned = s.pages_scanned;
	c->full_scans = s.full_scans;
	return 0;
}

static uint64_t saved(const struct counters *c)
{
	return c->sharing + c->zero;
}

/* Set the pace and start (run=1) or stop and unmerge everything (run=2). */
static int engine_run(const struct engine *e, uint64_t run,
		      unsigned long pts, unsigned long sleep)
{
	struct ksm_config cfg;

	if (is_ksmd(e)) {
		if (run == 1 && (sysfs_ksm_set("pages_to_scan", pts) ||
				 sysfs_ksm_set("sleep_millisecs", sleep)))
			return -1;
		return sysfs_ksm_set("run", run);
	}
	if (ksm_get_config(e->fd, &cfg))
		return -1;
	cfg.run = run;
	cfg.pages_to_scan = pts;
	cfg.sleep_millisecs = sleep;
	return ksm_set_config(e->fd, &cfg);
}

/* Make [p, p + len) a candidate: ksmdev's fd (per process) or madvise. */
static int engine_add(const struct engine *e, int *fd, void *p, size_t len)
{
	if (is_ksmd(e))
		return madvise(p, len, MADV_MERGEABLE);
	if (*fd < 0)
		*fd = ksm_open();
	return *fd < 0 ? -1 : ksm_register(*fd, p, len, 0);
}

static int engine_remove(const struct engine *e, int fd, void *p, size_t len)
{
	if (is_ksmd(e))
		return madvise(p, len, MADV_UNMERGEABLE);
	return ksm_unregister(fd, p, len);
}

/* The scanner thread's CPU time (utime + stime), in seconds. */
static double thread_cpu(const struct engine *e)
{
	char path[300], buf[512], *s;
	unsigned long ut, st;
	struct dirent *d;
	double cpu = -1;
	DIR *dir = opendir("/proc");
	FILE *f;

	while (dir && cpu < 0 && (d = readdir(dir))) {
		if (d->d_name[0] < '0' || d->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/stat", d->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(buf, sizeof(buf), f)) {
			s = strchr(buf, '(');
			if (s && !strncmp(s + 1, e->thread, strlen(e->thread)) &&
			    s[1 + strlen(e->thread)] == ')' &&
			    sscanf(strrchr(buf, ')') + 2,
				   "%*c %*d %*d %*d %*d %*d %*u %*u %*u %*u %*u %lu %lu",
				   &ut, &st) == 2)
				cpu = (double)(ut + st) / sysconf(_SC_CLK_TCK);
		}
		fclose(f);
	}
	if (dir)
		closedir(dir);
	return cpu;
}

/* Wait until the engine has nothing merged (after run=2) that it counts. */
static int wait_unmerged(const struct engine *e)
{
	uint64_t end = ksm_now_ms() + 120000;
	struct counters c;

	do {
		if (read_counters(e, &c))
			return -1;
		if (!c.shared && !c.sharing && !c.zero)
			return 0;
		ksm_sleep_ms(50);
	} while (ksm_now_ms() < end);
	return -1;
}

/*
 * What the engine holds for its bookkeeping: ksmdev says so; ksmd's are
 * its slab caches (the guest boots with slab_nomerge, so they are apart).
 */
static uint64_t metadata_bytes(const struct engine *e)
{
	static const char *const caches[] = {
		"ksm_rmap_item", "ksm_stable_node", "ksm_mm_slot",
	};
	unsigned long active, objsize;
	char line[512], name[64];
	struct ksm_stats s;
	uint64_t sum = 0;
	unsigned int i;
	FILE *f;

	if (!is_ksmd(e))
		return ksm_get_stats(e->fd, &s) ? 0 : s.metadata_bytes;
	f = fopen("/proc/slabinfo", "r");
	while (f && fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%63s %lu %*u %lu", name, &active, &objsize) != 3)
			continue;
		for (i = 0; i < ARRAY_SIZE(caches); i++)
			if (!strcmp(name, caches[i]))
				sum += (uint64_t)active * objsize;
	}
	if (f)
		fclose(f);
	return sum;
}

static double secs_since(const struct timespec *a);

/* ---- the workload ---- */

enum { DUP, ZERO, VOLATILE, UNIQUE };

static int page_class(size_t i)
{
	unsigned int c = (i * 2654435761u >> 8) % 10;

	return c < 5 ? DUP : c == 5 ? ZERO : c == 6 ? VOLATILE : UNIQUE;
}

static void fill_workload_page(char *page, size_t i, unsigned int proc,
			       uint64_t gen)
{
	switch (page_class(i)) {
	case DUP:
		ksm_fill_val(page, 0, 0x100000 + i);
		break;
	case ZERO:
		memset(page, 0, ksm_page_size());
		break;
	case VOLATILE:
		ksm_fill_val(page, 0, ((uint64_t)proc << 48) + (gen << 24) + i);
		break;
	default:
		ksm_fill_val(page, 0, ((uint64_t)(proc + 1) << 40) + i);
	}
}

/* One process of the workload: fill, register, rewrite volatile pages. */
static void workload_child(const struct engine *e, unsigned int proc,
			   int ready, int stop)
{
	size_t ps = ksm_page_size(), n = (bench_mb << 20) / ps, i;
	char *p = ksm_mmap_anon(n * ps);
	struct pollfd pfd = { .fd = stop, .events = POLLIN };
	uint64_t gen = 0;
	int fd = -1;

	if (!p)
		_exit(1);
	for (i = 0; i < n; i++)
		fill_workload_page(p + i * ps, i, proc, gen);
	if (engine_add(e, &fd, p, n * ps))
		_exit(2);
	if (write(ready, "r", 1) != 1)
		_exit(3);
	/* Every second, until the bench closes @stop. */
	while (poll(&pfd, 1, 1000) == 0) {
		gen++;
		for (i = 0; i < n; i++)
			if (page_class(i) == VOLATILE)
				fill_workload_page(p + i * ps, i, proc, gen);
	}
	_exit(0);
}

/*
 * The pages that can merge (@mergeable: duplicated and zero-filled ones),
 * and the pages saved once they all have (the fewest pages they can share).
 */
static uint64_t workload_max_saved(uint64_t *mergeable)
{
	size_t n = (bench_mb << 20) / ksm_page_size(), i, dup = 0, zero = 0;

	for (i = 0; i < n; i++) {
		dup += page_class(i) == DUP;
		zero += page_class(i) == ZERO;
	}
	*mergeable = (dup + zero) * bench_procs;
	return dup * (bench_procs - 1) + (zero * bench_procs - 1);
}

/* metadata_bytes over the timed passes: the peak and the mean of samples. */
struct md_samples {
	uint64_t peak;
	double sum;
	unsigned long n;
};

/*
 * Wait for the end of the full scan in progress, then time the next
 * @passes: seconds and scanner CPU seconds per pass, and the counters at
 * both ends (@c0, @c). Polls every @poll_us, until @end (ms). Returns false
 * if the passes did not happen by then.
 */

static bool time_passes(const struct engine *e, unsigned long passes,
			unsigned int poll_us, uint64_t end, double *secs,
			double *cpu, struct counters *c0, struct counters *c,
			struct md_samples *md)
{
	uint64_t next_md = 0, now, bytes;
	struct timespec t0;
	double cpu0;

	read_counters(e, c0);
	do {
		usleep(poll_us);
		read_counters(e, c);
	} while (c->full_scans == c0->full_scans && ksm_now_ms() < end);
	*c0 = *c;
	cpu0 = thread_cpu(e);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	do {
		usleep(poll_us);
		read_counters(e, c);
		/*
		 * Every 50 ms (ksmd's figure reads /proc/slabinfo): the
		 * unstable tree fills up during each pass, so one sample
		 * tells little (issue: 15.1 B or 36.7 B, by where it fell).
		 */
		now = ksm_now_ms();
		if (md && now >= next_md) {
			bytes = metadata_bytes(e);
			md->peak = bytes > md->peak ? bytes : md->peak;
			md->sum += bytes;
			md->n++;
			next_md = now + 50;
		}
	} while (c->full_scans < c0->full_scans + passes && ksm_now_ms() < end);
	if (c->full_scans < c0->full_scans + passes)
		return false;
	*secs = secs_since(&t0) / passes;
	*cpu = (thread_cpu(e) - cpu0) / passes;
	return true;
}

/*
 * After convergence, the work goes on (10% of the pages rewritten every
 * second) while nothing new merges: the scanner's cost from then on, over
 * steady_passes full scans at steady_pages_to_scan, where skipping pages
 * that keep failing to merge (smart scan) pays.
 */
static void steady_state(const struct engine *e, size_t registered)
{
	double gib = registered * ksm_page_size() / (double)(1 << 30);
	struct md_samples md = { 0 };
	struct counters c0, c;
	double secs, cpu;

	engine_run(e, 1, steady_pages, sleep_ms);
	if (!time_passes(e, steady_passes, 5000,
			 ksm_now_ms() + timeout_s * 1000ULL, &secs, &cpu,
			 &c0, &c, &md)) {
		printf("# %s: steady state: fewer than %lu passes in %lu s\n",
		       e->name, steady_passes, timeout_s);
		return;
	}
	printf("ROW %s steady_cpu_per_gib_per_pass %.3f s/GiB\n", e->name,
	       cpu / gib);
	printf("ROW %s steady_pass_time %.1f s\n", e->name, secs);
	printf("ROW %s steady_pages_looked_at %.0f %%\n", e->name,
	       100.0 * (c.scanned - c0.scanned) /
	       (c.full_scans - c0.full_scans) / registered);
	printf("ROW %s steady_metadata_per_page %.1f B\n", e->name,
	       metadata_bytes(e) / (double)registered);
	if (md.n) {
		printf("ROW %s metadata_per_page_peak %.1f B\n", e->name,
		       md.peak / (double)registered);
		printf("ROW %s metadata_per_page_mean %.1f B\n", e->name,
		       md.sum / md.n / registered);
	}
	printf("ROW %s steady_saved_pages %llu pages\n", e->name,
	       (unsigned long long)saved(&c));
}

/*
 * The workload under @e at @pts pages a batch until everything that can
 * merge has (or timeout_s). @eqcpu: the run at ksmd's CPU budget (only its
 * time and CPU are told, as figures suffixed _eqcpu). Returns the
 * scanner's CPU seconds until convergence.
 */
/* ksmdev's COW breaks of merged pages (debugfs cow_breaks); 0 for ksmd. */
static uint64_t cow_breaks(const struct engine *e)
{
	uint64_t v = 0;

	if (is_ksmd(e) || ksm_read_debugfs("cow_breaks", &v))
		return 0;
	return v;
}

/*
 * @twopass: ksmdev with first-sight merging off (module parameter
 * first_sight=0), as mm/ksm.c merges: its time and CPU to convergence and
 * its COW breaks, suffixed _2pass, against the first-sight run.
 */
static double workload(const struct engine *e, unsigned long pts, bool eqcpu,
		       bool twopass)
{
	uint64_t mergeable, max = workload_max_saved(&mergeable);
	uint64_t t0, t, t50 = 0, t90 = 0, last = 0, merged = 0;
	size_t registered = bench_procs * (bench_mb << 20) / ksm_page_size();
	const char *sfx = eqcpu ? "_eqcpu" : twopass ? "_2pass" : "";
	uint64_t cow0, cow_pass1 = 0;
	int ready[2], stop[2], status;
	struct counters c0, c;
	double cpu0, cpu;
	unsigned int p;
	char ch;
	pid_t pids[64];

	if (bench_procs > 64 || pipe(ready) || pipe(stop))
		return -1;
	for (p = 0; p < bench_procs; p++) {
		pids[p] = fork();
		if (pids[p] == 0) {
			close(stop[1]);
			workload_child(e, p, ready[1], stop[0]);
		}
	}
	close(stop[0]);
	for (p = 0; p < bench_procs; p++)
		if (read(ready[0], &ch, 1) != 1)
			printf("# %s: a workload process failed\n", e->name);
	if (twopass && ksm_write_param("first_sight", 0))
		printf("# %s: cannot turn first_sight off\n", e->name);
	read_counters(e, &c0);
	cpu0 = thread_cpu(e);
	cow0 = cow_breaks(e);
	t0 = ksm_now_ms();
	engine_run(e, 1, pts, sleep_ms);
	do {
		ksm_sleep_ms(250);
		t = ksm_now_ms() - t0;
		read_counters(e, &c);
		/* The first whole pass: the one after the pass in progress. */
		if (!cow_pass1 && c.full_scans >= c0.full_scans + 2)
			cow_pass1 = cow_breaks(e) - cow0 + 1;
		printf("TS %s%s %llu %llu\n", e->name, sfx,
		       (unsigned long long)t, (unsigned long long)saved(&c));
		if (!t50 && saved(&c) * 2 >= max)
			t50 = t;
		if (!t90 && saved(&c) * 10 >= max * 9)
			t90 = t;
		last = saved(&c);
		merged = c.shared + c.sharing + c.zero;
	} while (merged < mergeable && t < timeout_s * 1000);
	cpu = thread_cpu(e) - cpu0;
	fflush(stdout);

	if (!is_ksmd(e)) {
		/*
		 * cow_pass1 is one more than the count, 0 until known: all
		 * of them if everything merged before the first whole pass
		 * was over.
		 */
		if (!cow_pass1)
			cow_pass1 = cow_breaks(e) - cow0 + 1;
		printf("ROW %s cow_breaks_first_pass%s %llu breaks\n",
		       e->name, sfx, (unsigned long long)(cow_pass1 - 1));
		printf("ROW %s cow_breaks_to_all%s %llu breaks\n", e->name,
		       sfx, (unsigned long long)(cow_breaks(e) - cow0));
	}
	if (twopass) {
		printf("ROW %s time_to_90_2pass %.1f s\n", e->name,
		       t90 / 1000.0);
		printf("ROW %s scanner_cpu_2pass %.2f s\n", e->name, cpu);
		ksm_write_param("first_sight", 1);
		goto out;
	}
	if (eqcpu) {
		printf("ROW %s pages_to_scan_eqcpu %lu pages\n", e->name, pts);
		printf("ROW %s time_to_90_eqcpu %.1f s\n", e->name, t90 / 1000.0);
		printf("ROW %s scanner_cpu_eqcpu %.2f s\n", e->name, cpu);
		goto out;
	}
	printf("ROW %s saved_pages %llu of_%llu\n", e->name,
	       (unsigned long long)last, (unsigned long long)max);
	printf("ROW %s time_to_50 %.1f s\n", e->name, t50 / 1000.0);
	printf("ROW %s time_to_90 %.1f s\n", e->name, t90 / 1000.0);
	printf("ROW %s time_to_all %.1f s\n", e->name,
	       merged >= mergeable ? t / 1000.0 : -1.0);
	printf("ROW %s scanner_cpu %.2f s\n", e->name, cpu);
	printf("ROW %s full_scans %llu passes\n", e->name,
	       (unsigned long long)(c.full_scans - c0.full_scans));
	if (c.scanned > c0.scanned)
		printf("ROW %s cpu_per_gib_scanned %.3f s/GiB\n", e->name,
		       cpu / ((c.scanned - c0.scanned) * ksm_page_size() /
			      (double)(1 << 30)));
	if (c.full_scans > c0.full_scans)
		printf("ROW %s cpu_per_gib_per_pass %.3f s/GiB\n", e->name,
		       cpu / (c.full_scans - c0.full_scans) /
		       (registered * ksm_page_size() / (double)(1 << 30)));
	printf("ROW %s metadata_per_page %.1f B\n", e->name,
	       metadata_bytes(e) / (double)registered);
	if (is_ksmd(e)) {
		/* The reference of the _eqcpu figures is ksmd at its own. */
		printf("ROW %s pages_to_scan_eqcpu %lu pages\n", e->name, pts);
		printf("ROW %s time_to_90_eqcpu %.1f s\n", e->name, t90 / 1000.0);
		printf("ROW %s scanner_cpu_eqcpu %.2f s\n", e->name, cpu);
	}
	steady_state(e, registered);
out:
	close(stop[1]);
	for (p = 0; p < bench_procs; p++)
		waitpid(pids[p], &status, 0);
	close(ready[0]);
	close(ready[1]);
	engine_run(e, 2, pts, sleep_ms);
	wait_unmerged(e);
	return cpu;
}

/* ---- upstream ksm_tests' figures: -P, -H, -D, -C ---- */

#define FAST_PAGES	10000	/* micro benchmarks: the scanner flat out */

/* Wait until @n pages (all of them the same) map merged pages. */
static int wait_all_merged(const struct engine *e, size_t n, unsigned int s)
{
	uint64_t end = ksm_now_ms() + s * 1000ULL;
	struct counters c;

	do {
		if (read_counters(e, &c))
			return -1;
		/* ksmd: max_page_sharing makes more than one shared page. */
		if (c.shared + c.sharing == n)
			return 0;
		usleep(2000);
	} while (ksm_now_ms() < end);
	return -1;
}

/* ns per page to write one byte into each of @n pages. */
static double write_each(char *p, size_t n)
{
	struct timespec a, b;
	size_t i;

	clock_gettime(CLOCK_MONOTONIC, &a);
	for (i = 0; i < n; i++)
		p[i * ksm_page_size()]++;
	clock_gettime(CLOCK_MONOTONIC, &b);
	return ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n;
}

static double secs_since(const struct timespec *a)
{
	struct timespec b;

	clock_gettime(CLOCK_MONOTONIC, &b);
	return (b.tv_sec - a->tv_sec) + (b.tv_nsec - a->tv_nsec) / 1e9;
}

static void micro(const struct engine *e, bool thp)
{
	const size_t huge = 2UL << 20, len = merge_mb << 20;
	size_t ps = ksm_page_size(), n = len / ps;
	const char *tag = thp ? "thp" : "4k";
	struct timespec t0;
	double cpu0, secs;
	char *raw, *p;
	int fd = -1;

	raw = mmap(NULL, len + huge, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (raw == MAP_FAILED)
		return;
	p = (char *)(((uintptr_t)raw + huge - 1) & ~(huge - 1));
	madvise(p, len, thp ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	ksm_fill_vals(p, 0, n, 0x5a5a);
	if (thp)
		printf("# %s: AnonHugePages %ld kB of %zu\n", e->name,
		       ksm_smaps_kb(p, "AnonHugePages"), len >> 10);

	/* -P / -H: merge time. */
	cpu0 = thread_cpu(e);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (engine_add(e, &fd, p, len) || engine_run(e, 1, FAST_PAGES, 0) ||
	    wait_all_merged(e, n, 600)) {
		printf("# %s: %s merge did not complete\n", e->name, tag);
		goto out;
	}
	secs = secs_since(&t0);
	printf("ROW %s merge_%s %.1f MiB/s\n", e->name, tag, merge_mb / secs);
	printf("ROW %s merge_%s_cpu %.2f s\n", e->name, tag,
	       thread_cpu(e) - cpu0);
	if (thp)
		goto out;

	/* -D: unmerge time. */
	engine_run(e, 0, FAST_PAGES, 0);
	clock_gettime(CLOCK_MONOTONIC, &t0);
	if (engine_remove(e, fd, p, len)) {
		printf("# %s: unmerge failed: %s\n", e->name, strerror(errno));
		goto out;
	}
	secs = secs_since(&t0);
	printf("ROW %s unmerge %.1f MiB/s\n", e->name, merge_mb / secs);
	/*
	 * ksmd drops its rmap items, and counts the pages unmerged, only when
	 * its scanner passes there again: let it, or the merge below would
	 * seem done at once.
	 */
	engine_run(e, 1, FAST_PAGES, 0);
	if (wait_unmerged(e)) {
		printf("# %s: the counters did not come back to 0\n", e->name);
		goto out;
	}

	/* -C: a write to a merged page, against one to a private page. */
	ksm_fill_vals(p, 0, n, 0x5a5a);
	if (engine_add(e, &fd, p, len) || engine_run(e, 1, FAST_PAGES, 0) ||
	    wait_all_merged(e, n, 600)) {
		printf("# %s: merge for COW did not complete\n", e->name);
		goto out;
	}
	engine_run(e, 0, FAST_PAGES, 0);
	printf("ROW %s cow_write %.0f ns/page\n", e->name, write_each(p, n));
	printf("ROW %s private_write %.0f ns/page\n", e->name,
	       write_each(p, n));
out:
	engine_run(e, 2, FAST_PAGES, 0);
	wait_unmerged(e);
	if (!is_ksmd(e) && fd >= 0)
		close(fd);
	munmap(raw, len + huge);
}

/* The calling thread's CPU time, in seconds. */
static double self_cpu(void)
{
	struct rusage ru;

	if (getrusage(RUSAGE_THREAD, &ru))
		return -1;
	return ru.ru_utime.tv_sec + ru.ru_stime.tv_sec +
	       (ru.ru_utime.tv_usec + ru.ru_stime.tv_usec) / 1e6;
}

/*
 * KSM_MERGE_REGION (ksmdev only; ksmd has nothing like it): BENCH_MERGE_MB
 * merged by one call with the scanner stopped, as -P measures the scanner:
 * identical pages, then the workload's mix (half of the pages the same in
 * two copies, the rest unique). MiB/s of the range, and the caller's CPU.
 */
static void merge_now(const struct engine *e)
{
	const size_t len = merge_mb << 20, ps = ksm_page_size();
	const size_t n = len / ps;
	struct timespec t0;
	double cpu0, secs;
	int fd = -1, ret;
	size_t i;
	char *p;

	if (is_ksmd(e))
		return;
	p = ksm_mmap_anon(len);
	if (!p)
		return;
	for (i = 0; i < 2; i++) {
		if (i == 0)
			ksm_fill_vals(p, 0, n, 0x5a5a);
		else
			for (size_t k = 0; k < n; k++)
				ksm_fill_val(p, k, k % 2 ? k : k % (n / 2));
		if (engine_run(e, 0, FAST_PAGES, 0) ||
		    engine_add(e, &fd, p, len)) {
			printf("# %s: merge_now setup failed\n", e->name);
			break;
		}
		cpu0 = self_cpu();
		clock_gettime(CLOCK_MONOTONIC, &t0);
		ret = ksm_region_ioctl(fd, KSM_MERGE_REGION, p, len, 0);
		secs = secs_since(&t0);
		if (ret < 0) {
			printf("# %s: KSM_MERGE_REGION: %s\n", e->name,
			       strerror(-ret));
			break;
		}
		printf("ROW %s merge_now%s %.1f MiB/s\n", e->name,
		       i ? "_mixed" : "", merge_mb / secs);
		printf("ROW %s merge_now%s_cpu %.2f s\n", e->name,
		       i ? "_mixed" : "", self_cpu() - cpu0);
		printf("# %s: merge_now%s merged %d of %zu pages\n", e->name,
		       i ? "_mixed" : "", ret, n);
		engine_remove(e, fd, p, len);
	}
	if (fd >= 0)
		close(fd);
	munmap(p, len);
}

/*
 * A region of @len bytes with every @stride-th page present (unique
 * content): seconds per full scan, with the scanner flat out.
 */
static double pass_time(const struct engine *e, size_t len, size_t stride,
			double *cpu_per_pass)
{
	size_t ps = ksm_page_size(), i;
	struct counters c0, c;
	double secs = -1;
	int fd = -1;
	char *p;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	if (p == MAP_FAILED)
		return -1;
	madvise(p, len, MADV_NOHUGEPAGE);
	for (i = 0; i < len / ps; i += stride)
		ksm_fill_val(p + i * ps, 0, 0x7700000000ULL + i);
	if (engine_add(e, &fd, p, len))
		goto out;
	engine_run(e, 1, FAST_PAGES, 0);
	if (!time_passes(e, 3, 1000, ksm_now_ms() + 600000, &secs, cpu_per_pass,
			 &c0, &c, NULL))
		secs = -1;
out:
	engine_run(e, 2, FAST_PAGES, 0);
	wait_unmerged(e);
	if (!is_ksmd(e) && fd >= 0)
		close(fd);
	munmap(p, len);
	return secs;
}

/* The sparse region's pass against a dense one with as many pages. */
static void sparse(const struct engine *e)
{
	size_t len = sparse_gb << 30, stride = 100;
	size_t present = (len / ksm_page_size() + stride - 1) / stride;
	double sp, dn, spc = 0, dnc = 0;

	sp = pass_time(e, len, stride, &spc);
	dn = pass_time(e, present * ksm_page_size(), 1, &dnc);
	printf("# %s: %zu present pages, sparse pass %.2f s (cpu %.2f), dense pass %.2f s (cpu %.2f)\n",
	       e->name, present, sp, spc, dn, dnc);
	if (sp > 0)
		printf("ROW %s sparse_pass %.2f s\n", e->name, sp);
	if (dn > 0)
		printf("ROW %s dense_pass %.2f s\n", e->name, dn);
}

/*
 * Turn the engine's advisor on (@target_ms, at most @cpu percent of a CPU)
 * or off (@target_ms 0). ksmd's (6.8+) takes whole seconds, at least 1.
 * Returns -1 if the engine has none.
 */
static int engine_advisor(const struct engine *e, uint64_t target_ms,
			  uint64_t cpu)
{
	struct ksm_config cfg;

	if (is_ksmd(e)) {
		if (access(SYSFS_KSM "advisor_mode", W_OK))
			return -1;
		if (!target_ms)
			return ksm_write_str_file(SYSFS_KSM "advisor_mode", "none");
		if (sysfs_ksm_set("advisor_target_scan_time",
				  target_ms < 1000 ? 1 : target_ms / 1000) ||
		    sysfs_ksm_set("advisor_max_cpu", cpu))
			return -1;
		return ksm_write_str_file(SYSFS_KSM "advisor_mode", "scan-time");
	}
	if (ksm_get_config(e->fd, &cfg))
		return -1;
	cfg.advisor_target_scan_ms = target_ms;
	cfg.advisor_max_cpu_percent = cpu;
	return ksm_set_config(e->fd, &cfg);
}

/*
 * The advisor: BENCH_ADVISOR_MB of unique pages at pages_to_scan 1. With
 * a target of BENCH_ADVISOR_TARGET_MS at most 25% of a CPU, the pass time
 * and CPU share once settled (after 3 passes); then with a target no
 * engine reaches (the least each takes) at most 10%: the CPU share.
 */
static void advisor(const struct engine *e)
{
	size_t len = advisor_mb << 20, n = len / ksm_page_size(), i;
	struct counters c0, c;
	double secs, cpu;
	int fd = -1;
	char *p;

	p = ksm_mmap_anon(len);
	if (!p)
		return;
	for (i = 0; i < n; i++)
		ksm_fill_val(p + i * ksm_page_size(), 0, 0x7800000000ULL + i);
	if (engine_add(e, &fd, p, len) || engine_run(e, 1, 1, sleep_ms) ||
	    engine_advisor(e, advisor_target_ms, 25)) {
		printf("# %s: no advisor\n", e->name);
		goto out;
	}
	/*
	 * Passes 10 to 12: smart scan begins to pass pages by on the fourth,
	 * and an advisor sizes batches from the passes before (ksmdev's
	 * passes 4 to 6 took half the target).
	 */
	if (time_passes(e, 9, 10000, ksm_now_ms() + timeout_s * 1000ULL,
			&secs, &cpu, &c0, &c, NULL) &&
	    time_passes(e, 3, 10000, ksm_now_ms() + timeout_s * 1000ULL,
			&secs, &cpu, &c0, &c, NULL)) {
		printf("# %s: advisor, target %lu ms, cap 25%%: pass %.2f s, cpu %.2f s a pass\n",
		       e->name, advisor_target_ms, secs, cpu);
		printf("ROW %s advisor_pass_vs_target %.2f x\n", e->name,
		       secs * 1000 / advisor_target_ms);
		printf("ROW %s advisor_cpu_cap25 %.1f %%\n", e->name,
		       100 * cpu / secs);
	}
	engine_advisor(e, 100, 10);
	if (time_passes(e, 3, 10000, ksm_now_ms() + timeout_s * 1000ULL,
			&secs, &cpu, &c0, &c, NULL) &&
	    time_passes(e, 3, 10000, ksm_now_ms() + timeout_s * 1000ULL,
			&secs, &cpu, &c0, &c, NULL)) {
		printf("# %s: advisor, target unreachable, cap 10%%: pass %.2f s, cpu %.2f s a pass\n",
		       e->name, secs, cpu);
		printf("ROW %s advisor_cpu_cap10 %.1f %%\n", e->name,
		       100 * cpu / secs);
	}
out:
	engine_advisor(e, 0, 25);
	engine_run(e, 2, pages_to_scan, sleep_ms);
	wait_unmerged(e);
	if (!is_ksmd(e) && fd >= 0)
		close(fd);
	munmap(p, len);
}

/*
 * NUMA (merge_across_nodes): BENCH_PROCS processes, each bound to a node
 * in turn (set_mempolicy(MPOL_BIND)), with BENCH_NUMA_MB of pages the same
 * in all of them, merged once across nodes and once only within each node.
 * Pages saved both ways, and how many merged pages each left behind: the
 * memory merge_across_nodes=0 gives up for node-local accesses.
 */
static int engine_across_once(const struct engine *e, uint64_t across)
{
	struct ksm_config cfg;

	if (is_ksmd(e))
		return sysfs_ksm_set("merge_across_nodes", across);
	if (ksm_get_config(e->fd, &cfg))
		return -1;
	cfg.merge_across_nodes = across;
	return ksm_set_config(e->fd, &cfg);
}

/*
 * Both engines refuse the change (EBUSY) while a merged page exists; the
 * ones the previous round's processes left when they exited are freed by
 * the scanner's next visits (ksmdev: pages_orphaned), after run=2 is over:
 * try again for a while.
 */
static int engine_across(const struct engine *e, uint64_t across)
{
	uint64_t end = ksm_now_ms() + 60000;
	int ret;

	while ((ret = engine_across_once(e, across)) == -EBUSY &&
	       ksm_now_ms() < end)
		ksm_sleep_ms(100);
	return ret;
}

static void numa_child(const struct engine *e, unsigned int node,
		       int ready, int stop)
{
	size_t len = numa_mb << 20, n = len / ksm_page_size();
	unsigned long mask = 1UL << node;
	int fd = -1;
	char *p, c;

	if (syscall(SYS_set_mempolicy, 2 /* MPOL_BIND */, &mask,
		    8 * sizeof(mask)))
		_exit(1);
	p = ksm_mmap_anon(len);
	if (!p)
		_exit(2);
	ksm_fill_vals(p, 0, n, 0x6e756d61ULL);
	if (engine_add(e, &fd, p, len))
		_exit(3);
	if (write(ready, "r", 1) != 1)
		_exit(4);
	while (read(stop, &c, 1) < 0 && errno == EINTR)
		;
	_exit(0);
}

static void numa(const struct engine *e)
{
	const size_t n = (numa_mb << 20) / ksm_page_size();
	int nodes = ksm_nodes_online(), across;

	if (nodes < 2) {
		printf("# %s: numa: one node, nothing to measure\n", e->name);
		return;
	}
	for (across = 1; across >= 0; across--) {
		int ready[2], stop[2], status, ret;
		struct counters c;
		unsigned int p;
		pid_t pids[64];
		uint64_t end;
		char ch;

		if (bench_procs > 64 || pipe(ready) || pipe(stop))
			return;
		ret = engine_across(e, across);
		if (ret) {
			printf("# %s: cannot set merge_across_nodes=%d: %s\n",
			       e->name, across, strerror(-ret));
			close(ready[0]);
			close(ready[1]);
			close(stop[0]);
			close(stop[1]);
			break;
		}
		for (p = 0; p < bench_procs; p++) {
			pids[p] = fork();
			if (pids[p] == 0) {
				close(stop[1]);
				numa_child(e, p % nodes, ready[1], stop[0]);
			}
		}
		close(stop[0]);
		for (p = 0; p < bench_procs; p++)
			if (read(ready[0], &ch, 1) != 1)
				printf("# %s: a numa process failed\n",
				       e->name);
		engine_run(e, 1, FAST_PAGES, 0);
		end = ksm_now_ms() + timeout_s * 1000ULL;
		do {
			ksm_sleep_ms(100);
			read_counters(e, &c);
		} while (c.shared + c.sharing < n * bench_procs &&
			 ksm_now_ms() < end);
		printf("ROW %s numa_saved_%s %llu pages\n", e->name,
		       across ? "across" : "per_node",
		       (unsigned long long)c.sharing);
		printf("ROW %s numa_merged_pages_%s %llu pages\n", e->name,
		       across ? "across" : "per_node",
		       (unsigned long long)c.shared);
		close(stop[1]);
		for (p = 0; p < bench_procs; p++)
			waitpid(pids[p], &status, 0);
		close(ready[0]);
		close(ready[1]);
		engine_run(e, 2, FAST_PAGES, 0);
		wait_unmerged(e);
	}
	if (engine_across(e, 1))
		printf("# %s: cannot set merge_across_nodes back to 1\n",
		       e->name);
}

/*
 * A real workload (the vms phase): VMS_NR small QEMU guests (the inner
 * kernel and initramfs of tests/hypervisor.c) booted inside the bench
 * guest. ksmd merges them through QEMU's own madvise(MADV_MERGEABLE)
 * (mem-merge); ksmdev through the same call, handed to /dev/ksm by the
 * preload library. The scanner starts once every guest has printed its
 * line, at the workload's pace, and runs BENCH_VMS_PASSES full scans: pages
 * saved then, and the time to 90% of them. The guests keep running (TCG
 * inside TCG) and compete with the scanner for the CPUs, as VMs do.
 */
#define VMS_QEMU	"/usr/bin/qemu-system-x86_64"
#define VMS_PRELOAD	"/tests/libksmdev-preload.so"
#define VMS_UP_LINE	"ksmdev inner guest: up"
#define VMS_MAX		8
#define VMS_SAMPLES	8192

static bool vm_up(unsigned int i)
{
	static char buf[65536];
	char path[64];

	snprintf(path, sizeof(path), "/tmp/bench-vm%u.log", i);
	return ksm_read_text(path, buf, sizeof(buf)) > 0 &&
	       strstr(buf, VMS_UP_LINE);
}

static void vms(const struct engine *e)
{
	static uint64_t at[VMS_SAMPLES], sv[VMS_SAMPLES];
	uint64_t t0, end, t90 = 0, final, cow0;
	unsigned int i, up, ns = 0;
	struct counters c0, c;
	pid_t pids[VMS_MAX];
	double cpu0, cpu;
	int status;

	if (access(VMS_QEMU, X_OK) || access("/boot/inner-kernel", R_OK)) {
		printf("# %s: vms: no QEMU or inner kernel in the guest\n",
		       e->name);
		return;
	}
	if (vms_nr > VMS_MAX)
		vms_nr = VMS_MAX;
	engine_run(e, 0, pages_to_scan, sleep_ms);
	t0 = ksm_now_ms();
	for (i = 0; i < vms_nr; i++) {
		char serial[64], err[64];

		snprintf(serial, sizeof(serial), "file:/tmp/bench-vm%u.log", i);
		snprintf(err, sizeof(err), "/tmp/bench-vm%u.err", i);
		unlink(serial + 5);
		pids[i] = fork();
		if (pids[i])
			continue;
		if (!freopen(err, "w", stderr))
			_exit(126);
		if (!is_ksmd(e))
			setenv("LD_PRELOAD", VMS_PRELOAD, 1);
		execl(VMS_QEMU, "qemu-system-x86_64", "-accel", "tcg",
		      "-m", "128M", "-nodefaults", "-display", "none",
		      "-monitor", "none", "-no-reboot",
		      "-machine", "mem-merge=on", "-kernel", "/boot/inner-kernel",
		      "-initrd", "/boot/inner-initrd",
		      "-append", "console=ttyS0 nokaslr", "-serial", serial,
		      (char *)NULL);
		_exit(127);
	}
	end = t0 + timeout_s * 1000ULL;
	do {
		ksm_sleep_ms(500);
		for (i = 0, up = 0; i < vms_nr; i++)
			up += pids[i] > 0 && vm_up(i);
	} while (up < vms_nr && ksm_now_ms() < end);
	if (up < vms_nr) {
		printf("# %s: vms: %u of %lu guests up in %lu s\n", e->name,
		       up, vms_nr, timeout_s);
		goto out;
	}
	printf("# %s: vms: %lu guests up in %.1f s\n", e->name, vms_nr,
	       (ksm_now_ms() - t0) / 1000.0);
	read_counters(e, &c0);
	cpu0 = thread_cpu(e);
	cow0 = cow_breaks(e);
	t0 = ksm_now_ms();
	engine_run(e, 1, pages_to_scan, sleep_ms);
	do {
		ksm_sleep_ms(250);
		read_counters(e, &c);
		if (ns < VMS_SAMPLES) {
			at[ns] = ksm_now_ms() - t0;
			sv[ns++] = saved(&c);
		}
	} while (c.full_scans < c0.full_scans + vms_passes &&
		 ksm_now_ms() < end);
	cpu = thread_cpu(e) - cpu0;
	final = saved(&c);
	for (i = 0; i < ns && !t90; i++)
		if (sv[i] * 10 >= final * 9)
			t90 = at[i];
	printf("ROW %s vms_saved_pages %llu pages\n", e->name,
	       (unsigned long long)final);
	printf("ROW %s vms_time_to_90 %.1f s\n", e->name, t90 / 1000.0);
	printf("ROW %s vms_scanner_cpu %.2f s\n", e->name, cpu);
	printf("ROW %s vms_full_scans %llu passes\n", e->name,
	       (unsigned long long)(c.full_scans - c0.full_scans));
	/* The churn first-sight merging costs on a real workload. */
	if (!is_ksmd(e))
		printf("ROW %s vms_cow_breaks %llu breaks\n", e->name,
		       (unsigned long long)(cow_breaks(e) - cow0));
out:
	for (i = 0; i < vms_nr; i++) {
		if (pids[i] <= 0)
			continue;
		kill(pids[i], SIGKILL);
		waitpid(pids[i], &status, 0);
	}
	engine_run(e, 2, pages_to_scan, sleep_ms);
	wait_unmerged(e);
}

/*
 * Upstream's own ksm_tests (built by bench.sh from Debian's linux-source,
 * unmodified) against ksmd: an external reference for the -P/-H/-D/-C
 * figures above. Its output goes out as comments, its speeds as figures.
 */
static void upstream_ksm_tests(void)
{
	static const struct {
		const char *figure, *args;
	} runs[] = {
		{ "upstream_P", "-P -s 100 -p 10000" },
		{ "upstream_H", "-H -s 100 -p 10000" },
		{ "upstream_D", "-D -s 100 -p 10000" },
		{ "upstream_C", "-C -p 10000" },
	};
	char cmd[128], line[256];
	unsigned int i, n;
	double speed;
	FILE *f;

	if (access("/tests/ksm_tests", X_OK)) {
		printf("# no /tests/ksm_tests: upstream figures skipped\n");
		return;
	}
	for (i = 0; i < ARRAY_SIZE(runs); i++) {
		snprintf(cmd, sizeof(cmd), "/tests/ksm_tests %s 2>&1", runs[i].args);
		f = popen(cmd, "r");
		if (!f)
			continue;
		n = 0;
		while (fgets(line, sizeof(line), f)) {
			line[strcspn(line, "\n")] = 0;
			printf("# ksm_tests %s: %s\n", runs[i].args, line);
			if (sscanf(strstr(line, "Average speed:") ?: "",
				   "Average speed: %lf", &speed) != 1)
				continue;
			/* -C: unmerged pages first, then merged ones. */
			printf("ROW ksmd %s%s %.1f MiB/s\n", runs[i].figure,
			       n++ ? "_merged" : "", speed);
		}
		pclose(f);
	}
}

/* One engine's turn in round @r (the first is 0): the phases asked for. */
static void phase_round(struct engine *e, unsigned int i, unsigned int r,
			const char *phases, double *cpu)
{
	if (strstr(phases, "workload")) {
		printf("# %s: workload\n", e->name);
		cpu[i] = workload(e, pages_to_scan, false, false);
	}
	/*
	 * At equal CPU budget: ksmdev again, its pages_to_scan scaled
	 * by how much less CPU it took than ksmd (what an advisor
	 * that targets a CPU share would do).
	 */
	if (strstr(phases, "workload") && i == 1 && !r &&
	    cpu[0] > 0 && cpu[1] > 0) {
		unsigned long pts = pages_to_scan * cpu[0] / cpu[1];

		printf("# %s: workload at ksmd's CPU (pages_to_scan %lu)\n",
		       e->name, pts);
		workload(e, pts ? pts : 1, true, false);
	}
	/* ksmdev as mm/ksm.c merges: twice over each page. */
	if (strstr(phases, "twopass") && i == 1 && !r) {
		printf("# %s: workload, first_sight=0\n", e->name);
		workload(e, pages_to_scan, false, true);
	}
	if (strstr(phases, "micro")) {
		printf("# %s: merge, unmerge, COW\n", e->name);
		micro(e, false);
		micro(e, true);
		merge_now(e);
	}
	if (strstr(phases, "sparse") && !r) {
		printf("# %s: sparse region\n", e->name);
		sparse(e);
	}
	if (strstr(phases, "advisor") && !r) {
		printf("# %s: advisor\n", e->name);
		advisor(e);
	}
	if (strstr(phases, "numa") && !r) {
		printf("# %s: numa\n", e->name);
		numa(e);
	}
	if (strstr(phases, "vms") && !r) {
		printf("# %s: vms\n", e->name);
		vms(e);
	}
}

int main(void)
{
	struct engine engines[] = {
		{ .name = "ksmd", .thread = "ksmd", .fd = -1 },
		{ .name = "ksmdev", .thread = "ksmdev", .fd = -1 },
	};
	const char *only = getenv("BENCH_ONLY");
	const char *phases = getenv("BENCH_PHASES");
	double cpu[2] = { -1, -1 };
	unsigned int i, r;

	bench_mb = env_ul("BENCH_MB", bench_mb);
	bench_procs = env_ul("BENCH_PROCS", bench_procs);
	merge_mb = env_ul("BENCH_MERGE_MB", merge_mb);
	pages_to_scan = env_ul("BENCH_PAGES_TO_SCAN", pages_to_scan);
	sleep_ms = env_ul("BENCH_SLEEP_MS", sleep_ms);
	timeout_s = env_ul("BENCH_TIMEOUT", timeout_s);
	sparse_gb = env_ul("BENCH_SPARSE_GB", sparse_gb);
	steady_pages = env_ul("BENCH_STEADY_PAGES_TO_SCAN", steady_pages);
	steady_passes = env_ul("BENCH_STEADY_PASSES", steady_passes);
	advisor_mb = env_ul("BENCH_ADVISOR_MB", advisor_mb);
	advisor_target_ms = env_ul("BENCH_ADVISOR_TARGET_MS", advisor_target_ms);
	rounds = env_ul("BENCH_ROUNDS", rounds);
	numa_mb = env_ul("BENCH_NUMA_MB", numa_mb);
	vms_nr = env_ul("BENCH_VMS", vms_nr);
	vms_passes = env_ul("BENCH_VMS_PASSES", vms_passes);
	if (!phases || !*phases)
		phases = "upstream workload twopass micro sparse advisor numa vms";
	setvbuf(stdout, NULL, _IOLBF, 0);

	engines[1].fd = ksm_open();
	if (engines[1].fd < 0 || access(SYSFS_KSM "run", W_OK)) {
		printf("# needs /dev/ksm and " SYSFS_KSM " (root)\n");
		return 1;
	}
	printf("# %lu processes x %lu MiB, pages_to_scan %lu, sleep_millisecs %lu; smart_scan %llu; %lu rounds\n",
	       bench_procs, bench_mb, pages_to_scan, sleep_ms,
	       (unsigned long long)sysfs_ksm("smart_scan"), rounds);
	if (strstr(phases, "upstream") && (!only || !*only || !strcmp(only, "ksmd")))
		upstream_ksm_tests();
	/*
	 * Rounds, the engines interleaved (ksmd, ksmdev, ksmd, ksmdev...):
	 * the workload and the micro benchmarks, whose ratios bench.sh gives
	 * as a median and a spread over the rounds, so that a slow spell of
	 * the host is not taken for one engine's figure (private_write, which
	 * no engine affects, tells such a spell). The phases that take long
	 * or compare nothing (eqcpu, twopass, sparse, advisor, numa) run in
	 * the first round only.
	 */
	for (r = 0; r < rounds; r++) {
		printf("ROUND %u\n", r + 1);
		for (i = 0; i < ARRAY_SIZE(engines); i++) {
			struct engine *e = &engines[i];

			if (only && *only && strcmp(only, e->name))
				continue;
			phase_round(e, i, r, phases, cpu);
		}
	}
	engine_run(&engines[1], 0, pages_to_scan, sleep_ms);
	return 0;
}
