// SPDX-License-Identifier: GPL-2.0
/*
 * libksmdev-preload.so: ksmdev for programs that already ask the kernel for
 * KSM, unmodified.
 *
 *   LD_PRELOAD=libksmdev-preload.so qemu-system-x86_64 ...
 *
 * It does what the kernel's KSM does with VM_MERGEABLE, page for page:
 *  - madvise(MADV_MERGEABLE) registers the range with /dev/ksm instead of
 *    marking the VMAs for the in-kernel KSM.
 *  - madvise(MADV_UNMERGEABLE) unregisters the pages of the range and
 *    unmerges them; the rest of a registered range it cuts stays
 *    registered, and merged.
 *  - munmap() unregisters the pages it unmaps; the rest stays registered
 *    and merged.
 *  - mremap() carries the registration along: after a move, the old range
 *    is unregistered (nothing is mapped there any more, so nothing is
 *    unmerged) and the new one registered, where the old one was. The
 *    merged pages the kernel moved stay merged: a moved VMA keeps
 *    VM_MERGEABLE, and its KSM pages stay KSM pages. A range that grows
 *    (in place or moved) gets its new tail registered if its last page
 *    was (the kernel's VM_MERGEABLE covers the grown VMA); one that
 *    shrinks loses the registration of what it no longer maps. With
 *    MREMAP_DONTUNMAP the old range stays mapped, empty, and stays
 *    registered, as the kernel keeps VM_MERGEABLE there.
 * Every other call goes to the kernel untouched.
 *
 * That needs KSM_REGION_SPLIT (ABI version 2) to take part of a region
 * away. With a version-1 module, MADV_UNMERGEABLE unregisters the whole
 * ranges it touches and registers again their parts outside it (those
 * are unmerged too, and merge again on later passes), and a range that a
 * munmap() only cuts stays registered, hole and all, until it is unmapped
 * whole or the process ends.
 *
 * Environment, read once at load:
 *   KSMDEV_SCOPE=mm  register with KSM_REGION_SCOPE_MM: the program's pages
 *                    merge only with its own (one VM never shares a page
 *                    with another). Any other value: said once on stderr,
 *                    and ignored.
 *
 * If /dev/ksm cannot be opened, it says so once on stderr and hands
 * MADV_MERGEABLE to the kernel. So it does once when the module refuses
 * more regions (ENOSPC: max_regions), and hands the rest to the kernel.
 *
 * Static binaries never load a preload library: the dynamic loader does,
 * and a static binary has none. Firecracker's and cloud-hypervisor's
 * release builds are static (musl): enrol them from outside with
 * `ksmdevctl merge --pid PID` (KSM_ATTACH_PROCESS) instead.
 *
 * What it keeps: the registered ranges, in a fixed table (no allocation
 * ever) under one mutex; munmap() and mremap() take the mutex only while
 * the table is not empty. A forked child starts with an empty table and
 * opens /dev/ksm again on its first MADV_MERGEABLE (the kernel's
 * VM_MERGEABLE is inherited by a child; ksmdev's registrations are not).
 * Calls that bypass libc's wrappers (a raw syscall) are not seen.
 *
 * Plain C, libc only.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdlib.h>
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
#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP	4
#endif
#ifndef KSM_REGION_SPLIT
#define KSM_REGION_SPLIT	0x4ULL
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
static int api;				/* KSM_GET_API_VERSION of ksm_fd */
static int said_full;			/* "too many ranges" said */
/* Set once by the constructor, read-only after it. */
static uint64_t reg_flags;		/* KSM_REGION_SCOPE_MM or 0 */

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

/* ENOSPC (max_regions, or the table): once per process. Under lock. */
static void say_full(void)
{
	if (!said_full)
		say("too many ranges", "", TO_KERNEL);
	said_full = 1;
}

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
	const char *scope = getenv("KSMDEV_SCOPE");

	if (scope && !strcmp(scope, "mm"))
		reg_flags = KSM_REGION_SCOPE_MM;
	else if (scope)
		say("KSMDEV_SCOPE=", scope, ": not \"mm\", ignored");
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
	api = ioctl(ksm_fd, KSM_GET_API_VERSION);
	return 1;
}

static int ksm_range_ioctl(unsigned long cmd, uintptr_t start, uintptr_t end,
			   uint64_t flags)
{
	struct ksm_region r = {
		.addr = start, .len = end - start, .flags = flags,
	};

	return ioctl(ksm_fd, cmd, &r) ? -errno : 0;
}

static int ksm_reg(uintptr_t start, uintptr_t end)
{
	return ksm_range_ioctl(KSM_REGISTER_REGION, start, end, reg_flags);
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

static int registered(uintptr_t addr)
{
	unsigned int i = table_find(addr);

	return i < nr_ranges && ranges[i].start <= addr;
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
		err = nr_ranges < MAX_RANGES ? ksm_reg(at, gap_end) : -ENOSPC;
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
 * Register [start, end) again after its range was unregistered whole (a
 * version-1 cut); what does not fit goes to the kernel's KSM. Returns
 * the next index.
 */
static unsigned int reregister(unsigned int i, uintptr_t start, uintptr_t end)
{
	int err = nr_ranges < MAX_RANGES ? ksm_reg(start, end) : -ENOSPC;

	if (!err) {
		table_insert(i, start, end);
		return i + 1;
	}
	if (err == -ENOSPC) {
		say_full();
		real_madvise((void *)start, end - start, MADV_MERGEABLE);
	}
	return i;
}

/*
 * Take the registration of the pages in [start, end) away. @gone: nothing
 * is mapped there any more (munmap, the old range of a mremap), so
 * unregistering unmerges nothing; else MADV_UNMERGEABLE, which unmerges
 * what is mapped there, as the kernel's does.
 *
 * Version 2: KSM_REGION_SPLIT cuts each range the call touches; the parts
 * outside stay registered, their merged pages untouched. Where the cut
 * would pass max_regions (ENOSPC): said once; after a munmap the range
 * stays registered whole (the scanner passes over the hole), for
 * MADV_UNMERGEABLE it is cut as with version 1.
 *
 * Version 1 (regions go whole): MADV_UNMERGEABLE unregisters the ranges it
 * touches and registers their parts outside again (unmerged meanwhile);
 * with @gone only the ranges wholly inside go.
 */
static int unmerge_range(uintptr_t start, uintptr_t end, int gone)
{
	unsigned int i = table_find(start);
	uintptr_t a, b;
	struct range r;
	int err;

	while (i < nr_ranges && ranges[i].start < end) {
		r = ranges[i];
		a = r.start > start ? r.start : start;
		b = r.end < end ? r.end : end;
		if (api >= 2) {
			/* A cut inside makes one more. */
			err = r.start < a && b < r.end && nr_ranges >= MAX_RANGES ?
			      -ENOSPC :
			      ksm_range_ioctl(KSM_UNREGISTER_REGION, a, b,
					      KSM_REGION_SPLIT);
			/* Not registered there after all: in step now. */
			if (err == -ENOENT)
				err = 0;
			if (!err) {
				table_remove(i);
				if (r.start < a)
					table_insert(i++, r.start, a);
				if (b < r.end)
					table_insert(i++, b, r.end);
				continue;
			}
			if (err != -ENOSPC)
				return err;
			say_full();
			if (gone) {
				i++;
				continue;
			}
		} else if (gone && (r.start < start || r.end > end)) {
			i++;
			continue;
		}
		err = ksm_range_ioctl(KSM_UNREGISTER_REGION, r.start, r.end, 0);
		if (err)
			return err;
		table_remove(i);
		if (r.start < start)
			i = reregister(i, r.start, start);
		if (r.end > end)
			i = reregister(i, end, r.end);
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
		if (err == -ENOSPC)
			say_full();
	} else {
		err = unmerge_range(start, end, 0);
		/* What the kernel's KSM had (before this library): its own. */
		if (!err)
			real_madvise(addr, len, advice);
	}
	pthread_mutex_unlock(&lock);
	if (err == -ENOSPC)
		return real_madvise((void *)stop, end - stop, advice);
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

/*
 * The registration of [old, old + old_len), moved by the kernel to
 * [new, new + new_len), not overlapping it: every page of the new range
 * registered as the page it came from was, a grown tail as the old range's
 * last page. Registered parts already there (left by a mapping the kernel
 * replaced) stay, unregistered ones go. Then the old range's go, unless
 * @keep_old (MREMAP_DONTUNMAP). Under lock.
 */
static int follow_move(uintptr_t old, uintptr_t old_len, uintptr_t new,
		       uintptr_t new_len, int tail, int keep_old)
{
	uintptr_t off = 0, seg, stop;
	unsigned int i;
	int reg, err;

	while (off < new_len) {
		if (off >= old_len) {
			reg = tail;
			seg = new_len;
		} else {
			i = table_find(old + off);
			reg = i < nr_ranges && ranges[i].start <= old + off;
			if (reg)
				seg = ranges[i].end - old;
			else
				seg = i < nr_ranges && ranges[i].start < old + old_len ?
				      ranges[i].start - old : old_len;
			if (seg >= old_len)
				seg = reg && tail ? new_len : old_len;
			if (seg > new_len)
				seg = new_len;
		}
		if (reg) {
			err = merge_range(new + off, new + seg, &stop);
			if (err == -ENOSPC) {
				say_full();
				real_madvise((void *)stop, new + seg - stop,
					     MADV_MERGEABLE);
			} else if (err) {
				return err;
			}
		} else {
			err = unmerge_range(new + off, new + seg, 0);
			if (err)
				return err;
		}
		off = seg;
	}
	return keep_old ? 0 : unmerge_range(old, old + old_len, 1);
}

void *mremap(void *old_address, size_t old_size, size_t new_size, int flags, ...)
{
	uintptr_t old, old_end, new, new_end, ps = sysconf(_SC_PAGESIZE);
	void *new_address = NULL, *ret;
	int err = 0, tail;
	va_list ap;

	/* As glibc's wrapper: the fifth argument only with MREMAP_FIXED. */
	if (flags & MREMAP_FIXED) {
		va_start(ap, flags);
		new_address = va_arg(ap, void *);
		va_end(ap);
	}
	if (!__atomic_load_n(&nr_ranges, __ATOMIC_ACQUIRE) || !old_size ||
	    page_range(old_address, old_size, &old, &old_end) ||
	    new_size > UINTPTR_MAX - ps)
		return (void *)syscall(SYS_mremap, old_address, old_size,
				       new_size, flags, new_address);
	pthread_mutex_lock(&lock);
	/* Before the call: the kernel's VM_MERGEABLE of the grown VMA. */
	tail = old_end > old && registered(old_end - ps);
	ret = (void *)syscall(SYS_mremap, old_address, old_size, new_size,
			      flags, new_address);
	if (ret != MAP_FAILED && ksm_fd >= 0) {
		new = (uintptr_t)ret;
		new_end = new + ((new_size + ps - 1) & ~(ps - 1));
		if (new != old)
			err = follow_move(old, old_end - old, new, new_end - new,
					  tail, flags & MREMAP_DONTUNMAP);
		else if (new_end < old_end)
			err = unmerge_range(new_end, old_end, 1);
		else if (new_end > old_end && tail)
			err = merge_range(old_end, new_end, &new);
		if (err == -ENOSPC) {
			say_full();
			real_madvise((void *)new, new_end - new, MADV_MERGEABLE);
			err = 0;
		}
	}
	pthread_mutex_unlock(&lock);
	if (err)
		say("mremap: the registration does not follow: ",
		    strerror(-err), "");
	return ret;
}
