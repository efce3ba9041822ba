// SPDX-License-Identifier: GPL-2.0
/*
 * The hardening issue, one test per item or path: unmerging pages that
 * userfaultfd write-protects (item 3), ranges that the in-kernel KSM merges
 * too (item 5), poisoned pages and droppable mappings (item 8), and the
 * regressions the issue asks to keep right: writes into a merged page by
 * another path (process_vm_writev, /proc/pid/mem, ptrace) never reach the
 * other sharers, mlock of read-only merged pages gives its Mlocked back, a
 * region half moved away by mremap unregisters.
 *
 * Truth comes from userspace: PFNs and the soft-dirty, uffd-wp and swap
 * bits of /proc/self/pagemap, /proc/kpageflags, page contents, the counters
 * of ksmdev and of /sys/kernel/mm/ksm, /proc/meminfo. Every wait is bounded.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <setjmp.h>
#include <sys/ptrace.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/userfaultfd.h>

#include "ksmdev_test.h"

#define WAIT_S		120	/* the bound of every wait for merging */

/* Page contents (ksm_fill_val()), one per test so that none meets another. */
#define VAL_UFFD	0x3100
#define VAL_KSMD	0x3200
#define VAL_OURS	0x3300
#define VAL_POISON	0x3400
#define VAL_DROP	0x3500
#define VAL_WRITE	0x3600
#define VAL_MLOCK	0x3700
#define VAL_MREMAP	0x3800

#define MAGIC		0x5eedf00ddeadbeefULL

/* /proc/self/pagemap bits (Documentation/admin-guide/mm/pagemap.rst). */
#define PM_SOFT_DIRTY	(1ULL << 55)
#define PM_UFFD_WP	(1ULL << 57)
#define PM_SWAP		(1ULL << 62)
#define KPF_HWPOISON	19

#ifndef MAP_DROPPABLE
#define MAP_DROPPABLE	0x08	/* 6.11 */
#endif

/* The in-kernel KSM's settings that the ksmd test changes, put back after. */
static const char *const ksmd_knobs[] = { "run", "pages_to_scan",
					  "sleep_millisecs" };

FIXTURE(hard) {
	int fd;
	size_t ps;
	bool ksmd_saved;
	uint64_t ksmd[3];
};

FIXTURE_SETUP(hard)
{
	struct ksm_stats s;
	int ret;

	self->ps = ksm_page_size();
	self->ksmd_saved = false;
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ret = ksm_wait_merge_idle(self->fd, &s, 10);
	if (ret)
		ksm_log_stats(_metadata, "at start", &s);
	ASSERT_EQ(0, ret) TH_LOG("the merge counters are not 0 at start");
}

FIXTURE_TEARDOWN(hard)
{
	size_t i;

	if (self->ksmd_saved) {
		/* Unmerge what ksmd merged, then put its settings back. */
		EXPECT_EQ(0, ksm_ksmd_write("run", 2));
		for (i = 0; i < ARRAY_SIZE(ksmd_knobs); i++)
			EXPECT_EQ(0, ksm_ksmd_write(ksmd_knobs[i], self->ksmd[i]));
	}
	EXPECT_EQ(0, ksm_set_default_config(self->fd));
	close(self->fd);
}

/*
 * Map @npages identical pages, register them and wait until they are one
 * merged page (alone in the system); its PFN goes to *@kpfn.
 */
static char *map_merged(struct __test_metadata *_metadata, int fd,
			size_t npages, uint64_t val, uint64_t *kpfn)
{
	uint64_t *pfns = calloc(npages, sizeof(*pfns));
	size_t ps = ksm_page_size();
	char *p;

	ASSERT_NE(NULL, pfns);
	p = ksm_mmap_anon(npages * ps);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, val);
	ASSERT_EQ(0, ksm_register(fd, p, npages * ps, 0));
	ksm_assert_merged(_metadata, fd, 1, npages - 1, 0, npages);
	ASSERT_EQ(0, ksm_pfns(p, npages, pfns));
	ASSERT_TRUE(ksm_pfns_merged(pfns, npages))
		TH_LOG("%zu distinct PFNs after merging",
		       ksm_count_distinct(pfns, npages));
	*kpfn = pfns[0];
	free(pfns);
	return p;
}

/* The raw /proc/self/pagemap entries of @n pages from @addr. */
static int pagemap_raw(const void *addr, size_t n, uint64_t *ent)
{
	size_t ps = ksm_page_size();
	ssize_t len = n * sizeof(*ent), r;
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return -errno;
	r = pread(fd, ent, len, (uintptr_t)addr / ps * sizeof(*ent));
	close(fd);
	return r == len ? 0 : -EIO;
}

/* The count of @n pagemap entries with all of @bits. */
static size_t count_bits(const uint64_t *ent, size_t first, size_t n,
			 uint64_t bits)
{
	size_t i, c = 0;

	for (i = first; i < first + n; i++)
		c += (ent[i] & bits) == bits;
	return c;
}

/* ---- item 3: userfaultfd write protection ---- */

struct uffd_monitor {
	int uffd;
	unsigned long want;	/* the page address the event must name */
	size_t ps;
	int got;		/* 1: the WP event came; <0: -errno */
};

/* Wait (30 s) for one write-protect fault at ->want, then lift the WP. */
static void *uffd_monitor_main(void *arg)
{
	struct uffd_monitor *m = arg;
	struct pollfd pfd = { .fd = m->uffd, .events = POLLIN };
	struct uffdio_writeprotect wp = {
		.range = { .start = m->want, .len = m->ps },
		.mode = 0,	/* un-protect, and wake the writer */
	};
	struct uffd_msg msg;

	if (poll(&pfd, 1, 30000) != 1) {
		m->got = -ETIMEDOUT;
		return NULL;
	}
	if (read(m->uffd, &msg, sizeof(msg)) != sizeof(msg)) {
		m->got = -EIO;
		return NULL;
	}
	if (msg.event != UFFD_EVENT_PAGEFAULT ||
	    !(msg.arg.pagefault.flags & UFFD_PAGEFAULT_FLAG_WP) ||
	    (msg.arg.pagefault.address & ~(m->ps - 1)) != m->want) {
		m->got = -EINVAL;
		return NULL;
	}
	m->got = ioctl(m->uffd, UFFDIO_WRITEPROTECT, &wp) ? -errno : 1;
	return NULL;
}

static void *uffd_writer_main(void *arg)
{
	*(volatile uint64_t *)arg = MAGIC;
	return NULL;
}

/* Join @t within @timeout_s; false if it did not end. */
static bool join_bounded(pthread_t t, unsigned int timeout_s)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	ts.tv_sec += timeout_s;
	return !pthread_timedjoin_np(t, NULL, &ts);
}

/*
 * Item 3: pages merged before userfaultfd write-protects them unregister
 * (it was EFAULT, forever), into private copies with the same contents,
 * still write-protected (a write is the monitor's to see) and with the
 * soft-dirty bits they had.
 */
TEST_F_TIMEOUT(hard, uffd_wp_unregister, 240)
{
	const size_t n = 8, dirty = 4, target = 5;
	uint64_t pfns[8], ent[8], kpfn = 0;
	struct uffdio_api api = { .api = UFFD_API };
	struct uffdio_register reg = { 0 };
	struct uffdio_writeprotect wp = { 0 };
	struct uffd_monitor mon = { 0 };
	pthread_t monitor, writer;
	size_t len = n * self->ps, i;
	char *p;

	p = ksm_mmap_anon(len);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, VAL_UFFD);
	/* Soft-dirty: clear all, then write pages [0, dirty) again. */
	ASSERT_EQ(0, ksm_write_str_file("/proc/self/clear_refs", "4"));
	ksm_fill_vals(p, 0, dirty, VAL_UFFD);
	ASSERT_EQ(0, pagemap_raw(p, n, ent));
	ASSERT_EQ(dirty, count_bits(ent, 0, dirty, PM_SOFT_DIRTY));
	ASSERT_EQ(0, count_bits(ent, dirty, n - dirty, PM_SOFT_DIRTY))
		TH_LOG("clear_refs did not clear soft-dirty: not testable");

	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	ASSERT_TRUE(ksm_pfns_merged(pfns, n));
	kpfn = pfns[0];
	/* Merging kept each page's soft-dirty bit. */
	ASSERT_EQ(0, pagemap_raw(p, n, ent));
	EXPECT_EQ(dirty, count_bits(ent, 0, dirty, PM_SOFT_DIRTY));
	EXPECT_EQ(0, count_bits(ent, dirty, n - dirty, PM_SOFT_DIRTY));

	/* Now userfaultfd write-protects the merged range. */
	mon.uffd = syscall(__NR_userfaultfd, O_CLOEXEC | O_NONBLOCK);
	ASSERT_LE(0, mon.uffd) TH_LOG("userfaultfd: %s", strerror(errno));
	ASSERT_EQ(0, ioctl(mon.uffd, UFFDIO_API, &api))
		TH_LOG("UFFDIO_API: %s", strerror(errno));
	reg.range.start = (unsigned long)p;
	reg.range.len = len;
	reg.mode = UFFDIO_REGISTER_MODE_WP;
	ASSERT_EQ(0, ioctl(mon.uffd, UFFDIO_REGISTER, &reg))
		TH_LOG("UFFDIO_REGISTER: %s", strerror(errno));
	wp.range = reg.range;
	wp.mode = UFFDIO_WRITEPROTECT_MODE_WP;
	ASSERT_EQ(0, ioctl(mon.uffd, UFFDIO_WRITEPROTECT, &wp))
		TH_LOG("UFFDIO_WRITEPROTECT: %s", strerror(errno));
	ASSERT_EQ(0, pagemap_raw(p, n, ent));
	ASSERT_EQ(n, count_bits(ent, 0, n, PM_UFFD_WP));

	ASSERT_EQ(0, ksm_unregister(self->fd, p, len))
		TH_LOG("unregister of a uffd-wp range: %s", strerror(errno));

	/* Private copies, contents unchanged. */
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, n))
		TH_LOG("%zu distinct PFNs after unregister",
		       ksm_count_distinct(pfns, n));
	EXPECT_EQ(0, ksm_count_eq(pfns, n, kpfn));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_UFFD));
	/* Still write-protected, and the soft-dirty bits where they were. */
	ASSERT_EQ(0, pagemap_raw(p, n, ent));
	EXPECT_EQ(n, count_bits(ent, 0, n, PM_UFFD_WP));
	EXPECT_EQ(dirty, count_bits(ent, 0, dirty, PM_SOFT_DIRTY));
	EXPECT_EQ(0, count_bits(ent, dirty, n - dirty, PM_SOFT_DIRTY));
	for (i = 0; i < n; i++)
		TH_LOG("page %zu: pagemap %#llx", i, (unsigned long long)ent[i]);

	/* A write is the monitor's to see: a WP fault, then it goes on. */
	mon.want = (unsigned long)(p + target * self->ps);
	mon.ps = self->ps;
	ASSERT_EQ(0, pthread_create(&monitor, NULL, uffd_monitor_main, &mon));
	ASSERT_EQ(0, pthread_create(&writer, NULL, uffd_writer_main,
				    p + target * self->ps));
	ASSERT_TRUE(join_bounded(monitor, 40));
	EXPECT_EQ(1, mon.got) TH_LOG("no write-protect event for the write (%d)",
				     mon.got);
	if (mon.got != 1) {
		/* Let the writer go, whatever happened. */
		wp.mode = 0;
		ioctl(mon.uffd, UFFDIO_WRITEPROTECT, &wp);
	}
	ASSERT_TRUE(join_bounded(writer, 40)) TH_LOG("the writer is stuck");
	EXPECT_EQ(MAGIC, *(uint64_t *)(p + target * self->ps));
	for (i = 0; i < n; i++)
		if (i != target)
			EXPECT_TRUE(ksm_check_val(p, i, VAL_UFFD))
				TH_LOG("page %zu changed", i);
	close(mon.uffd);
	munmap(p, len);
}

/* ---- item 5: the in-kernel KSM's pages ---- */

static void ksmd_wait(struct __test_metadata *_metadata, uint64_t sharing)
{
	uint64_t end = ksm_now_ms() + WAIT_S * 1000ULL, v = 0;

	for (;;) {
		ASSERT_EQ(0, ksm_ksmd_read("pages_sharing", &v));
		if (v >= sharing)
			return;
		ASSERT_GT(end, ksm_now_ms())
			TH_LOG("ksmd: pages_sharing %llu, want %llu within %d s",
			       (unsigned long long)v,
			       (unsigned long long)sharing, WAIT_S);
		ksm_sleep_ms(20);
	}
}

/*
 * Item 5: a range that is MADV_MERGEABLE and registered keeps ksmd's merged
 * pages where ksmd put them, while pages of the same content that only
 * ksmdev scans merge by ksmdev (they used to take ksmd's page over).
 */
TEST_F_TIMEOUT(hard, ksmd_pages_left_to_ksmd, 300)
{
	const size_t n = 16;
	uint64_t pfns[16], opfns[16], ksmd_pfn, ksmd_sharing, v;
	size_t len = n * self->ps, i;
	struct ksm_stats s;
	char *a, *b;

	if (access(KSMD_DIR "run", W_OK))
		SKIP(return, "no in-kernel KSM (" KSMD_DIR ")");
	for (i = 0; i < ARRAY_SIZE(ksmd_knobs); i++)
		ASSERT_EQ(0, ksm_ksmd_read(ksmd_knobs[i], &self->ksmd[i]));
	self->ksmd_saved = true;
	ASSERT_EQ(0, ksm_ksmd_write("pages_to_scan", 1000));
	ASSERT_EQ(0, ksm_ksmd_write("sleep_millisecs", 10));
	ASSERT_EQ(0, ksm_ksmd_write("run", 1));

	a = ksm_mmap_anon(len);
	ASSERT_NE(NULL, a);
	ksm_fill_vals(a, 0, n, VAL_KSMD);
	ASSERT_EQ(0, madvise(a, len, MADV_MERGEABLE))
		TH_LOG("MADV_MERGEABLE: %s", strerror(errno));
	ksmd_wait(_metadata, n - 1);
	ASSERT_EQ(0, ksm_pfns(a, n, pfns));
	ASSERT_TRUE(ksm_pfns_merged(pfns, n)) TH_LOG("ksmd did not merge them");
	ksmd_pfn = pfns[0];
	ASSERT_EQ(0, ksm_ksmd_read("pages_sharing", &ksmd_sharing));

	/* The same content, scanned by ksmdev only; and ksmd's, registered. */
	b = ksm_mmap_anon(len);
	ASSERT_NE(NULL, b);
	ksm_fill_vals(b, 0, n, VAL_KSMD);
	ASSERT_EQ(0, ksm_register(self->fd, a, len, 0));
	ASSERT_EQ(0, ksm_register(self->fd, b, len, 0));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	/* Settle: more passes over ksmd's pages change nothing. */
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 3, WAIT_S));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	ksm_log_stats(_metadata, "settled", &s);
	EXPECT_EQ(1, s.pages_shared);
	EXPECT_EQ(n - 1, s.pages_sharing);

	ASSERT_EQ(0, ksm_pfns(a, n, pfns));
	EXPECT_EQ(n, ksm_count_eq(pfns, n, ksmd_pfn))
		TH_LOG("%zu of ksmd's %zu pages were taken over",
		       n - ksm_count_eq(pfns, n, ksmd_pfn), n);
	ASSERT_EQ(0, ksm_ksmd_read("pages_sharing", &v));
	EXPECT_EQ(ksmd_sharing, v);
	ASSERT_EQ(0, ksm_pfns(b, n, opfns));
	EXPECT_TRUE(ksm_pfns_merged(opfns, n));
	EXPECT_NE(ksmd_pfn, opfns[0]);
	EXPECT_EQ(0, ksm_count_bad_vals(a, 0, n, VAL_KSMD));
	EXPECT_EQ(0, ksm_count_bad_vals(b, 0, n, VAL_KSMD));

	/* Unregister leaves ksmd's pages alone too. */
	EXPECT_EQ(0, ksm_unregister(self->fd, a, len));
	ASSERT_EQ(0, ksm_pfns(a, n, pfns));
	EXPECT_EQ(n, ksm_count_eq(pfns, n, ksmd_pfn));
	munmap(a, len);
	munmap(b, len);
}

/* ---- item 8: poisoned pages, droppable mappings ---- */

static sigjmp_buf sigbus_jmp;

static void sigbus_handler(int sig)
{
	siglongjmp(sigbus_jmp, sig);
}

/* Read a byte at @addr: 0 if it read, SIGBUS if that is what it got. */
static int read_or_sigbus(const volatile char *addr)
{
	struct sigaction sa = { .sa_handler = sigbus_handler }, old;
	int sig;

	sigaction(SIGBUS, &sa, &old);
	sig = sigsetjmp(sigbus_jmp, 1);
	if (!sig)
		(void)*addr;
	sigaction(SIGBUS, &old, NULL);
	return sig;
}

static int kpageflags(uint64_t pfn, uint64_t *flags)
{
	int fd = open("/proc/kpageflags", O_RDONLY);
	ssize_t r;

	if (fd < 0)
		return -errno;
	r = pread(fd, flags, sizeof(*flags), pfn * sizeof(*flags));
	close(fd);
	return r == sizeof(*flags) ? 0 : -EIO;
}

/*
 * Item 8: a merged page marked hardware-poisoned (MADV_HWPOISON: to
 * memory_failure() our page is an unknown one, left mapped) is never read
 * nor given a sharer again: pages of the same content merge into a new
 * page, and unregister unmaps it (SIGBUS on access, as for any poisoned
 * anonymous page) instead of copying it.
 */
/* pages_orphaned back to 0 (poll, at most @timeout_s seconds). */
static int wait_orphans_gone(int fd, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats s;

	for (;;) {
		if (ksm_get_stats(fd, &s))
			return -errno;
		if (!s.pages_orphaned)
			return 0;
		if (ksm_now_ms() > end) {
			fprintf(stderr, "# pages_orphaned stays %llu\n",
				(unsigned long long)s.pages_orphaned);
			return -ETIMEDOUT;
		}
		ksm_sleep_ms(20);
	}
}

TEST_F_TIMEOUT(hard, hwpoison_merged_page, 240)
{
	const size_t n = 8;
	uint64_t pfns[8], ent[8], kpfn, kflags = 0;
	size_t len = n * self->ps;
	char *x, *y;
	int ret;

	x = map_merged(_metadata, self->fd, n, VAL_POISON, &kpfn);
	ret = madvise(x + 3 * self->ps, self->ps, MADV_HWPOISON);
	if (ret && errno == EINVAL)
		SKIP(return, "no MADV_HWPOISON (CONFIG_MEMORY_FAILURE)");
	TH_LOG("MADV_HWPOISON on the merged page: %d (%s)", ret,
	       ret ? strerror(errno) : "ok");
	ASSERT_EQ(0, kpageflags(kpfn, &kflags));
	ASSERT_TRUE(kflags & (1ULL << KPF_HWPOISON))
		TH_LOG("the merged page is not marked poisoned: not testable");

	/* The same content again: not merged into the poisoned page. */
	y = ksm_mmap_anon(len);
	ASSERT_NE(NULL, y);
	ksm_fill_vals(y, 0, n, VAL_POISON);
	ASSERT_EQ(0, ksm_register(self->fd, y, len, 0));
	ksm_assert_merged(_metadata, self->fd, 2, 2 * n - 2, 0, 2 * n);
	ASSERT_EQ(0, ksm_pfns(y, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ(0, ksm_count_eq(pfns, n, kpfn));
	EXPECT_EQ(0, ksm_count_bad_vals(y, 0, n, VAL_POISON));

	/* Unregister: not copied (that reads it), unmapped as poisoned. */
	ASSERT_EQ(0, ksm_unregister(self->fd, x, len))
		TH_LOG("unregister: %s", strerror(errno));
	ASSERT_EQ(0, pagemap_raw(x, n, ent));
	EXPECT_EQ(0, count_bits(ent, 0, n, KSM_PM_PRESENT))
		TH_LOG("poisoned page copied or still mapped: pagemap %#llx",
		       (unsigned long long)ent[0]);
	EXPECT_EQ(n, count_bits(ent, 0, n, PM_SWAP));
	EXPECT_EQ(SIGBUS, read_or_sigbus(x));
	ksm_assert_merged(_metadata, self->fd, 1, n - 1, 0, n);
	EXPECT_EQ(0, ksm_count_bad_vals(y, 0, n, VAL_POISON));
	/*
	 * memory_failure() keeps its reference to the poisoned page for
	 * good: the module must not keep it as an orphan for ever (counted
	 * in pages_orphaned and against max_kernel_pages).
	 */
	ASSERT_EQ(0, ksm_unregister(self->fd, y, len));
	munmap(x, len);
	munmap(y, len);
	EXPECT_EQ(0, wait_orphans_gone(self->fd, 30));
}

/*
 * Item 8: VM_DROPPABLE memory is for the kernel to drop: never merged, nor
 * read.
 */
TEST_F_TIMEOUT(hard, droppable_not_merged, 180)
{
	const size_t n = 16;
	size_t len = n * self->ps;
	struct ksm_stats s;
	uint64_t pfns[16];
	char *p;

	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_DROPPABLE | MAP_ANONYMOUS, -1, 0);
	if (p == MAP_FAILED && errno == EINVAL)
		SKIP(return, "no MAP_DROPPABLE before 6.11");
	ASSERT_NE(MAP_FAILED, p);
	madvise(p, len, MADV_NOHUGEPAGE);
	ksm_fill_vals(p, 0, n, VAL_DROP);
	ASSERT_EQ(0, ksm_register(self->fd, p, len, 0));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 4, WAIT_S));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	ksm_log_stats(_metadata, "after 4 passes", &s);
	EXPECT_EQ(0, s.pages_shared);
	EXPECT_EQ(0, s.pages_sharing);
	/* Not even read: no candidate in any tree. */
	EXPECT_EQ(0, s.pages_unshared);
	EXPECT_EQ(0, s.pages_volatile);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, n));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, len));
	munmap(p, len);
}

/* ---- regressions: writes by other paths, mlock, mremap ---- */

/*
 * Pages @w1 and @w2 of @p (merged, @n pages, PFN @kpfn) got MAGIC in their
 * first word, by their own copy; nothing else changed.
 */
static void check_written(struct __test_metadata *_metadata, char *p,
			  size_t n, uint64_t val, uint64_t kpfn, size_t w1,
			  size_t w2)
{
	size_t ps = ksm_page_size(), i;
	uint64_t pfns[8];

	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	for (i = 0; i < n; i++) {
		if (i == w1 || i == w2) {
			EXPECT_EQ(MAGIC, *(uint64_t *)(p + i * ps));
			EXPECT_NE(kpfn, pfns[i]);
			continue;
		}
		EXPECT_TRUE(ksm_check_val(p, i, val))
			TH_LOG("page %zu changed: the write reached a sharer", i);
		EXPECT_EQ(kpfn, pfns[i]);
	}
}

TEST_F_TIMEOUT(hard, write_process_vm_writev, 180)
{
	const size_t n = 8;
	uint64_t kpfn, magic = MAGIC;
	struct iovec local = { &magic, sizeof(magic) }, remote;
	char *p = map_merged(_metadata, self->fd, n, VAL_WRITE, &kpfn);

	remote.iov_base = p + 2 * self->ps;
	remote.iov_len = sizeof(magic);
	ASSERT_EQ(sizeof(magic), process_vm_writev(getpid(), &local, 1,
						   &remote, 1, 0))
		TH_LOG("process_vm_writev: %s", strerror(errno));
	check_written(_metadata, p, n, VAL_WRITE, kpfn, 2, 2);
	munmap(p, n * self->ps);
}

/* Write MAGIC at @addr through /proc/self/mem; 0 or the errno. */
static int pwrite_mem(void *addr)
{
	uint64_t magic = MAGIC;
	int fd = open("/proc/self/mem", O_RDWR), err = 0;

	if (fd < 0)
		return errno;
	if (pwrite(fd, &magic, sizeof(magic), (uintptr_t)addr) != sizeof(magic))
		err = errno;
	close(fd);
	return err;
}

/*
 * Whether this kernel lets a process force a write into its own read-only
 * mapping through /proc/self/mem: CONFIG_PROC_MEM_FORCE_PTRACE (Debian's
 * 7.2) allows FOLL_FORCE there to a ptracer only, CONFIG_PROC_MEM_ALWAYS_FORCE
 * (Debian's 6.12, and every kernel before 6.12) to anyone. Asked of a page
 * ksmdev has never seen.
 */
static bool proc_mem_forces(struct __test_metadata *_metadata, size_t ps)
{
	char *q = ksm_mmap_anon(ps);
	bool forces;

	ASSERT_NE(NULL, q);
	memset(q, 1, ps);
	ASSERT_EQ(0, mprotect(q, ps, PROT_READ));
	forces = pwrite_mem(q) == 0;
	TH_LOG("a forced write to a read-only page of one's own: %s",
	       forces ? "allowed" : "refused (proc_mem.force_override)");
	munmap(q, ps);
	return forces;
}

/*
 * /proc/pid/mem: page 2 while the mapping is writable, page 4 after it is
 * made read-only (FOLL_FORCE breaks COW there too). Where the kernel
 * refuses the forced write to any page (see proc_mem_forces()), it must
 * refuse it to the merged page as well, with the same EIO, and leave it
 * as it is; ptrace's write below forces one in any case.
 */
TEST_F_TIMEOUT(hard, write_proc_pid_mem, 180)
{
	const size_t n = 8;
	uint64_t kpfn;
	bool forces = proc_mem_forces(_metadata, self->ps);
	char *p = map_merged(_metadata, self->fd, n, VAL_WRITE, &kpfn);

	EXPECT_EQ(0, pwrite_mem(p + 2 * self->ps));
	ASSERT_EQ(0, mprotect(p, n * self->ps, PROT_READ));
	EXPECT_EQ(forces ? 0 : EIO, pwrite_mem(p + 4 * self->ps));
	check_written(_metadata, p, n, VAL_WRITE, kpfn, 2, forces ? 4 : 2);
	munmap(p, n * self->ps);
}

/*
 * The child of write_ptrace_pokedata: merges pages of its own (not by fork,
 * which would write-protect its PTEs and hide what a wrong PTE would let
 * through), tells the parent where, and is poked at page 2 while the
 * mapping is writable, at page 4 once it made it read-only. Exit 0: those
 * two pages changed, by their own copy, and nothing else did.
 */
static int ptrace_child(int tell)
{
	const size_t n = 8, ps = ksm_page_size();
	struct ksm_mm_stats ms;
	uint64_t pfns[8], kpfn;
	int fd = ksm_open(), bad = 0;
	size_t i;
	char *p;

	if (ptrace(PTRACE_TRACEME, 0, NULL, NULL))
		return 20;
	p = ksm_mmap_anon(n * ps);
	if (fd < 0 || !p)
		return 21;
	ksm_fill_vals(p, 0, n, VAL_WRITE);
	if (ksm_register(fd, p, n * ps, 0) ||
	    ksm_wait_mm_merging(fd, n, &ms, WAIT_S) ||
	    ksm_pfns(p, n, pfns) || !ksm_pfns_merged(pfns, n))
		return 22;
	kpfn = pfns[0];
	if (ksm_pipe_io(tell, &p, sizeof(p), true, 10))
		return 23;
	raise(SIGSTOP);
	if (mprotect(p, n * ps, PROT_READ))
		return 24;
	raise(SIGSTOP);
	if (ksm_pfns(p, n, pfns))
		return 25;
	for (i = 0; i < n; i++) {
		uint64_t w = *(uint64_t *)(p + i * ps);

		if (i == 2 || i == 4)
			bad |= (w != MAGIC || pfns[i] == kpfn) << 0;
		else
			bad |= (!ksm_check_val(p, i, VAL_WRITE) ||
				pfns[i] != kpfn) << 1;
	}
	return bad ? 10 + bad : 0;
}

/*
 * PTRACE_POKEDATA (FOLL_FORCE) into a process with merged pages: only the
 * poked pages change, writable mapping or read-only.
 */
TEST_F_TIMEOUT(hard, write_ptrace_pokedata, 240)
{
	int status, pipefd[2];
	char *p = NULL;
	pid_t pid;

	ASSERT_EQ(0, pipe(pipefd));
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		close(pipefd[0]);
		_exit(ptrace_child(pipefd[1]));
	}
	close(pipefd[1]);
	if (ksm_pipe_io(pipefd[0], &p, sizeof(p), false, WAIT_S + 10)) {
		ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 10));
		ASSERT_TRUE(0) TH_LOG("the child did not merge (%d)",
				      ksm_exit_code(status));
	}
	close(pipefd[0]);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	ASSERT_TRUE(WIFSTOPPED(status));
	EXPECT_EQ(0, ptrace(PTRACE_POKEDATA, pid, p + 2 * self->ps,
			    (void *)MAGIC))
		TH_LOG("PTRACE_POKEDATA: %s", strerror(errno));
	ASSERT_EQ(0, ptrace(PTRACE_CONT, pid, NULL, NULL));
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	ASSERT_TRUE(WIFSTOPPED(status));
	EXPECT_EQ(0, ptrace(PTRACE_POKEDATA, pid, p + 4 * self->ps,
			    (void *)MAGIC))
		TH_LOG("PTRACE_POKEDATA (read-only): %s", strerror(errno));
	ASSERT_EQ(0, ptrace(PTRACE_DETACH, pid, NULL, NULL));
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60));
	EXPECT_EQ(0, ksm_exit_code(status))
		TH_LOG("child: 11 a poked page wrong, 12 a sharer changed (%d)",
		       ksm_exit_code(status));
}

/*
 * Mlocked as it is once every CPU's pending mlock/munlock batch is drained
 * (mlock() and munlock() of @dummy on each CPU drain that CPU's, in
 * mlock_vma_pages_range()) and every per-CPU counter delta folded in
 * (vm.stat_refresh): what /proc/meminfo shows otherwise lags by up to a
 * stat threshold of pages per CPU.
 */
static long mlocked_kb(void *dummy)
{
	long ncpu = sysconf(_SC_NPROCESSORS_ONLN), cpu;
	cpu_set_t old, one;

	if (sched_getaffinity(0, sizeof(old), &old))
		return -1;
	for (cpu = 0; cpu < ncpu; cpu++) {
		CPU_ZERO(&one);
		CPU_SET(cpu, &one);
		if (sched_setaffinity(0, sizeof(one), &one))
			return -1;
		if (mlock(dummy, ksm_page_size()) ||
		    munlock(dummy, ksm_page_size()))
			return -1;
	}
	if (sched_setaffinity(0, sizeof(old), &old) ||
	    ksm_write_str_file("/proc/sys/vm/stat_refresh", "1"))
		return -1;
	return ksm_meminfo_kb("Mlocked");
}

/* Wait (30 s) for Mlocked to be @kb again; false if it is not. */
static bool mlocked_back_to(void *dummy, long kb, long *seen)
{
	uint64_t end = ksm_now_ms() + 30000;

	for (;;) {
		*seen = mlocked_kb(dummy);
		if (*seen == kb)
			return true;
		if (ksm_now_ms() > end)
			return false;
		ksm_sleep_ms(100);
	}
}

/*
 * mlock() of a read-only merged range keeps it merged (no write fault);
 * munmap, or unregister then munmap, gives Mlocked back to its baseline.
 */
static void mlock_merged(struct __test_metadata *_metadata, int fd,
			 bool unregister)
{
	const size_t n = 64;
	size_t len = n * ksm_page_size();
	char *dummy = ksm_mmap_anon(ksm_page_size());
	uint64_t pfns[64], kpfn;
	long base, seen;
	char *p;

	ASSERT_NE(NULL, dummy);
	base = mlocked_kb(dummy);
	ASSERT_LE(0, base) TH_LOG("Mlocked cannot be read exactly");
	p = map_merged(_metadata, fd, n, VAL_MLOCK, &kpfn);
	ASSERT_EQ(0, mprotect(p, len, PROT_READ));
	ASSERT_EQ(0, mlock(p, len)) TH_LOG("mlock: %s", strerror(errno));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_EQ(n, ksm_count_eq(pfns, n, kpfn));
	TH_LOG("Mlocked: %ld kB at start, %ld kB mlocked and merged", base,
	       mlocked_kb(dummy));
	if (unregister) {
		ASSERT_EQ(0, ksm_unregister(fd, p, len))
			TH_LOG("unregister: %s", strerror(errno));
		ASSERT_EQ(0, ksm_pfns(p, n, pfns));
		EXPECT_TRUE(ksm_pfns_distinct(pfns, n));
		EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, VAL_MLOCK));
		TH_LOG("Mlocked: %ld kB after unregister", mlocked_kb(dummy));
	}
	ASSERT_EQ(0, munmap(p, len));
	EXPECT_TRUE(mlocked_back_to(dummy, base, &seen))
		TH_LOG("Mlocked %ld kB after munmap, %ld kB before", seen, base);
	munmap(dummy, ksm_page_size());
}

TEST_F_TIMEOUT(hard, mlock_readonly_merged, 180)
{
	mlock_merged(_metadata, self->fd, false);
}

TEST_F_TIMEOUT(hard, mlock_readonly_unregister, 180)
{
	mlock_merged(_metadata, self->fd, true);
}

/* Half a merged region moved by mremap; the region unregisters. */
TEST_F_TIMEOUT(hard, mremap_half_then_unregister, 180)
{
	const size_t n = 16, half = 8;
	size_t len = n * self->ps, hlen = half * self->ps, i;
	uint64_t pfns[16], kpfn;
	char *p, *q, *r;

	p = map_merged(_metadata, self->fd, n, VAL_MREMAP, &kpfn);
	q = mmap(NULL, hlen, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, q);
	r = mremap(p + hlen, hlen, hlen, MREMAP_MAYMOVE | MREMAP_FIXED, q);
	ASSERT_EQ(q, r) TH_LOG("mremap: %s", strerror(errno));

	ASSERT_EQ(0, ksm_unregister(self->fd, p, len))
		TH_LOG("unregister: %s", strerror(errno));
	ASSERT_EQ(0, ksm_pfns(p, half, pfns));
	EXPECT_TRUE(ksm_pfns_distinct(pfns, half));
	EXPECT_EQ(0, ksm_count_eq(pfns, half, kpfn));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, half, VAL_MREMAP));
	/* The moved half: same contents, copy-on-write still. */
	EXPECT_EQ(0, ksm_count_bad_vals(q, 0, half, VAL_MREMAP));
	*(uint64_t *)q = MAGIC;
	EXPECT_EQ(MAGIC, *(uint64_t *)q);
	for (i = 1; i < half; i++)
		EXPECT_TRUE(ksm_check_val(q, i, VAL_MREMAP));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, half, VAL_MREMAP));
	/* Nothing registered maps the page any more. */
	ksm_assert_merged(_metadata, self->fd, 0, 0, 0, 0);
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p, len));
	munmap(p, hlen);
	munmap(q, hlen);
}

TEST_HARNESS_MAIN
