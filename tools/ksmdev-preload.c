// SPDX-License-Identifier: GPL-2.0
/*
 * libksmdev-preload.so: ksmdev for programs that already ask the kernel for
 * KSM, unmodified.
 *
 *   LD_PRELOAD=libksmdev-preload.so qemu-system-x86_64 ...
 *
 * madvise(MADV_MERGEABLE) registers the range with /dev/ksm instead of
 * marking the VMAs for the in-kernel KSM; madvise(MADV_UNMERGEABLE)
 * unregisters it (and unmerges, as the kernel's does; ksmdev unregisters
 * whole regions, so the rest of a region cut by it is unmerged too and
 * registered again); munmap() of whole registered ranges unregisters them
 * (a range that a munmap() only cuts stays registered, hole and all, until
 * it is unmapped whole or the process ends). Every other madvise() goes to
 * the kernel untouched. If /dev/ksm cannot be opened, it says so once on
 * stderr and hands MADV_MERGEABLE to the kernel.
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

/*
 * Open /dev/ksm once; 0: use the kernel's KSM. On the first failure,
 * *@said is the errno to tell (after the lock is dropped: strerror() may
 * allocate, and an allocator may call munmap()).
 */
static int have_ksmdev(int *said)
{
	int fd;

	if (ksm_fd >= 0)
		return 1;
	if (ksm_failed)
		return 0;
	fd = open("/dev/ksm", O_RDWR | O_CLOEXEC);
	if (fd < 0) {
		ksm_failed = 1;
		*said = errno;
		return 0;
	}
	/* Out of the way of programs that manage their low descriptors. */
	ksm_fd = fcntl(fd, F_DUPFD_CLOEXEC, 512);
	if (ksm_fd < 0)
		ksm_fd = fd;
	else
		close(fd);
	return 1;
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
 * Register the parts of [start, end) not registered yet. A part ksmdev
 * refuses (EINVAL: shared, file-backed, hugetlb, I/O mappings) goes to the
 * kernel's madvise(), which merges what it can there (the anonymous copies
 * in a private file mapping) and skips the rest. On -ENOSPC (the table or
 * max_regions is full), *@stop is where the kernel should take over.
 */
static int merge_range(uintptr_t start, uintptr_t end, uintptr_t *stop)
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
		err = nr_ranges < MAX_RANGES ?
		      ksm_range_ioctl(KSM_REGISTER_REGION, at, gap_end) : -ENOSPC;
		if (err == -EINVAL) {
			real_madvise((void *)at, gap_end - at, MADV_MERGEABLE);
		} else if (err) {
			*stop = at;
			return err;
		} else {
			table_insert(i++, at, gap_end);
		}
		at = gap_end;
	}
	return 0;
}

/*
 * Unregister the ranges that [start, end) touches, unmerging what is
 * mapped there, and register again their parts outside it. (ksmdev
 * unregisters whole regions only: the parts outside are unmerged too, to
 * merge again on later passes.) With @inside_only, only the ranges wholly
 * inside go (munmap: a range cut by a hole stays registered, and the
 * scanner passes over the hole).
 */
static int unmerge_range(uintptr_t start, uintptr_t end, int inside_only)
{
	unsigned int i = table_find(start);
	struct range r;
	int err;

	while (i < nr_ranges && ranges[i].start < end) {
		r = ranges[i];
		if (inside_only && (r.start < start || r.end > end)) {
			i++;
			continue;
		}
		err = ksm_range_ioctl(KSM_UNREGISTER_REGION, r.start, r.end);
		if (err)
			return err;
		table_remove(i);
		if (r.start < start && nr_ranges < MAX_RANGES &&
		    !ksm_range_ioctl(KSM_REGISTER_REGION, r.start, start))
			table_insert(i++, r.start, start);
		if (r.end > end && nr_ranges < MAX_RANGES &&
		    !ksm_range_ioctl(KSM_REGISTER_REGION, end, r.end))
			table_insert(i++, end, r.end);
	}
	return 0;
}

static int page_range(void *addr, size_t len, uintptr_t *start, uintptr_t *end)
{
	uintptr_t ps = sysconf(_SC_PAGESIZE);

	*start = (uintptr_t)addr;
	if (*start & (ps - 1) || len > UINTPTR_MAX - *start - ps)
		return -EINVAL;
	*end = *start + ((len + ps - 1) & ~(ps - 1));
	return 0;
}

int madvise(void *addr, size_t len, int advice)
{
	uintptr_t start, end, stop = 0;
	int err, said = 0;

	if (advice != MADV_MERGEABLE && advice != MADV_UNMERGEABLE)
		return real_madvise(addr, len, advice);
	err = page_range(addr, len, &start, &end);
	if (err || start == end)
		return real_madvise(addr, len, advice);

	pthread_mutex_lock(&lock);
	if (!have_ksmdev(&said)) {
		pthread_mutex_unlock(&lock);
		if (said)
			say("/dev/ksm: ", strerror(said), TO_KERNEL);
		return real_madvise(addr, len, advice);
	}
	if (advice == MADV_MERGEABLE) {
		err = merge_range(start, end, &stop);
	} else {
		err = unmerge_range(start, end, 0);
		/* What the kernel's KSM had (before this library): its own. */
		if (!err)
			real_madvise(addr, len, advice);
	}
	pthread_mutex_unlock(&lock);
	if (err == -ENOSPC) {
		say("too many ranges", "", TO_KERNEL);
		return real_madvise((void *)stop, end - stop, advice);
	}
	if (err) {
		errno = -err;
		return -1;
	}
	return 0;
}

int munmap(void *addr, size_t len)
{
	uintptr_t start, end;
	int ret, err = 0;

	if (!__atomic_load_n(&nr_ranges, __ATOMIC_ACQUIRE) ||
	    page_range(addr, len, &start, &end))
		return real_munmap(addr, len);
	pthread_mutex_lock(&lock);
	ret = real_munmap(addr, len);
	/* Nothing is mapped there now: unregistering unmerges nothing. */
	if (!ret && ksm_fd >= 0)
		err = unmerge_range(start, end, 1);
	pthread_mutex_unlock(&lock);
	if (err)
		say("munmap: a range stays registered: ", strerror(-err), "");
	return ret;
}
