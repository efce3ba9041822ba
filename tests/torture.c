// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev torture: processes x threads write patterns (often the same ones,
 * so pages keep merging) into registered memory while the scanner runs
 * flat out, and mix in everything a program may do to its memory: fork,
 * munmap/mremap/mprotect, MADV_DONTNEED, MADV_FREE, THP and attempts to
 * collapse it (MADV_COLLAPSE, which fails while the range holds merged
 * pages or has been cut into VMAs; merge.c's thp_collapse_after_cow shows
 * a collapse succeeding), unregister and re-register; the test process
 * meanwhile flips run between 0, 1 and 2 and changes the pace. Every
 * thread keeps a shadow copy of its pages and checks them as it goes and
 * at the end: no byte may ever differ. A storm thread in each process
 * rewrites a region of its own whole, round after round, so that the
 * scanner merges (and writes break) thousands of pages a second amid it.
 *
 * Bounded for CI (KSMDEV_TORTURE_SECONDS, default 40); `make soak` runs it
 * as long as asked. Runs as root in a QEMU guest; never on a host.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#define PROCS		3
#define THREADS		3
#define THREAD_PAGES	160
#define REGION_PAGES	512	/* 2 MiB: a THP in the first process */
#define PATTERNS	6
#define STORM_PAGES	2048	/* 8 MiB a process, rewritten whole */

struct worker {
	char *base;
	unsigned char *shadow;
	uint64_t seed, deadline;
	long writes, checks, mismatches, forks, moves, drops, protects;
};

/*
 * A storm thread: a region of its own, registered through a context of its
 * own, rewritten whole with a few patterns (the same in every process), then
 * left alone until most of it merged, checked, and rewritten: every round
 * is STORM_PAGES merges and as many COW breaks, amid the churn of the other
 * threads in the same mm.
 */
struct storm {
	char *base;
	uint64_t deadline;
	long rounds, merged, mismatches;
};

/* What a process tells the test process at its end. */
struct report {
	long writes, checks, mismatches, forks, moves, drops, protects;
	long reregisters, collapses, storm_rounds, storm_merged;
};

static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

static void check_page(struct worker *w, size_t i)
{
	size_t ps = ksm_page_size();

	w->checks++;
	if (memcmp(w->base + i * ps, w->shadow + i * ps, ps)) {
		if (w->mismatches++ < 5)
			fprintf(stderr, "# mismatch: page %zu of thread at %p\n",
				i, (void *)w->base);
	}
}

static void check_all(struct worker *w)
{
	size_t i;

	for (i = 0; i < THREAD_PAGES; i++)
		check_page(w, i);
}

static void write_page(struct worker *w, size_t i)
{
	size_t ps = ksm_page_size();
	char *page = w->base + i * ps;
	uint64_t r = next_rand(&w->seed);

	if (r % 5) {
		/* One of a few patterns: these pages merge. */
		memset(page, 'A' + r % PATTERNS, ps);
	} else {
		/* One byte changed: this page is unique for now. */
		page[(r >> 8) % ps] = (char)(r >> 32);
	}
	memcpy(w->shadow + i * ps, page, ps);
	w->writes++;
}

/* The child checks this thread's pages, writes some (COW), checks again. */
static void fork_and_check(struct worker *w)
{
	int status;
	pid_t pid;
	size_t i;

	pid = fork();
	if (pid < 0)
		return;
	if (pid == 0) {
		w->mismatches = 0;
		check_all(w);
		for (i = 0; i < THREAD_PAGES; i += 7)
			write_page(w, i);
		check_all(w);
		_exit(w->mismatches ? 1 : 0);
	}
	w->forks++;
	if (ksm_waitpid_timeout(pid, &status, 60) || ksm_exit_code(status)) {
		fprintf(stderr, "# a forked child saw wrong contents\n");
		w->mismatches++;
	}
}

/* Move page i over page j, and map a fresh page where i was. */
static void move_page(struct worker *w, size_t i, size_t j)
{
	size_t ps = ksm_page_size();
	char *from = w->base + i * ps, *to = w->base + j * ps;

	if (mremap(from, ps, ps, MREMAP_MAYMOVE | MREMAP_FIXED, to) == MAP_FAILED)
		return;
	memcpy(w->shadow + j * ps, w->shadow + i * ps, ps);
	if (mmap(from, ps, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0) == MAP_FAILED) {
		fprintf(stderr, "# mmap MAP_FIXED: %s\n", strerror(errno));
		w->mismatches++;
	}
	memset(w->shadow + i * ps, 0, ps);
	w->moves++;
}

static void *worker_main(void *arg)
{
	struct worker *w = arg;
	size_t ps = ksm_page_size();

	while (ksm_now_ms() < w->deadline) {
		uint64_t r = next_rand(&w->seed);
		size_t i = (r >> 16) % THREAD_PAGES;
		char *page = w->base + i * ps;
		unsigned int op = r % 1000;

		if (op < 550) {
			write_page(w, i);
		} else if (op < 800) {
			check_page(w, i);
		} else if (op < 850) {
			madvise(page, ps, MADV_DONTNEED);
			memset(w->shadow + i * ps, 0, ps);
			w->drops++;
		} else if (op < 880) {
			/* MADV_FREE leaves the content undefined: redefine it. */
			madvise(page, ps, MADV_FREE);
			memset(page, 'A' + r % PATTERNS, ps);
			memset(w->shadow + i * ps, 'A' + r % PATTERNS, ps);
		} else if (op < 930) {
			mprotect(page, ps, PROT_READ);
			check_page(w, i);
			mprotect(page, ps, PROT_READ | PROT_WRITE);
			w->protects++;
		} else if (op < 970) {
			move_page(w, i, (i + 1 + (r >> 40) % (THREAD_PAGES - 1)) %
				  THREAD_PAGES);
		} else if (op < 975) {
			fork_and_check(w);
		} else {
			check_all(w);
		}
		/*
		 * Leave the scanner (nice 5) some CPU, and pages some time to
		 * stay unchanged for two of its visits: then they merge.
		 */
		usleep(200);
	}
	check_all(w);
	return NULL;
}

static char storm_byte(size_t i, long round)
{
	return 'a' + (i + round) % PATTERNS;
}

static long storm_check(struct storm *st, long round)
{
	size_t ps = ksm_page_size(), i, j;
	long bad = 0;

	for (i = 0; i < STORM_PAGES; i++) {
		const char *page = st->base + i * ps;

		for (j = 0; j < ps; j += 8) {
			if (page[j] != storm_byte(i, round) ||
			    page[j + 7] != storm_byte(i, round)) {
				if (st->mismatches + bad < 5)
					fprintf(stderr, "# storm mismatch: page %zu, round %ld\n",
						i, round);
				bad++;
				break;
			}
		}
	}
	return bad;
}

static void *storm_main(void *arg)
{
	size_t ps = ksm_page_size(), i;
	struct ksm_mm_stats ms;
	struct storm *st = arg;
	uint64_t until;
	long round;
	int fd;

	fd = ksm_open();
	if (fd < 0 || ksm_register(fd, st->base, STORM_PAGES * ps, 0)) {
		st->mismatches++;
		fprintf(stderr, "# storm: cannot register: %s\n", strerror(errno));
		return NULL;
	}
	for (round = 0; ksm_now_ms() < st->deadline; round++) {
		for (i = 0; i < STORM_PAGES; i++)
			memset(st->base + i * ps, storm_byte(i, round), ps);
		/* Until most of it merged (run may be 0 for a while): bounded. */
		until = ksm_now_ms() + 3000;
		while (ksm_now_ms() < until && ksm_now_ms() < st->deadline) {
			if (ksm_get_mm_stats(fd, &ms) ||
			    ms.merging_pages >= STORM_PAGES * 9 / 10)
				break;
			ksm_sleep_ms(5);
		}
		if (!ksm_get_mm_stats(fd, &ms))
			st->merged += ms.merging_pages;
		st->mismatches += storm_check(st, round);
		st->rounds++;
	}
	close(fd);
	return NULL;
}

/* One process: its threads work; its main thread re-registers now and then. */
static int process_main(int index, uint64_t deadline, int report_fd)
{
	size_t ps = ksm_page_size(), len = REGION_PAGES * ps;
	struct worker w[THREADS] = { 0 };
	struct storm storm = { 0 };
	pthread_t threads[THREADS], storm_thread;
	struct report rep = { 0 };
	char *raw, *region;
	int fd, t;

	fd = ksm_open();
	raw = mmap(NULL, len + (2 << 20), PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (fd < 0 || raw == MAP_FAILED)
		return 2;
	region = (char *)(((uintptr_t)raw + (2 << 20) - 1) & ~((2UL << 20) - 1));
	madvise(region, len, index == 0 ? MADV_HUGEPAGE : MADV_NOHUGEPAGE);
	memset(region, 'A', len);
	if (ksm_register(fd, region, len, 0))
		return 3;

	for (t = 0; t < THREADS; t++) {
		w[t].base = region + t * THREAD_PAGES * ps;
		w[t].shadow = malloc(THREAD_PAGES * ps);
		if (!w[t].shadow)
			return 4;
		memcpy(w[t].shadow, w[t].base, THREAD_PAGES * ps);
		w[t].seed = 0x2545f4914f6cdd1dULL * (index * THREADS + t + 1);
		w[t].deadline = deadline;
		if (pthread_create(&threads[t], NULL, worker_main, &w[t]))
			return 5;
	}
	storm.base = mmap(NULL, STORM_PAGES * ps, PROT_READ | PROT_WRITE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	storm.deadline = deadline;
	if (storm.base == MAP_FAILED ||
	    pthread_create(&storm_thread, NULL, storm_main, &storm))
		return 5;
	while (ksm_now_ms() < deadline) {
		ksm_sleep_ms(300);
		/* A hole left by a move in progress makes this fail: fine. */
		if (!ksm_unregister(fd, region, len) &&
		    !ksm_register(fd, region, len, 0))
			rep.reregisters++;
		/* khugepaged's work, on demand: merged pages make it fail. */
		if (index == 0 && !madvise(region, len, MADV_COLLAPSE))
			rep.collapses++;
	}
	pthread_join(storm_thread, NULL);
	rep.storm_rounds = storm.rounds;
	rep.storm_merged = storm.merged;
	rep.mismatches += storm.mismatches;
	for (t = 0; t < THREADS; t++) {
		pthread_join(threads[t], NULL);
		rep.writes += w[t].writes;
		rep.checks += w[t].checks;
		rep.mismatches += w[t].mismatches;
		rep.forks += w[t].forks;
		rep.moves += w[t].moves;
		rep.drops += w[t].drops;
		rep.protects += w[t].protects;
	}
	if (write(report_fd, &rep, sizeof(rep)) != sizeof(rep))
		return 6;
	return rep.mismatches ? 1 : 0;
}

FIXTURE(torture) {
	int fd;
	struct ksm_config saved;
};

FIXTURE_SETUP(torture)
{
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
}

FIXTURE_TEARDOWN(torture)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* The module's event counters (debugfs diagnostics). */
static int read_events(uint64_t ev[3])
{
	static const char *const names[] = {
		"merge_events", "cow_breaks", "unmerge_events",
	};
	int i, ret;

	for (i = 0; i < 3; i++) {
		ret = ksm_read_debugfs(names[i], &ev[i]);
		if (ret)
			return ret;
	}
	return 0;
}

static unsigned int torture_seconds(void)
{
	const char *s = getenv("KSMDEV_TORTURE_SECONDS");

	return s && atoi(s) > 0 ? atoi(s) : 40;
}

TEST_F_TIMEOUT(torture, shadow_copies_hold, 100000)
{
	unsigned int seconds = torture_seconds();
	uint64_t deadline = ksm_now_ms() + seconds * 1000ULL;
	uint64_t ev0[3], ev1[3];
	long flips = 0, failed = 0;
	struct report rep, sum = { 0 };
	struct ksm_stats st, base;
	struct ksm_config cfg;
	pid_t pids[PROCS];
	uint64_t r = 42;
	int p, status, pipefd[2];

	ASSERT_EQ(0, ksm_get_stats(self->fd, &base));
	ASSERT_EQ(0, read_events(ev0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, pipe(pipefd));
	for (p = 0; p < PROCS; p++) {
		pids[p] = fork();
		ASSERT_LE(0, pids[p]);
		if (pids[p] == 0)
			_exit(process_main(p, deadline, pipefd[1]));
	}

	/* Meanwhile: flip run and change the pace. */
	while (ksm_now_ms() < deadline) {
		ksm_sleep_ms(100);
		if (next_rand(&r) % 20)
			continue;
		ASSERT_EQ(0, ksm_get_config(self->fd, &cfg));
		cfg.run = next_rand(&r) % 4 == 0 ? KSM_RUN_UNMERGE :
			  next_rand(&r) % 4 == 0 ? KSM_RUN_STOP : KSM_RUN_MERGE;
		cfg.pages_to_scan = 64 + next_rand(&r) % 10000;
		cfg.sleep_millisecs = next_rand(&r) % 3;
		/* run=2 may be interrupted by nothing here: it must succeed. */
		EXPECT_EQ(0, ksm_set_config(self->fd, &cfg));
		flips++;
	}
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));

	for (p = 0; p < PROCS; p++) {
		ASSERT_EQ(sizeof(rep), read(pipefd[0], &rep, sizeof(rep)));
		sum.writes += rep.writes;
		sum.checks += rep.checks;
		sum.mismatches += rep.mismatches;
		sum.forks += rep.forks;
		sum.moves += rep.moves;
		sum.drops += rep.drops;
		sum.protects += rep.protects;
		sum.reregisters += rep.reregisters;
		sum.collapses += rep.collapses;
		sum.storm_rounds += rep.storm_rounds;
		sum.storm_merged += rep.storm_merged;
	}
	for (p = 0; p < PROCS; p++) {
		ASSERT_EQ(0, ksm_waitpid_timeout(pids[p], &status, 120));
		failed += ksm_exit_code(status) != 0;
	}
	TH_LOG("%u s: %ld writes, %ld checks, %ld mismatches; %ld forks, %ld moves, %ld MADV_DONTNEED, %ld mprotect, %ld re-registers, %ld THP collapses, %ld config flips",
	       seconds, sum.writes, sum.checks, sum.mismatches, sum.forks,
	       sum.moves, sum.drops, sum.protects, sum.reregisters,
	       sum.collapses, flips);
	TH_LOG("storms: %ld rounds of %d pages, %ld pages found merged at their ends",
	       sum.storm_rounds, STORM_PAGES, sum.storm_merged);
	ASSERT_EQ(0, read_events(ev1));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	TH_LOG("%llu full scans: %llu merges, %llu COW breaks seen, %llu unmerges",
	       (unsigned long long)(st.full_scans - base.full_scans),
	       (unsigned long long)(ev1[0] - ev0[0]),
	       (unsigned long long)(ev1[1] - ev0[1]),
	       (unsigned long long)(ev1[2] - ev0[2]));
	EXPECT_EQ(0, sum.mismatches);
	EXPECT_EQ(0, failed);
	EXPECT_LT(0, ev1[0] - ev0[0]) TH_LOG("nothing ever merged");
	/* Everything registered is gone with the processes. */
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &base, &st, 10));
}

TEST_HARNESS_MAIN
