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

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/utsname.h>
#include <time.h>
#include <unistd.h>
#include <signal.h>
#include <poll.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/sysinfo.h>
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

#ifndef MADV_COLLAPSE
#define MADV_COLLAPSE		25	/* 6.1; older libc headers lack it */
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

/*
 * Wait (@timeout_s at most, never failing) for the orphans of earlier tests
 * to be reaped, so that a baseline taken next does not count them.
 */
static inline void ksm_wait_orphans_reaped(int fd, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats s;

	while (!ksm_get_stats(fd, &s) && s.pages_orphaned &&
	       ksm_now_ms() < end)
		ksm_sleep_ms(20);
}

/*
 * A fixture's usual start: open the device, keep its settings in @saved (to
 * put back at teardown), go fast, and take the counters as they are now in
 * @base. Returns the fd, or -errno (the fd closed again).
 */
static inline int ksm_open_fast(struct ksm_config *saved, struct ksm_stats *base)
{
	int fd = ksm_open(), ret;

	if (fd < 0)
		return -errno;
	ret = ksm_get_config(fd, saved);
	if (!ret)
		ret = ksm_set_fast_config(fd);
	if (!ret) {
		ksm_wait_orphans_reaped(fd, 10);
		ret = ksm_get_stats(fd, base);
	}
	if (ret) {
		close(fd);
		return ret;
	}
	return fd;
}

/* Change one field (at @offset of struct ksm_config) of the configuration. */
static inline int ksm_set_config_field(int fd, size_t offset, uint64_t value)
{
	struct ksm_config c;
	int ret = ksm_get_config(fd, &c);

	if (ret)
		return ret;
	*(uint64_t *)((char *)&c + offset) = value;
	return ksm_set_config(fd, &c);
}

static inline int ksm_set_run(int fd, uint64_t run)
{
	return ksm_set_config_field(fd, offsetof(struct ksm_config, run), run);
}

/*
 * The configuration the module loads with (ABI.md): run=1, 100 pages per
 * batch, 20 ms between batches, max_kernel_pages a quarter of RAM, no zero
 * pages, merging across nodes, no advisor (25% of a CPU when on). sysinfo() counts RAM as the kernel's totalram_pages() does.
 */
static inline int ksm_default_config(struct ksm_config *c)
{
	struct sysinfo si;

	if (sysinfo(&si))
		return -errno;
	memset(c, 0, sizeof(*c));
	c->run = KSM_RUN_MERGE;
	c->pages_to_scan = 100;
	c->sleep_millisecs = 20;
	c->max_kernel_pages = (uint64_t)si.totalram * si.mem_unit /
			      ksm_page_size() / 4;
	c->use_zero_pages = 0;
	c->merge_across_nodes = 1;
	c->advisor_target_scan_ms = 0;
	c->advisor_max_cpu_percent = 25;
	return 0;
}

static inline int ksm_set_default_config(int fd)
{
	struct ksm_config c;
	int ret = ksm_default_config(&c);

	return ret ? ret : ksm_set_config(fd, &c);
}

static inline int ksm_set_use_zero_pages(int fd, uint64_t on)
{
	return ksm_set_config_field(fd, offsetof(struct ksm_config,
						 use_zero_pages), on);
}

static inline int ksm_set_max_kernel_pages(int fd, uint64_t max)
{
	return ksm_set_config_field(fd, offsetof(struct ksm_config,
						 max_kernel_pages), max);
}

/*
 * Wait until the counter at @offset of struct ksm_stats has advanced by @n,
 * at most @timeout_s seconds.
 */
static inline int ksm_wait_stat_advance(int fd, size_t offset, uint64_t n,
					unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	struct ksm_stats s;
	uint64_t start;
	int ret;

	ret = ksm_get_stats(fd, &s);
	if (ret)
		return ret;
	start = *(uint64_t *)((char *)&s + offset);
	for (;;) {
		ret = ksm_get_stats(fd, &s);
		if (ret)
			return ret;
		if (*(uint64_t *)((char *)&s + offset) - start >= n)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(10);
	}
}

static inline int ksm_wait_full_scans(int fd, uint64_t n, unsigned int timeout_s)
{
	return ksm_wait_stat_advance(fd, offsetof(struct ksm_stats, full_scans),
				     n, timeout_s);
}

static inline int ksm_wait_pages_scanned(int fd, uint64_t n,
					 unsigned int timeout_s)
{
	return ksm_wait_stat_advance(fd, offsetof(struct ksm_stats, pages_scanned),
				     n, timeout_s);
}

/*
 * Wait until the global bookkeeping counters (regions, mms, registered_pages,
 * metadata_bytes) are back to @base, at most @timeout_s seconds. On timeout
 * @last holds what was seen.
 */
static inline bool ksm_stats_bookkeeping_eq(const struct ksm_stats *a,
					    const struct ksm_stats *b)
{
	if (a->regions != b->regions || a->mms != b->mms ||
	    a->registered_pages != b->registered_pages)
		return false;
	/*
	 * Orphans in @b (merged pages of an earlier test, mapped until its
	 * process went) may have been reaped since, with their nodes: then
	 * there is less metadata than in @b, never as much or more.
	 */
	if (a->pages_orphaned < b->pages_orphaned)
		return a->metadata_bytes < b->metadata_bytes;
	return a->pages_orphaned == b->pages_orphaned &&
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

/*
 * Wait until @pred holds for the global counters, at most @timeout_s
 * seconds; on return @last holds what was seen last.
 */
typedef bool (*ksm_stats_pred)(const struct ksm_stats *s, const void *arg);

static inline int ksm_wait_stats(int fd, ksm_stats_pred pred, const void *arg,
				 struct ksm_stats *last, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	int ret;

	for (;;) {
		ret = ksm_get_stats(fd, last);
		if (ret)
			return ret;
		if (pred(last, arg))
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(20);
	}
}

/* What merging should have come to: the global merge counters. */
struct ksm_merge_want {
	uint64_t shared;	/* pages_shared */
	uint64_t sharing;	/* pages_sharing */
	uint64_t zero;		/* ksm_zero_pages */
};

static inline bool ksm_merge_is(const struct ksm_stats *s, const void *arg)
{
	const struct ksm_merge_want *w = arg;

	return s->pages_shared == w->shared && s->pages_sharing == w->sharing &&
	       s->ksm_zero_pages == w->zero;
}

/*
 * Wait (at most @timeout_s) until pages_shared, pages_sharing and
 * ksm_zero_pages are exactly @shared, @sharing and @zero.
 */
static inline int ksm_wait_merged(int fd, uint64_t shared, uint64_t sharing,
				  uint64_t zero, struct ksm_stats *last,
				  unsigned int timeout_s)
{
	struct ksm_merge_want w = { shared, sharing, zero };

	return ksm_wait_stats(fd, ksm_merge_is, &w, last, timeout_s);
}

/* No merged page, no candidate in any tree: nothing registered anywhere. */
static inline bool ksm_merge_idle(const struct ksm_stats *s,
				  const void *arg __attribute__((unused)))
{
	return !s->pages_shared && !s->pages_sharing && !s->pages_unshared &&
	       !s->pages_volatile && !s->ksm_zero_pages;
}

static inline int ksm_wait_merge_idle(int fd, struct ksm_stats *last,
				      unsigned int timeout_s)
{
	return ksm_wait_stats(fd, ksm_merge_idle, NULL, last, timeout_s);
}

/* Wait (at most @timeout_s) until this context's merging_pages is @n. */
static inline int ksm_wait_mm_merging(int fd, uint64_t n,
				      struct ksm_mm_stats *last,
				      unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	int ret;

	for (;;) {
		ret = ksm_get_mm_stats(fd, last);
		if (ret)
			return ret;
		if (last->merging_pages == n)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(20);
	}
}

/* ---- files: debugfs counters, module parameters ---- */

/*
 * Run the shell command @cmd (popen): its output in @out (stdout; stderr
 * too if @cmd redirects it), NUL-terminated; its exit status, or -1.
 */
static inline int ksm_run_capture(const char *cmd, char *out, size_t size)
{
	size_t n = 0;
	FILE *f = popen(cmd, "r");
	int st;

	if (!f)
		return -1;
	while (n + 1 < size && fgets(out + n, size - n, f))
		n += strlen(out + n);
	out[n] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/*
 * The line of debugfs mms for @pid ("pid regions registered merging"), the
 * one with the most registered pages if there are several: 0 and its
 * counts, or -1 if there is none.
 */
static inline int ksm_mms_of(pid_t pid, unsigned long long *registered,
			     unsigned long long *merging)
{
	unsigned long long p, regions, r, m;
	char line[256];
	int found = -1;
	FILE *f = fopen(KSM_DEBUGFS_DIR "/mms", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "%llu %llu %llu %llu", &p, &regions, &r, &m) == 4 &&
		    (pid_t)p == pid && (found || r >= *registered)) {
			*registered = r;
			*merging = m;
			found = 0;
		}
	fclose(f);
	return found;
}

/*
 * Read the start of the text file @path into @buf (@size bytes, a NUL at the
 * end, one read: what procfs and sysfs files give at once). Returns the
 * length read or -errno.
 */
static inline ssize_t ksm_read_text(const char *path, char *buf, size_t size)
{
	ssize_t n;
	int fd;

	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	n = read(fd, buf, size - 1);
	if (n < 0)
		n = -errno;
	close(fd);
	buf[n > 0 ? n : 0] = '\0';
	return n;
}

/*
 * A field of /proc/meminfo, in kB, or -1. read() into the stack: no stdio
 * buffer, which mlockall(MCL_FUTURE) would lock and count.
 */
static inline long ksm_meminfo_kb(const char *field)
{
	char buf[8192], *line;
	size_t len = strlen(field);
	ssize_t n = ksm_read_text("/proc/meminfo", buf, sizeof(buf));

	if (n <= 0)
		return -1;
	for (line = buf; line && *line; line = strchr(line, '\n'),
	     line = line ? line + 1 : NULL)
		if (!strncmp(line, field, len) && line[len] == ':')
			return strtol(line + len + 1, NULL, 10);
	return -1;
}

/*
 * Close the write end of the pipe @arg (an int[2]) and read it empty: the
 * page references vmsplice() left in it go. 0 or -errno; a callback for
 * tests that unpin this way.
 */
static inline int ksm_drain_pipe(void *arg)
{
	int *pipefd = arg;
	char buf[4096];
	ssize_t n;

	close(pipefd[1]);
	while ((n = read(pipefd[0], buf, sizeof(buf))) > 0)
		;
	close(pipefd[0]);
	return n < 0 ? -errno : 0;
}

/*
 * Read one unsigned decimal value from @path. @strict: exactly digits and a
 * newline (the debugfs format of ABI.md); else (module parameters, sysctls)
 * the newline is optional and a bool parameter's Y/N reads as 1/0. Returns
 * -EINVAL if the text is not such a number.
 */
static inline int ksm_read_u64_file(const char *path, uint64_t *val, bool strict)
{
	char buf[64], *end;
	ssize_t n = ksm_read_text(path, buf, sizeof(buf));

	if (n < 0)
		return n;
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

/* Write @value to the file @file of the cgroup directory @dir. */
static inline int ksm_cg_write(const char *dir, const char *file,
			       const char *value)
{
	char path[256];

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	return ksm_write_str_file(path, value);
}

/* The number in the file @file of the cgroup directory @dir, or -1. */
static inline long ksm_cg_read(const char *dir, const char *file)
{
	char path[256];
	uint64_t v = 0;

	snprintf(path, sizeof(path), "%s/%s", dir, file);
	return ksm_read_u64_file(path, &v, false) ? -1 : (long)v;
}

#ifndef KSMDEV_NO_HARNESS
/* The merge counters of @s, one line in the test's log. */
static inline void ksm_log_stats(struct __test_metadata *_metadata,
				 const char *what, const struct ksm_stats *s)
{
	TH_LOG("%s: pages_shared %llu pages_sharing %llu pages_unshared %llu pages_volatile %llu ksm_zero_pages %llu full_scans %llu",
	       what, (unsigned long long)s->pages_shared,
	       (unsigned long long)s->pages_sharing,
	       (unsigned long long)s->pages_unshared,
	       (unsigned long long)s->pages_volatile,
	       (unsigned long long)s->ksm_zero_pages,
	       (unsigned long long)s->full_scans);
}

#define KSM_MERGE_WAIT_S	120	/* the bound of every wait for merging */

/*
 * Wait until the global counters are @shared, @sharing, @zero and (if
 * @merging >= 0) this context's merging_pages is @merging, within
 * KSM_MERGE_WAIT_S seconds; the test stops (ASSERT) if they do not.
 */
static inline void ksm_assert_merged(struct __test_metadata *_metadata, int fd,
				     uint64_t shared, uint64_t sharing,
				     uint64_t zero, int64_t merging)
{
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int ret;

	ret = ksm_wait_merged(fd, shared, sharing, zero, &s, KSM_MERGE_WAIT_S);
	if (ret)
		ksm_log_stats(_metadata, "seen last", &s);
	ASSERT_EQ(0, ret) TH_LOG("want pages_shared %llu pages_sharing %llu ksm_zero_pages %llu within %d s",
				 (unsigned long long)shared,
				 (unsigned long long)sharing,
				 (unsigned long long)zero, KSM_MERGE_WAIT_S);
	if (merging < 0)
		return;
	ret = ksm_wait_mm_merging(fd, merging, &ms, 10);
	ASSERT_EQ(0, ret) TH_LOG("merging_pages %llu, want %lld",
				 (unsigned long long)ms.merging_pages,
				 (long long)merging);
}
#endif

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

/* The in-kernel KSM's settings, /sys/kernel/mm/ksm/KNOB. */
#define KSMD_DIR	"/sys/kernel/mm/ksm/"

static inline int ksm_ksmd_write(const char *knob, uint64_t val)
{
	char path[128];

	snprintf(path, sizeof(path), KSMD_DIR "%s", knob);
	return ksm_write_u64_file(path, val);
}

static inline int ksm_ksmd_read(const char *knob, uint64_t *val)
{
	char path[128];

	snprintf(path, sizeof(path), KSMD_DIR "%s", knob);
	return ksm_read_u64_file(path, val, false);
}

/* The pid of the one task named @name (a kthread): -1 none, -2 several. */
static inline pid_t ksm_find_kthread(const char *name)
{
	char path[300], comm[32];
	struct dirent *de;
	pid_t found = -1;
	DIR *d;
	FILE *f;

	d = opendir("/proc");
	if (!d)
		return -1;
	while ((de = readdir(d))) {
		if (de->d_name[0] < '1' || de->d_name[0] > '9')
			continue;
		snprintf(path, sizeof(path), "/proc/%s/comm", de->d_name);
		f = fopen(path, "r");
		if (!f)
			continue;
		if (fgets(comm, sizeof(comm), f)) {
			comm[strcspn(comm, "\n")] = '\0';
			if (!strcmp(comm, name))
				found = found == -1 ? atoi(de->d_name) : -2;
		}
		fclose(f);
	}
	closedir(d);
	return found;
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

/*
 * Page contents named by one value, so that equal values mean identical
 * pages: a value below 256 fills the page with that byte (the classic
 * tests' 'a', 'c'; 0 gives a zero-filled page), a larger one a pattern
 * that differs in every word and from every byte fill.
 */
static inline uint64_t ksm_val_word(uint64_t val, size_t k)
{
	if (val < 256)
		return val * 0x0101010101010101ULL;
	return (val << 16) ^ (k * 0x9e3779b97f4a7c15ULL);
}

static inline void ksm_fill_val(void *p, size_t i, uint64_t val)
{
	size_t ps = ksm_page_size();
	uint64_t *w = (uint64_t *)((char *)p + i * ps);
	size_t k;

	for (k = 0; k < ps / sizeof(*w); k++)
		w[k] = ksm_val_word(val, k);
}

static inline bool ksm_check_val(const void *p, size_t i, uint64_t val)
{
	size_t ps = ksm_page_size();
	const uint64_t *w = (const uint64_t *)((const char *)p + i * ps);
	size_t k;

	for (k = 0; k < ps / sizeof(*w); k++)
		if (w[k] != ksm_val_word(val, k))
			return false;
	return true;
}

/* Pages [first, first + n) of @p, all with content @val. */
static inline void ksm_fill_vals(void *p, size_t first, size_t n, uint64_t val)
{
	size_t i;

	for (i = first; i < first + n; i++)
		ksm_fill_val(p, i, val);
}

/* How many of pages [first, first + n) of @p are not @val. */
static inline size_t ksm_count_bad_vals(const void *p, size_t first, size_t n,
					uint64_t val)
{
	size_t i, bad = 0;

	for (i = first; i < first + n; i++)
		bad += !ksm_check_val(p, i, val);
	return bad;
}

/*
 * The PFNs of @npages pages from @addr, from /proc/self/pagemap (needs
 * CAP_SYS_ADMIN, else the kernel reports 0): 0 for an absent page. Reading
 * pagemap never faults a page in. Returns 0 or -errno.
 */
#define KSM_PM_PRESENT		(1ULL << 63)
#define KSM_PM_PFN_MASK		((1ULL << 55) - 1)

static inline int ksm_pfns(const void *addr, size_t npages, uint64_t *pfns)
{
	size_t ps = ksm_page_size(), i;
	off_t off = (uintptr_t)addr / ps * sizeof(uint64_t);
	ssize_t n, len = npages * sizeof(uint64_t);
	int fd = open("/proc/self/pagemap", O_RDONLY);

	if (fd < 0)
		return -errno;
	n = pread(fd, pfns, len, off);
	if (n < 0)
		n = -errno;
	close(fd);
	if (n != len)
		return n < 0 ? (int)n : -EIO;
	for (i = 0; i < npages; i++)
		pfns[i] = pfns[i] & KSM_PM_PRESENT ? pfns[i] & KSM_PM_PFN_MASK : 0;
	return 0;
}

/* NUMA nodes online (2 in the test guests, lib.sh); 1 if unknown. */
static inline int ksm_nodes_online(void)
{
	char buf[64];
	int a, b;

	if (ksm_read_text("/sys/devices/system/node/online", buf,
			  sizeof(buf)) <= 0)
		return 1;
	if (sscanf(buf, "%d-%d", &a, &b) == 2)
		return b - a + 1;
	return 1;
}

/*
 * The NUMA node of each of @npages pages at @addr (move_pages(2) asked,
 * nothing moved), into @nodes: a node, or a negative errno for the page.
 */
static inline int ksm_nodes(const void *addr, size_t npages, uint64_t *nodes)
{
	size_t ps = ksm_page_size(), i;
	int status[64];
	void *pages[64];

	for (i = 0; i < npages; i += 64) {
		size_t k, n = npages - i < 64 ? npages - i : 64;

		for (k = 0; k < n; k++)
			pages[k] = (char *)addr + (i + k) * ps;
		if (syscall(SYS_move_pages, 0, n, pages, NULL, status, 0))
			return -errno;
		for (k = 0; k < n; k++)
			nodes[i + k] = (uint64_t)(int64_t)status[k];
	}
	return 0;
}

/* The PFN of the page at @addr; 0 if absent or unreadable. */
static inline uint64_t ksm_pfn(const void *addr)
{
	uint64_t pfn;

	return ksm_pfns(addr, 1, &pfn) ? 0 : pfn;
}

static inline int ksm_cmp_u64(const void *a, const void *b)
{
	uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;

	return x < y ? -1 : x > y;
}

/* How many distinct values @v[0..n) holds; 0 if out of memory. */
static inline size_t ksm_count_distinct(const uint64_t *v, size_t n)
{
	uint64_t *s = malloc(n * sizeof(*s) + 1);
	size_t i, d = n ? 1 : 0;

	if (!s)
		return 0;
	memcpy(s, v, n * sizeof(*s));
	qsort(s, n, sizeof(*s), ksm_cmp_u64);
	for (i = 1; i < n; i++)
		d += s[i] != s[i - 1];
	free(s);
	return d;
}

/* How many of @v[0..n) are equal to @x. */
static inline size_t ksm_count_eq(const uint64_t *v, size_t n, uint64_t x)
{
	size_t i, c = 0;

	for (i = 0; i < n; i++)
		c += v[i] == x;
	return c;
}

/* All @n PFNs present and one and the same: merged into one page. */
static inline bool ksm_pfns_merged(const uint64_t *pfns, size_t n)
{
	return n && pfns[0] && ksm_count_eq(pfns, n, pfns[0]) == n;
}

/* All @n PFNs present and distinct: no two pages share. */
static inline bool ksm_pfns_distinct(const uint64_t *pfns, size_t n)
{
	return !ksm_count_eq(pfns, n, 0) && ksm_count_distinct(pfns, n) == n;
}

/*
 * The value of @field ("AnonHugePages") in /proc/self/smaps for the VMA
 * that holds @addr, in kB; -ENOENT if there is no such VMA or field.
 */
static inline long ksm_smaps_kb(const void *addr, const char *field)
{
	unsigned long start, end, a = (uintptr_t)addr;
	size_t flen = strlen(field);
	bool in = false;
	long kb = -ENOENT;
	char line[512];
	FILE *f;

	f = fopen("/proc/self/smaps", "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx ", &start, &end) == 2 &&
		    strchr(line, '-') < strchr(line, ' ')) {
			if (in)
				break;
			in = start <= a && a < end;
			continue;
		}
		if (in && !strncmp(line, field, flen) && line[flen] == ':') {
			kb = strtol(line + flen + 1, NULL, 10);
			break;
		}
	}
	fclose(f);
	return kb;
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

/* Read or write exactly @len bytes of a pipe, waiting at most @timeout_s. */
static inline int ksm_pipe_io(int fd, void *buf, size_t len, bool wr,
			      unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;
	char *b = buf;
	struct pollfd pfd = { .fd = fd, .events = wr ? POLLOUT : POLLIN };
	uint64_t now;
	ssize_t n;

	while (len) {
		now = ksm_now_ms();
		if (now >= end)
			return -ETIMEDOUT;
		n = poll(&pfd, 1, (int)(end - now));
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (!n)
			return -ETIMEDOUT;
		n = wr ? write(fd, b, len) : read(fd, b, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return -errno;
		if (!n)
			return -EPIPE;	/* the other end is gone */
		b += n;
		len -= n;
	}
	return 0;
}

/*
 * A child process with memory of its own, registered through its own
 * context and driven over pipes: the parent sends struct ksm_child_cmd and
 * gets an int64_t reply (and, for some commands, data). Every page's content
 * is named by a value (ksm_fill_val()); the child remembers them all.
 */
enum ksm_child_op {
	KSM_CHILD_SET = 1,	/* page @page gets content @val; reply 0 */
	KSM_CHILD_FILL,		/* every page gets @val; reply 0 */
	KSM_CHILD_CHECK,	/* reply: pages whose content is not theirs */
	KSM_CHILD_PFNS,		/* reply 0 or -errno, then npages PFNs */
	KSM_CHILD_MM_STATS,	/* reply 0 or -errno, then struct ksm_mm_stats */
	KSM_CHILD_CLOSE,	/* close its /dev/ksm; reply 0 or -errno */
	KSM_CHILD_REGISTER,	/* register its pages again; reply 0 or -errno */
	KSM_CHILD_UNREGISTER,	/* unregister them; reply 0 or -errno */
	KSM_CHILD_MERGE,	/* KSM_MERGE_REGION on them; reply its value */
	KSM_CHILD_NODES,	/* reply 0 or -errno, then npages NUMA nodes
				 * (move_pages(2)'s status, as uint64_t) */
};

/* Runs in the child before it maps anything; non-zero fails the setup. */
typedef int (*ksm_child_hook_t)(void *arg);

struct ksm_child_cmd {
	uint64_t op;
	uint64_t page;
	uint64_t val;
};

struct ksm_child {
	pid_t pid;
	int cmd;	/* to the child; closing it makes the child exit */
	int reply;	/* from the child */
	size_t npages;
};

#define KSM_CHILD_TIMEOUT_S	60

/* Steps of the child's setup that can fail (its first reply, as -step). */
enum {
	KSM_CHILD_ERR_DEATHSIG = 1,
	KSM_CHILD_ERR_MMAP,
	KSM_CHILD_ERR_OPEN,
	KSM_CHILD_ERR_REGISTER,
	KSM_CHILD_ERR_HOOK,
};

static inline void ksm_child_main(pid_t parent, int cmd, int reply,
				  size_t npages, uint64_t val, uint64_t flags,
				  ksm_child_hook_t hook, void *hook_arg)
{
	size_t ps = ksm_page_size(), i;
	struct ksm_child_cmd c;
	struct ksm_mm_stats ms;
	int64_t ret = 0;
	uint64_t *vals, *pfns;
	char *p = NULL;
	int fd = -1;

	/*
	 * Keep only stdio and our pipes: the pipes of earlier children (whose
	 * end-of-file would never come) and the parent's /dev/ksm go.
	 */
	for (fd = 3; fd < 1024; fd++)
		if (fd != cmd && fd != reply)
			close(fd);
	fd = -1;
	/* Never outlive a test that bailed out. */
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		ret = -KSM_CHILD_ERR_DEATHSIG;
	if (!ret && hook && hook(hook_arg))
		ret = -KSM_CHILD_ERR_HOOK;
	vals = calloc(npages, sizeof(*vals));
	pfns = calloc(npages, sizeof(*pfns));
	if (!ret) {
		p = ksm_mmap_anon(npages * ps);
		if (!p || !vals || !pfns)
			ret = -KSM_CHILD_ERR_MMAP;
	}
	if (!ret) {
		for (i = 0; i < npages; i++)
			vals[i] = val;
		ksm_fill_vals(p, 0, npages, val);
		fd = ksm_open();
		if (fd < 0)
			ret = -KSM_CHILD_ERR_OPEN;
	}
	if (!ret && ksm_register(fd, p, npages * ps, flags))
		ret = -KSM_CHILD_ERR_REGISTER;
	if (ksm_pipe_io(reply, &ret, sizeof(ret), true, KSM_CHILD_TIMEOUT_S) ||
	    ret)
		_exit(1);

	while (!ksm_pipe_io(cmd, &c, sizeof(c), false, 24 * 3600)) {
		const void *data = NULL;
		size_t len = 0;

		ret = 0;
		switch (c.op) {
		case KSM_CHILD_SET:
			if (c.page >= npages) {
				ret = -EINVAL;
				break;
			}
			vals[c.page] = c.val;
			ksm_fill_val(p, c.page, c.val);
			break;
		case KSM_CHILD_FILL:
			for (i = 0; i < npages; i++)
				vals[i] = c.val;
			ksm_fill_vals(p, 0, npages, c.val);
			break;
		case KSM_CHILD_CHECK:
			for (i = 0; i < npages; i++)
				ret += !ksm_check_val(p, i, vals[i]);
			break;
		case KSM_CHILD_PFNS:
			ret = ksm_pfns(p, npages, pfns);
			data = pfns;
			len = npages * sizeof(*pfns);
			break;
		case KSM_CHILD_MM_STATS:
			ret = ksm_get_mm_stats(fd, &ms);
			data = &ms;
			len = sizeof(ms);
			break;
		case KSM_CHILD_CLOSE:
			ret = close(fd) ? -errno : 0;
			fd = -1;
			break;
		case KSM_CHILD_REGISTER:
			ret = ksm_register(fd, p, npages * ps, flags);
			break;
		case KSM_CHILD_UNREGISTER:
			ret = ksm_unregister(fd, p, npages * ps);
			break;
		case KSM_CHILD_NODES:
			ret = ksm_nodes(p, npages, pfns);
			data = pfns;
			len = npages * sizeof(*pfns);
			break;
		case KSM_CHILD_MERGE:
			ret = ksm_region_ioctl(fd, KSM_MERGE_REGION, p,
					       npages * ps, 0);
			break;
		default:
			ret = -EINVAL;
		}
		if (ksm_pipe_io(reply, &ret, sizeof(ret), true,
				KSM_CHILD_TIMEOUT_S))
			_exit(2);
		if (len && ksm_pipe_io(reply, (void *)data, len, true,
				       KSM_CHILD_TIMEOUT_S))
			_exit(3);
	}
	/* The parent closed the command pipe: done. */
	_exit(0);
}

/*
 * Fork a child that maps @npages of its own, fills them all with @val,
 * opens /dev/ksm and registers them with @flags. Returns 0 once it has, or
 * -errno / -KSM_CHILD_ERR_* (the child is then reaped).
 */
static inline int ksm_child_start_hook(struct ksm_child *ch, size_t npages,
				       uint64_t val, uint64_t flags,
				       ksm_child_hook_t hook, void *hook_arg)
{
	int cmd[2], reply[2], ret, status;
	pid_t parent = getpid();
	int64_t r;

	if (pipe(cmd))
		return -errno;
	if (pipe(reply)) {
		ret = -errno;
		close(cmd[0]);
		close(cmd[1]);
		return ret;
	}
	fflush(NULL);
	ch->pid = fork();
	if (ch->pid < 0) {
		ret = -errno;
		close(cmd[0]);
		close(cmd[1]);
		close(reply[0]);
		close(reply[1]);
		return ret;
	}
	if (ch->pid == 0) {
		close(cmd[1]);
		close(reply[0]);
		ksm_child_main(parent, cmd[0], reply[1], npages, val, flags,
			       hook, hook_arg);
		_exit(0);
	}
	close(cmd[0]);
	close(reply[1]);
	ch->cmd = cmd[1];
	ch->reply = reply[0];
	ch->npages = npages;
	ret = ksm_pipe_io(ch->reply, &r, sizeof(r), false, KSM_CHILD_TIMEOUT_S);
	if (!ret)
		ret = (int)r;
	if (ret) {
		close(ch->cmd);
		close(ch->reply);
		ksm_waitpid_timeout(ch->pid, &status, 10);
		ch->pid = -1;
	}
	return ret;
}

static inline int ksm_child_start(struct ksm_child *ch, size_t npages,
				  uint64_t val, uint64_t flags)
{
	return ksm_child_start_hook(ch, npages, val, flags, NULL, NULL);
}

/*
 * Send one command; returns the child's reply (>= 0, or -errno), and reads
 * @len bytes of data into @data if the reply is not an error.
 */
static inline int64_t ksm_child_call(struct ksm_child *ch, uint64_t op,
				     uint64_t page, uint64_t val, void *data,
				     size_t len)
{
	struct ksm_child_cmd c = { .op = op, .page = page, .val = val };
	int64_t r;
	int ret;

	ret = ksm_pipe_io(ch->cmd, &c, sizeof(c), true, KSM_CHILD_TIMEOUT_S);
	if (!ret)
		ret = ksm_pipe_io(ch->reply, &r, sizeof(r), false,
				  KSM_CHILD_TIMEOUT_S);
	if (ret)
		return ret;
	if (r >= 0 && len)
		ret = ksm_pipe_io(ch->reply, data, len, false,
				  KSM_CHILD_TIMEOUT_S);
	return ret ? ret : r;
}

static inline int64_t ksm_child_set(struct ksm_child *ch, size_t page,
				    uint64_t val)
{
	return ksm_child_call(ch, KSM_CHILD_SET, page, val, NULL, 0);
}

/* Pages of the child whose content is not what it was last given. */
static inline int64_t ksm_child_check(struct ksm_child *ch)
{
	return ksm_child_call(ch, KSM_CHILD_CHECK, 0, 0, NULL, 0);
}

/* The child's ch->npages PFNs, into @pfns. */
static inline int64_t ksm_child_pfns(struct ksm_child *ch, uint64_t *pfns)
{
	return ksm_child_call(ch, KSM_CHILD_PFNS, 0, 0, pfns,
			      ch->npages * sizeof(*pfns));
}

static inline int64_t ksm_child_mm_stats(struct ksm_child *ch,
					 struct ksm_mm_stats *ms)
{
	return ksm_child_call(ch, KSM_CHILD_MM_STATS, 0, 0, ms, sizeof(*ms));
}

/* Let the child exit; returns its exit code, or -errno / -ETIMEDOUT. */
static inline int ksm_child_stop(struct ksm_child *ch)
{
	int status, ret;

	if (ch->pid <= 0)
		return -ESRCH;
	close(ch->cmd);
	close(ch->reply);
	ret = ksm_waitpid_timeout(ch->pid, &status, KSM_CHILD_TIMEOUT_S);
	ch->pid = -1;
	return ret ? ret : ksm_exit_code(status);
}

/* ---- the module itself (tests that unload and load it) ---- */

#define KSM_MODULE_NAME		"ksmdev"
#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE	4
#endif

static inline int ksm_delete_module(const char *name, int flags)
{
	return syscall(SYS_delete_module, name, flags) ? -errno : 0;
}

/* finit_module() of the DKMS-installed ksmdev.ko, compressed or not. */
static inline int ksm_load_module(const char *params)
{
	static const char *const ext[] = { "", ".xz", ".zst", ".gz" };
	char path[512];
	struct utsname u;
	unsigned int i;
	int fd = -1, ret;

	if (uname(&u))
		return -errno;
	for (i = 0; i < ARRAY_SIZE(ext); i++) {
		snprintf(path, sizeof(path),
			 "/lib/modules/%s/updates/dkms/" KSM_MODULE_NAME ".ko%s",
			 u.release, ext[i]);
		fd = open(path, O_RDONLY | O_CLOEXEC);
		if (fd >= 0)
			break;
	}
	if (fd < 0) {
		fprintf(stderr, "# no %s.ko under /lib/modules/%s/updates/dkms\n",
			KSM_MODULE_NAME, u.release);
		return -ENOPKG;
	}
	ret = syscall(SYS_finit_module, fd, params,
		      i ? MODULE_INIT_COMPRESSED_FILE : 0) ? -errno : 0;
	close(fd);
	return ret;
}

/* rmmod, retried for 5 s while a release in flight keeps it busy. */
static inline int ksm_unload_module(void)
{
	uint64_t end = ksm_now_ms() + 5000;
	int ret;

	while ((ret = ksm_delete_module(KSM_MODULE_NAME, O_NONBLOCK)) == -EWOULDBLOCK ||
	       ret == -EBUSY) {
		if (ksm_now_ms() > end)
			break;
		ksm_sleep_ms(10);
	}
	return ret;
}

/* RssAnon of process @pid, in kB; -errno if unreadable. */
static inline long ksm_rss_anon_kb(pid_t pid)
{
	char path[64], line[256];
	long kb = -ENOENT;
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/status", (int)pid);
	f = fopen(path, "r");
	if (!f)
		return -errno;
	while (fgets(line, sizeof(line), f))
		if (sscanf(line, "RssAnon: %ld kB", &kb) == 1)
			break;
	fclose(f);
	return kb;
}

#endif /* KSMDEV_TEST_H */
