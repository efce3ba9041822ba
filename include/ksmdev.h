/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ksmdev internal interfaces: contexts, regions, per-page scan state, the
 * scanner, counters and configuration.
 *
 * Locking, in the order in which locks are taken:
 *
 *   ksmdev_lock (mutex)
 *     -> mm->mmap_lock (read)
 *       -> page table lock
 *
 * ksmdev_lock protects the list of contexts, every context's region tree,
 * the per-page scan state of every region, the scan cursor and the counters
 * in ksmdev_stats (written only under it; read without it by whoever accepts
 * a momentarily stale value). The scanner holds it for one batch at a time
 * and lets go early when somebody waits for it (ksmdev_lock_waiters), so an
 * ioctl never waits longer than a page's worth of work.
 *
 * Nothing ksmdev does ever runs from inside the kernel's own mm paths (fault,
 * fork, exit): the kernel never calls back into the module. Process exit is
 * seen by the scanner as mm_users == 0 (mmget_not_zero() fails), and by the
 * release of the file descriptor.
 */
#ifndef _KSMDEV_H
#define _KSMDEV_H

#include <linux/types.h>
#include <linux/bits.h>
#include <linux/list.h>
#include <linux/rbtree.h>
#include <linux/mutex.h>
#include <linux/mm_types.h>
#include <linux/ksmdev.h>

/* Per-page scan state is kept in chunks of this many pages. */
#define KSMDEV_CHUNK_SHIFT	9
#define KSMDEV_CHUNK_PAGES	BIT(KSMDEV_CHUNK_SHIFT)
/* A region's directory points to leaves of this many chunk pointers. */
#define KSMDEV_LEAF_SHIFT	9
#define KSMDEV_LEAF_CHUNKS	BIT(KSMDEV_LEAF_SHIFT)

/* ksmdev_slot: one word of scan state per registered page. */
#define KSMDEV_SLOT_CSUM_MASK	0xffffffffULL	/* checksum at the last visit */
#define KSMDEV_SLOT_SEEN	BIT_ULL(32)	/* checksum is valid */

/**
 * struct ksmdev_chunk - scan state of KSMDEV_CHUNK_PAGES consecutive pages
 * @slot: one word per page (KSMDEV_SLOT_*)
 *
 * Allocated by the scanner when it first finds a present page in the range
 * the chunk covers, so that a sparse region costs memory in proportion to
 * its present pages, not to its size. Protected by ksmdev_lock.
 */
struct ksmdev_chunk {
	u64 slot[KSMDEV_CHUNK_PAGES];
};

/**
 * struct ksmdev_region - a registered range of one context's memory
 * @node:    in ksmdev_ctx.regions, ordered by @start; regions never overlap
 * @start:   first address, page aligned
 * @end:     address past the last page
 * @flags:   KSM_REGION_* flags given at registration
 * @nr_dir:  entries in @dir
 * @dir:     leaves of chunk pointers, each covering KSMDEV_LEAF_CHUNKS
 *           chunks (1 GiB of address space); leaves and chunks are
 *           allocated on first use
 *
 * Protected by ksmdev_lock.
 */
struct ksmdev_region {
	struct rb_node node;
	unsigned long start;
	unsigned long end;
	u64 flags;
	unsigned long nr_dir;
	struct ksmdev_chunk ***dir;
};

/**
 * struct ksmdev_ctx - what one open() of /dev/ksm registers
 * @list:      in ksmdev_ctx_list; new contexts go to the tail, so that a
 *             pass over the list never misses one (seed 004)
 * @mm:        the opener's mm, held by mmgrab() until release: only the
 *             mm_struct stays, never its memory; the scanner takes
 *             mmget_not_zero() for the length of one batch
 * @pid:       the opener's thread group id, for debugfs
 * @regions:   region tree (struct ksmdev_region.node)
 * @nr_regions: regions in @regions
 * @nr_pages:  pages they cover
 * @nr_merging: pages that map a merged page or a merged zero page
 * @nr_zero:   of those, zero-page mappings
 * @exited:    the mm's users dropped to zero: regions were dropped
 *
 * The list link and everything below it are protected by ksmdev_lock.
 */
struct ksmdev_ctx {
	struct list_head list;
	struct mm_struct *mm;
	pid_t pid;
	struct rb_root regions;
	unsigned long nr_regions;
	unsigned long nr_pages;
	unsigned long nr_merging;
	unsigned long nr_zero;
	bool exited;
};

/* main.c: configuration and the global lock */
extern struct mutex ksmdev_lock;
extern atomic_t ksmdev_lock_waiters;
extern struct ksm_config ksmdev_config;
extern unsigned int ksmdev_max_regions;

void ksmdev_lock_acquire(void);
int ksmdev_config_set(const struct ksm_config *cfg);

/* stats.c: counters (written under ksmdev_lock) and debugfs */
extern struct ksm_stats ksmdev_stats;

void *ksmdev_meta_alloc(size_t size, gfp_t gfp);
void ksmdev_meta_free(const void *ptr, size_t size);
void ksmdev_debugfs_init(void);
void ksmdev_debugfs_exit(void);

/* registry.c: contexts and regions */
extern struct list_head ksmdev_ctx_list;

struct ksmdev_ctx *ksmdev_ctx_create(void);
void ksmdev_ctx_destroy(struct ksmdev_ctx *ctx);
int ksmdev_region_add(struct ksmdev_ctx *ctx, const struct ksm_region *r);
int ksmdev_region_remove(struct ksmdev_ctx *ctx, const struct ksm_region *r);
struct ksmdev_region *ksmdev_region_next(struct ksmdev_ctx *ctx,
					 unsigned long addr);
void ksmdev_ctx_drop_regions(struct ksmdev_ctx *ctx);
u64 *ksmdev_region_slot(struct ksmdev_region *region, unsigned long addr);

/* scan.c: the scanner thread */
int ksmdev_scan_init(void);
void ksmdev_scan_exit(void);
void ksmdev_scan_wake(void);
void ksmdev_scan_forget_ctx(struct ksmdev_ctx *ctx);
int ksmdev_unmerge_all(void);

/* dev.c: the misc device */
int ksmdev_dev_init(void);
void ksmdev_dev_exit(void);

/* compat.c: kernel internals resolved at load */
int ksmdev_compat_init(void);

#endif /* _KSMDEV_H */
