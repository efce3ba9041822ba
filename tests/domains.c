// SPDX-License-Identifier: GPL-2.0
/*
 * ABI version 2: merge domains (struct ksm_region.domain) and cutting
 * regions (KSM_REGION_SPLIT on KSM_UNREGISTER_REGION), one assertion per
 * rule of ABI.md ("Merge domains", "Part of a region"), errors first.
 *
 * Domains: processes with the same content in different domains never
 * share a page, in the same domain they do, zero pages (use_zero_pages)
 * cross domains; a non-zero domain needs CAP_SYS_ADMIN and is refused with
 * KSM_REGION_SCOPE_MM; debugfs "regions" has a line per region.
 *
 * Cutting: a region of 3 GiB of address space, starting 7 pages past a
 * 2 MiB boundary, with a few present pages placed on either side of chunk
 * (512 pages from the region's start), PMD and 1 GiB table boundaries,
 * all merged; then cuts in the middle, at the head, at the tail, of tails
 * and heads already cut, across two regions and over a munmap()ed range. The scanner is
 * stopped (run=0) while the counters are compared with a model of which
 * pages stay registered and merged, so that only the cut's own
 * bookkeeping is seen, not a scanner that would count things again; then
 * it runs again and nothing may change; then everything goes and every
 * counter comes back to where it was.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#define NPAGES		32
#define VAL		0x5eedULL

FIXTURE(domains) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	struct ksm_stats base;
	uint64_t max_regions;
};

FIXTURE_SETUP(domains)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s",
				      strerror(-self->fd));
	ASSERT_EQ(0, ksm_read_param("max_regions", &self->max_regions));
}

FIXTURE_TEARDOWN(domains)
{
	EXPECT_EQ(0, ksm_write_param("max_regions", self->max_regions));
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

static int region_ioctl(int fd, unsigned long cmd, const void *addr,
			uint64_t len, uint64_t flags, uint64_t domain)
{
	struct ksm_region r = {
		.addr = (uintptr_t)addr, .len = len, .flags = flags,
		.domain = domain,
	};

	return ksm_ioctl(fd, cmd, &r);
}

static int reg_domain(int fd, const void *addr, uint64_t len, uint64_t flags,
		      uint64_t domain)
{
	return region_ioctl(fd, KSM_REGISTER_REGION, addr, len, flags, domain);
}

static int unreg_split(int fd, const void *addr, uint64_t len)
{
	return region_ioctl(fd, KSM_UNREGISTER_REGION, addr, len,
			    KSM_REGION_SPLIT, 0);
}

/* ---- a child process with its own pages in a domain ---- */

struct dchild {
	pid_t pid;
	int cmd;	/* to the child: 'm' mm stats, 'p' PFNs; EOF: exit */
	int reply;
};

/*
 * Fork a child that maps NPAGES pages of content @val, registers them in
 * @domain, and answers commands. Returns 0 once registered, or -errno.
 */
static int dchild_start(struct dchild *ch, uint64_t val, uint64_t domain)
{
	int cmd[2], reply[2], status;
	pid_t parent = getpid();
	int64_t ret = 0;

	if (pipe(cmd) || pipe(reply))
		return -errno;
	fflush(NULL);
	ch->pid = fork();
	if (ch->pid < 0)
		return -errno;
	if (ch->pid == 0) {
		uint64_t pfns[NPAGES];
		struct ksm_mm_stats ms;
		char *p, c;
		int fd;

		/* Not the pipes of earlier children: they would never see EOF. */
		for (fd = 3; fd < 1024; fd++)
			if (fd != cmd[0] && fd != reply[1])
				close(fd);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
			_exit(1);
		p = ksm_mmap_anon(NPAGES * ksm_page_size());
		fd = ksm_open();
		if (!p || fd < 0)
			ret = -ENOMEM;
		else
			ksm_fill_vals(p, 0, NPAGES, val);
		if (!ret)
			ret = reg_domain(fd, p, NPAGES * ksm_page_size(), 0,
					 domain);
		if (ksm_pipe_io(reply[1], &ret, sizeof(ret), true, 60) || ret)
			_exit(2);
		while (!ksm_pipe_io(cmd[0], &c, 1, false, 24 * 3600)) {
			if (c == 'm') {
				ret = ksm_get_mm_stats(fd, &ms);
				if (ksm_pipe_io(reply[1], &ms, sizeof(ms),
						true, 60))
					_exit(3);
			} else if (c == 'p') {
				ret = ksm_pfns(p, NPAGES, pfns);
				if (ksm_pipe_io(reply[1], pfns, sizeof(pfns),
						true, 60))
					_exit(4);
			}
		}
		_exit(0);
	}
	close(cmd[0]);
	close(reply[1]);
	ch->cmd = cmd[1];
	ch->reply = reply[0];
	if (ksm_pipe_io(ch->reply, &ret, sizeof(ret), false, 60))
		ret = -ETIMEDOUT;
	if (ret) {
		close(ch->cmd);
		close(ch->reply);
		ksm_waitpid_timeout(ch->pid, &status, 10);
		ch->pid = -1;
	}
	return (int)ret;
}

static int dchild_ask(struct dchild *ch, char c, void *buf, size_t len)
{
	int ret = ksm_pipe_io(ch->cmd, &c, 1, true, 60);

	return ret ? ret : ksm_pipe_io(ch->reply, buf, len, false, 60);
}

static int dchild_stop(struct dchild *ch)
{
	int status, ret;

	if (ch->pid <= 0)
		return 0;
	close(ch->cmd);
	close(ch->reply);
	ret = ksm_waitpid_timeout(ch->pid, &status, 60);
	ch->pid = -1;
	return ret ? ret : ksm_exit_code(status);
}

/* Every page of the child maps one PFN; returns it, or 0. */
static uint64_t dchild_one_pfn(struct __test_metadata *_metadata,
			       struct dchild *ch)
{
	uint64_t pfns[NPAGES];

	EXPECT_EQ(0, dchild_ask(ch, 'p', pfns, sizeof(pfns)));
	EXPECT_EQ(1, ksm_count_distinct(pfns, NPAGES));
	EXPECT_NE(0, pfns[0]);
	return ksm_count_distinct(pfns, NPAGES) == 1 ? pfns[0] : 0;
}

static void dchild_expect_merging(struct __test_metadata *_metadata,
				  struct dchild *ch, uint64_t n)
{
	struct ksm_mm_stats ms;

	ASSERT_EQ(0, dchild_ask(ch, 'm', &ms, sizeof(ms)));
	EXPECT_EQ(n, ms.merging_pages);
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(NPAGES, ms.registered_pages);
}

/* ---- domains: arguments and permission ---- */

TEST_F(domains, domain_arguments)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(4 * ps);
	struct ksm_mm_stats ms;

	ASSERT_NE(NULL, p);
	/* Never with KSM_REGION_SCOPE_MM. */
	EXPECT_EQ(-EINVAL, reg_domain(self->fd, p, ps, KSM_REGION_SCOPE_MM, 1));
	/* KSM_REGION_SPLIT belongs to unregister. */
	EXPECT_EQ(-EINVAL, reg_domain(self->fd, p, ps, KSM_REGION_SPLIT, 0));
	EXPECT_EQ(-EINVAL, reg_domain(self->fd, p, ps, KSM_REGION_SPLIT, 3));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.regions);
	/* Root: any domain, even the largest. */
	EXPECT_EQ(0, reg_domain(self->fd, p, ps, 0, 1));
	EXPECT_EQ(0, reg_domain(self->fd, p + ps, ps, 0, UINT64_MAX));
	EXPECT_EQ(0, reg_domain(self->fd, p + 2 * ps, ps, KSM_REGION_SCOPE_MM, 0));
	/* Overlap is EEXIST whatever the domain. */
	EXPECT_EQ(-EEXIST, reg_domain(self->fd, p, ps, 0, 2));
	/* A domain is not an argument of unregister. */
	EXPECT_EQ(-EINVAL, region_ioctl(self->fd, KSM_UNREGISTER_REGION, p, ps,
					0, 1));
	EXPECT_EQ(-EINVAL, region_ioctl(self->fd, KSM_UNREGISTER_REGION, p, ps,
					KSM_REGION_SPLIT, 1));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(3, ms.regions);
	EXPECT_EQ(0, ksm_unregister(self->fd, p, 3 * ps));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.regions);
	munmap(p, 4 * ps);
}

/* Exit code: 0, or the number of the first failed check. */
static int unprivileged_checks(void)
{
	size_t ps = ksm_page_size();
	char *p = ksm_mmap_anon(4 * ps);
	struct ksm_mm_stats ms;
	int fd = ksm_open();

	if (!p || fd < 0)
		return 1;
	if (setgid(65534) || setuid(65534))
		return 2;
	if (reg_domain(fd, p, ps, 0, 1) != -EPERM)
		return 3;
	if (reg_domain(fd, p, ps, 0, UINT64_MAX) != -EPERM)
		return 4;
	/* The arguments are checked first: EINVAL, whoever asks. */
	if (reg_domain(fd, p, ps, KSM_REGION_SCOPE_MM, 1) != -EINVAL)
		return 5;
	if (ksm_get_mm_stats(fd, &ms) || ms.regions)
		return 6;
	/* The global domain and SCOPE_MM stay open to everyone. */
	if (reg_domain(fd, p, ps, 0, 0) ||
	    reg_domain(fd, p + ps, ps, KSM_REGION_SCOPE_MM, 0))
		return 7;
	if (ksm_get_mm_stats(fd, &ms) || ms.regions != 2)
		return 8;
	/* Cutting needs no privilege. */
	if (reg_domain(fd, p + 2 * ps, 2 * ps, 0, 0) ||
	    unreg_split(fd, p + 3 * ps, ps))
		return 9;
	if (ksm_get_mm_stats(fd, &ms) || ms.regions != 3 ||
	    ms.registered_pages != 3)
		return 10;
	return 0;
}

TEST_F(domains, domain_needs_cap_sys_admin)
{
	int status;
	pid_t pid;

	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(unprivileged_checks());
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	EXPECT_EQ(0, ksm_exit_code(status))
		TH_LOG("check %d of unprivileged_checks() failed",
		       ksm_exit_code(status));
}

/* ---- domains: what merges with what ---- */

/*
 * Three processes, the same content: domains 1, 2 and the global one.
 * Each merges within its domain (one stable page each), never across.
 */
TEST_F_TIMEOUT(domains, different_domains_never_merge, 300)
{
	struct dchild a = { .pid = -1 }, b = { .pid = -1 }, c = { .pid = -1 };
	const struct ksm_stats *base = &self->base;
	uint64_t pa, pb, pc, full;
	struct ksm_stats s;

	ASSERT_EQ(0, dchild_start(&a, VAL, 1));
	ASSERT_EQ(0, dchild_start(&b, VAL, 2));
	ASSERT_EQ(0, dchild_start(&c, VAL, 0));
	ksm_assert_merged(_metadata, self->fd, base->pages_shared + 3,
			  base->pages_sharing + 3 * (NPAGES - 1),
			  base->ksm_zero_pages, -1);
	/* And it stays so: two more full scans, the same numbers. */
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	full = s.full_scans;
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, KSM_MERGE_WAIT_S));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_LE(full + 2, s.full_scans);
	EXPECT_EQ(base->pages_shared + 3, s.pages_shared);
	EXPECT_EQ(base->pages_sharing + 3 * (NPAGES - 1), s.pages_sharing);
	pa = dchild_one_pfn(_metadata, &a);
	pb = dchild_one_pfn(_metadata, &b);
	pc = dchild_one_pfn(_metadata, &c);
	EXPECT_NE(pa, pb);
	EXPECT_NE(pa, pc);
	EXPECT_NE(pb, pc);
	dchild_expect_merging(_metadata, &a, NPAGES);
	dchild_expect_merging(_metadata, &b, NPAGES);
	dchild_expect_merging(_metadata, &c, NPAGES);
	EXPECT_EQ(0, dchild_stop(&a));
	EXPECT_EQ(0, dchild_stop(&b));
	EXPECT_EQ(0, dchild_stop(&c));
	ASSERT_EQ(0, ksm_wait_bookkeeping(self->fd, base, &s, 30));
}

/* Two processes in one domain share one page. */
TEST_F_TIMEOUT(domains, same_domain_merges_across_processes, 300)
{
	struct dchild a = { .pid = -1 }, b = { .pid = -1 };
	const struct ksm_stats *base = &self->base;
	struct ksm_stats s;

	ASSERT_EQ(0, dchild_start(&a, VAL, 7));
	ASSERT_EQ(0, dchild_start(&b, VAL, 7));
	ksm_assert_merged(_metadata, self->fd, base->pages_shared + 1,
			  base->pages_sharing + 2 * NPAGES - 1,
			  base->ksm_zero_pages, -1);
	EXPECT_EQ(dchild_one_pfn(_metadata, &a),
		  dchild_one_pfn(_metadata, &b));
	dchild_expect_merging(_metadata, &a, NPAGES);
	dchild_expect_merging(_metadata, &b, NPAGES);
	EXPECT_EQ(0, dchild_stop(&a));
	EXPECT_EQ(0, dchild_stop(&b));
	ASSERT_EQ(0, ksm_wait_bookkeeping(self->fd, base, &s, 30));
}

/* use_zero_pages: zero-filled pages of two domains all map the zero page. */
TEST_F_TIMEOUT(domains, zero_pages_cross_domains, 300)
{
	struct dchild a = { .pid = -1 }, b = { .pid = -1 };
	const struct ksm_stats *base = &self->base;
	struct ksm_stats s;

	ASSERT_EQ(0, ksm_set_use_zero_pages(self->fd, 1));
	ASSERT_EQ(0, dchild_start(&a, 0, 1));
	ASSERT_EQ(0, dchild_start(&b, 0, 2));
	ksm_assert_merged(_metadata, self->fd, base->pages_shared,
			  base->pages_sharing,
			  base->ksm_zero_pages + 2 * NPAGES, -1);
	EXPECT_EQ(dchild_one_pfn(_metadata, &a),
		  dchild_one_pfn(_metadata, &b));
	dchild_expect_merging(_metadata, &a, NPAGES);
	dchild_expect_merging(_metadata, &b, NPAGES);
	EXPECT_EQ(0, dchild_stop(&a));
	EXPECT_EQ(0, dchild_stop(&b));
	ASSERT_EQ(0, ksm_wait_bookkeeping(self->fd, base, &s, 30));
}

/*
 * A domain goes with its last region; merged pages still mapped then are
 * orphans, in no tree, and outlive it. The same domain made again keeps
 * apart from them, and unregistering unmerges them.
 */
TEST_F_TIMEOUT(domains, domain_outlived_by_orphans, 300)
{
	const struct ksm_stats *base = &self->base;
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(NPAGES * ps);
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	uint64_t pfn;
	int fd;

	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, NPAGES, VAL);
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, reg_domain(fd, p, NPAGES * ps, 0, 3));
	ASSERT_EQ(0, ksm_wait_mm_merging(fd, NPAGES, &ms, KSM_MERGE_WAIT_S));
	pfn = ksm_pfn(p);
	EXPECT_EQ(pfn, ksm_pfn(p + (NPAGES - 1) * ps));
	/* The last region of domain 3 goes: its page is an orphan. */
	EXPECT_EQ(0, close(fd));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(base->pages_shared, s.pages_shared);
	EXPECT_EQ(base->pages_sharing, s.pages_sharing);
	EXPECT_EQ(base->pages_orphaned + 1, s.pages_orphaned);
	EXPECT_EQ(pfn, ksm_pfn(p));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, NPAGES, VAL));
	/* Domain 3 again: a new one, that leaves the orphan alone. */
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, reg_domain(fd, p, NPAGES * ps, 0, 3));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, KSM_MERGE_WAIT_S));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(0, ms.merging_pages);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(base->pages_shared, s.pages_shared);
	EXPECT_EQ(base->pages_orphaned + 1, s.pages_orphaned);
	/* Unregistering unmerges what maps the orphan; then it is freed. */
	EXPECT_EQ(0, unreg_split(fd, p, NPAGES * ps));
	EXPECT_NE(pfn, ksm_pfn(p));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, NPAGES, VAL));
	EXPECT_EQ(0, close(fd));
	ksm_wait_orphans_reaped(self->fd, 10);
	ASSERT_EQ(0, ksm_wait_bookkeeping(self->fd, base, &s, 30));
	EXPECT_EQ(base->pages_orphaned, s.pages_orphaned);
	munmap(p, NPAGES * ps);
}

/* ---- debugfs "regions" ---- */

struct rline {
	unsigned long long start, end, domain, flags, merging;
};

/*
 * The lines of debugfs "regions" for process @pid, into @out (at most
 * @max); returns how many, or -1. *@total is the number of all lines.
 */
static int read_regions(pid_t pid, struct rline *out, int max, int *total)
{
	char line[256];
	struct rline r;
	long long lpid;
	int n = 0;
	FILE *f;

	*total = 0;
	f = fopen(KSM_DEBUGFS_DIR "/regions", "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		(*total)++;
		if (sscanf(line, "%lld %llx %llx %llu %llx %llu", &lpid,
			   &r.start, &r.end, &r.domain, &r.flags,
			   &r.merging) != 6) {
			n = -1;
			break;
		}
		if (lpid == pid && n < max)
			out[n++] = r;
	}
	fclose(f);
	return n;
}

TEST_F_TIMEOUT(domains, debugfs_regions, 300)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon((NPAGES + 4) * ps);
	struct ksm_mm_stats ms;
	struct rline r[4];
	struct ksm_stats s;
	int n, total;

	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, NPAGES + 4, VAL);
	ASSERT_EQ(0, reg_domain(self->fd, p, NPAGES * ps, 0, 5));
	ASSERT_EQ(0, reg_domain(self->fd, p + (NPAGES + 1) * ps, 2 * ps,
				KSM_REGION_SCOPE_MM, 0));
	/* The first merges in its domain, the second in its mm: apart. */
	ASSERT_EQ(0, ksm_wait_mm_merging(self->fd, NPAGES + 2, &ms,
					 KSM_MERGE_WAIT_S));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	n = read_regions(getpid(), r, 4, &total);
	ASSERT_EQ(2, n);
	EXPECT_EQ(s.regions, total);
	EXPECT_EQ((uintptr_t)p, r[0].start);
	EXPECT_EQ((uintptr_t)p + NPAGES * ps, r[0].end);
	EXPECT_EQ(5, r[0].domain);
	EXPECT_EQ(0, r[0].flags);
	EXPECT_EQ(NPAGES, r[0].merging);
	EXPECT_EQ((uintptr_t)p + (NPAGES + 1) * ps, r[1].start);
	EXPECT_EQ((uintptr_t)p + (NPAGES + 3) * ps, r[1].end);
	EXPECT_EQ(0, r[1].domain);
	EXPECT_EQ(KSM_REGION_SCOPE_MM, r[1].flags);
	EXPECT_EQ(2, r[1].merging);
	EXPECT_NE(ksm_pfn(p), ksm_pfn(p + (NPAGES + 1) * ps));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, NPAGES * ps));
	n = read_regions(getpid(), r, 4, &total);
	ASSERT_EQ(1, n);
	EXPECT_EQ(KSM_REGION_SCOPE_MM, r[0].flags);
	munmap(p, (NPAGES + 4) * ps);
	n = read_regions(getpid(), r, 4, &total);
	EXPECT_EQ(1, n);
}

/* ---- KSM_REGION_SPLIT ---- */

#define LEAF_PAGES	(1UL << 18)	/* 1 GiB of 4 KiB pages */
#define BIG_PAGES	(3 * LEAF_PAGES + 5)

/* The region begins this many pages past a 2 MiB (PMD) boundary. */
#define OFF		7UL

/*
 * The present pages: on either side of chunk boundaries (512 pages from
 * the region's start), of PMD boundaries (OFF pages before those), and of
 * the 1 GiB tables.
 */
static const size_t present[] = {
	0, 1, 2, 3, 504, 505, 506, 510, 511, 512, 513, 1000, 1016, 1017,
	1023, 1024, 1025, LEAF_PAGES - 8, LEAF_PAGES - 7, LEAF_PAGES - 2,
	LEAF_PAGES - 1, LEAF_PAGES, LEAF_PAGES + 1, LEAF_PAGES + 600,
	2 * LEAF_PAGES - 1, 2 * LEAF_PAGES, 2 * LEAF_PAGES + 1,
	3 * LEAF_PAGES - 100, BIG_PAGES - 1,
};
#define NPRESENT	ARRAY_SIZE(present)
#define MAX_CUTS	12

/* The model of what the module should hold. */
struct model {
	char *p;
	uint64_t kpfn;			/* the stable page */
	bool reg[NPRESENT];		/* registered (and so merged) */
	bool unmapped[NPRESENT];
	size_t nregions;
	size_t rstart[MAX_CUTS + 1], rend[MAX_CUTS + 1];	/* pages */
};

static size_t model_merged(const struct model *m, size_t from, size_t to)
{
	size_t i, n = 0;

	for (i = 0; i < NPRESENT; i++)
		n += m->reg[i] && present[i] >= from && present[i] < to;
	return n;
}

static size_t model_registered(const struct model *m)
{
	size_t i, n = 0;

	for (i = 0; i < m->nregions; i++)
		n += m->rend[i] - m->rstart[i];
	return n;
}

/* Take pages [from, to) out of the model's regions. */
static void model_cut(struct model *m, size_t from, size_t to)
{
	size_t i, n = 0, s[MAX_CUTS + 1], e[MAX_CUTS + 1];

	for (i = 0; i < NPRESENT; i++)
		if (present[i] >= from && present[i] < to)
			m->reg[i] = false;
	for (i = 0; i < m->nregions; i++) {
		if (m->rstart[i] < from) {
			s[n] = m->rstart[i];
			e[n++] = m->rend[i] < from ? m->rend[i] : from;
		}
		if (m->rend[i] > to) {
			s[n] = m->rstart[i] > to ? m->rstart[i] : to;
			e[n++] = m->rend[i];
		}
	}
	memcpy(m->rstart, s, sizeof(s));
	memcpy(m->rend, e, sizeof(e));
	m->nregions = n;
}

/*
 * The counters, the debugfs lines and the pages against the model: merged
 * pages still map the stable page, cut ones a private page with their
 * content.
 */
static void model_check(struct __test_metadata *_metadata,
			FIXTURE_DATA(domains) *self, const struct model *m,
			const char *what)
{
	size_t ps = self->ps, merged = model_merged(m, 0, BIG_PAGES), i;
	const struct ksm_stats *base = &self->base;
	struct rline r[MAX_CUTS + 2];
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int n, total;

	TH_LOG("%s", what);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(base->pages_shared + !!merged, s.pages_shared);
	EXPECT_EQ(base->pages_sharing + (merged ? merged - 1 : 0),
		  s.pages_sharing);
	EXPECT_EQ(base->regions + m->nregions, s.regions);
	EXPECT_EQ(base->registered_pages + model_registered(m),
		  s.registered_pages);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(merged, ms.merging_pages);
	EXPECT_EQ(m->nregions, ms.regions);
	EXPECT_EQ(model_registered(m), ms.registered_pages);
	n = read_regions(getpid(), r, MAX_CUTS + 2, &total);
	ASSERT_EQ(m->nregions, n);
	for (i = 0; i < m->nregions; i++) {
		EXPECT_EQ((uintptr_t)m->p + m->rstart[i] * ps, r[i].start);
		EXPECT_EQ((uintptr_t)m->p + m->rend[i] * ps, r[i].end);
		EXPECT_EQ(model_merged(m, m->rstart[i], m->rend[i]),
			  r[i].merging) TH_LOG("region %zu", i);
	}
	for (i = 0; i < NPRESENT; i++) {
		char *page = m->p + present[i] * ps;

		if (m->unmapped[i])
			continue;
		EXPECT_TRUE(ksm_check_val(m->p, present[i], VAL)) {
			TH_LOG("page %zu", present[i]);
		}
		if (m->reg[i]) {
			EXPECT_EQ(m->kpfn, ksm_pfn(page)) {
				TH_LOG("page %zu", present[i]);
			}
		} else {
			EXPECT_NE(m->kpfn, ksm_pfn(page)) {
				TH_LOG("page %zu", present[i]);
			}
		}
	}
}

/* Map and register the big region, its present pages merged; run=0. */
static void big_setup(struct __test_metadata *_metadata,
		      FIXTURE_DATA(domains) *self, struct model *m)
{
	size_t ps = self->ps, i;
	struct ksm_mm_stats ms;

	size_t pmd = 512 * ps, total = (BIG_PAGES + 1024) * ps;
	char *raw;

	memset(m, 0, sizeof(*m));
	/* OFF pages past a 2 MiB boundary, nothing mapped around it. */
	raw = mmap(NULL, total, PROT_READ | PROT_WRITE,
		   MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
	ASSERT_NE(MAP_FAILED, raw);
	m->p = (char *)(((uintptr_t)raw + pmd - 1) & ~(pmd - 1)) + OFF * ps;
	if (m->p > raw)
		ASSERT_EQ(0, munmap(raw, m->p - raw));
	ASSERT_EQ(0, munmap(m->p + BIG_PAGES * ps,
			    raw + total - (m->p + BIG_PAGES * ps)));
	ASSERT_EQ(OFF * ps, (uintptr_t)m->p % pmd);
	madvise(m->p, BIG_PAGES * ps, MADV_NOHUGEPAGE);
	for (i = 0; i < NPRESENT; i++) {
		ksm_fill_val(m->p, present[i], VAL);
		m->reg[i] = true;
	}
	ASSERT_EQ(0, ksm_register(self->fd, m->p, BIG_PAGES * ps, 0));
	m->nregions = 1;
	m->rstart[0] = 0;
	m->rend[0] = BIG_PAGES;
	ASSERT_EQ(0, ksm_wait_mm_merging(self->fd, NPRESENT, &ms,
					 KSM_MERGE_WAIT_S));
	ksm_assert_merged(_metadata, self->fd, self->base.pages_shared + 1,
			  self->base.pages_sharing + NPRESENT - 1,
			  self->base.ksm_zero_pages, NPRESENT);
	m->kpfn = ksm_pfn(m->p);
	ASSERT_NE(0, m->kpfn);
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	model_check(_metadata, self, m, "all merged");
}

/* Cut pages [from, to) out, in the module and in the model, and check. */
static void big_cut(struct __test_metadata *_metadata,
		    FIXTURE_DATA(domains) *self, struct model *m,
		    size_t from, size_t to)
{
	char what[64];

	snprintf(what, sizeof(what), "cut [%zu, %zu)", from, to);
	ASSERT_EQ(0, unreg_split(self->fd, m->p + from * self->ps,
				 (to - from) * self->ps)) TH_LOG("%s", what);
	model_cut(m, from, to);
	model_check(_metadata, self, m, what);
}

/*
 * The scanner again: nothing may change. Then everything goes, and every
 * counter is back where it was.
 */
static void big_teardown(struct __test_metadata *_metadata,
			 FIXTURE_DATA(domains) *self, struct model *m)
{
	struct ksm_mm_stats ms;
	struct ksm_stats s;

	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 3, KSM_MERGE_WAIT_S));
	model_check(_metadata, self, m, "after three full scans");
	ASSERT_EQ(0, unreg_split(self->fd, m->p, BIG_PAGES * self->ps));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.regions);
	EXPECT_EQ(0, ms.registered_pages);
	EXPECT_EQ(0, ms.merging_pages);
	EXPECT_EQ(0, ms.metadata_bytes);
	EXPECT_EQ(-ENOENT, unreg_split(self->fd, m->p, BIG_PAGES * self->ps));
	ksm_assert_merged(_metadata, self->fd, self->base.pages_shared,
			  self->base.pages_sharing, self->base.ksm_zero_pages, 0);
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &self->base, &s, 30))
		TH_LOG("metadata_bytes %llu, was %llu",
		       (unsigned long long)s.metadata_bytes,
		       (unsigned long long)self->base.metadata_bytes);
	munmap(m->p, BIG_PAGES * self->ps);
}

/* In the middle: in one chunk, across chunks, across leaves. */
TEST_F_TIMEOUT(domains, split_middle, 300)
{
	struct model m;

	big_setup(_metadata, self, &m);
	big_cut(_metadata, self, &m, 1, 2);		/* one chunk */
	big_cut(_metadata, self, &m, 511, 513);		/* two chunks */
	big_cut(_metadata, self, &m, LEAF_PAGES - 1, LEAF_PAGES + 1);
	big_cut(_metadata, self, &m, LEAF_PAGES + 600, 2 * LEAF_PAGES);
	big_teardown(_metadata, self, &m);
}

TEST_F_TIMEOUT(domains, split_head_and_tail, 300)
{
	struct model m;

	big_setup(_metadata, self, &m);
	big_cut(_metadata, self, &m, 0, 2);
	big_cut(_metadata, self, &m, 2 * LEAF_PAGES + 1, BIG_PAGES);
	big_cut(_metadata, self, &m, 2, LEAF_PAGES);
	/* A range reaching beyond the region's end. */
	big_cut(_metadata, self, &m, 2 * LEAF_PAGES, BIG_PAGES);
	big_teardown(_metadata, self, &m);
}

/* Across two regions: the tail of one, the gap, the head of the next. */
TEST_F_TIMEOUT(domains, split_across_regions, 300)
{
	struct model m;

	big_setup(_metadata, self, &m);
	big_cut(_metadata, self, &m, 511, 513);
	big_cut(_metadata, self, &m, LEAF_PAGES, LEAF_PAGES + 1);
	big_cut(_metadata, self, &m, 3, 1024);
	/* Tail of the first, all of the second, head of the third. */
	big_cut(_metadata, self, &m, 2, LEAF_PAGES + 600);
	big_teardown(_metadata, self, &m);
}

/*
 * Chunk boundaries of the region (512, 1024 pages from its start) and PMD
 * boundaries (505, 1017: OFF pages before them) cut in the middle, the
 * tails cut again, at the head, and across the 1 GiB table.
 */
TEST_F_TIMEOUT(domains, split_unaligned_middle, 300)
{
	struct model m;

	big_setup(_metadata, self, &m);
	big_cut(_metadata, self, &m, 505, 506);		/* at a PMD */
	big_cut(_metadata, self, &m, 511, 512);		/* the tail's */
	big_cut(_metadata, self, &m, 1017, 1024);	/* PMD to chunk */
	big_cut(_metadata, self, &m, 1, 2);		/* head's middle */
	big_cut(_metadata, self, &m, LEAF_PAGES - 7, LEAF_PAGES);
	big_cut(_metadata, self, &m, 0, 1);		/* a head */
	big_cut(_metadata, self, &m, 1024, 1025);	/* tail of a tail */
	big_cut(_metadata, self, &m, 2 * LEAF_PAGES, 2 * LEAF_PAGES + 1);
	big_teardown(_metadata, self, &m);
}

/* Head cuts, then middle cuts of what is left, then tail cuts. */
TEST_F_TIMEOUT(domains, split_unaligned_head_then_middle, 300)
{
	struct model m;

	big_setup(_metadata, self, &m);
	big_cut(_metadata, self, &m, 0, 505);
	big_cut(_metadata, self, &m, 505, 511);
	big_cut(_metadata, self, &m, 512, 1017);	/* chunk to PMD */
	big_cut(_metadata, self, &m, 1024, LEAF_PAGES - 7);
	big_cut(_metadata, self, &m, LEAF_PAGES + 1, 2 * LEAF_PAGES - 1);
	big_cut(_metadata, self, &m, 3 * LEAF_PAGES - 100, BIG_PAGES - 1);
	big_cut(_metadata, self, &m, 511, 513);
	big_teardown(_metadata, self, &m);
}

/* What the preload library does for a partial munmap(). */
TEST_F_TIMEOUT(domains, split_after_munmap, 300)
{
	size_t ps = self->ps, i;
	struct model m;

	big_setup(_metadata, self, &m);
	ASSERT_EQ(0, munmap(m.p + 1000 * ps, 25 * ps));
	for (i = 0; i < NPRESENT; i++)
		m.unmapped[i] = present[i] >= 1000 && present[i] < 1025;
	/* run=0: the module has not seen it yet; every counter as before. */
	big_cut(_metadata, self, &m, 1000, 1025);
	ASSERT_EQ(0, munmap(m.p + (BIG_PAGES - 1) * ps, ps));
	for (i = 0; i < NPRESENT; i++)
		m.unmapped[i] |= present[i] == BIG_PAGES - 1;
	big_cut(_metadata, self, &m, BIG_PAGES - 1, BIG_PAGES);
	big_teardown(_metadata, self, &m);
}

/* ENOSPC, with nothing changed; ENOENT; the scanner stopped or not. */
TEST_F_TIMEOUT(domains, split_errors, 300)
{
	size_t ps = self->ps;
	struct model m;

	big_setup(_metadata, self, &m);
	/* No registered page in the range. */
	big_cut(_metadata, self, &m, 511, 513);
	EXPECT_EQ(-ENOENT, unreg_split(self->fd, m.p + 511 * ps, 2 * ps));
	EXPECT_EQ(-ENOENT, unreg_split(self->fd, m.p + 512 * ps, ps));
	/* Without the flag, cutting is EINVAL as in version 1. */
	EXPECT_EQ(-EINVAL, ksm_unregister(self->fd, m.p, 4 * ps));
	EXPECT_EQ(-EINVAL, region_ioctl(self->fd, KSM_UNREGISTER_REGION, m.p,
					4 * ps, KSM_REGION_SPLIT | (1ULL << 63),
					0));
	model_check(_metadata, self, &m, "after refusals");
	/* At max_regions, a cut in the middle would make one more. */
	ASSERT_EQ(0, ksm_write_param("max_regions", 2));
	EXPECT_EQ(-ENOSPC, unreg_split(self->fd, m.p + 1 * ps, ps));
	EXPECT_EQ(-ENOSPC, unreg_split(self->fd, m.p + 1023 * ps, ps));
	model_check(_metadata, self, &m, "after ENOSPC");
	/* Cuts at an end make none: still allowed. */
	big_cut(_metadata, self, &m, 0, 1);
	big_cut(_metadata, self, &m, 510, 511);
	big_cut(_metadata, self, &m, BIG_PAGES - 1, BIG_PAGES);
	/* One more allowed ([1, 510) in two), then none again. */
	ASSERT_EQ(0, ksm_write_param("max_regions", 3));
	big_cut(_metadata, self, &m, 2, 3);
	EXPECT_EQ(-ENOSPC, unreg_split(self->fd, m.p + 4 * ps, ps));
	model_check(_metadata, self, &m, "after ENOSPC at 3");
	ASSERT_EQ(0, ksm_write_param("max_regions", self->max_regions));
	big_teardown(_metadata, self, &m);
}

TEST_HARNESS_MAIN
