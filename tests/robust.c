// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev under abuse: pinned pages (vmsplice, io_uring fixed buffers,
 * O_DIRECT reads in flight) are never merged, a long unmerge gives
 * way to signals and can be retried, and random ioctls from racing threads
 * and processes only ever return error codes.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/uio.h>
#include <linux/io_uring.h>

#include "ksmdev_test.h"

#define MERGE_TIMEOUT_S	120

FIXTURE(robust) {
	int fd;
	size_t ps;
	struct ksm_config saved;
};

FIXTURE_SETUP(robust)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
}

FIXTURE_TEARDOWN(robust)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

static uint64_t next_rand(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

/* How many of pages [first, first + n) of @p map the PFN of page @first. */
static size_t same_pfn(const char *p, size_t first, size_t n)
{
	uint64_t pfn = ksm_pfn(p + first * ksm_page_size());
	size_t i, same = 0;

	for (i = first; i < first + n; i++)
		same += pfn && ksm_pfn(p + i * ksm_page_size()) == pfn;
	return same;
}

/* Wait until pages [first, first + n) of @p all map one PFN. */
static int wait_merged(int fd, const char *p, size_t first, size_t n)
{
	uint64_t end = ksm_now_ms() + MERGE_TIMEOUT_S * 1000ULL;

	while (same_pfn(p, first, n) != n) {
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(20);
	}
	/* Two more passes over the pinned pages, to give them every chance. */
	return ksm_wait_full_scans(fd, 2, MERGE_TIMEOUT_S);
}

/* Map @npages pages, all with the same content. */
static char *map_identical(size_t npages)
{
	char *p = ksm_mmap_anon(npages * ksm_page_size());
	size_t i;

	if (!p)
		return NULL;
	for (i = 0; i < npages; i++)
		memset(p + i * ksm_page_size(), 'x', ksm_page_size());
	return p;
}

static bool all_identical(const char *p, size_t npages)
{
	static char x[65536];
	size_t i, ps = ksm_page_size();

	if (ps > sizeof(x))
		return false;
	memset(x, 'x', ps);
	for (i = 0; i < npages; i++)
		if (memcmp(p + i * ps, x, ps))
			return false;
	return true;
}

/*
 * Wait until all @npages pages of the region, registered alone through @fd,
 * map merged pages; then for two more passes. By the counters, not by
 * pagemap: a GiB is 2 MiB of PFNs to read per look.
 */
static int wait_all_merged(int fd, size_t npages)
{
	struct ksm_mm_stats ms;
	int ret;

	ret = ksm_wait_mm_merging(fd, npages, &ms, MERGE_TIMEOUT_S * 4);
	return ret ? ret : ksm_wait_full_scans(fd, 2, MERGE_TIMEOUT_S);
}

/*
 * The merged region of the unmerge tests (seed 001): 1 GiB, or
 * KSMDEV_UNMERGE_MB (the debug-kernel lane asks for less).
 */
static size_t unmerge_test_pages(void)
{
	const char *s = getenv("KSMDEV_UNMERGE_MB");
	size_t mb = s && atoi(s) > 0 ? atoi(s) : 1024;

	return (mb << 20) / ksm_page_size();
}

/*
 * Pages 0..7 are pinned by @pin (a long-lived reference), 8..15 are not:
 * only the latter merge; once @unpin drops the pin, all merge.
 */
static void check_pinned_never_merge(struct __test_metadata *_metadata,
				     int fd, char *p, uint64_t *before,
				     int (*unpin)(void *), void *arg)
{
	size_t i;
	int ret;

	ASSERT_EQ(0, ksm_register(fd, p, 16 * ksm_page_size(), 0));
	ASSERT_EQ(0, ksm_set_fast_config(fd));
	ASSERT_EQ(0, wait_merged(fd, p, 8, 8))
		TH_LOG("the unpinned pages did not merge");
	for (i = 0; i < 8; i++) {
		EXPECT_EQ(before[i], ksm_pfn(p + i * ksm_page_size()))
			TH_LOG("pinned page %zu was merged", i);
	}

	ret = unpin(arg);
	ASSERT_EQ(0, ret) TH_LOG("unpinning: %s", strerror(-ret));
	ASSERT_EQ(0, wait_merged(fd, p, 0, 16))
		TH_LOG("the pages did not merge once unpinned");
	EXPECT_TRUE(all_identical(p, 16));
	EXPECT_EQ(0, ksm_unregister(fd, p, 16 * ksm_page_size()));
}

/* vmsplice() holds page references in the pipe until it is read. */
TEST_F_TIMEOUT(robust, pinned_by_vmsplice, 300)
{
	uint64_t before[8];
	struct iovec iov;
	int pipefd[2];
	size_t i;
	char *p;

	p = map_identical(16);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, pipe(pipefd));
	iov.iov_base = p;
	iov.iov_len = 8 * self->ps;
	ASSERT_EQ((ssize_t)iov.iov_len, vmsplice(pipefd[1], &iov, 1, 0))
		TH_LOG("vmsplice: %s", strerror(errno));
	for (i = 0; i < 8; i++)
		before[i] = ksm_pfn(p + i * self->ps);
	check_pinned_never_merge(_metadata, self->fd, p, before, ksm_drain_pipe,
				 pipefd);
	munmap(p, 16 * self->ps);
}

/*
 * A pinned page meets its unpinned twin in the unstable tree: neither is
 * merged, and no stable page is even made (debugfs stable_unused). The
 * twin alone on a merged page would save nothing and cost a page off the
 * LRU, counted in pages_shared (mm/ksm.c's try_to_merge_two_pages() undoes
 * its first merge when the second fails); a stable page allocated and
 * copied for a merge that fails is work wasted at every pass while the pin
 * lasts (VFIO, RDMA and io_uring pin for good). KSM_MERGE_REGION with run=0
 * makes the order sure: page @pinned_first ? 0 : 1 is pinned by
 * vmsplice(), page 0 is filed, then page 1 meets it. Unpinned, the two
 * merge.
 */
static void check_pinned_twin(struct __test_metadata *_metadata, int fd,
			      bool pinned_first)
{
	size_t ps = ksm_page_size(), len = 2 * ps;
	uint64_t pfn0, pfn1, unused0, unused;
	struct ksm_stats s0, s;
	struct iovec iov;
	int pipefd[2];
	char *p;

	p = map_identical(2);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_set_run(fd, KSM_RUN_STOP));
	ASSERT_EQ(0, pipe(pipefd));
	iov.iov_base = p + (pinned_first ? 0 : ps);
	iov.iov_len = ps;
	ASSERT_EQ((ssize_t)ps, vmsplice(pipefd[1], &iov, 1, 0))
		TH_LOG("vmsplice: %s", strerror(errno));
	pfn0 = ksm_pfn(p);
	pfn1 = ksm_pfn(p + ps);
	ASSERT_EQ(0, ksm_get_stats(fd, &s0));
	ASSERT_EQ(0, ksm_read_debugfs("stable_unused", &unused0));
	ASSERT_EQ(0, ksm_register(fd, p, len, 0));
	EXPECT_EQ(0, ksm_region_ioctl(fd, KSM_MERGE_REGION, p, ps, 0));
	EXPECT_EQ(0, ksm_region_ioctl(fd, KSM_MERGE_REGION, p + ps, ps, 0));
	EXPECT_EQ(pfn0, ksm_pfn(p)) TH_LOG("page 0 was merged alone");
	EXPECT_EQ(pfn1, ksm_pfn(p + ps)) TH_LOG("page 1 was merged alone");
	ASSERT_EQ(0, ksm_get_stats(fd, &s));
	EXPECT_EQ(s0.pages_shared, s.pages_shared);
	EXPECT_EQ(s0.pages_sharing, s.pages_sharing);
	ASSERT_EQ(0, ksm_read_debugfs("stable_unused", &unused));
	EXPECT_EQ(unused0, unused) TH_LOG("a stable page made for nothing");

	ASSERT_EQ(0, ksm_drain_pipe(pipefd));
	EXPECT_EQ(2, ksm_region_ioctl(fd, KSM_MERGE_REGION, p, len, 0));
	EXPECT_EQ(ksm_pfn(p), ksm_pfn(p + ps));
	EXPECT_TRUE(all_identical(p, 2));
	EXPECT_EQ(0, ksm_unregister(fd, p, len));
	munmap(p, len);
}

/* The pinned page meets its twin, filed first. */
TEST_F_TIMEOUT(robust, pinned_twin_not_merged_alone, 120)
{
	check_pinned_twin(_metadata, self->fd, false);
}

/* The twin meets the pinned page, filed first. */
TEST_F_TIMEOUT(robust, twin_of_pinned_not_merged_alone, 120)
{
	check_pinned_twin(_metadata, self->fd, true);
}

struct uring {
	int fd;
};

static int uring_unregister(void *arg)
{
	struct uring *ring = arg;
	int ret = syscall(__NR_io_uring_register, ring->fd,
			  IORING_UNREGISTER_BUFFERS, NULL, 0);

	close(ring->fd);
	return ret ? -errno : 0;
}

/* io_uring fixed buffers are long-term pins (FOLL_LONGTERM). */
TEST_F_TIMEOUT(robust, pinned_by_io_uring, 300)
{
	struct io_uring_params params = { 0 };
	struct uring ring;
	uint64_t before[8];
	struct iovec iov;
	size_t i;
	char *p;

	ring.fd = syscall(__NR_io_uring_setup, 4, &params);
	if (ring.fd < 0)
		SKIP(return, "io_uring_setup: %s", strerror(errno));
	p = map_identical(16);
	ASSERT_NE(NULL, p);
	iov.iov_base = p;
	iov.iov_len = 8 * self->ps;
	ASSERT_EQ(0, syscall(__NR_io_uring_register, ring.fd,
			     IORING_REGISTER_BUFFERS, &iov, 1))
		TH_LOG("IORING_REGISTER_BUFFERS: %s", strerror(errno));
	for (i = 0; i < 8; i++)
		before[i] = ksm_pfn(p + i * self->ps);
	check_pinned_never_merge(_metadata, self->fd, p, before,
				 uring_unregister, &ring);
	munmap(p, 16 * self->ps);
}

/*
 * O_DIRECT: a block device whose requests complete only after
 * NULLB_DELAY_NS (null_blk's timer mode, memory-backed), so that a read
 * holds its pages pinned (FOLL_PIN) for that long.
 */
#define NULLB_DELAY_NS	3000000000ULL
#define NULLB_DEV	"/dev/nullb0"

struct direct_read {
	pthread_t thread;
	int fd;
	void *buf;
	size_t len;
	ssize_t ret;
	volatile int done;
};

static void *direct_read_main(void *arg)
{
	struct direct_read *r = arg;

	r->ret = pread(r->fd, r->buf, r->len, 0);
	if (r->ret < 0)
		r->ret = -errno;
	r->done = 1;
	return NULL;
}

/* Reads in flight on the null_blk device; -errno if unreadable. */
static long nullb_reads_in_flight(void)
{
	unsigned long reads, writes;
	FILE *f = fopen("/sys/block/nullb0/inflight", "r");
	int n;

	if (!f)
		return -errno;
	n = fscanf(f, "%lu %lu", &reads, &writes);
	fclose(f);
	return n == 2 ? (long)reads : -EIO;
}

static int direct_read_finish(void *arg)
{
	struct direct_read *r = arg;

	/* The pin must have lasted through every check of the pages. */
	if (r->done)
		return -ETIME;
	pthread_join(r->thread, NULL);
	return r->ret == (ssize_t)r->len ? 0 : r->ret < 0 ? r->ret : -EIO;
}

/*
 * An O_DIRECT read into identical pages: while the device holds them
 * pinned, the scanner must leave them alone (if it merged them, the data
 * would land in a page the process no longer maps).
 */
TEST_F_TIMEOUT(robust, pinned_by_o_direct, 300)
{
	char cmd[256];
	struct direct_read r = { 0 };
	uint64_t before[8], end;
	size_t i;
	char *p;

	snprintf(cmd, sizeof(cmd),
		 "modprobe null_blk nr_devices=1 gb=1 memory_backed=1 irqmode=2 completion_nsec=%llu",
		 NULLB_DELAY_NS);
	ASSERT_EQ(0, system(cmd)) TH_LOG("%s failed", cmd);
	r.fd = open(NULLB_DEV, O_RDWR | O_DIRECT);
	ASSERT_LE(0, r.fd) TH_LOG("open " NULLB_DEV ": %s", strerror(errno));
	p = map_identical(16);
	ASSERT_NE(NULL, p);
	r.buf = p;
	r.len = 8 * self->ps;
	/* What the read brings back: the same bytes, written the same way. */
	ASSERT_EQ((ssize_t)r.len, pwrite(r.fd, p, r.len, 0))
		TH_LOG("O_DIRECT write: %s", strerror(errno));

	ASSERT_EQ(0, pthread_create(&r.thread, NULL, direct_read_main, &r));
	end = ksm_now_ms() + NULLB_DELAY_NS / 1000000 / 2;
	while (nullb_reads_in_flight() < 1) {
		ASSERT_GT(end, ksm_now_ms()) TH_LOG("the read never went out");
		usleep(100);
	}
	for (i = 0; i < 8; i++)
		before[i] = ksm_pfn(p + i * self->ps);
	check_pinned_never_merge(_metadata, self->fd, p, before,
				 direct_read_finish, &r);
	close(r.fd);
	munmap(p, 16 * self->ps);
	EXPECT_EQ(0, system("rmmod null_blk"));
}

static void on_signal(int sig)
{
	(void)sig;
}

struct signaller {
	pthread_t target;
	volatile int stop;
	long sent;
};

/* Signal @target every 100 us until told to stop. */
static void *signal_flood(void *arg)
{
	struct signaller *s = arg;

	while (!s->stop) {
		pthread_kill(s->target, SIGUSR1);
		s->sent++;
		usleep(100);
	}
	return NULL;
}

/*
 * seed 001: a long unmerge notices signals: EINTR, the region still
 * registered, every byte intact; then a retry succeeds.
 */
TEST_F_TIMEOUT(robust, unmerge_interrupted_by_signals, 900)
{
	const size_t npages = unmerge_test_pages();
	struct sigaction sa = { .sa_handler = on_signal };	/* no SA_RESTART */
	struct signaller s = { .target = pthread_self() };
	struct ksm_mm_stats ms;
	struct ksm_stats st;
	pthread_t thread;
	int ret, eintr = 0;
	uint64_t t0;
	char *p;

	p = map_identical(npages);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	t0 = ksm_now_ms();
	ASSERT_EQ(0, wait_all_merged(self->fd, npages));
	TH_LOG("%zu MiB merged in %llu ms", npages * self->ps >> 20,
	       (unsigned long long)(ksm_now_ms() - t0));
	ASSERT_EQ(0, sigaction(SIGUSR1, &sa, NULL));

	ASSERT_EQ(0, pthread_create(&thread, NULL, signal_flood, &s));
	for (;;) {
		ret = ksm_unregister(self->fd, p, npages * self->ps);
		if (ret != -EINTR)
			break;
		eintr++;
		ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
		ASSERT_EQ(1, ms.regions) TH_LOG("EINTR left the region unregistered");
		ASSERT_TRUE(all_identical(p, npages));
		if (eintr >= 3)
			break;
	}
	s.stop = 1;
	pthread_join(thread, NULL);
	TH_LOG("%d unregisters interrupted, %ld signals sent", eintr, s.sent);
	EXPECT_LT(0, eintr) TH_LOG("the unmerge never saw a signal (ret %d)", ret);
	t0 = ksm_now_ms();
	if (ret == -EINTR)
		ret = ksm_unregister(self->fd, p, npages * self->ps);
	ASSERT_EQ(0, ret);
	TH_LOG("the retry unmerged the rest in %llu ms",
	       (unsigned long long)(ksm_now_ms() - t0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_EQ(0, st.pages_sharing);
	EXPECT_EQ(1, same_pfn(p, 0, 2)) TH_LOG("still merged after unregister");
	EXPECT_TRUE(all_identical(p, npages));
	munmap(p, npages * self->ps);
}

/* SIGKILL during a long unmerge: the process dies promptly. */
TEST_F_TIMEOUT(robust, unmerge_killed, 900)
{
	const size_t npages = unmerge_test_pages();
	struct ksm_stats base, last;
	int go[2], ready[2], status;
	uint64_t t0;
	long rss_kb;
	pid_t pid;
	char c;

	ASSERT_EQ(0, ksm_get_stats(self->fd, &base));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, pipe(go));
	ASSERT_EQ(0, pipe(ready));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		int fd = ksm_open();
		char *p = map_identical(npages);

		if (fd < 0 || !p || ksm_register(fd, p, npages * ksm_page_size(), 0) ||
		    wait_all_merged(fd, npages))
			_exit(1);
		if (write(ready[1], "r", 1) != 1 || read(go[0], &c, 1) != 1)
			_exit(2);
		ksm_unregister(fd, p, npages * ksm_page_size());
		_exit(3);
	}
	ASSERT_EQ(1, read(ready[0], &c, 1)) TH_LOG("the child did not merge");
	ASSERT_EQ(1, write(go[1], "g", 1));
	/*
	 * Kill it well into the unmerge: once a tenth of the region is
	 * private again (RssAnon; merged pages count as RssFile).
	 */
	t0 = ksm_now_ms() + MERGE_TIMEOUT_S * 1000ULL;
	do {
		rss_kb = ksm_rss_anon_kb(pid);
		ASSERT_LE(0, rss_kb);
		ASSERT_GT(t0, ksm_now_ms()) TH_LOG("the unmerge never began");
	} while ((size_t)rss_kb < npages * (self->ps / 1024) / 10);
	t0 = ksm_now_ms();
	kill(pid, SIGKILL);
	EXPECT_GT(npages * (self->ps / 1024) * 9 / 10, (size_t)rss_kb)
		TH_LOG("killed only at the end of the unmerge");
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30))
		TH_LOG("the killed child did not die within 30 s");
	TH_LOG("the child was reaped %llu ms after SIGKILL",
	       (unsigned long long)(ksm_now_ms() - t0));
	EXPECT_TRUE(WIFSIGNALED(status) || WEXITSTATUS(status) == 3);
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &base, &last, 10));
}

/* ---- unmerge-all thoroughness (seed 004) ---- */

/*
 * Until @stop closes: open, register identical pages, fork a child that
 * writes a few of them, close at a random moment, exit the child.
 */
static void churn(int stop)
{
	const size_t npages = 32;
	uint64_t r = getpid();
	int status;
	char c;

	for (;;) {
		int fd = ksm_open();
		char *p = map_identical(npages);
		pid_t pid;

		if (fd < 0 || !p || ksm_register(fd, p, npages * ksm_page_size(), 0))
			_exit(1);
		pid = fork();
		if (pid == 0) {
			p[(next_rand(&r) % npages) * ksm_page_size()] = 'y';
			_exit(0);
		}
		usleep(next_rand(&r) % 20000);
		close(fd);
		if (pid > 0)
			waitpid(pid, &status, 0);
		munmap(p, npages * ksm_page_size());
		/* The test closes @stop: a read then returns 0. */
		if (fcntl(stop, F_SETFL, O_NONBLOCK) || read(stop, &c, 1) == 0)
			_exit(0);
	}
}

/*
 * run=2 while other processes register, fork, write and exit: afterwards
 * nothing is merged and no stable node is left; run=1 merges again; and
 * when the churn ends, the bookkeeping is back where it was.
 */
TEST_F_TIMEOUT(robust, unmerge_all_during_churn, 600)
{
	const size_t npages = 256;
	struct ksm_stats base, st;
	int stop[2], status, round, i;
	pid_t pids[2];
	char *p;

	ASSERT_EQ(0, ksm_get_stats(self->fd, &base));
	ASSERT_EQ(0, pipe(stop));
	for (i = 0; i < 2; i++) {
		pids[i] = fork();
		ASSERT_LE(0, pids[i]);
		if (pids[i] == 0) {
			close(stop[1]);
			churn(stop[0]);
		}
	}
	close(stop[0]);
	p = map_identical(npages);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));

	for (round = 0; round < 5; round++) {
		ASSERT_EQ(0, ksm_set_fast_config(self->fd));
		ASSERT_EQ(0, wait_merged(self->fd, p, 0, npages))
			TH_LOG("round %d: no merge after run=1", round);
		ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_UNMERGE));
		ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
		EXPECT_EQ(0, st.pages_shared) TH_LOG("round %d", round);
		EXPECT_EQ(0, st.pages_sharing) TH_LOG("round %d", round);
		EXPECT_EQ(0, st.ksm_zero_pages) TH_LOG("round %d", round);
		EXPECT_EQ(1, same_pfn(p, 0, 2)) TH_LOG("still merged after run=2");
		EXPECT_TRUE(all_identical(p, npages));
	}
	close(stop[1]);
	for (i = 0; i < 2; i++) {
		ASSERT_EQ(0, ksm_waitpid_timeout(pids[i], &status, 60));
		EXPECT_EQ(0, ksm_exit_code(status));
	}
	ASSERT_EQ(0, ksm_unregister(self->fd, p, npages * self->ps));
	/* No stable node, no unstable node, no chunk left behind. */
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &base, &st, 10))
		TH_LOG("metadata_bytes %llu, was %llu",
		       (unsigned long long)st.metadata_bytes,
		       (unsigned long long)base.metadata_bytes);
	munmap(p, npages * self->ps);
}

/* ---- who may do what ---- */

/* In a child running as nobody: open /dev/ksm and use it; an exit code. */
static int as_nobody(void)
{
	struct ksm_config cfg = { 0 };
	struct ksm_stats st;
	char *p;
	int fd;

	if (setgid(65534) || setuid(65534))
		return 10;
	fd = ksm_open();
	if (fd < 0)
		return errno == EACCES ? 1 : 11;
	p = map_identical(4);
	if (!p || ksm_register(fd, p, 4 * ksm_page_size(), 0))
		return 12;
	if (ksm_get_stats(fd, &st) || ksm_get_config(fd, &cfg))
		return 13;
	if (ksm_set_config(fd, &cfg) != -EPERM)
		return 14;
	if (ksm_unregister(fd, p, 4 * ksm_page_size()))
		return 15;
	return 0;
}

static int run_as_nobody(void)
{
	int status;
	pid_t pid = fork();

	if (pid < 0)
		return -1;
	if (pid == 0)
		_exit(as_nobody());
	if (ksm_waitpid_timeout(pid, &status, 30))
		return -1;
	return ksm_exit_code(status);
}

/*
 * /dev/ksm is 0600 root: nobody else may open it. Handed over (as the
 * README's udev rule does), a user registers its own memory and reads the
 * counters, but may not change the configuration.
 */
TEST_F(robust, unprivileged_user)
{
	struct stat st;
	int denied, allowed;

	ASSERT_EQ(0, stat(KSM_DEV_PATH, &st));
	EXPECT_EQ(0600, st.st_mode & 0777);
	EXPECT_EQ(0, st.st_uid);
	denied = run_as_nobody();
	ASSERT_EQ(0, chmod(KSM_DEV_PATH, 0666));
	allowed = run_as_nobody();
	ASSERT_EQ(0, chmod(KSM_DEV_PATH, st.st_mode & 07777));
	EXPECT_EQ(1, denied) TH_LOG("nobody opened a 0600 /dev/ksm (%d)", denied);
	EXPECT_EQ(0, allowed) TH_LOG("step %d failed for a user of a 0666 /dev/ksm",
				     allowed);
}

/* ---- ioctl fuzzing ---- */

#define FUZZ_THREADS	4
#define FUZZ_CALLS	250000	/* per thread: 10^6 in all */

struct fuzzer {
	int fd;
	uint64_t seed;
	long calls;
	long bad;	/* results outside the expected error codes */
	long last_errno;
	unsigned long last_cmd;
};

static bool errno_expected(int e)
{
	switch (e) {
	case EINVAL: case ENOTTY: case EFAULT: case E2BIG: case EPERM:
	case ENOMEM: case EEXIST: case ENOSPC: case ENOENT: case EINTR:
	/* Version 2, KSM_ATTACH_PROCESS (0x07, which case 1 below finds). */
	case EBUSY: case EBADF: case ESRCH:
		return true;
	}
	return false;
}

static const unsigned long fuzz_cmds[] = {
	KSM_GET_API_VERSION, KSM_REGISTER_REGION, KSM_UNREGISTER_REGION,
	KSM_GET_STATS, KSM_GET_MM_STATS, KSM_GET_CONFIG, KSM_SET_CONFIG,
};

/* One random ioctl: a known command with a random size, or noise. */
static void fuzz_one(struct fuzzer *f, char *buf, size_t buflen)
{
	uint64_t r = next_rand(&f->seed);
	unsigned long cmd;
	void *arg;
	size_t i;
	long ret;

	switch (r % 4) {
	case 0:	/* anything at all */
		cmd = (unsigned long)(next_rand(&f->seed) & 0xffffffff);
		break;
	case 1:	/* our magic, random number, direction and size */
		cmd = _IOC(next_rand(&f->seed) % 4, KSMDEV_IOCTL_MAGIC,
			   next_rand(&f->seed) % 16, next_rand(&f->seed) % 512);
		break;
	default: /* a known command with a random size */
		cmd = fuzz_cmds[next_rand(&f->seed) % ARRAY_SIZE(fuzz_cmds)];
		cmd = (cmd & ~(_IOC_SIZEMASK << _IOC_SIZESHIFT)) |
		      ((next_rand(&f->seed) % 64) << _IOC_SIZESHIFT);
		break;
	}
	/* The VFS answers these itself, for every file: not ours to test. */
	switch (_IOC_TYPE(cmd)) {
	case 'T': case 'X': case 'f': case 0x94:
		cmd = (cmd & ~(_IOC_TYPEMASK << _IOC_TYPESHIFT)) |
		      (KSMDEV_IOCTL_MAGIC << _IOC_TYPESHIFT);
	}
	/* Our buffer is 1 KiB: a reply must fit. */
	if (_IOC_TYPE(cmd) == KSMDEV_IOCTL_MAGIC && _IOC_SIZE(cmd) > 512)
		cmd &= ~(_IOC_SIZEMASK << _IOC_SIZESHIFT);

	switch (next_rand(&f->seed) % 5) {
	case 0:
		arg = NULL;
		break;
	case 1:
		arg = (void *)0xffff888000000000UL;	/* kernel */
		break;
	case 2:
		arg = (void *)(uintptr_t)0x10000;	/* unmapped */
		break;
	default:
		for (i = 0; i < buflen / 8; i++)
			((uint64_t *)buf)[i] = next_rand(&f->seed) % 3 ?
				next_rand(&f->seed) : 0;
		arg = buf + (next_rand(&f->seed) % 8) * 8;
		break;
	}
	ret = ioctl(f->fd, cmd, arg);
	f->calls++;
	if (ret < 0 && !errno_expected(errno)) {
		f->bad++;
		f->last_errno = errno;
		f->last_cmd = cmd;
	}
}

static void *fuzz_thread(void *arg)
{
	struct fuzzer *f = arg;
	char buf[1024];
	int i;

	for (i = 0; i < FUZZ_CALLS; i++)
		fuzz_one(f, buf, sizeof(buf) - 64);
	return NULL;
}

/*
 * 10^6 random ioctls from racing threads of this process, and some from a
 * forked child holding the same fd: only expected error codes, and the
 * bookkeeping back to where it was (the guest log is checked by /init).
 */
TEST_F_TIMEOUT(robust, fuzz_ioctls, 600)
{
	struct fuzzer f[FUZZ_THREADS];
	pthread_t threads[FUZZ_THREADS];
	struct ksm_stats base, last;
	long calls = 0, bad = 0;
	int i, status;
	pid_t pid;

	ASSERT_EQ(0, ksm_get_stats(self->fd, &base));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		struct fuzzer cf = { .fd = self->fd, .seed = 0x9e3779b97f4a7c15ULL };

		fuzz_thread(&cf);
		_exit(cf.bad ? 1 : 0);
	}
	for (i = 0; i < FUZZ_THREADS; i++) {
		f[i] = (struct fuzzer){ .fd = self->fd, .seed = 12345 + i * 7919 };
		ASSERT_EQ(0, pthread_create(&threads[i], NULL, fuzz_thread, &f[i]));
	}
	for (i = 0; i < FUZZ_THREADS; i++) {
		pthread_join(threads[i], NULL);
		calls += f[i].calls;
		bad += f[i].bad;
		if (f[i].bad)
			TH_LOG("thread %d: errno %ld from cmd %#lx", i,
			       f[i].last_errno, f[i].last_cmd);
	}
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 300));
	EXPECT_EQ(0, ksm_exit_code(status)) TH_LOG("the forked fuzzer saw unexpected errors");
	TH_LOG("%ld ioctls in this process, %d in the child", calls, FUZZ_CALLS);
	EXPECT_EQ(0, bad);
	EXPECT_EQ(FUZZ_THREADS * FUZZ_CALLS, calls);

	/* Whatever random registrations succeeded: take them all back. */
	close(self->fd);
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd);
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &base, &last, 10));
}

TEST_HARNESS_MAIN
