/* SPDX-License-Identifier: GPL-2.0 */
/*
 * ksmdev internal interfaces: contexts, regions, per-page scan state, the
 * scanner, counters and configuration.
 *
 * Locking, in the order in which locks are taken:
 *
 *   ksmdev_config_lock (mutex, main.c)
 *     -> ksmdev_ctx.lock (mutex, one context's at a time)
 *       [-> the target's signal->exec_update_lock (read), in mm_access()
 *           at KSM_ATTACH_PROCESS, nothing taken under it]
 *       -> mm->mmap_lock (read, of that context's mm)
 *         -> ksmdev_lock (mutex)
 *           -> [mm->mmap_lock of any mm: mmap_read_trylock() only]
 *             -> page table lock
 *           -> a target's pid->wait_pidfd.lock (spinlock, irqsave: only
 *              to put an exit waiter on the queue or take it off)
 *
 * ksmdev_lock protects the shared state: the list of contexts, the stable
 * and unstable trees, the per-page scan state (slots) of every region and
 * the counters that go with them (ksmdev_stats, written only under it; read
 * without it by whoever accepts a momentarily stale value), the scan and
 * unmerge cursors. It is held only for work bounded in time: never across a
 * page fault or GUP, never across a blocking mmap_read_lock() (only
 * mmap_read_trylock() under it), never while waiting for a ksmdev_ctx.lock
 * (only mutex_trylock() under it). The scanner holds it for one batch at a
 * time and lets go early when somebody waits for it (ksmdev_lock_waiters,
 * counted by ksmdev_lock_acquire(), through which every taker goes); a
 * loop that takes it again at once lets go with ksmdev_lock_pass(), which
 * waits a moment for a waiter to have it (a mutex does not hand it over by
 * itself). So nobody who can run waits for it longer than a step's worth
 * of work (a page table, a batch of pages). This is what
 * keeps one process's long unmerge from stalling another's exit, close,
 * register or stats (hardening issue, item 6).
 *
 * ksmdev_ctx.lock serializes what changes one context's region tree
 * (register, unregister, close, an unmerge-all at work on it) and is the
 * lock held across that context's long work: checking its VMAs, faulting
 * its pages to unmerge them. The region tree changes only under both it and
 * ksmdev_lock, so either one is enough to read it.
 *
 * ksmdev_config_lock serializes configuration changes, run=2 (which unmerges
 * every context, one ctx->lock at a time, without ksmdev_lock) included.
 *
 * mmap_lock is taken before ksmdev_lock, never after: the scanner holds
 * ksmdev_lock and only tries the mmap lock; when that fails for the mm it
 * is about to scan, it lets go of ksmdev_lock, waits for the mmap lock, and
 * takes ksmdev_lock again (ksmdev_scan_ctx()).
 *
 * Nothing ksmdev does runs from inside the kernel's own mm paths (fault,
 * fork, exit) but one callback: for a context attached to another process
 * (KSM_ATTACH_PROCESS), ksmdev_exit_wake() on the target's wait_pidfd
 * queue, which the kernel calls from the exit path (exit_notify() or the
 * reaping, with tasklist_lock held for writing and interrupts off). It
 * takes no lock of ours: it takes its entry off the queue (under the
 * queue's lock, held by the caller) and queues work (the workqueue's pool
 * lock), which drops the context's regions in a kworker, taking ctx->lock
 * and ksmdev_lock in the order above. Otherwise process exit is seen by
 * the scanner as mm_users == 0 (mmget_not_zero() fails), by the release
 * of the file descriptor, and, for an attached context, by the next call
 * through one of its files (an exec, which wakes nobody, is seen only
 * these ways). A persistent context (KSM_ATTACH_PERSIST), which no file
 * need hold, is freed by whichever of these comes first, or at unload.
 */
#ifndef _KSMDEV_H
#define _KSMDEV_H

#include <linux/types.h>
#include <linux/bits.h>
#include <linux/list.h>
#include <linux/rbtree.h>
#include <linux/mutex.h>
#include <linux/refcount.h>
#include <linux/mm_types.h>
#include <linux/ksmdev.h>

/*
 * What the scanner allocates in a window on an mm (slots, tree nodes, the
 * stable page's node), charged to that mm's memory cgroup: never at the
 * price of an OOM kill, of the tenant's tasks or anyone's (__GFP_NORETRY:
 * one try at reclaim, then a failure, which every caller survives: the
 * page is not tracked, or not merged, this time).
 */
#define KSMDEV_GFP_SCAN		(GFP_KERNEL_ACCOUNT | __GFP_NORETRY)

/* Per-page scan state is kept in chunks of this many pages. */
#define KSMDEV_CHUNK_SHIFT	9
#define KSMDEV_CHUNK_PAGES	BIT(KSMDEV_CHUNK_SHIFT)
/* The tables above the chunks (registry.c) have this many entries. */
#define KSMDEV_LEAF_SHIFT	9
#define KSMDEV_LEAF_CHUNKS	BIT(KSMDEV_LEAF_SHIFT)
/* Address bits below a chunk's span (2 MiB). */
#define KSMDEV_CHUNK_BITS	(KSMDEV_CHUNK_SHIFT + PAGE_SHIFT)

/*
 * The slot: one word of scan state per registered page. The low bits hold
 * the page's checksum at the last visit (SEEN) or the PFN of the stable page
 * it maps (STABLE). Every change goes through ksmdev_slot_set(), which keeps
 * the counters that the flags stand for.
 */
#define KSMDEV_SLOT_CSUM_MASK	0xffffffffULL	   /* with SEEN */
#define KSMDEV_SLOT_PFN_MASK	GENMASK_ULL(47, 0) /* with STABLE */
#define KSMDEV_SLOT_SEEN	BIT_ULL(60) /* a candidate, checksum valid */
#define KSMDEV_SLOT_UNSTABLE	BIT_ULL(61) /* in pages_unshared */
#define KSMDEV_SLOT_STABLE	BIT_ULL(62) /* maps a stable page */
#define KSMDEV_SLOT_ZERO	BIT_ULL(63) /* maps the zero page we put there */
#define KSMDEV_SLOT_MERGED	(KSMDEV_SLOT_STABLE | KSMDEV_SLOT_ZERO)
/*
 * With SEEN (never with MERGED): how many visits the page has had without
 * merging (its age, saturating), and how many of its next visits the
 * scanner may still pass by (scan_all_pages=0). A merge resets both.
 */
#define KSMDEV_SLOT_AGE		GENMASK_ULL(51, 48)
#define KSMDEV_SLOT_SKIPS	GENMASK_ULL(55, 52)

/**
 * struct ksmdev_trees - the stable and unstable trees of one merge scope
 * @stable:   struct ksmdev_stable, by content hash
 * @unstable: struct ksmdev_unstable, by content hash; emptied at the start
 *            of every full scan
 *
 * Regions without KSM_REGION_SCOPE_MM and without a domain use the global
 * trees; those with KSM_REGION_SCOPE_MM use the trees of their context, so
 * their pages never meet another mm's; those with a non-zero domain use
 * their domain's (struct ksmdev_domain), so their pages meet only pages of
 * the same domain. Protected by ksmdev_lock.
 */
struct ksmdev_trees {
	struct rb_root stable;
	struct rb_root unstable;
};

/**
 * struct ksmdev_domain - a merge domain (ABI version 2, ksm_region.domain)
 * @node:    in the tree of domains (tree.c), by @id
 * @id:      the domain's number, never 0 (the global trees are domain 0)
 * @regions: regions that belong to it. Made by the first, freed with the
 *           last: a stable node is in @trees only while a slot of one of
 *           those regions maps it, and an unstable node only while its
 *           page's region lives, so the trees are empty by then. Orphans
 *           are in no tree, and outlive their domain.
 * @trees:   its stable and unstable trees
 *
 * Protected by ksmdev_lock.
 */
struct ksmdev_domain {
	struct rb_node node;
	u64 id;
	unsigned long regions;
	struct ksmdev_trees trees;
};

/**
 * struct ksmdev_stable - a merged page
 * @node:    in ksmdev_trees.stable, by @hash then address
 * @orphan:  instead, once orphaned: in the list of orphans (tree.c)
 * @trees:   the trees @node is in; NULL for an orphan
 * @hash:    its key: xxh64 of the content (which never changes), with
 *           its node in the top bits if merge_across_nodes=0
 *           (ksmdev_tree_key())
 * @kpage:   the page: order 0, allocated by ksmdev, never anonymous, never
 *           on the LRU, charged (kmem) to the memory cgroup of the process
 *           whose page it first replaced; this node holds one reference,
 *           each PTE another. While the node lives, @kpage's private field
 *           points back to it (with PG_owner_priv_1 set): ksmdev_stable_of()
 * @sharers: slots that map @kpage (KSMDEV_SLOT_STABLE). At zero, the node
 *           is freed if nothing else holds the page; otherwise it leaves
 *           its tree and becomes an orphan (pages_orphaned), still counted
 *           against max_kernel_pages, until the page's other holders are
 *           gone (ksmdev_orphans_reap())
 *
 * Protected by ksmdev_lock.
 */
struct ksmdev_stable {
	union {
		struct rb_node node;
		struct list_head orphan;
	};
	struct ksmdev_trees *trees;
	u64 hash;
	struct page *kpage;
	unsigned long sharers;
};

/**
 * struct ksmdev_unstable - a candidate page, unchanged since its last visit
 * @node:   in ksmdev_trees.unstable, by @hash
 * @link:   in @ctx's list of unstable nodes, so that unregistering or
 *          closing erases the nodes that point into it
 * @trees:  the trees @node is in
 * @hash:   its key (ksmdev_tree_key()) when it was inserted: a hint
 *          only, the content is compared again under the page table lock
 * @ctx:    the page's context
 * @addr:   the page's address in @ctx's mm
 *
 * Protected by ksmdev_lock.
 */
struct ksmdev_unstable {
	struct rb_node node;
	struct list_head link;
	struct ksmdev_trees *trees;
	u64 hash;
	struct ksmdev_ctx *ctx;
	unsigned long addr;
};

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
 * @base:    where chunk 0 of @top begins: @start when registered; a
 *           region cut off the tail of another (KSM_REGION_SPLIT) starts
 *           its numbering at the chunk of the other that its first page is
 *           in, so that chunks move to it as they are, slots and all
 * @flags:   KSM_REGION_* flags given at registration
 * @domain:  its merge domain, NULL for the global domain (domain 0)
 * @nr_merging: pages of it that map a merged page or a merged zero page
 * @meta_bytes: metadata_bytes it accounts for: itself, @top, the tables
 *           below and the chunks (the context's share,
 *           ksm_mm_stats.metadata_bytes)
 * @height:  levels of tables above the chunks (registry.c)
 * @nr_top:  entries in @top
 * @top:     the top table of the radix tree of the per-page state, whose
 *           chunks are numbered from @base; the tables below it and the
 *           chunks are allocated on first use
 * @nr_pages: pages it counts in registered_pages: its size; for
 *           KSM_REGION_ALL, the pages of the suitable VMAs at the last pass
 * @pass_pages: KSM_REGION_ALL: those the scanner has met in this pass
 * @pass_valid: KSM_REGION_ALL: this pass began at the region's start, so
 *           @pass_pages will be complete at its end
 * @going:   being unmerged by KSM_UNREGISTER_REGION: the scanner leaves it
 *           alone (merges nothing into it, changes none of its slots), so
 *           that the unmerge, which runs without ksmdev_lock, does not race
 *           with new merges; cleared again if the unmerge fails
 *
 * The tree links, @start and @end (which a KSM_REGION_SPLIT cut changes)
 * are protected by ksmdev_lock and the context's lock together (see struct
 * ksmdev_ctx); the slots, the tables, @going, @nr_pages, the pass fields,
 * @nr_merging, @meta_bytes and the domain's reference count by
 * ksmdev_lock.
 */
struct ksmdev_region {
	struct rb_node node;
	unsigned long start;
	unsigned long end;
	unsigned long base;
	u64 flags;
	struct ksmdev_domain *domain;
	unsigned long nr_merging;
	size_t meta_bytes;
	unsigned int height;
	unsigned long nr_top;
	void **top;
	unsigned long nr_pages;
	unsigned long pass_pages;
	bool pass_valid;
	bool going;
};

/**
 * struct ksmdev_ctx - what one open() of /dev/ksm registers
 * @list:      in ksmdev_ctx_list; new contexts go to the tail, so that a
 *             pass over the list never misses one (seed 004)
 * @mm:        the mm it registers memory of: the opener's, or after
 *             KSM_ATTACH_PROCESS the target's. Held by mmgrab() until the
 *             last reference goes: only the mm_struct stays, never its
 *             memory; whoever works on the memory takes mmget_not_zero()
 *             (the scanner for one batch, register and unregister for the
 *             call), and a context whose mm has no users left is gone
 * @unstable:  its pages' struct ksmdev_unstable.link
 * @pid:       the thread group id of @mm's process, for debugfs
 * @target:    attached: the target's struct pid (a reference), so that a
 *             call through the file knows when the process has exited or
 *             exec'd, even while somebody (the scanner) still holds a user
 *             of @mm for a moment; NULL for the opener's own mm
 * @exit_wait: attached: on @target's wait_pidfd queue, which the kernel
 *             wakes when the process exits (as it wakes a pidfd's poll):
 *             the module's only hook into a target's exit. One-shot: the
 *             wake takes it off the queue (under the queue's lock) and
 *             queues @exit_work
 * @exit_work: drops the regions of an exited target at once, whatever
 *             the scanner does (ABI.md: "the target's exit frees all of
 *             it"); holds a reference while queued or running
 * @trees:     the trees of this context's KSM_REGION_SCOPE_MM regions
 * @regions:   region tree (struct ksmdev_region.node)
 * @nr_regions: regions in @regions
 * @nr_pages:  pages they cover (struct ksmdev_region.nr_pages)
 * @nr_merging: pages that map a merged page or a merged zero page
 * @nr_zero:   of those, zero-page mappings
 * @nr_unstable: its nodes in unstable trees (on @unstable)
 * @exited:    the regions were dropped for good: the mm's users dropped to
 *             zero, or the context was closed (or replaced by a persistent
 *             one at attach)
 * @attached:  KSM_ATTACH_PROCESS bound it (or the file that made it) to a
 *             process: no second attach
 * @persistent: KSM_ATTACH_PERSIST: the one persistent context of @mm. Its
 *             files are handles; it stays on the list, with its regions,
 *             when they close, until its regions are all unregistered (and
 *             no handle is left), or @mm's users are gone, or the module
 *             is unloaded (ksmdev_ctx_gone(), ksmdev_registry_exit())
 * @handles:   persistent: the open files that are handles to it
 * @lock:      serializes changes of @regions (register, unregister, close,
 *             an unmerge-all working on this context) and is held across
 *             this context's long work (VMA checks, unmerging), without
 *             ksmdev_lock; see the lock order at the top of this file
 * @ref:       one per open file that points to it (the file that made it,
 *             and each handle), one for being on the list as a persistent
 *             context, one for an unmerge-all that works on the context
 *             without ksmdev_lock; the last put frees it (ksmdev_ctx_put(),
 *             under ksmdev_lock)
 * @closing:   set (without any lock) by the last close() before it waits
 *             for @lock: an unmerge-all at work here stops at its next
 *             chunk instead of unmerging memory nobody registers any more
 *
 * The list link and everything from @unstable to @handles are protected by
 * ksmdev_lock; @mm, @pid, @target, @regions, @nr_regions, @exited, @attached
 * and @persistent change only under @lock as well, so that @lock alone is
 * enough to read them. @nr_pages changes under both, except that the scanner
 * updates the count of a KSM_REGION_ALL region under ksmdev_lock alone.
 */
struct ksmdev_ctx {
	struct list_head list;
	struct mm_struct *mm;
	struct list_head unstable;
	pid_t pid;
	struct pid *target;
	struct wait_queue_entry exit_wait;
	struct work_struct exit_work;
	struct ksmdev_trees trees;
	struct rb_root regions;
	unsigned long nr_regions;
	unsigned long nr_pages;
	unsigned long nr_merging;
	unsigned long nr_zero;
	unsigned long nr_unstable;
	bool exited;
	bool attached;
	bool persistent;
	unsigned long handles;
	struct mutex lock;	/* see @lock above, and the lock order */
	refcount_t ref;
	bool closing;
};

/* main.c: configuration and the global lock */
extern struct mutex ksmdev_lock;
extern atomic_t ksmdev_lock_waiters;
extern struct ksm_config ksmdev_config;
extern unsigned int ksmdev_max_regions;

void ksmdev_lock_acquire(void);
void ksmdev_lock_pass(void);
int ksmdev_config_set(const struct ksm_config *cfg, size_t size);

/* stats.c: counters (written under ksmdev_lock) and debugfs */
extern struct ksm_stats ksmdev_stats;

/**
 * struct ksmdev_events - what happened since load, for tests and tuning
 * @merges:     PTEs replaced by a stable page or the zero page
 * @cow_breaks: merged pages the scanner found replaced by a private page
 *              (written, so copied on write; or unmapped and faulted again)
 * @unmerges:   merged pages given a private copy by unmerging
 * @skips:      visits to a page that failed to merge so often that the
 *              scanner passed it by (see KSMDEV_SLOT_AGE), as the in-kernel
 *              KSM's pages_skipped
 * @stable_unused: stable pages allocated and copied for a merge of two
 *              candidates that then failed, and freed unused
 *
 * Not ABI: debugfs only. Written under ksmdev_lock.
 */
struct ksmdev_events {
	u64 merges;
	u64 cow_breaks;
	u64 unmerges;
	u64 skips;
	u64 stable_unused;
};

extern struct ksmdev_events ksmdev_events;

static inline void ksmdev_event(u64 *event)
{
	WRITE_ONCE(*event, *event + 1);
}

void *ksmdev_meta_alloc(size_t size, gfp_t gfp);
void ksmdev_meta_free(const void *ptr, size_t size);
size_t ksmdev_meta_size(size_t size);
void *ksmdev_meta_cache_alloc(struct kmem_cache *cache, gfp_t gfp);
void ksmdev_meta_cache_free(struct kmem_cache *cache, void *ptr);
void ksmdev_debugfs_init(void);
void ksmdev_debugfs_exit(void);

/* registry.c: contexts and regions */
extern struct list_head ksmdev_ctx_list;

struct ksmdev_ctx *ksmdev_ctx_create(void);
void ksmdev_ctx_destroy(struct ksmdev_ctx *ctx);
void ksmdev_ctx_put(struct ksmdev_ctx *ctx);
void ksmdev_ctx_close(struct ksmdev_ctx *ctx, struct ksmdev_ctx *own);
struct ksmdev_ctx *ksmdev_ctx_attach(struct ksmdev_ctx *own,
				     const struct ksm_attach *at);
bool ksmdev_ctx_gone(struct ksmdev_ctx *ctx);
void ksmdev_region_pass_end(struct ksmdev_ctx *ctx,
			    struct ksmdev_region *region);
int ksmdev_registry_init(void);
void ksmdev_registry_exit(void);
bool ksmdev_ctx_abandoned(struct ksmdev_ctx *ctx);
int ksmdev_region_add(struct ksmdev_ctx *ctx, const struct ksm_region *r);
int ksmdev_region_remove(struct ksmdev_ctx *ctx, const struct ksm_region *r);
long ksmdev_region_merge(struct ksmdev_ctx *ctx, const struct ksm_region *r);
struct ksmdev_region *ksmdev_region_next(struct ksmdev_ctx *ctx,
					 unsigned long addr);
void ksmdev_ctx_drop_regions(struct ksmdev_ctx *ctx);
u64 ksmdev_ctx_metadata(struct ksmdev_ctx *ctx);
u64 *ksmdev_region_slot(struct ksmdev_region *region, unsigned long addr);
u64 *ksmdev_region_slot_lookup(struct ksmdev_region *region,
			       unsigned long addr);
unsigned long ksmdev_region_slot_next(struct ksmdev_region *region,
				      unsigned long addr, unsigned long end,
				      u64 **slotp);
void ksmdev_region_forget(struct ksmdev_ctx *ctx,
			  struct ksmdev_region *region,
			  unsigned long start, unsigned long end);
struct ksmdev_region *ksmdev_region_find(struct ksmdev_ctx *ctx,
					 unsigned long addr);

/* tree.c: stable and unstable trees, and the slot accounting */
extern struct ksmdev_trees ksmdev_global_trees;

struct ksmdev_trees *ksmdev_trees_of(struct ksmdev_ctx *ctx,
				     struct ksmdev_region *region);
void ksmdev_slot_set(struct ksmdev_ctx *ctx, struct ksmdev_region *region,
		     u64 *slot, u64 value);
struct ksmdev_domain *ksmdev_domain_get(u64 id);
void ksmdev_domain_put(struct ksmdev_domain *domain);
size_t ksmdev_unstable_bytes(void);
u64 ksmdev_tree_key(u64 hash, struct page *page);
struct ksmdev_stable *ksmdev_stable_search(struct ksmdev_trees *trees,
					   u64 hash, struct page *page);
struct ksmdev_stable *ksmdev_stable_of(struct page *page);
struct ksmdev_stable *ksmdev_stable_create(struct ksmdev_trees *trees,
					   u64 hash, struct page *page);
void ksmdev_stable_release(struct ksmdev_stable *stable);
struct ksmdev_unstable *ksmdev_unstable_first(struct ksmdev_trees *trees,
					      u64 hash);
struct ksmdev_unstable *ksmdev_unstable_next(struct ksmdev_unstable *un);
int ksmdev_unstable_insert(struct ksmdev_trees *trees, u64 hash,
			   struct ksmdev_ctx *ctx, unsigned long addr);
void ksmdev_unstable_erase(struct ksmdev_unstable *un);
void ksmdev_unstable_forget(struct ksmdev_ctx *ctx, unsigned long start,
			    unsigned long end);
void ksmdev_unstable_reset(struct ksmdev_trees *trees);
void ksmdev_domains_unstable_reset(void);
void ksmdev_orphans_reap(void);
int ksmdev_trees_init(void);
void ksmdev_trees_exit(void);

/* merge.c: replacing PTEs, and unmerging */
bool ksmdev_vma_scannable(struct vm_area_struct *vma);
bool ksmdev_vma_mergeable(struct vm_area_struct *vma);
void ksmdev_kpage_mlock(struct vm_area_struct *vma, unsigned long addr,
			struct page *page);
bool ksmdev_page_candidate(struct page *page);
bool ksmdev_page_unpinned_hint(struct page *page);
pmd_t *ksmdev_table_pmd(struct mm_struct *mm, unsigned long addr);
pmd_t *ksmdev_walk_to_pmd(struct mm_struct *mm, unsigned long addr,
			  unsigned long end, unsigned long *next);
bool ksmdev_pages_identical(struct page *a, struct page *b);
int ksmdev_split_page(struct page *page);
int ksmdev_replace_page(struct vm_area_struct *vma, unsigned long addr,
			struct page *page, struct page *kpage);
struct page *ksmdev_get_anon_page(struct vm_area_struct *vma,
				  unsigned long addr);
bool ksmdev_page_is_zero(struct page *page);
int ksmdev_unmerge_region(struct ksmdev_ctx *ctx,
			  struct ksmdev_region *region);
int ksmdev_unmerge_range(struct ksmdev_ctx *ctx, struct ksmdev_region *region,
			 unsigned long start, unsigned long stop);

/* scan.c: the scanner thread */
int ksmdev_scan_init(void);
void ksmdev_scan_exit(void);
void ksmdev_scan_wake(void);
void ksmdev_scan_forget_ctx(struct ksmdev_ctx *ctx);
int ksmdev_unmerge_all(void);
void ksmdev_unmerge_all_end(void);
long ksmdev_merge_now(struct ksmdev_ctx *ctx, unsigned long start,
		      unsigned long end);

/* dev.c: the misc device */
int ksmdev_dev_init(void);
void ksmdev_dev_exit(void);

/* compat.c: kernel internals resolved at load */
int ksmdev_compat_init(void);

#endif /* _KSMDEV_H */
