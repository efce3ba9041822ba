// SPDX-License-Identifier: GPL-2.0
/*
 * A tenant cannot hold more through merging than its limits allow
 * (hardening issue, items 2 and 4; ABI version 2, "Counters and settings
 * added"):
 *  - merged pages are charged to the memory cgroup of the process whose
 *    page they first replaced, so the attack (register pairs of
 *    identical pages, wait for the merge, close, again) stops at memory.max;
 *  - merged pages left mapped after their context closed are *orphans*:
 *    counted in pages_orphaned and against max_kernel_pages until their
 *    last mapping goes;
 *  - the module's bookkeeping for a context is charged to its cgroup;
 *  - one mm registers a page through one context only (EEXIST);
 *  - the module unloads cleanly with orphans alive (runs last here).
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#define CGROUP		"/sys/fs/cgroup/ksmdev-tenant"
#define MODULE_NAME	"ksmdev"

/* A "key value" line of the group's memory.stat, or -1. */
static long cg_stat(const char *key)
{
	char buf[8192], *line;
	size_t klen = strlen(key);

	if (ksm_read_text(CGROUP "/memory.stat", buf, sizeof(buf)) < 0)
		return -1;
	for (line = buf; line && *line; line = strchr(line, '\n')) {
		if (*line == '\n')
			line++;
		if (!strncmp(line, key, klen) && line[klen] == ' ')
			return strtol(line + klen + 1, NULL, 10);
	}
	return -1;
}

/* A "Field:   N kB" line of /proc/@pid/status, in bytes; -1 if absent. */
static long proc_status_bytes(pid_t pid, const char *field)
{
	char path[64], buf[4096], *at;

	snprintf(path, sizeof(path), "/proc/%d/status", pid);
	if (ksm_read_text(path, buf, sizeof(buf)) < 0)
		return -1;
	at = strstr(buf, field);
	if (!at)
		return -1;
	return strtol(at + strlen(field) + 1, NULL, 10) * 1024;
}

/* Fill page @i of @p: pages 2k and 2k + 1 alike, all pairs distinct. */
static void fill_pairs(char *p, size_t npages, uint64_t seed)
{
	size_t i;

	for (i = 0; i < npages; i++)
		ksm_fill_val(p, i, (seed << 32) | (i / 2));
}

/* Wait until @fd's context has @n merging pages; 0 or -ETIMEDOUT. */
static int wait_mm_merging(int fd, uint64_t n, unsigned int timeout_s)
{
	struct ksm_mm_stats ms;

	return ksm_wait_mm_merging(fd, n, &ms, timeout_s);
}

/* Wait until pages_orphaned is @n; 0 or -ETIMEDOUT, *@last the last seen. */
static int wait_orphaned(int fd, uint64_t n, uint64_t *last,
			 unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats s;

	for (;;) {
		if (ksm_get_stats(fd, &s))
			return -errno;
		*last = s.pages_orphaned;
		if (s.pages_orphaned == n)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(20);
	}
}

FIXTURE(tenant) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	struct ksm_stats base;
	bool cgroup;
};

FIXTURE_SETUP(tenant)
{
	uint64_t orphaned;

	self->ps = ksm_page_size();
	self->cgroup = false;
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s",
				      strerror(-self->fd));
	/* No orphan left by an earlier test (they go with their process). */
	ASSERT_EQ(0, wait_orphaned(self->fd, 0, &orphaned, 30))
		TH_LOG("pages_orphaned stays %llu",
		       (unsigned long long)orphaned);
	self->base.pages_orphaned = 0;
}

FIXTURE_TEARDOWN(tenant)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
	if (self->cgroup)
		rmdir(CGROUP);
}

/* A fresh group at CGROUP, or a skip. */
static bool make_group(struct __test_metadata *_metadata, bool *made)
{
	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK))
		return false;
	rmdir(CGROUP);
	if (mkdir(CGROUP, 0755)) {
		TH_LOG("mkdir " CGROUP ": %s", strerror(errno));
		return false;
	}
	*made = true;
	return !access(CGROUP "/memory.max", F_OK);
}

static int join_group(void)
{
	char pid[32];

	snprintf(pid, sizeof(pid), "%d", getpid());
	return ksm_cg_write(CGROUP, "cgroup.procs", pid);
}

/* What the attacker (a child in the group) did, in memory it shares. */
struct attack {
	volatile int done;		/* 1: finished; <0: -step failed */
	volatile int rounds;		/* rounds whose pages all merged */
	volatile int refused;		/* a round whose merge never came */
	volatile long file_start;	/* its RssFile before the first round */
};

#define ATTACK_ROUNDS	12
#define ATTACK_PAGES	1024		/* 4 MiB a round: 512 merged pages */
#define ATTACK_MAX	(16L << 20)	/* memory.max */
#define ATTACK_MARGIN	(1L << 20)

/*
 * The attack, in a child of the group: each round maps 4 MiB of
 * identical pairs, registers them through a new fd, waits for the merge,
 * and closes the fd; the merged pages stay mapped. It stops where its
 * limit would bite (so that no OOM kill muddles the result), or when a
 * merge does not come (the charge of the merged page failed).
 */
static void attacker(struct attack *a, int hold)
{
	size_t ps = ksm_page_size(), len = ATTACK_PAGES * ps;
	char c;
	int r, fd;

	if (join_group()) {
		a->done = -1;
		_exit(1);
	}
	a->file_start = proc_status_bytes(getpid(), "RssFile:");
	for (r = 0; r < ATTACK_ROUNDS; r++) {
		long cur = ksm_cg_read(CGROUP, "memory.current");
		char *p;

		if (cur < 0 || cur + (long)len + ATTACK_MARGIN > ATTACK_MAX)
			break;
		p = ksm_mmap_anon(len);
		if (!p) {
			a->done = -2;
			_exit(1);
		}
		fill_pairs(p, ATTACK_PAGES, 0xa77acc00 + r);
		fd = ksm_open();
		if (fd < 0 || ksm_register(fd, p, len, 0)) {
			a->done = -3;
			_exit(1);
		}
		if (wait_mm_merging(fd, ATTACK_PAGES, 60)) {
			a->refused = 1;
			close(fd);
			break;
		}
		close(fd);
		a->rounds = r + 1;
	}
	a->done = 1;
	/* Hold the merged pages until the parent has looked. */
	while (read(hold, &c, 1) < 0 && errno == EINTR)
		;
	_exit(0);
}

/*
 * Item 2, memcg: a process in a group with memory.max = 16 MiB cannot hold
 * more than that through merging: the orphaned merged pages are in its
 * memory.current. Before ABI v2 the attacker held 24 MiB of merged pages
 * and memory.current stayed near 1 MiB.
 */
TEST_F_TIMEOUT(tenant, memcg_attack_bounded, 900)
{
	long cur, file, merged, kernel;
	struct attack *a;
	uint64_t orphaned;
	int hold[2], status;
	struct ksm_stats s;
	pid_t pid;

	if (!make_group(_metadata, &self->cgroup))
		SKIP(return, "no cgroup2 memory controller");
	ASSERT_EQ(0, ksm_cg_write(CGROUP, "memory.max", "16M"));
	ksm_cg_write(CGROUP, "memory.swap.max", "0");
	a = mmap(NULL, sizeof(*a), PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, a);
	memset(a, 0, sizeof(*a));
	ASSERT_EQ(0, pipe(hold));
	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		close(hold[1]);
		attacker(a, hold[0]);
	}
	close(hold[0]);
	{
		uint64_t end = ksm_now_ms() + 800 * 1000ULL;

		while (!a->done && ksm_now_ms() < end &&
		       waitpid(pid, &status, WNOHANG) == 0)
			ksm_sleep_ms(50);
	}
	ASSERT_EQ(1, a->done) TH_LOG("attacker did not finish: %d", a->done);

	cur = ksm_cg_read(CGROUP, "memory.current");
	kernel = cg_stat("kernel");
	file = proc_status_bytes(pid, "RssFile:") - a->file_start;
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	orphaned = s.pages_orphaned - self->base.pages_orphaned;
	merged = orphaned * self->ps;
	TH_LOG("rounds %d (refused %d): RssFile +%ld KiB, pages_orphaned %llu, "
	       "memory.current %ld KiB (kernel %ld KiB), memory.max %ld KiB",
	       a->rounds, a->refused, file >> 10, (unsigned long long)orphaned,
	       cur >> 10, kernel >> 10, ATTACK_MAX >> 10);
	EXPECT_LT(0, a->rounds);
	/* Every merged page it holds is an orphan: its contexts are closed. */
	EXPECT_LE((uint64_t)a->rounds * ATTACK_PAGES / 2, orphaned);
	/* RssFile counts mappings: two per merged page of a pair. */
	EXPECT_LE(2 * merged, file);
	/* Charged to the group: in memory.current, as kernel memory. */
	EXPECT_LE(merged, cur);
	if (kernel >= 0)
		EXPECT_LE(merged, kernel);
	/* And so bounded by memory.max: the attack stopped early. */
	EXPECT_GE(ATTACK_MAX, merged);
	EXPECT_GT(ATTACK_ROUNDS, a->rounds + a->refused)
		TH_LOG("all %d rounds merged: %ld KiB held under a 16 MiB limit",
		       ATTACK_ROUNDS, merged >> 10);

	/* Its exit frees them, and their charge, within a bound. */
	close(hold[1]);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, wait_orphaned(self->fd, self->base.pages_orphaned,
				   &orphaned, 30))
		TH_LOG("pages_orphaned %llu after the attacker exited",
		       (unsigned long long)orphaned);
	munmap(a, sizeof(*a));
}

/*
 * Item 2, max_kernel_pages: the merged pages of a closed context stay
 * mapped and keep counting against the limit as orphans; no new stable
 * page is made past it; when the mappings go, so do the orphans.
 */
TEST_F_TIMEOUT(tenant, orphans_count_against_max_kernel_pages, 600)
{
	const size_t n = 64, npages = 2 * n;	/* n distinct pairs */
	size_t ps = self->ps, len = npages * ps;
	uint64_t orphaned, limit_hits;
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	char *p1, *p2;
	int fd2, fd3;

	ASSERT_EQ(0, ksm_set_max_kernel_pages(self->fd,
					      self->base.pages_shared + n));
	p1 = ksm_mmap_anon(len);
	p2 = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p1);
	ASSERT_NE(NULL, p2);
	fill_pairs(p1, npages, 0x0a1);
	fill_pairs(p2, npages, 0x0a2);

	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	ASSERT_EQ(0, ksm_register(fd2, p1, len, 0));
	ASSERT_EQ(0, wait_mm_merging(fd2, npages, 120));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.pages_shared + n, s.pages_shared);
	ASSERT_EQ(0, close(fd2));

	/* Closed: the n merged pages stay mapped here, orphaned. */
	EXPECT_EQ(0, wait_orphaned(self->fd, self->base.pages_orphaned + n,
				   &orphaned, 10))
		TH_LOG("pages_orphaned %llu, want %zu more",
		       (unsigned long long)orphaned, n);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.pages_shared, s.pages_shared);
	EXPECT_EQ(self->base.pages_sharing, s.pages_sharing);
	limit_hits = s.stable_nodes_limit_hits;
	EXPECT_TRUE(ksm_pfns_merged((uint64_t[]){ ksm_pfn(p1), ksm_pfn(p1 + ps) },
				    2));

	/* Another context, n new pairs: refused at the limit. */
	fd3 = ksm_open();
	ASSERT_LE(0, fd3);
	ASSERT_EQ(0, ksm_register(fd3, p2, len, 0));
	ASSERT_EQ(0, ksm_wait_stat_advance(self->fd,
					   offsetof(struct ksm_stats,
						    stable_nodes_limit_hits),
					   1, 60))
		TH_LOG("no merge refused at max_kernel_pages");
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 3, 60));
	ASSERT_EQ(0, ksm_get_mm_stats(fd3, &ms));
	EXPECT_EQ(0, ms.merging_pages);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.pages_shared, s.pages_shared);
	EXPECT_LT(limit_hits, s.stable_nodes_limit_hits);

	/* The mappings go: so do the orphans, and the limit has room again. */
	ASSERT_EQ(0, munmap(p1, len));
	EXPECT_EQ(0, wait_orphaned(self->fd, self->base.pages_orphaned,
				   &orphaned, 30))
		TH_LOG("pages_orphaned %llu after munmap",
		       (unsigned long long)orphaned);
	EXPECT_EQ(0, wait_mm_merging(fd3, npages, 120));
	EXPECT_EQ(0, ksm_unregister(fd3, p2, len));
	for (size_t i = 0; i < npages; i++) {
		EXPECT_TRUE(ksm_check_val(p2, i, (0x0a2ULL << 32) | (i / 2)));
	}
	close(fd3);
	munmap(p2, len);
}

static bool unshared_at_least(const struct ksm_stats *s, const void *arg)
{
	return s->pages_unshared >= *(const uint64_t *)arg;
}

/*
 * Item 2, bookkeeping: what the scanner allocates for a context (slots,
 * unstable nodes) is charged to the context's cgroup: its slab grows by at
 * least half of what metadata_bytes grew by (the margin: per-CPU stat
 * batching). Before, only the context and region (about 1 KiB) were.
 */
TEST_F_TIMEOUT(tenant, bookkeeping_charged, 600)
{
	const size_t npages = 8192;	/* 32 MiB, all distinct */
	size_t len = npages * self->ps;
	int go[2], done[2], status;
	long slab0, slab = -1, meta = 0;
	uint64_t end, want_unshared;
	struct ksm_stats s;
	pid_t pid;
	char c = 0;

	if (!make_group(_metadata, &self->cgroup))
		SKIP(return, "no cgroup2 memory controller");
	slab0 = cg_stat("slab");
	ASSERT_LE(0, slab0) TH_LOG("no slab line in memory.stat");
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(done));
	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		char *p;
		int fd;

		close(go[1]);
		close(done[0]);
		if (join_group())
			_exit(1);
		p = ksm_mmap_anon(len);
		if (!p)
			_exit(2);
		ksm_fill_pages(p, npages, 0xb00c);
		fd = ksm_open();
		if (fd < 0 || ksm_register(fd, p, len, 0))
			_exit(3);
		if (write(done[1], &c, 1) != 1)
			_exit(4);
		while (read(go[0], &c, 1) < 0 && errno == EINTR)
			;
		_exit(0);
	}
	close(go[0]);
	close(done[1]);
	ASSERT_EQ(1, read(done[0], &c, 1));
	/*
	 * Every page in the unstable tree: its slot and its node exist.
	 * pages_unshared is a level, not a count of events: the scanner may
	 * have filed some pages already (at first sight), so the wait is for
	 * the level, from the fixture's base.
	 */
	want_unshared = self->base.pages_unshared + npages;
	ASSERT_EQ(0, ksm_wait_stats(self->fd, unshared_at_least,
				    &want_unshared, &s, 300))
		TH_LOG("pages_unshared %llu, want %llu",
		       (unsigned long long)s.pages_unshared,
		       (unsigned long long)want_unshared);
	end = ksm_now_ms() + 30000;
	do {
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
		meta = s.metadata_bytes - self->base.metadata_bytes;
		slab = cg_stat("slab") - slab0;
		if (slab >= meta / 2)
			break;
		ksm_sleep_ms(100);
	} while (ksm_now_ms() < end);
	TH_LOG("metadata_bytes +%ld KiB, the group's slab +%ld KiB",
	       meta >> 10, slab >> 10);
	/*
	 * At least the slots (8 bytes a page): the unstable nodes come and
	 * go with each pass, the chunks stay.
	 */
	EXPECT_LE((long)(npages * 8), meta);
	EXPECT_LE(meta / 2, slab);
	close(go[1]);
	EXPECT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status));
}

/*
 * Item 4: one mm registers a page through one context only: a second fd
 * of the same process gets EEXIST (it counted every page twice), while a
 * forked child's own open registers its own copy of the range.
 */
TEST_F(tenant, same_mm_two_contexts_eexist)
{
	const size_t npages = 32;
	size_t ps = self->ps, len = npages * ps;
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int fd2, status;
	pid_t pid;
	char *p;

	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, 0x17e4);
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	EXPECT_EQ(-EEXIST, ksm_register(fd2, p, len, 0));
	EXPECT_EQ(-EEXIST, ksm_register(fd2, p + ps, ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(fd2, p + len - ps, 2 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(fd2, p + len - ps, 2 * ps,
					KSM_REGION_SCOPE_MM));

	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		int fd = ksm_open();

		/* Another mm: its own copy of the range is its own to add. */
		_exit(fd < 0 ? 2 : ksm_register(fd, p, len, 0) ? 3 : 0);
	}
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status));

	/* One context counts the range, once: 32 pages, 31 sharing. */
	ASSERT_EQ(0, wait_mm_merging(self->fd, npages, 120));
	ASSERT_EQ(0, ksm_wait_merged(self->fd, self->base.pages_shared + 1,
				     self->base.pages_sharing + npages - 1,
				     self->base.ksm_zero_pages, &s, 60));
	ASSERT_EQ(0, ksm_get_mm_stats(fd2, &ms));
	EXPECT_EQ(0, ms.regions);
	EXPECT_EQ(0, ms.merging_pages);
	EXPECT_EQ(0, ksm_unregister(self->fd, p, len));
	EXPECT_EQ(0, ksm_register(fd2, p, len, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p, ps, 0));
	EXPECT_EQ(0, ksm_unregister(fd2, p, len));
	close(fd2);
	munmap(p, len);
}

/* ---- unload with orphans alive: last, as it reloads the module ---- */

static bool wait_path(const char *path, bool present, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;

	while (!access(path, F_OK) != present) {
		if (ksm_now_ms() > end)
			return false;
		ksm_sleep_ms(10);
	}
	return true;
}

/*
 * Orphans are let go at unload (their reference dropped, the page no
 * longer marked ours): the pages stay mapped, intact and copy-on-write,
 * and are freed by the kernel alone; kmemleak (debug lane) sees no leak.
 */
FIXTURE(unload) {
	int unused;
};

FIXTURE_SETUP(unload)
{
}

FIXTURE_TEARDOWN(unload)
{
	/* Whatever happened, leave the module loaded for the next program. */
	if (access("/sys/module/" MODULE_NAME, F_OK))
		ksm_load_module("");
}

TEST_F_TIMEOUT(unload, with_orphans_alive, 300)
{
	const size_t n = 16, npages = 2 * n;
	size_t ps = ksm_page_size(), len = npages * ps, i;
	struct ksm_config saved;
	struct ksm_stats base, s;
	uint64_t orphaned = 0, pfns[32], pfns2[32];
	char *p;
	int fd, ret;

	fd = ksm_open_fast(&saved, &base);
	ASSERT_LE(0, fd);
	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	fill_pairs(p, npages, 0xdead);
	ASSERT_EQ(0, ksm_register(fd, p, len, 0));
	ASSERT_EQ(0, wait_mm_merging(fd, npages, 120));
	ASSERT_EQ(0, ksm_pfns(p, npages, pfns));
	EXPECT_EQ(n, ksm_count_distinct(pfns, npages));
	ASSERT_EQ(0, ksm_set_config(fd, &saved));
	close(fd);

	/* Orphaned, seen through debugfs: no fd may stay open for unload. */
	if (!ksm_read_debugfs("pages_orphaned", &orphaned))
		EXPECT_EQ(base.pages_orphaned + n, orphaned);
	ret = ksm_unload_module();
	ASSERT_EQ(0, ret) TH_LOG("delete_module: %s", strerror(-ret));
	EXPECT_TRUE(wait_path("/sys/module/" MODULE_NAME, false, 5));

	ASSERT_EQ(0, ksm_pfns(p, npages, pfns2));
	EXPECT_EQ(0, memcmp(pfns, pfns2, sizeof(pfns)));
	for (i = 0; i < npages; i++) {
		EXPECT_TRUE(ksm_check_val(p, i, (0xdeadULL << 32) | (i / 2)));
	}
	for (i = 0; i < npages; i += 2)
		ksm_fill_val(p, i, 0x5a5a + i);
	ASSERT_EQ(0, ksm_pfns(p, npages, pfns2));
	for (i = 0; i < npages; i++) {
		if (i % 2) {
			EXPECT_EQ(pfns[i], pfns2[i]);
			EXPECT_TRUE(ksm_check_val(p, i,
						  (0xdeadULL << 32) | (i / 2)));
		} else {
			EXPECT_NE(pfns[i], pfns2[i]);
			EXPECT_TRUE(ksm_check_val(p, i, 0x5a5a + i));
		}
	}
	munmap(p, len);

	ASSERT_EQ(0, ksm_load_module(""));
	ASSERT_TRUE(wait_path(KSM_DEV_PATH, true, 10));
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_get_stats(fd, &s));
	EXPECT_EQ(0, s.pages_orphaned);
	EXPECT_EQ(0, s.pages_shared);
	close(fd);
}

TEST_HARNESS_MAIN
