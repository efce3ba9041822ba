// SPDX-License-Identifier: GPL-2.0
/*
 * Pages read back from swap. A read fault leaves the page in the swap
 * cache, holding its swap slot, until swap runs short: on a host that
 * swaps, that is much of the memory that was cold, and it must merge as
 * any other page (mm/ksm.c merges it too), and merging must free the slot
 * and the swap cache's hold on the page (SwapCached), or nothing is saved
 * until reclaim comes by. A swap entry that another process still holds
 * must keep the page, with its content, for that process's fault, and a
 * pinned page in the swap cache is left alone like any pinned page.
 *
 * Swap is a memory-backed null_blk device: not a synchronous one (zram,
 * brd), whose read faults bypass the swap cache on 6.1 and 6.12 and free
 * it at once on 7.2. Each test makes its own and takes it away.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sys/swap.h>
#include <sys/uio.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#ifndef MADV_PAGEOUT
#define MADV_PAGEOUT		21	/* 5.4; older libc headers lack it */
#endif

#define SWAP_DEV		"/dev/nullb0"
#define SWAP_PAGES		64
#define KPF_SWAPCACHE		14	/* include/uapi/linux/kernel-page-flags.h */
#define PM_SWAPPED		(1ULL << 62)

FIXTURE(swap) {
	int fd;
	size_t ps;
	bool swap_on;
	struct ksm_config saved;
	struct ksm_stats base;
};

/* mkswap(8)'s work: a version 1 header, no bad pages, no label. */
static int write_swap_header(const char *dev, size_t ps)
{
	struct {
		char bootbits[1024];
		uint32_t version;
		uint32_t last_page;
		uint32_t nr_badpages;
	} *info;
	int fd = open(dev, O_RDWR), ret = 0;
	off_t size;
	char *page;

	if (fd < 0)
		return -errno;
	size = lseek(fd, 0, SEEK_END);
	page = calloc(1, ps);
	if (size <= 0 || !page) {
		ret = size < 0 ? -errno : -ENOMEM;
		goto out;
	}
	info = (void *)page;
	info->version = 1;
	info->last_page = size / ps - 1;
	memcpy(page + ps - 10, "SWAPSPACE2", 10);
	if (pwrite(fd, page, ps, 0) != (ssize_t)ps || fsync(fd))
		ret = -errno;
out:
	free(page);
	close(fd);
	return ret;
}

/*
 * KiB of swap in use on SWAP_DEV (/proc/swaps), or -errno: the slots that
 * hold pages, and those a CPU's slot cache has taken ahead (6.1 and 6.12
 * take 64 at a time), so only at least the test's own at first, and then
 * the same as long as no slot is freed.
 */
static long swap_used_kb(void)
{
	char line[256], name[128];
	long size, used, ret = -ENOENT;
	FILE *f = fopen("/proc/swaps", "r");

	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%127s %*s %ld %ld", name, &size, &used) == 3 &&
		    !strcmp(name, SWAP_DEV))
			ret = used;
	fclose(f);
	return ret;
}

/* A /proc/meminfo field (kB), every CPU's delta folded in, or -1. */
static long meminfo_fresh_kb(const char *field)
{
	if (ksm_write_str_file("/proc/sys/vm/stat_refresh", "1"))
		return -1;
	return ksm_meminfo_kb(field);
}

/*
 * SwapCached: the swap cache's pages. The test's are the only ones in the
 * guest: nothing else is swapped out. Not the slots in use (/proc/swaps):
 * 6.1 and 6.12 hand freed slots back in per-CPU batches of 64.
 */
static long swapcache_kb(void)
{
	return meminfo_fresh_kb("SwapCached");
}

FIXTURE_SETUP(swap)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG("open: %s", strerror(-self->fd));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	/*
	 * A device left by another test (robust.c's is slow) goes first, and
	 * our swap on it if a test killed by its timeout left that.
	 */
	swapoff(SWAP_DEV);
	if (system("rmmod null_blk 2> /dev/null")) {
		/* not loaded: nothing to do */
	}
	ASSERT_EQ(0, system("modprobe null_blk nr_devices=1 gb=1 memory_backed=1"));
	ASSERT_EQ(0, write_swap_header(SWAP_DEV, self->ps));
	ASSERT_EQ(0, swapon(SWAP_DEV, 0)) TH_LOG("swapon: %s", strerror(errno));
	self->swap_on = true;
	ASSERT_EQ(0, swap_used_kb());
	ASSERT_EQ(0, ksm_get_stats(self->fd, &self->base));
}

FIXTURE_TEARDOWN(swap)
{
	if (self->swap_on)
		EXPECT_EQ(0, swapoff(SWAP_DEV)) TH_LOG("swapoff: %s",
						       strerror(errno));
	EXPECT_EQ(0, system("rmmod null_blk"));
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Pages of @p swapped out (pagemap), or -errno. */
static long count_swapped(const void *p, size_t n)
{
	off_t off = (uintptr_t)p / ksm_page_size() * sizeof(uint64_t);
	int fd = open("/proc/self/pagemap", O_RDONLY);
	uint64_t pm[SWAP_PAGES];
	long swapped = 0;
	size_t i;

	if (fd < 0)
		return -errno;
	if (n > SWAP_PAGES ||
	    pread(fd, pm, n * sizeof(pm[0]), off) != (ssize_t)(n * sizeof(pm[0]))) {
		close(fd);
		return -EIO;
	}
	close(fd);
	for (i = 0; i < n; i++)
		swapped += !!(pm[i] & PM_SWAPPED);
	return swapped;
}

/*
 * Swap all @n pages of @p out, and wait for their writes to end.
 * MADV_PAGEOUT passes by a page it cannot take this instant (still in a
 * per-CPU LRU batch of another CPU, say): ask again, within a bound. A
 * page is swapped out (its PTE a swap entry) before its write is done; one
 * read back while still under writeback keeps its slot when merged
 * (folio_free_swap() refuses), which these tests must not meet by chance.
 */
static int page_out(const void *p, size_t n)
{
	uint64_t end = ksm_now_ms() + 10000;
	long swapped, wb;

	do {
		if (madvise((void *)p, n * ksm_page_size(), MADV_PAGEOUT))
			return -errno;
		swapped = count_swapped(p, n);
		if (swapped < 0)
			return swapped;
		if ((size_t)swapped == n)
			break;
		ksm_sleep_ms(10);
	} while (ksm_now_ms() < end);
	if ((size_t)swapped != n)
		return -ETIME;
	while ((wb = meminfo_fresh_kb("Writeback")) != 0) {
		if (wb < 0)
			return -EIO;
		if (ksm_now_ms() >= end)
			return -ETIME;
		ksm_sleep_ms(10);
	}
	return 0;
}

/* Pages of @p, present, that are in the swap cache (/proc/kpageflags). */
static long count_swapcache(const void *p, size_t n)
{
	uint64_t pfns[SWAP_PAGES], flags;
	int fd, ret = 0;
	long count = 0;
	size_t i;

	if (n > SWAP_PAGES)
		return -EINVAL;
	ret = ksm_pfns(p, n, pfns);
	if (ret)
		return ret;
	fd = open("/proc/kpageflags", O_RDONLY);
	if (fd < 0)
		return -errno;
	for (i = 0; i < n; i++) {
		if (!pfns[i] || pread(fd, &flags, sizeof(flags),
				      pfns[i] * sizeof(flags)) != sizeof(flags))
			continue;
		count += !!(flags & (1ULL << KPF_SWAPCACHE));
	}
	close(fd);
	return count;
}

/*
 * @n identical pages, swapped out and read back (read faults): all in the
 * swap cache, their slots still held. Returns the mapping, or NULL after
 * a failed assertion.
 */
static char *swapped_back(struct __test_metadata *_metadata, size_t n,
			  uint64_t val)
{
	size_t ps = ksm_page_size();
	char *p = ksm_mmap_anon(n * ps);
	long used;
	int ret;

	if (!p) {
		EXPECT_NE(NULL, p);
		return NULL;
	}
	ksm_fill_vals(p, 0, n, val);
	ret = page_out(p, n);
	EXPECT_EQ(0, ret) TH_LOG("MADV_PAGEOUT: %ld of %zu pages swapped out: %s",
				 count_swapped(p, n), n, strerror(-ret));
	used = swap_used_kb();
	EXPECT_LE((long)(n * ps / 1024), used);
	/* Read faults: each page comes back, and stays in the swap cache. */
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val));
	EXPECT_EQ((long)n, count_swapcache(p, n))
		TH_LOG("the kernel did not keep them in the swap cache");
	EXPECT_LE((long)(n * ps / 1024), swapcache_kb());
	EXPECT_EQ(used, swap_used_kb()) TH_LOG("a slot was freed");
	if (ret) {
		munmap(p, n * ps);
		return NULL;
	}
	return p;
}

/*
 * KSM_MERGE_REGION takes pages in the swap cache: all merge, and their
 * slots are free again at once.
 */
TEST_F(swap, merge_now_swapcache_pages)
{
	const size_t n = SWAP_PAGES;
	uint64_t pfns[SWAP_PAGES];
	struct ksm_stats st;
	char *p = swapped_back(_metadata, n, 0x73776170);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	EXPECT_EQ((int)n, ksm_region_ioctl(self->fd, KSM_MERGE_REGION, p,
					   n * self->ps, 0));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ(0, swapcache_kb()) TH_LOG("kept in the swap cache");
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_EQ(self->base.pages_shared + 1, st.pages_shared);
	EXPECT_EQ(self->base.pages_sharing + n - 1, st.pages_sharing);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, 0x73776170));

	/* A write breaks the sharing, as anywhere. */
	ksm_fill_val(p, 7, 0x1234);
	EXPECT_TRUE(ksm_check_val(p, 7, 0x1234));
	EXPECT_NE(pfns[0], ksm_pfn(p + 7 * self->ps));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 8, n - 8, 0x73776170));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, 7, 0x73776170));
	munmap(p, n * self->ps);
}

/* The scanner takes them too, and frees their slots. */
TEST_F_TIMEOUT(swap, scanner_merges_swapcache_pages, 300)
{
	const size_t n = SWAP_PAGES;
	uint64_t pfns[SWAP_PAGES];
	char *p = swapped_back(_metadata, n, 0x7363616e);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * self->ps, 0));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	ksm_assert_merged(_metadata, self->fd, self->base.pages_shared + 1,
			  self->base.pages_sharing + n - 1,
			  self->base.ksm_zero_pages, n);
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ(0, swapcache_kb()) TH_LOG("kept in the swap cache");
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, 0x7363616e));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * self->ps));
	munmap(p, n * self->ps);
}

/*
 * What a child forked by fork_waiting_child() checks of @p's @n pages once
 * released: 0 if all is well, else an exit code that says what failed.
 */
typedef int (*child_check_t)(const char *p, size_t n, uint64_t val);

/*
 * Fork a child that shares @p as fork() leaves it, and waits until
 * release_child() before it runs @check: the parent merges meanwhile.
 * Returns the child's pid, the write end of its go pipe in @go; or -errno.
 */
static pid_t fork_waiting_child(const char *p, size_t n, uint64_t val,
				child_check_t check, int *go)
{
	int fds[2];
	pid_t pid;
	char c;

	if (pipe(fds))
		return -errno;
	fflush(NULL);
	pid = fork();
	if (pid < 0) {
		pid = -errno;
		close(fds[0]);
		close(fds[1]);
		return pid;
	}
	if (pid == 0) {
		close(fds[1]);
		if (read(fds[0], &c, 1) != 1)
			_exit(2);
		_exit(check(p, n, val));
	}
	close(fds[0]);
	*go = fds[1];
	return pid;
}

/* Let the child run its check; its exit code, or -errno. */
static int release_child(pid_t pid, int go)
{
	int status, ret = write(go, "g", 1) == 1 ? 0 : -errno;

	close(go);
	if (ret) {
		kill(pid, SIGKILL);
		waitpid(pid, &status, 0);
		return ret;
	}
	ret = ksm_waitpid_timeout(pid, &status, 60);
	return ret ? ret : ksm_exit_code(status);
}

/* Its own swap entries, faulted in only now: the content it swapped out. */
static int check_swapped_content(const char *p, size_t n, uint64_t val)
{
	if (count_swapped(p, n) != (long)n)
		return 3;
	return ksm_count_bad_vals(p, 0, n, val) ? 4 : 0;
}

/*
 * A child forked while the pages were out holds their swap entries too:
 * the parent's merge keeps the pages in the swap cache for it, and the
 * child reads its own content back.
 */
TEST_F(swap, entry_held_elsewhere_keeps_page)
{
	const size_t n = SWAP_PAGES, ps = self->ps;
	const uint64_t val = 0x666f726b;
	char *p = ksm_mmap_anon(n * ps);
	long used;
	pid_t pid;
	int go;

	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, val);
	ASSERT_EQ(0, page_out(p, n));
	pid = fork_waiting_child(p, n, val, check_swapped_content, &go);
	ASSERT_LE(0, pid) TH_LOG("fork: %s", strerror(-pid));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val));
	EXPECT_EQ((long)n, count_swapcache(p, n));
	used = swap_used_kb();
	EXPECT_LE((long)(n * ps / 1024), used);
	ASSERT_EQ(0, ksm_register(self->fd, p, n * ps, 0));
	EXPECT_EQ((int)n, ksm_region_ioctl(self->fd, KSM_MERGE_REGION, p,
					   n * ps, 0));
	/* The child's entries keep the pages, for its faults. */
	EXPECT_EQ((long)(n * ps / 1024), swapcache_kb());
	EXPECT_EQ(used, swap_used_kb()) TH_LOG("a slot the child holds freed");
	EXPECT_EQ(0, release_child(pid, go));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * ps));
	munmap(p, n * ps);
}

/*
 * Pages in the swap cache and pinned (vmsplice() holds references in the
 * pipe until it is read): they stay as they are, in the swap cache with
 * their slots, while the others merge; once the pipe is read they merge
 * too, and leave the swap cache.
 */
TEST_F(swap, pinned_swapcache_page_not_merged)
{
	const size_t n = SWAP_PAGES, npin = 8, ps = self->ps;
	const uint64_t val = 0x70696e73;
	uint64_t before[SWAP_PAGES], pfns[SWAP_PAGES];
	char *p = swapped_back(_metadata, n, val);
	struct iovec iov;
	int pipefd[2];
	size_t i;

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_pfns(p, n, before));
	ASSERT_EQ(0, pipe(pipefd));
	iov.iov_base = p;
	iov.iov_len = npin * ps;
	ASSERT_EQ((ssize_t)iov.iov_len, vmsplice(pipefd[1], &iov, 1, 0))
		TH_LOG("vmsplice: %s", strerror(errno));
	ASSERT_EQ(0, ksm_register(self->fd, p, n * ps, 0));
	EXPECT_EQ((int)(n - npin), ksm_region_ioctl(self->fd, KSM_MERGE_REGION,
						    p, n * ps, 0));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	for (i = 0; i < npin; i++)
		EXPECT_EQ(before[i], pfns[i]) TH_LOG("pinned page %zu merged", i);
	EXPECT_TRUE(ksm_pfns_merged(pfns + npin, n - npin));
	EXPECT_EQ((long)npin, count_swapcache(p, npin));
	EXPECT_EQ((long)(npin * ps / 1024), swapcache_kb())
		TH_LOG("not just the pinned pages kept in the swap cache");
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val));

	ASSERT_EQ(0, ksm_drain_pipe(pipefd));
	EXPECT_EQ((int)n, ksm_region_ioctl(self->fd, KSM_MERGE_REGION, p,
					   n * ps, 0));
	ASSERT_EQ(0, ksm_pfns(p, n, pfns));
	EXPECT_TRUE(ksm_pfns_merged(pfns, n));
	EXPECT_EQ(0, swapcache_kb()) TH_LOG("kept in the swap cache");
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * ps));
	munmap(p, n * ps);
}

/*
 * Pages read back from swap, then written: the write reuses each page
 * (exclusive), so they stay in the swap cache with their slots, which
 * now hold the old content, and their PTEs are dirty. A child forked then
 * maps them too, with dirty PTEs of its own, so the parent's merge leaves
 * them in the swap cache, for the child. Paged out from the child, read
 * back, paged out again clean and read back from the slots: the write,
 * never the old content.
 */
/*
 * Swapped out and back (its own write, from the parent, must come back),
 * then out again clean: dropped from the swap cache at once, and read back
 * from the slots.
 */
static int check_write_survives_swap(const char *p, size_t n, uint64_t val)
{
	if (page_out(p, n))
		return 3;
	if (ksm_count_bad_vals(p, 0, n, val))
		return 4;
	if (page_out(p, n))
		return 5;
	if (swapcache_kb() != 0)
		return 6;
	return ksm_count_bad_vals(p, 0, n, val) ? 7 : 0;
}

TEST_F_TIMEOUT(swap, written_swapcache_page_keeps_write, 120)
{
	const size_t n = SWAP_PAGES, ps = self->ps;
	const uint64_t val = 0x6f6c64, val2 = 0x6e6577;
	char *p = swapped_back(_metadata, n, val);
	pid_t pid;
	int go;

	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, n, val2);
	ASSERT_EQ((long)n, count_swapcache(p, n))
		TH_LOG("the write took them out of the swap cache");
	pid = fork_waiting_child(p, n, val2, check_write_survives_swap, &go);
	ASSERT_LE(0, pid) TH_LOG("fork: %s", strerror(-pid));
	ASSERT_EQ(0, ksm_register(self->fd, p, n * ps, 0));
	EXPECT_EQ((int)n, ksm_region_ioctl(self->fd, KSM_MERGE_REGION, p,
					   n * ps, 0));
	/* The child maps them: kept in the swap cache. */
	EXPECT_EQ((long)(n * ps / 1024), swapcache_kb());
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val2));
	EXPECT_EQ(0, release_child(pid, go));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, n, val2));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, n * ps));
	munmap(p, n * ps);
}

TEST_HARNESS_MAIN
