/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * ksmdev: Kernel Samepage Merging through a character device.
 *
 * A process opens /dev/ksm and registers ranges of its own private anonymous
 * memory; a scanner thread merges identical pages into one read-only page that
 * is broken again by copy-on-write on the next write.
 *
 * ABI rules (version 1, and version 2, which only adds):
 *  - Every structure is made of __u64 fields only and only ever grows at its
 *    end. The driver takes the size from _IOC_SIZE(cmd): a smaller (older)
 *    structure is accepted, its missing tail read as zero and not written; a
 *    larger (newer) one is accepted only if the tail the driver does not know
 *    is zero (else E2BIG). Unknown ioctl numbers fail with ENOTTY.
 *  - KSM_REGISTER_REGION, KSM_UNREGISTER_REGION and KSM_MERGE_REGION only
 *    work from the mm that opened the file (EPERM otherwise); the other
 *    ioctls work from any holder of the file descriptor. KSM_SET_CONFIG needs CAP_SYS_ADMIN.
 *  - A range overlapping a region already registered in any context of the
 *    same mm (another open() by the same process) is refused with EEXIST:
 *    each page of an mm is counted, and merged, through one context only.
 *  - Every merged page is charged to the memory cgroup of the process whose
 *    page it first replaced, and the module's bookkeeping for a context to
 *    that context's process: merging never lets a process hold more than
 *    its memory.max.
 *  - Version 2 grows struct ksm_region (domain) and struct ksm_mm_stats
 *    (metadata_bytes) at their ends: a version-1 caller's smaller
 *    structures still work, with domain 0 and without metadata_bytes.
 *  - ksm_region.domain: 0 is the global domain. A non-zero domain is taken
 *    by KSM_REGISTER_REGION only, needs CAP_SYS_ADMIN (EPERM), and is
 *    EINVAL with KSM_REGION_SCOPE_MM, or on KSM_UNREGISTER_REGION. Pages
 *    of a region merge only with pages of regions of the same domain, in
 *    any process; zero-page merging (use_zero_pages) crosses domains.
 *  - KSM_REGION_SPLIT is taken by KSM_UNREGISTER_REGION only (EINVAL on
 *    register): the range may then cut regions; the parts outside it stay
 *    registered as regions of their own (ENOSPC, nothing changed, if that
 *    would pass max_regions: only a range inside one region, touching
 *    neither of its ends, makes one more), the pages inside are unmerged
 *    (ENOMEM, EINTR as for any unregister), and a range without any
 *    registered page is ENOENT.
 *  - Version 2 grows struct ksm_stats (pages_orphaned,
 *    advisor_pages_to_scan) and struct ksm_config (merge_across_nodes,
 *    advisor_target_scan_ms, advisor_max_cpu_percent). KSM_SET_CONFIG
 *    with a structure that ends before one of these version-2 settings
 *    leaves that setting as it is (0 is a meaningful, or invalid, value
 *    for each of them); the version-1 fields keep the rule above.
 */
#ifndef _UAPI_LINUX_KSMDEV_H
#define _UAPI_LINUX_KSMDEV_H

#include <linux/types.h>
#include <linux/ioctl.h>

#define KSMDEV_API_VERSION	2

/* Not listed in Documentation/userspace-api/ioctl/ioctl-number.rst. */
#define KSMDEV_IOCTL_MAGIC	0xD5

/**
 * struct ksm_region - a range of the context's memory
 * @addr:   start address, page aligned (0 with KSM_REGION_ALL)
 * @len:    length in bytes, a non-zero multiple of the page size (0 with
 *          KSM_REGION_ALL)
 * @flags:  KSM_REGION_* flags
 * @domain: merge domain (version 2): 0, the global domain; non-zero (needs
 *          CAP_SYS_ADMIN), pages merge only with pages of regions of the
 *          same domain, in any process. A version-1 caller's structure
 *          ends before it: domain 0.
 */
struct ksm_region {
	__u64 addr;
	__u64 len;
	__u64 flags;
	__u64 domain;
};

/* Pages of the region merge only with pages of the same mm. */
#define KSM_REGION_SCOPE_MM	0x1ULL
/*
 * Version 2, register and unregister: every private anonymous VMA of the
 * context's mm, present and future (addr = len = 0).
 */
#define KSM_REGION_ALL		0x2ULL
/* Version 2, unregister only: the range may cut regions in two. */
#define KSM_REGION_SPLIT	0x4ULL
/* The flags of version 1 (kept for the programs that use the name). */
#define KSM_REGION_FLAGS_ALL	(KSM_REGION_SCOPE_MM)

/**
 * struct ksm_attach - bind a fresh context to another process's mm
 * @pidfd: from pidfd_open(2)
 * @flags: 0 or KSM_ATTACH_PERSIST
 */
struct ksm_attach {
	__u64 pidfd;
	__u64 flags;
};

/*
 * The file becomes a handle to the target's persistent context (one per
 * mm): its regions outlive the handles, until unregistered or the target
 * exits.
 */
#define KSM_ATTACH_PERSIST	0x1ULL

/**
 * struct ksm_stats - system-wide counters (meanings of the in-kernel KSM)
 * @pages_shared:            merged pages in use
 * @pages_sharing:           further mappings sharing them (pages saved)
 * @pages_unshared:          unique pages checked repeatedly
 * @pages_volatile:          pages changing too fast to enter a tree
 * @full_scans:              completed passes over all regions
 * @pages_scanned:           pages examined since load
 * @ksm_zero_pages:          mappings of the zero page placed by merging
 * @regions:                 registered regions
 * @mms:                     open contexts (each bound to one process's mm)
 * @registered_pages:        pages covered by registered regions
 * @stable_nodes_limit_hits: merges refused because max_kernel_pages was reached
 * @metadata_bytes:          memory the module holds for its own bookkeeping
 * @pages_orphaned:          merged pages that no registered page maps any
 *                           more (their context closed, or they were moved
 *                           out of every region) but that some mapping or
 *                           pin still holds. They count against
 *                           max_kernel_pages until freed, stay charged to
 *                           the memory cgroup of the process whose page
 *                           each first replaced, and outlive run=2 (pages
 *                           outside every region cannot be unmerged).
 *                           Added at the end for version 2.
 * @advisor_pages_to_scan:   version 2: the pages per batch the scanner
 *                           uses: pages_to_scan, or while the advisor is
 *                           on (advisor_target_scan_ms), what it chose,
 *                           counting also the pages smart scan passes by
 *                           (which pages_to_scan does not count)
 */
struct ksm_stats {
	__u64 pages_shared;
	__u64 pages_sharing;
	__u64 pages_unshared;
	__u64 pages_volatile;
	__u64 full_scans;
	__u64 pages_scanned;
	__u64 ksm_zero_pages;
	__u64 regions;
	__u64 mms;
	__u64 registered_pages;
	__u64 stable_nodes_limit_hits;
	__u64 metadata_bytes;
	__u64 pages_orphaned;
	__u64 advisor_pages_to_scan;
};

/**
 * struct ksm_mm_stats - the counters of one context
 * @regions:          registered regions
 * @registered_pages: pages covered by them
 * @merging_pages:    pages that map a merged page or a merged zero page
 * @ksm_zero_pages:   of those, mappings of the zero page
 * @metadata_bytes:   version 2: this context's share of
 *                    ksm_stats.metadata_bytes, in bytes as the allocator
 *                    hands them out: its regions, their per-page state
 *                    (8 bytes per page, in 4 KiB chunks allocated for
 *                    512 pages at a time once a page there is present,
 *                    and their directories) and its pages' nodes in the
 *                    unstable trees. Not the context itself, nor stable
 *                    nodes and domains, which serve every context that
 *                    maps them: 0 while nothing is registered. Its
 *                    profit is merging_pages * page size - metadata_bytes
 */
struct ksm_mm_stats {
	__u64 regions;
	__u64 registered_pages;
	__u64 merging_pages;
	__u64 ksm_zero_pages;
	__u64 metadata_bytes;
};

/**
 * struct ksm_config - scanner settings
 * @run:              KSM_RUN_STOP, KSM_RUN_MERGE or KSM_RUN_UNMERGE
 * @pages_to_scan:    pages per batch (1 .. KSM_PAGES_TO_SCAN_MAX)
 * @sleep_millisecs:  pause between batches (0 .. KSM_SLEEP_MSECS_MAX; 0 yields)
 * @max_kernel_pages: most merged pages the module may hold; 0 means no limit
 * @use_zero_pages:   1 maps zero-filled pages to the kernel's zero page
 * @scan_all_pages:   0 (default): a page that keeps failing to merge is
 *                    looked at less and less often, down to one pass in 9
 *                    (the in-kernel KSM's smart_scan); 1: every page on
 *                    every pass. Added in version 1 at the end: an older
 *                    caller's structure leaves it 0.
 * @merge_across_nodes: version 2, 1 (default): pages merge whatever NUMA
 *                    node they are on; 0: only with pages on the same
 *                    node. Changing it while any merged page exists
 *                    (pages_shared + ksm_zero_pages + pages_orphaned)
 *                    is EBUSY.
 * @advisor_target_scan_ms: version 2, 0 (default): off; else
 *                    KSM_ADVISOR_TARGET_MIN .. KSM_ADVISOR_TARGET_MAX:
 *                    the scanner sizes its batches so that a full scan
 *                    takes about this long, ignoring pages_to_scan
 * @advisor_max_cpu_percent: version 2, 1 .. 100 (default 25): the most of
 *                    one CPU the scanner uses while the advisor is on
 */
struct ksm_config {
	__u64 run;
	__u64 pages_to_scan;
	__u64 sleep_millisecs;
	__u64 max_kernel_pages;
	__u64 use_zero_pages;
	__u64 scan_all_pages;
	__u64 merge_across_nodes;
	__u64 advisor_target_scan_ms;
	__u64 advisor_max_cpu_percent;
};

#define KSM_RUN_STOP		0
#define KSM_RUN_MERGE		1
#define KSM_RUN_UNMERGE		2

#define KSM_PAGES_TO_SCAN_MAX	0x1000000ULL
#define KSM_SLEEP_MSECS_MAX	60000ULL
#define KSM_ADVISOR_TARGET_MIN	100ULL
#define KSM_ADVISOR_TARGET_MAX	3600000ULL

#define KSM_GET_API_VERSION	_IO(KSMDEV_IOCTL_MAGIC, 0x00)
#define KSM_REGISTER_REGION	_IOW(KSMDEV_IOCTL_MAGIC, 0x01, struct ksm_region)
#define KSM_UNREGISTER_REGION	_IOW(KSMDEV_IOCTL_MAGIC, 0x02, struct ksm_region)
#define KSM_GET_STATS		_IOR(KSMDEV_IOCTL_MAGIC, 0x03, struct ksm_stats)
#define KSM_GET_MM_STATS	_IOR(KSMDEV_IOCTL_MAGIC, 0x04, struct ksm_mm_stats)
#define KSM_GET_CONFIG		_IOR(KSMDEV_IOCTL_MAGIC, 0x05, struct ksm_config)
#define KSM_SET_CONFIG		_IOW(KSMDEV_IOCTL_MAGIC, 0x06, struct ksm_config)
#define KSM_ATTACH_PROCESS	_IOW(KSMDEV_IOCTL_MAGIC, 0x07, struct ksm_attach)
/*
 * KSM_MERGE_REGION (version 2): the calling thread merges the registered
 * pages of [addr, addr + len) now (KSM_REGION_ALL, addr = len = 0: of the
 * whole context), at first sight, whatever run is. Returns how many pages
 * of the range map a merged page or a merged zero page (at most INT_MAX).
 * EBUSY during run=2's unmerge, EINTR on a signal (what merged stays
 * merged), ESRCH for an attached context whose process is gone, EINVAL
 * for a bad range or flag (only KSM_REGION_ALL is taken) or a non-zero
 * domain. Like register and unregister, only from the mm that opened the
 * file (EPERM otherwise); what it allocates is charged to the memory
 * cgroup of the context's process, as the scanner's work is.
 */
#define KSM_MERGE_REGION	_IOW(KSMDEV_IOCTL_MAGIC, 0x09, struct ksm_region)

#endif /* _UAPI_LINUX_KSMDEV_H */
