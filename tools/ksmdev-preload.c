// SPDX-License-Identifier: GPL-2.0
/*
 * libksmdev-preload.so: ksmdev for programs that already ask the kernel for
 * KSM, unmodified.
 *
 *   LD_PRELOAD=libksmdev-preload.so qemu-system-x86_64 ...
 *
 * madvise(MADV_MERGEABLE) registers the range with /dev/ksm instead of
 * marking the VMAs for the in-kernel KSM; madvise(MADV_UNMERGEABLE)
 * unregisters it (and unmerges, as the kernel's does); munmap() of a
 * registered range unregisters what it unmapped. Every other madvise()
 * goes to the kernel untouched. If /dev/ksm cannot be opened, it says so
 * once on stderr and hands MADV_MERGEABLE to the kernel.
 *
 * What it keeps: the registered ranges, in a fixed table (no allocation
 * ever) under one mutex; munmap() takes the mutex only while the table is
 * not empty. A forked child starts with an empty table and opens /dev/ksm
 * again on its first MADV_MERGEABLE (the kernel's VM_MERGEABLE is
 * inherited by a child; ksmdev's registrations are not). mremap() of a
 * registered range is not followed.
 *
 * Plain C, libc only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <linux/ksmdev.h>

#ifndef MADV_MERGEABLE
#define MADV_MERGEABLE		12
#define MADV_UNMERGEABLE	13
#endif

#define MAX_RANGES	4096	/* ksmdev's default max_regions */

struct range {
	uintptr_t start, end;
};

/* All below under lock, but nr_ranges is also read without it (munmap). */
static pthread_mutex_t lock = PTHREAD_MUTEX_INITIALIZER;
static struct range ranges[MAX_RANGES];	/* sorted, disjoint */
static unsigned int nr_ranges;
static int ksm_fd = -1;
static int ksm_failed;			/* could not open: the kernel's KSM */

/* One line on stderr, without stdio (no allocation, any thread). */
static void say(const char *a, const char *b, const char *c)
{
	ssize_t n;

	n = write(2, "ksmdev-preload: ", 16);
	n = write(2, a, strlen(a));
	n = write(2, b, strlen(b));
	n = write(2, c, strlen(c));
	n = write(2, "\n", 1);
	(void)n;
}

#define TO_KERNEL	"; MADV_MERGEABLE goes to the kernel's KSM"

static int real_madvise(void *addr, size_t len, int advice)
{
	return syscall(SYS_madvise, addr, len, advice);
}

static int real_munmap(void *addr, size_t len)
{
	return syscall(SYS_munmap, addr, len);
}

/* fork() happens with the table consistent: the forking thread holds it. */
static void before_fork(void)
{
	pthread_mutex_lock(&lock);
}

static void after_fork_in_parent(void)
{
	pthread_mutex_unlock(&lock);
}

static void after_fork_in_child(void)
{
	/* The table and the context are the parent's. */
	if (ksm_fd >= 0)
		close(ksm_fd);
	ksm_fd = -1;
	ksm_failed = 0;
	__atomic_store_n(&nr_ranges, 0, __ATOMIC_RELEASE);
	pthread_mutex_unlock(&lock);
}

__attribute__((constructor)) static void preload_init(void)
{
	pthread_atfork(before_fork, after_fork_in_parent, after_fork_in_child);
}

/* Open /dev/ksm once; false: use the kernel's KSM (said once). */
static int have_ksmdev(void)
{
	if (ksm_fd >= 0)
		return 1;
	if (ksm_failed)
		return 0;
	ksm_fd = open("/dev/ksm", O_RDWR | O_CLOEXEC);
	if (ksm_fd >= 0)
		return 1;
	ksm_failed = 1;
	say("/dev/ksm: ", strerror(errno), TO_KERNEL);
	return 0;
}

static int ksm_range_ioctl(unsigned long cmd, uintptr_t start, uintptr_t end)
{
	struct ksm_region r = { .addr = start, .len = end - start, .flags = 0 };

	return ioctl(ksm_fd, cmd, &r) ? -errno : 0;
}

static void table_insert(unsigned int at, uintptr_t start, uintptr_t end)
{
	memmove(&ranges[at + 1], &ranges[at],
		(nr_ranges - at) * sizeof(ranges[0]));
	ranges[at].start = start;
	ranges[at].end = end;
	__atomic_store_n(&nr_ranges, nr_ranges + 1, __ATOMIC_RELEASE);
}

static void table_remove(unsigned int at)
{
	memmove(&ranges[at], &ranges[at + 1],
		(nr_ranges - at - 1) * sizeof(ranges[0]));
	__atomic_store_n(&nr_ranges, nr_ranges - 1, __ATOMIC_RELEASE);
}

/* The first range that ends after @addr. */
static unsigned int table_find(uintptr_t addr)
{
	unsigned int lo = 0, hi = nr_ranges, mid;

	while (lo < hi) {
		mid = (lo + hi) / 2;
		if (ranges[mid].end <= addr)
			lo = mid + 1;
		else
			hi = mid;
	}
	return lo;
}

/*
 * Register the parts of [start, end) not registered yet. The kernel's
 * MADV_MERGEABLE skips VMAs KSM cannot use (shared, file, hugetlb, I/O)
 * and returns 0: so does this, for ksmdev's EINVAL on such a mapping (a
 * part that mixes both is skipped whole: programs advise one mapping at a
 * time).
 */
static int merge_range(uintptr_t start, uintptr_t end)
{
	unsigned int i = table_find(start);
	uintptr_t at = start, gap_end;
	int err;

	while (at < end) {
		if (i < nr_ranges && ranges[i].start <= at) {
			at = ranges[i++].end;
			continue;
		}
		gap_end = i < nr_ranges && ranges[i].start < end ?
			  ranges[i].start : end;
		if (nr_ranges == MAX_RANGES)
			return -ENOSPC;
		err = ksm_range_ioctl(KSM_REGISTER_REGION, at, gap_end);
		if (err == -EINVAL) {
			at = gap_end;
			continue;
		}
		if (err)
			return err;
		table_insert(i++, at, gap_end);
		at = gap_end;
	}
	return 0;
}

/*
 * Unregister every range that [start, end) touches (unmerging what is
 * still mapped there), and register again the parts of them outside it.
 */
static int unmerge_range(uintptr_t start, uintptr_t end)
{
	unsigned int i = table_find(start);
	struct range r;
	int err;

	while (i < nr_ranges && ranges[i].start < end) {
		r = ranges[i];
		err = ksm_range_ioctl(KSM_UNREGISTER_REGION, r.start, r.end);
		if (err)
			return err;
		table_remove(i);
		if (r.start < start &&
		    !ksm_range_ioctl(KSM_REGISTER_REGION, r.start, start))
			table_insert(i++, r.start, start);
		if (r.end > end &&
		    !ksm_range_ioctl(KSM_REGISTER_REGION, end, r.end))
			table_insert(i++, end, r.end);
	}
	return 0;
}

static int page_range(void *addr, size_t len, uintptr_t *start, uintptr_t *end)
{
	uintptr_t ps = sysconf(_SC_PAGESIZE);

	*start = (uintptr_t)addr;
	*end = *start + ((len + ps - 1) & ~(ps - 1));
	if (*start & (ps - 1) || *end < *start)
		return -EINVAL;
	return 0;
}

int madvise(void *addr, size_t len, int advice)
{
	uintptr_t start, end;
	int err;

	if (advice != MADV_MERGEABLE && advice != MADV_UNMERGEABLE)
		return real_madvise(addr, len, advice);
	err = page_range(addr, len, &start, &end);
	if (err || start == end)
		return real_madvise(addr, len, advice);

	pthread_mutex_lock(&lock);
	if (!have_ksmdev()) {
		pthread_mutex_unlock(&lock);
		return real_madvise(addr, len, advice);
	}
	if (advice == MADV_MERGEABLE) {
		err = merge_range(start, end);
		if (err == -ENOSPC) {
			say("too many ranges", "", TO_KERNEL);
			pthread_mutex_unlock(&lock);
			return real_madvise(addr, len, advice);
		}
	} else {
		err = unmerge_range(start, end);
		/* What the kernel's KSM had (before this library): its own. */
		if (!err)
			real_madvise(addr, len, advice);
	}
	pthread_mutex_unlock(&lock);
	if (err) {
		errno = -err;
		return -1;
	}
	return 0;
}

int munmap(void *addr, size_t len)
{
	uintptr_t start, end;
	int ret, err;

	if (!__atomic_load_n(&nr_ranges, __ATOMIC_ACQUIRE) ||
	    page_range(addr, len, &start, &end))
		return real_munmap(addr, len);
	pthread_mutex_lock(&lock);
	ret = real_munmap(addr, len);
	/* Nothing is mapped there now: unregistering unmerges nothing. */
	if (!ret && ksm_fd >= 0) {
		err = unmerge_range(start, end);
		if (err)
			say("munmap: a range stays registered: ",
			    strerror(-err), "");
	}
	pthread_mutex_unlock(&lock);
	return ret;
}
