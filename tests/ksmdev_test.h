/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Helpers shared by the ksmdev kselftest programs.
 *
 * Every wrapper returns 0 (or the ioctl's non-negative value) on success and
 * -errno on failure, so that a test reads ASSERT_EQ(-EINVAL, ksm_register(...)).
 * Every wait is bounded: a helper that polls returns -ETIMEDOUT rather than
 * hang the guest.
 */
#ifndef KSMDEV_TEST_H
#define KSMDEV_TEST_H

#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>

#include <linux/ksmdev.h>

/*
 * The kselftest harness, from the kernel source (not copied here), is written
 * for -Wall, not -Wextra: its timeout handler has an unused parameter, its
 * setjmp() wrapper trips -Wclobbered (a test body never resumes after the
 * longjmp of a failed ASSERT), and ASSERT_EQ(0, u64) is its idiom. demo.c,
 * not a test, defines KSMDEV_NO_HARNESS.
 */
#ifndef KSMDEV_NO_HARNESS
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wunused-parameter"
#include "kselftest_harness.h"
#pragma GCC diagnostic pop
#pragma GCC diagnostic ignored "-Wsign-compare"
#pragma GCC diagnostic ignored "-Wclobbered"
#endif

#define KSM_DEV_PATH		"/dev/ksm"
#define KSM_DEBUGFS_DIR		"/sys/kernel/debug/ksm"
#define KSM_PARAMS_DIR		"/sys/module/ksmdev/parameters"

#ifndef ARRAY_SIZE
#define ARRAY_SIZE(a)		(sizeof(a) / sizeof((a)[0]))
#endif

/* Fast scanning for tests (TESTING.md): no sleep, large batches. */
#define KSM_FAST_PAGES_TO_SCAN	10000

static inline size_t ksm_page_size(void)
{
	return (size_t)sysconf(_SC_PAGESIZE);
}

static inline uint64_t ksm_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static inline void ksm_sleep_ms(unsigned int ms)
{
	struct timespec ts = { ms / 1000, (long)(ms % 1000) * 1000000 };

	while (nanosleep(&ts, &ts) && errno == EINTR)
		;
}

/* ---- the device ---- */

static inline int ksm_open(void)
{
	return open(KSM_DEV_PATH, O_RDWR);
}

static inline int ksm_ioctl(int fd, unsigned long cmd, void *arg)
{
	int ret = ioctl(fd, cmd, arg);

	return ret < 0 ? -errno : ret;
}

/* @cmd with another argument size: an older (smaller) or newer struct. */
static inline int ksm_ioctl_sized(int fd, unsigned long cmd, unsigned int size,
				  void *arg)
{
	return ksm_ioctl(fd, _IOC(_IOC_DIR(cmd), KSMDEV_IOCTL_MAGIC,
				  _IOC_NR(cmd), size), arg);
}

static inline int ksm_region_ioctl(int fd, unsigned long cmd, const void *addr,
				   uint64_t len, uint64_t flags)
{
	struct ksm_region r = {
		.addr = (uintptr_t)addr, .len = len, .flags = flags,
	};

	return ksm_ioctl(fd, cmd, &r);
}

static inline int ksm_register(int fd, const void *addr, uint64_t len,
			       uint64_t flags)
{
	return ksm_region_ioctl(fd, KSM_REGISTER_REGION, addr, len, flags);
}

static inline int ksm_unregister(int fd, const void *addr, uint64_t len)
{
	return ksm_region_ioctl(fd, KSM_UNREGISTER_REGION, addr, len, 0);
}

static inline int ksm_get_stats(int fd, struct ksm_stats *s)
{
	memset(s, 0, sizeof(*s));
	return ksm_ioctl(fd, KSM_GET_STATS, s);
}

static inline int ksm_get_mm_stats(int fd, struct ksm_mm_stats *s)
{
	memset(s, 0, sizeof(*s));
	return ksm_ioctl(fd, KSM_GET_MM_STATS, s);
}

static inline int ksm_get_config(int fd, struct ksm_config *c)
{
	memset(c, 0, sizeof(*c));
	return ksm_ioctl(fd, KSM_GET_CONFIG, c);
}

static inline int ksm_set_config(int fd, const struct ksm_config *c)
{
	return ksm_ioctl(fd, KSM_SET_CONFIG, (void *)c);
}

/* run=1, sleep_millisecs=0, pages_to_scan=10000; the rest unchanged. */
static inline int ksm_set_fast_config(int fd)
{
	struct ksm_config c;
	int ret = ksm_get_config(fd, &c);

	if (ret)
		return ret;
	c.run = KSM_RUN_MERGE;
	c.sleep_millisecs = 0;
	c.pages_to_scan = KSM_FAST_PAGES_TO_SCAN;
	return ksm_set_config(fd, &c);
}

static inline int ksm_set_run(int fd, uint64_t run)
{
	struct ksm_config c;
	int ret = ksm_get_config(fd, &c);

	if (ret)
		return ret;
	c.run = run;
	return ksm_set_config(fd, &c);
}

/* Wait until full_scans has advanced by @n, at most @timeout_s seconds. */
static inline int ksm_wait_full_scans(int fd, uint64_t n, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats s;
	uint64_t start;
	int ret;

	ret = ksm_get_stats(fd, &s);
	if (ret)
		return ret;
	start = s.full_scans;
	for (;;) {
		ret = ksm_get_stats(fd, &s);
		if (ret)
			return ret;
		if (s.full_scans - start >= n)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(10);
	}
}

/* Wait until pages_scanned has advanced by @n, at most @timeout_s seconds. */
static inline int ksm_wait_pages_scanned(int fd, uint64_t n,
					 unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats s;
	uint64_t start;
	int ret;

	ret = ksm_get_stats(fd, &s);
	if (ret)
		return ret;
	start = s.pages_scanned;
	for (;;) {
		ret = ksm_get_stats(fd, &s);
		if (ret)
			return ret;
		if (s.pages_scanned - start >= n)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(10);
	}
}

/*
 * Wait until the global bookkeeping counters (regions, mms, registered_pages,
 * metadata_bytes) are back to @base, at most @timeout_s seconds. On timeout
 * @last holds what was seen.
 */
static inline bool ksm_stats_bookkeeping_eq(const struct ksm_stats *a,
					    const struct ksm_stats *b)
{
	return a->regions == b->regions && a->mms == b->mms &&
	       a->registered_pages == b->registered_pages &&
	       a->metadata_bytes == b->metadata_bytes;
}

static inline int ksm_wait_bookkeeping(int fd, const struct ksm_stats *base,
				       struct ksm_stats *last,
				       unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	int ret;

	for (;;) {
		ret = ksm_get_stats(fd, last);
		if (ret)
			return ret;
		if (ksm_stats_bookkeeping_eq(last, base))
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(10);
	}
}

/* ---- files: debugfs counters, module parameters ---- */

/*
 * Read one unsigned decimal value from @path. @strict: exactly digits and a
 * newline (the debugfs format of ABI.md); else (module parameters, sysctls)
 * the newline is optional and a bool parameter's Y/N reads as 1/0. Returns
 * -EINVAL if the text is not such a number.
 */
static inline int ksm_read_u64_file(const char *path, uint64_t *val, bool strict)
{
	char buf[64], *end;
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n < 0)
		return -errno;
	buf[n] = '\0';
	if (!strict && (buf[0] == 'Y' || buf[0] == 'N') &&
	    (!buf[1] || !strcmp(buf + 1, "\n"))) {
		*val = buf[0] == 'Y';
		return 0;
	}
	if (buf[0] < '0' || buf[0] > '9')
		return -EINVAL;
	errno = 0;
	*val = strtoull(buf, &end, 10);
	if (errno || (strcmp(end, "\n") && (strict || *end)))
		return -EINVAL;
	return 0;
}

static inline int ksm_write_str_file(const char *path, const char *s)
{
	ssize_t n, len = strlen(s);
	int fd;

	fd = open(path, O_WRONLY);
	if (fd < 0)
		return -errno;
	n = write(fd, s, len);
	if (n < 0)
		n = -errno;
	close(fd);
	return n == len ? 0 : (n < 0 ? (int)n : -EIO);
}

static inline int ksm_write_u64_file(const char *path, uint64_t val)
{
	char buf[32];

	snprintf(buf, sizeof(buf), "%llu\n", (unsigned long long)val);
	return ksm_write_str_file(path, buf);
}

static inline int ksm_read_debugfs(const char *name, uint64_t *val)
{
	char path[256];

	snprintf(path, sizeof(path), KSM_DEBUGFS_DIR "/%s", name);
	return ksm_read_u64_file(path, val, true);
}

static inline int ksm_read_param(const char *name, uint64_t *val)
{
	char path[256];

	snprintf(path, sizeof(path), KSM_PARAMS_DIR "/%s", name);
	return ksm_read_u64_file(path, val, false);
}

static inline int ksm_write_param(const char *name, uint64_t val)
{
	char path[256];

	snprintf(path, sizeof(path), KSM_PARAMS_DIR "/%s", name);
	return ksm_write_u64_file(path, val);
}

/* ---- memory ---- */

/*
 * Private anonymous memory, never backed by THP: a huge page fault would make
 * the neighbours of a touched page present and blur what the tests observe.
 */
static inline void *ksm_mmap_anon(size_t len)
{
	void *p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);

	if (p == MAP_FAILED)
		return NULL;
	madvise(p, len, MADV_NOHUGEPAGE);
	return p;
}

/* Fill page @i of @p with a pattern depending on (@seed, @i): unique pages. */
static inline void ksm_fill_page(void *p, size_t i, uint64_t seed)
{
	size_t ps = ksm_page_size();
	uint64_t *w = (uint64_t *)((char *)p + i * ps);
	size_t k;

	for (k = 0; k < ps / sizeof(*w); k++)
		w[k] = seed * 0x9e3779b97f4a7c15ULL + i * 0x100000001b3ULL + k;
}

static inline bool ksm_check_page(const void *p, size_t i, uint64_t seed)
{
	size_t ps = ksm_page_size();
	const uint64_t *w = (const uint64_t *)((const char *)p + i * ps);
	size_t k;

	for (k = 0; k < ps / sizeof(*w); k++)
		if (w[k] != seed * 0x9e3779b97f4a7c15ULL + i * 0x100000001b3ULL + k)
			return false;
	return true;
}

static inline void ksm_fill_pages(void *p, size_t npages, uint64_t seed)
{
	size_t i;

	for (i = 0; i < npages; i++)
		ksm_fill_page(p, i, seed);
}

/* 1 if the page at @addr is present (mincore), 0 if not, -errno on error. */
static inline int ksm_page_present(const void *addr)
{
	unsigned char vec = 0;

	if (mincore((void *)addr, ksm_page_size(), &vec))
		return -errno;
	return vec & 1;
}

/* ---- processes ---- */

/*
 * waitpid() with a bound: poll every 10 ms for at most @timeout_s seconds. On
 * timeout the child is killed and reaped, and -ETIMEDOUT returned.
 */
static inline int ksm_waitpid_timeout(pid_t pid, int *status,
				      unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	pid_t r;

	for (;;) {
		r = waitpid(pid, status, WNOHANG);
		if (r == pid)
			return 0;
		if (r < 0)
			return -errno;
		if (ksm_now_ms() > end)
			break;
		ksm_sleep_ms(10);
	}
	kill(pid, SIGKILL);
	waitpid(pid, status, 0);
	return -ETIMEDOUT;
}

/* Exit code of a child that must have exited normally; -1 otherwise. */
static inline int ksm_exit_code(int status)
{
	return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

#endif /* KSMDEV_TEST_H */
