// SPDX-License-Identifier: GPL-2.0
/*
 * The registry: contexts (one per open of /dev/ksm) and their regions.
 *
 * A context's regions live in an rbtree ordered by start address. Regions
 * never overlap, so "the first region that ends after addr" answers both
 * the overlap check of a registration and the scanner's "where next", in
 * O(log n) for thousands of regions.
 *
 * Locking (include/ksmdev.h): the region tree of a context changes only
 * under both its ctx->lock and ksmdev_lock, so either is enough to read it.
 * Register and unregister hold ctx->lock throughout, and ksmdev_lock only
 * for the short steps that touch shared state: the VMA checks and the
 * unmerge (page faults) run without it, so that another process's exit,
 * close, register or stats never waits for them.
 */
#include <linux/mm.h>
#include <linux/sched/mm.h>
#include <linux/slab.h>

#include "ksmdev.h"

LIST_HEAD(ksmdev_ctx_list);

static void ksmdev_stats_add(long regions, long pages)
{
	WRITE_ONCE(ksmdev_stats.regions, ksmdev_stats.regions + regions);
	WRITE_ONCE(ksmdev_stats.registered_pages,
		   ksmdev_stats.registered_pages + pages);
}

/* Called at open(): a context bound to the caller's mm. */
struct ksmdev_ctx *ksmdev_ctx_create(void)
{
	struct ksmdev_ctx *ctx;

	if (!current->mm)
		return ERR_PTR(-EINVAL);

	ksmdev_lock_acquire();
	/* Under ksmdev_lock: one try at reclaim, ENOMEM rather than an OOM. */
	ctx = ksmdev_meta_alloc(sizeof(*ctx),
				GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!ctx) {
		mutex_unlock(&ksmdev_lock);
		return ERR_PTR(-ENOMEM);
	}
	ctx->mm = current->mm;
	mmgrab(ctx->mm);
	ctx->pid = task_tgid_nr(current);
	mutex_init(&ctx->lock);
	refcount_set(&ctx->ref, 1);
	ctx->regions = RB_ROOT;
	ctx->trees.stable = RB_ROOT;
	ctx->trees.unstable = RB_ROOT;
	INIT_LIST_HEAD(&ctx->unstable);
	list_add_tail(&ctx->list, &ksmdev_ctx_list);
	WRITE_ONCE(ksmdev_stats.mms, ksmdev_stats.mms + 1);
	mutex_unlock(&ksmdev_lock);
	return ctx;
}

/**
 * ksmdev_ctx_put - drop a reference to @ctx, freeing it with the last
 * @ctx: a context, already off the list if this is the last reference
 *
 * Called with ksmdev_lock held (the metadata counters change).
 */
void ksmdev_ctx_put(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	if (!refcount_dec_and_test(&ctx->ref))
		return;
	mmdrop(ctx->mm);
	mutex_destroy(&ctx->lock);
	ksmdev_meta_free(ctx, sizeof(*ctx));
}

/*
 * Called at the last close(): the regions are dropped without unmerging
 * (ABI.md, "Close and exit"); merged pages stay mapped copy-on-write.
 *
 * No ioctl of this context can be running (it holds a reference to the
 * file), so ctx->lock is held, if at all, by an unmerge-all working on this
 * context, which sees ctx->closing and lets go at its next chunk. No other
 * context's work is ever waited for: ksmdev_lock is only held briefly.
 */
void ksmdev_ctx_destroy(struct ksmdev_ctx *ctx)
{
	WRITE_ONCE(ctx->closing, true);
	mutex_lock(&ctx->lock);
	ksmdev_lock_acquire();
	ksmdev_scan_forget_ctx(ctx);
	ksmdev_ctx_drop_regions(ctx);
	ctx->exited = true;
	/* Its pages were its unstable nodes' and its stable pages' only users. */
	WARN_ON_ONCE(!list_empty(&ctx->unstable) ||
		     !RB_EMPTY_ROOT(&ctx->trees.stable));
	list_del(&ctx->list);
	WRITE_ONCE(ksmdev_stats.mms, ksmdev_stats.mms - 1);
	mutex_unlock(&ctx->lock);
	ksmdev_ctx_put(ctx);
	mutex_unlock(&ksmdev_lock);
}

/**
 * ksmdev_ctx_abandoned - an unmerge of @ctx should stop: nobody needs it
 * @ctx: the context being unmerged (ctx->lock held)
 *
 * True when the context is being closed, or when its process is gone and
 * the caller (an unmerge-all in another process) holds the mm's last user.
 * The owner's own unregister never abandons: its process is alive.
 */
bool ksmdev_ctx_abandoned(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ctx->lock);
	if (READ_ONCE(ctx->closing))
		return true;
	return current->mm != ctx->mm &&
	       atomic_read(&ctx->mm->mm_users) <= 1;
}

static unsigned long ksmdev_region_pages(const struct ksmdev_region *region)
{
	return (region->end - region->start) >> PAGE_SHIFT;
}

static struct ksmdev_region *ksmdev_region_alloc(unsigned long start,
						 unsigned long end, u64 flags)
{
	unsigned long pages = (end - start) >> PAGE_SHIFT;
	unsigned long chunks = DIV_ROUND_UP(pages, KSMDEV_CHUNK_PAGES);
	struct ksmdev_region *region;

	/*
	 * Called under ksmdev_lock (metadata_bytes changes under it): one try
	 * at reclaim, then ENOMEM, so that nobody else waits for an OOM kill.
	 */
	region = ksmdev_meta_alloc(sizeof(*region),
				   GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!region)
		return NULL;
	region->start = start;
	region->end = end;
	region->flags = flags;
	region->nr_dir = DIV_ROUND_UP(chunks, KSMDEV_LEAF_CHUNKS);
	region->dir = ksmdev_meta_alloc(region->nr_dir * sizeof(*region->dir),
					GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!region->dir) {
		ksmdev_meta_free(region, sizeof(*region));
		return NULL;
	}
	return region;
}

/* Free @region and its scan state, which @ctx no longer counts. */
static void ksmdev_region_free(struct ksmdev_region *region)
{
	unsigned long i, j;

	for (i = 0; i < region->nr_dir; i++) {
		struct ksmdev_chunk **leaf = region->dir[i];

		if (!leaf)
			continue;
		for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++)
			ksmdev_meta_free(leaf[j], sizeof(*leaf[j]));
		ksmdev_meta_free(leaf, KSMDEV_LEAF_CHUNKS * sizeof(*leaf));
	}
	ksmdev_meta_free(region->dir, region->nr_dir * sizeof(*region->dir));
	ksmdev_meta_free(region, sizeof(*region));
}

/**
 * ksmdev_region_slot_next - the first page in [addr, end) that has a slot
 * @region: the region
 * @addr:   where to start
 * @end:    where to stop, at most region->end
 * @slotp:  set to the page's slot
 *
 * Only pages whose chunk exists have slots; whole missing chunks and leaves
 * are skipped at once, so a walk costs in proportion to pages once present.
 *
 * Return: the page's address, or @end.
 */
unsigned long ksmdev_region_slot_next(struct ksmdev_region *region,
				      unsigned long addr, unsigned long end,
				      u64 **slotp)
{
	const unsigned int chunk_bits = KSMDEV_CHUNK_SHIFT + PAGE_SHIFT;
	const unsigned int leaf_bits = KSMDEV_LEAF_SHIFT + chunk_bits;

	while (addr < end) {
		unsigned long off = addr - region->start;
		struct ksmdev_chunk **leaf = region->dir[off >> leaf_bits];
		struct ksmdev_chunk *chunk;

		if (!leaf) {
			addr = region->start + ((off >> leaf_bits) + 1) * BIT(leaf_bits);
			continue;
		}
		chunk = leaf[(off >> chunk_bits) & (KSMDEV_LEAF_CHUNKS - 1)];
		if (!chunk) {
			addr = region->start + ((off >> chunk_bits) + 1) * BIT(chunk_bits);
			continue;
		}
		*slotp = &chunk->slot[(off >> PAGE_SHIFT) & (KSMDEV_CHUNK_PAGES - 1)];
		return addr;
	}
	return end;
}

/* The slot of the page at @addr of @region, if its chunk exists. */
u64 *ksmdev_region_slot_lookup(struct ksmdev_region *region,
			       unsigned long addr)
{
	u64 *slot;

	if (ksmdev_region_slot_next(region, addr, addr + PAGE_SIZE, &slot) != addr)
		return NULL;
	return slot;
}

/**
 * ksmdev_region_forget - drop the scan state of [start, end) of @region
 * @ctx:    the region's context
 * @region: the region
 * @start:  first address
 * @end:    address past the last page
 *
 * For pages that are gone, or that can no longer be merged: their counts
 * go, the stable pages they mapped lose them as sharers, and their unstable
 * nodes are erased.
 */
void ksmdev_region_forget(struct ksmdev_ctx *ctx,
			  struct ksmdev_region *region,
			  unsigned long start, unsigned long end)
{
	unsigned long addr;
	u64 *slot;

	lockdep_assert_held(&ksmdev_lock);
	for (addr = ksmdev_region_slot_next(region, start, end, &slot);
	     addr < end;
	     addr = ksmdev_region_slot_next(region, addr + PAGE_SIZE, end, &slot))
		if (*slot)
			ksmdev_slot_set(ctx, slot, 0);
}

/**
 * ksmdev_region_slot - the scan state word of the page at @addr
 * @region: a region of a live context
 * @addr:   an address inside @region
 *
 * Allocates the leaf and the chunk on first use, charged to the active
 * memory cgroup (the scanner's window sets the context's, see scan.c).
 * Returns NULL when memory runs out, or at the cgroup's limit: the page is
 * then simply not tracked this time.
 */
u64 *ksmdev_region_slot(struct ksmdev_region *region, unsigned long addr)
{
	unsigned long page = (addr - region->start) >> PAGE_SHIFT;
	unsigned long chunk = page >> KSMDEV_CHUNK_SHIFT;
	struct ksmdev_chunk ***leafp = &region->dir[chunk >> KSMDEV_LEAF_SHIFT];
	struct ksmdev_chunk **chunkp;

	lockdep_assert_held(&ksmdev_lock);
	if (!*leafp) {
		*leafp = ksmdev_meta_alloc(KSMDEV_LEAF_CHUNKS * sizeof(**leafp),
					   KSMDEV_GFP_SCAN);
		if (!*leafp)
			return NULL;
	}
	chunkp = &(*leafp)[chunk & (KSMDEV_LEAF_CHUNKS - 1)];
	if (!*chunkp) {
		*chunkp = ksmdev_meta_alloc(sizeof(**chunkp), KSMDEV_GFP_SCAN);
		if (!*chunkp)
			return NULL;
	}
	return &(*chunkp)->slot[page & (KSMDEV_CHUNK_PAGES - 1)];
}

/* The region of @ctx that holds @addr, or NULL. */
struct ksmdev_region *ksmdev_region_find(struct ksmdev_ctx *ctx,
					 unsigned long addr)
{
	struct ksmdev_region *region = ksmdev_region_next(ctx, addr);

	return region && region->start <= addr ? region : NULL;
}

/**
 * ksmdev_region_next - the first region of @ctx that ends after @addr
 * @ctx:  a context
 * @addr: an address
 *
 * Return: that region (which may start after @addr), or NULL.
 */
struct ksmdev_region *ksmdev_region_next(struct ksmdev_ctx *ctx,
					 unsigned long addr)
{
	struct rb_node *node = ctx->regions.rb_node;
	struct ksmdev_region *found = NULL;

	lockdep_assert(lockdep_is_held(&ksmdev_lock) ||
		       lockdep_is_held(&ctx->lock));
	while (node) {
		struct ksmdev_region *region;

		region = rb_entry(node, struct ksmdev_region, node);
		if (region->end > addr) {
			found = region;
			node = node->rb_left;
		} else {
			node = node->rb_right;
		}
	}
	return found;
}

static bool ksmdev_vma_suitable(struct vm_area_struct *vma)
{
	if (!vma_is_anonymous(vma))
		return false;
	return !(vma->vm_flags & (VM_SHARED | VM_MAYSHARE | VM_PFNMAP |
				  VM_MIXEDMAP | VM_HUGETLB | VM_IO));
}

/* Every byte of [start, end) is mapped by private anonymous memory. */
static int ksmdev_check_vmas(struct mm_struct *mm, unsigned long start,
			     unsigned long end)
{
	struct vm_area_struct *vma;
	unsigned long addr = start;
	int err = 0;

	if (mmap_read_lock_killable(mm))
		return -EINTR;
	while (addr < end) {
		vma = find_vma(mm, addr);
		if (!vma || vma->vm_start > addr) {
			err = -ENOMEM;
			break;
		}
		if (!ksmdev_vma_suitable(vma)) {
			err = -EINVAL;
			break;
		}
		addr = vma->vm_end;
	}
	mmap_read_unlock(mm);
	return err;
}

/*
 * A region of any live context of @mm overlaps [start, end): each page of
 * an mm is registered through one context only, or it would be counted
 * (and its merges) once per context.
 */
static bool ksmdev_mm_overlaps(struct mm_struct *mm, unsigned long start,
			       unsigned long end)
{
	struct ksmdev_region *next;
	struct ksmdev_ctx *ctx;

	lockdep_assert_held(&ksmdev_lock);
	list_for_each_entry(ctx, &ksmdev_ctx_list, list) {
		if (ctx->mm != mm || ctx->exited)
			continue;
		next = ksmdev_region_next(ctx, start);
		if (next && next->start < end)
			return true;
	}
	return false;
}

/**
 * ksmdev_region_add - register [r->addr, r->addr + r->len) of the caller
 * @ctx: the caller's context (ctx->mm == current->mm)
 * @r:   the range, already validated for alignment, size and flags
 *
 * Return: 0, -EEXIST (overlap with a region of any context of this mm),
 * -ENOSPC (max_regions), -ENOMEM (hole in the mapping, or no memory),
 * -EINVAL (unsuitable mapping), -EINTR.
 */
int ksmdev_region_add(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	struct rb_node **link, *parent = NULL;
	struct ksmdev_region *region;
	int err;

	if (mutex_lock_killable(&ctx->lock))
		return -EINTR;
	/* A first look, so that an overlap is EEXIST whatever is mapped. */
	ksmdev_lock_acquire();
	err = ksmdev_mm_overlaps(ctx->mm, start, end) ? -EEXIST : 0;
	mutex_unlock(&ksmdev_lock);
	if (err)
		goto out;
	if (ctx->nr_regions >= READ_ONCE(ksmdev_max_regions)) {
		err = -ENOSPC;
		goto out;
	}
	/* The mmap lock, without ksmdev_lock: it may wait for a writer. */
	err = ksmdev_check_vmas(ctx->mm, start, end);
	if (err)
		goto out;

	ksmdev_lock_acquire();
	/*
	 * Again, under the lock that the insertion holds too: another context
	 * of this mm may have registered the range meanwhile (ctx->lock only
	 * keeps this context's regions as they are).
	 */
	if (ksmdev_mm_overlaps(ctx->mm, start, end)) {
		err = -EEXIST;
		goto unlock;
	}
	region = ksmdev_region_alloc(start, end, r->flags);
	if (!region) {
		err = -ENOMEM;
		goto unlock;
	}
	link = &ctx->regions.rb_node;
	while (*link) {
		parent = *link;
		if (start < rb_entry(parent, struct ksmdev_region, node)->start)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&region->node, parent, link);
	rb_insert_color(&region->node, &ctx->regions);
	ctx->nr_regions++;
	ctx->nr_pages += ksmdev_region_pages(region);
	ksmdev_stats_add(1, ksmdev_region_pages(region));
	ksmdev_scan_wake();
unlock:
	mutex_unlock(&ksmdev_lock);
out:
	mutex_unlock(&ctx->lock);
	return err;
}

/*
 * Count @region out of @ctx and free it; the caller unlinks it, and has
 * erased @ctx's unstable nodes that point into it.
 */
static void __ksmdev_region_drop(struct ksmdev_ctx *ctx,
				 struct ksmdev_region *region)
{
	ksmdev_region_forget(ctx, region, region->start, region->end);
	ctx->nr_regions--;
	ctx->nr_pages -= ksmdev_region_pages(region);
	ksmdev_stats_add(-1, -(long)ksmdev_region_pages(region));
	ksmdev_region_free(region);
}

static void ksmdev_region_drop(struct ksmdev_ctx *ctx,
			       struct ksmdev_region *region)
{
	ksmdev_unstable_forget(ctx, region->start, region->end);
	__ksmdev_region_drop(ctx, region);
}

/* The regions of @ctx from @first that lie before @end: mark them going. */
static void ksmdev_regions_set_going(struct ksmdev_region *first,
				     unsigned long end, bool going)
{
	struct ksmdev_region *region;
	struct rb_node *node;

	lockdep_assert_held(&ksmdev_lock);
	for (node = &first->node; node; node = rb_next(node)) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		region->going = going;
	}
}

/**
 * ksmdev_region_remove - unmerge and unregister the regions inside a range
 * @ctx: the caller's context (ctx->mm == current->mm)
 * @r:   a range that must cover one or more whole regions
 *
 * Every region is unmerged before any is removed: if unmerging fails, all
 * stay registered, what was unmerged stays correct, and the call can be
 * repeated.
 *
 * Locking: ctx->lock throughout, so that the regions stay (nothing else
 * removes them: close cannot run during an ioctl of the same file, the
 * scanner drops an exited context's regions only with a trylock of
 * ctx->lock). The regions are marked going under ksmdev_lock, so that the
 * scanner leaves them alone, then unmerged without ksmdev_lock (the unmerge
 * takes it for a moment per chunk), then removed under it again.
 *
 * Return: 0, -EINVAL (the range cuts a region), -ENOENT (no region in it),
 * -ENOMEM or -EINTR (unmerging failed).
 */
int ksmdev_region_remove(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	struct ksmdev_region *first, *region;
	struct rb_node *node;
	int err = 0;

	if (mutex_lock_killable(&ctx->lock))
		return -EINTR;
	first = ksmdev_region_next(ctx, start);
	if (!first || first->start >= end) {
		err = -ENOENT;
		goto out;
	}
	/* Check the whole range before changing anything. */
	for (node = &first->node; node; node = rb_next(node)) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		if (region->start < start || region->end > end) {
			err = -EINVAL;
			goto out;
		}
	}
	ksmdev_lock_acquire();
	ksmdev_regions_set_going(first, end, true);
	mutex_unlock(&ksmdev_lock);

	if (mmap_read_lock_killable(ctx->mm)) {
		err = -EINTR;
	} else {
		for (node = &first->node; node && !err; node = rb_next(node)) {
			region = rb_entry(node, struct ksmdev_region, node);
			if (region->start >= end)
				break;
			err = ksmdev_unmerge_region(ctx, region);
		}
		mmap_read_unlock(ctx->mm);
	}

	ksmdev_lock_acquire();
	if (err) {
		/* Registered as before; the scanner counts what changed. */
		ksmdev_regions_set_going(first, end, false);
		goto unlock;
	}
	node = &first->node;
	while (node) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		node = rb_next(node);
		rb_erase(&region->node, &ctx->regions);
		ksmdev_region_drop(ctx, region);
	}
unlock:
	mutex_unlock(&ksmdev_lock);
out:
	mutex_unlock(&ctx->lock);
	return err;
}

/*
 * Forget every region of @ctx, without unmerging (close, or exit). Called
 * with both ksmdev_lock and ctx->lock held.
 */
void ksmdev_ctx_drop_regions(struct ksmdev_ctx *ctx)
{
	struct ksmdev_region *region, *tmp;

	lockdep_assert_held(&ksmdev_lock);
	lockdep_assert_held(&ctx->lock);
	/* Every unstable node of @ctx at once, not a list walk per region. */
	ksmdev_unstable_forget(ctx, 0, ULONG_MAX);
	rbtree_postorder_for_each_entry_safe(region, tmp, &ctx->regions, node)
		__ksmdev_region_drop(ctx, region);
	ctx->regions = RB_ROOT;
}
