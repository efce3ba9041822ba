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

/* Leaves of a directory from @base that covers up to @end. */
static unsigned long ksmdev_dir_leaves(unsigned long base, unsigned long end)
{
	return DIV_ROUND_UP((end - base) >> PAGE_SHIFT,
			    KSMDEV_CHUNK_PAGES * KSMDEV_LEAF_CHUNKS);
}

/*
 * A region [start, end) whose directory's grid begins at @base (@start, but
 * for a region cut off the tail of another), without a domain yet.
 */
static struct ksmdev_region *ksmdev_region_alloc(unsigned long base,
						 unsigned long start,
						 unsigned long end, u64 flags)
{
	struct ksmdev_region *region;

	/*
	 * Called under ksmdev_lock (metadata_bytes changes under it): one try
	 * at reclaim, then ENOMEM, so that nobody else waits for an OOM kill.
	 */
	region = ksmdev_meta_alloc(sizeof(*region),
				   GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!region)
		return NULL;
	region->base = base;
	region->start = start;
	region->end = end;
	region->flags = flags;
	region->nr_dir = ksmdev_dir_leaves(base, end);
	region->dir = ksmdev_meta_alloc(region->nr_dir * sizeof(*region->dir),
					GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!region->dir) {
		ksmdev_meta_free(region, sizeof(*region));
		return NULL;
	}
	region->meta_bytes = ksmdev_meta_size(sizeof(*region)) +
		ksmdev_meta_size(region->nr_dir * sizeof(*region->dir));
	return region;
}

/* Free leaf @i of @region's directory and its chunks (their slots are 0). */
static void ksmdev_region_free_leaf(struct ksmdev_region *region,
				    unsigned long i)
{
	struct ksmdev_chunk **leaf = region->dir[i];
	unsigned long j;

	if (!leaf)
		return;
	for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++) {
		if (!leaf[j])
			continue;
		ksmdev_meta_free(leaf[j], sizeof(*leaf[j]));
		region->meta_bytes -= ksmdev_meta_size(sizeof(*leaf[j]));
	}
	ksmdev_meta_free(leaf, KSMDEV_LEAF_CHUNKS * sizeof(*leaf));
	region->meta_bytes -= ksmdev_meta_size(KSMDEV_LEAF_CHUNKS *
					       sizeof(*leaf));
	region->dir[i] = NULL;
}

/*
 * Free @region and its scan state, which @ctx no longer counts, and drop
 * its domain.
 */
static void ksmdev_region_free(struct ksmdev_region *region)
{
	unsigned long i;

	for (i = 0; i < region->nr_dir; i++)
		ksmdev_region_free_leaf(region, i);
	ksmdev_domain_put(region->domain);
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
	const unsigned int chunk_bits = KSMDEV_CHUNK_BITS;
	const unsigned int leaf_bits = KSMDEV_LEAF_BITS;

	while (addr < end) {
		unsigned long off = addr - region->base;
		struct ksmdev_chunk **leaf = region->dir[off >> leaf_bits];
		struct ksmdev_chunk *chunk;

		if (!leaf) {
			addr = region->base + ((off >> leaf_bits) + 1) * BIT(leaf_bits);
			continue;
		}
		chunk = leaf[(off >> chunk_bits) & (KSMDEV_LEAF_CHUNKS - 1)];
		if (!chunk) {
			addr = region->base + ((off >> chunk_bits) + 1) * BIT(chunk_bits);
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
			ksmdev_slot_set(ctx, region, slot, 0);
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
	unsigned long page = (addr - region->base) >> PAGE_SHIFT;
	unsigned long chunk = page >> KSMDEV_CHUNK_SHIFT;
	struct ksmdev_chunk ***leafp = &region->dir[chunk >> KSMDEV_LEAF_SHIFT];
	struct ksmdev_chunk **chunkp;

	lockdep_assert_held(&ksmdev_lock);
	if (!*leafp) {
		*leafp = ksmdev_meta_alloc(KSMDEV_LEAF_CHUNKS * sizeof(**leafp),
					   KSMDEV_GFP_SCAN);
		if (!*leafp)
			return NULL;
		region->meta_bytes += ksmdev_meta_size(KSMDEV_LEAF_CHUNKS *
						       sizeof(**leafp));
	}
	chunkp = &(*leafp)[chunk & (KSMDEV_LEAF_CHUNKS - 1)];
	if (!*chunkp) {
		*chunkp = ksmdev_meta_alloc(sizeof(**chunkp), KSMDEV_GFP_SCAN);
		if (!*chunkp)
			return NULL;
		region->meta_bytes += ksmdev_meta_size(sizeof(**chunkp));
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
	region = ksmdev_region_alloc(start, start, end, r->flags);
	if (!region) {
		err = -ENOMEM;
		goto unlock;
	}
	if (r->domain) {
		region->domain = ksmdev_domain_get(r->domain);
		if (!region->domain) {
			ksmdev_region_free(region);
			err = -ENOMEM;
			goto unlock;
		}
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

/*
 * What cutting the middle out of a region needs, allocated before anything
 * changes (KSM_REGION_SPLIT): the region for the tail, and a leaf and a
 * chunk for the tail's share of a leaf or chunk that the cut goes through
 * (the head keeps the original). Unused parts are freed again.
 */
struct ksmdev_cut {
	struct ksmdev_region *tail;
	struct ksmdev_chunk **leaf;
	struct ksmdev_chunk *chunk;
};

static void ksmdev_cut_free(struct ksmdev_cut *cut)
{
	if (cut->tail)
		ksmdev_region_free(cut->tail);
	ksmdev_meta_free(cut->leaf, KSMDEV_LEAF_CHUNKS * sizeof(*cut->leaf));
	ksmdev_meta_free(cut->chunk, sizeof(*cut->chunk));
	memset(cut, 0, sizeof(*cut));
}

/*
 * Allocate @cut for taking [start, end) out of the middle of @region (under
 * ksmdev_lock). The tail's grid is the one of @region's leaf that @end is
 * in, so that leaves, chunks and slots keep their indices when they move.
 */
static int ksmdev_cut_prepare(struct ksmdev_cut *cut,
			      struct ksmdev_region *region,
			      unsigned long start, unsigned long end)
{
	unsigned long base = region->base +
		(((end - region->base) >> KSMDEV_LEAF_BITS) << KSMDEV_LEAF_BITS);

	lockdep_assert_held(&ksmdev_lock);
	cut->tail = ksmdev_region_alloc(base, end, region->end, region->flags);
	cut->leaf = ksmdev_meta_alloc(KSMDEV_LEAF_CHUNKS * sizeof(*cut->leaf),
				      GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	cut->chunk = ksmdev_meta_alloc(sizeof(*cut->chunk),
				       GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!cut->tail || !cut->leaf || !cut->chunk) {
		ksmdev_cut_free(cut);
		return -ENOMEM;
	}
	return 0;
}

/*
 * Free the leaves and chunks of @region that no longer cover any of
 * [start, end) (their slots were forgotten). Only the leaves at either end
 * can be partly outside, so only theirs are looked at chunk by chunk.
 */
static void ksmdev_region_prune(struct ksmdev_region *region)
{
	unsigned long i, j, lstart, cstart;
	struct ksmdev_chunk **leaf;

	for (i = 0; i < region->nr_dir; i++) {
		leaf = region->dir[i];
		if (!leaf)
			continue;
		lstart = region->base + (i << KSMDEV_LEAF_BITS);
		if (lstart >= region->end ||
		    lstart + BIT(KSMDEV_LEAF_BITS) <= region->start) {
			ksmdev_region_free_leaf(region, i);
			continue;
		}
		if (lstart >= region->start &&
		    lstart + BIT(KSMDEV_LEAF_BITS) <= region->end)
			continue;
		for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++) {
			cstart = lstart + (j << KSMDEV_CHUNK_BITS);
			if (!leaf[j] || (cstart < region->end &&
					 cstart + BIT(KSMDEV_CHUNK_BITS) >
					 region->start))
				continue;
			ksmdev_meta_free(leaf[j], sizeof(*leaf[j]));
			region->meta_bytes -= ksmdev_meta_size(sizeof(*leaf[j]));
			leaf[j] = NULL;
		}
	}
}

/* Bytes of one leaf and of one chunk, as ksmdev_meta_alloc() counts them. */
#define KSMDEV_LEAF_BYTES	\
	ksmdev_meta_size(KSMDEV_LEAF_CHUNKS * sizeof(struct ksmdev_chunk *))
#define KSMDEV_CHUNK_BYTES	ksmdev_meta_size(sizeof(struct ksmdev_chunk))

/* @chunk goes from @region to @tail: its bytes and merged slots with it. */
static void ksmdev_cut_account(struct ksmdev_region *region,
			       struct ksmdev_region *tail,
			       const struct ksmdev_chunk *chunk)
{
	unsigned long k, merged = 0;

	for (k = 0; k < KSMDEV_CHUNK_PAGES; k++)
		merged += !!(chunk->slot[k] & KSMDEV_SLOT_MERGED);
	region->meta_bytes -= KSMDEV_CHUNK_BYTES;
	tail->meta_bytes += KSMDEV_CHUNK_BYTES;
	region->nr_merging -= merged;
	tail->nr_merging += merged;
}

/* Move chunk @j of @from (a leaf of @region) to @to (a leaf of @tail). */
static void ksmdev_cut_move_chunk(struct ksmdev_region *region,
				  struct ksmdev_chunk **from,
				  struct ksmdev_region *tail,
				  struct ksmdev_chunk **to, unsigned long j)
{
	if (!from[j])
		return;
	ksmdev_cut_account(region, tail, from[j]);
	to[j] = from[j];
	from[j] = NULL;
}

/* Move leaf @i of @region, with its chunks, to leaf @t of @tail. */
static void ksmdev_cut_move_leaf(struct ksmdev_region *region,
				 unsigned long i, struct ksmdev_region *tail,
				 unsigned long t)
{
	struct ksmdev_chunk **leaf = region->dir[i];
	unsigned long j;

	if (!leaf)
		return;
	for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++)
		if (leaf[j])
			ksmdev_cut_account(region, tail, leaf[j]);
	tail->dir[t] = leaf;
	region->dir[i] = NULL;
	region->meta_bytes -= KSMDEV_LEAF_BYTES;
	tail->meta_bytes += KSMDEV_LEAF_BYTES;
}

/*
 * Take [start, end) out of the middle of @region, whose slots there are
 * forgotten already: @region keeps [region->start, start), cut->tail gets
 * [end, region->end) with the slots of those pages, as they are (same
 * context, so every counter stays right; unstable nodes are found by
 * address, not by slot). Leaves and chunks wholly after the cut move; the
 * ones the cut goes through are shared out, the tail's part going to the
 * spare leaf or chunk of @cut.
 */
static void ksmdev_cut_middle(struct ksmdev_region *region,
			      struct ksmdev_cut *cut,
			      unsigned long start, unsigned long end)
{
	struct ksmdev_region *tail = cut->tail;
	unsigned long le = (end - region->base) >> KSMDEV_LEAF_BITS;
	unsigned long ls = (start - 1 - region->base) >> KSMDEV_LEAF_BITS;
	unsigned long ce, cs, i, j, k, first;
	struct ksmdev_chunk **from, **to;

	/* Whole leaves after the one @end is in (the tail's leaf 0). */
	for (i = le + 1; i < region->nr_dir; i++)
		ksmdev_cut_move_leaf(region, i, tail, i - le);
	from = region->dir[le];
	if (!from)
		return;
	if (le > ls) {
		/* The head has nothing in this leaf: it moves whole. */
		ksmdev_cut_move_leaf(region, le, tail, 0);
		return;
	}
	/* Both keep pages in leaf @le: the tail gets the spare leaf. */
	to = cut->leaf;
	cut->leaf = NULL;
	tail->dir[0] = to;
	tail->meta_bytes += KSMDEV_LEAF_BYTES;
	ce = ((end - region->base) >> KSMDEV_CHUNK_BITS) &
		(KSMDEV_LEAF_CHUNKS - 1);
	cs = ((start - 1 - region->base) >> KSMDEV_CHUNK_BITS) &
		(KSMDEV_LEAF_CHUNKS - 1);
	for (j = ce + 1; j < KSMDEV_LEAF_CHUNKS; j++)
		ksmdev_cut_move_chunk(region, from, tail, to, j);
	if (ce > cs) {
		ksmdev_cut_move_chunk(region, from, tail, to, ce);
		return;
	}
	if (!from[ce])
		return;
	/* Both keep pages in chunk @ce: the tail's slots go to the spare. */
	to[ce] = cut->chunk;
	cut->chunk = NULL;
	tail->meta_bytes += KSMDEV_CHUNK_BYTES;
	first = ((end - region->base) >> PAGE_SHIFT) & (KSMDEV_CHUNK_PAGES - 1);
	for (k = first; k < KSMDEV_CHUNK_PAGES; k++) {
		u64 slot = from[ce]->slot[k];

		to[ce]->slot[k] = slot;
		from[ce]->slot[k] = 0;
		if (slot & KSMDEV_SLOT_MERGED) {
			region->nr_merging--;
			tail->nr_merging++;
		}
	}
}

/* Link @region into @ctx's tree, by start (it overlaps none there). */
static void ksmdev_region_insert(struct ksmdev_ctx *ctx,
				 struct ksmdev_region *region)
{
	struct rb_node **link = &ctx->regions.rb_node, *parent = NULL;

	while (*link) {
		parent = *link;
		if (region->start <
		    rb_entry(parent, struct ksmdev_region, node)->start)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&region->node, parent, link);
	rb_insert_color(&region->node, &ctx->regions);
}

/*
 * Take [start, end) (inside @region, not all of it) out of @region of @ctx,
 * under ksmdev_lock: its pages' scan state is forgotten (their merges were
 * undone), the rest keeps its own. Cutting the middle out uses @cut.
 */
static void ksmdev_region_cut(struct ksmdev_ctx *ctx,
			      struct ksmdev_region *region,
			      unsigned long start, unsigned long end,
			      struct ksmdev_cut *cut)
{
	unsigned long pages = (end - start) >> PAGE_SHIFT;
	struct ksmdev_region *tail;

	lockdep_assert_held(&ksmdev_lock);
	ksmdev_unstable_forget(ctx, start, end);
	ksmdev_region_forget(ctx, region, start, end);
	ctx->nr_pages -= pages;
	ksmdev_stats_add(0, -(long)pages);
	region->going = false;
	if (start == region->start) {
		/* The order in the tree stays: regions never overlap. */
		region->start = end;
	} else if (end == region->end) {
		region->end = start;
	} else {
		tail = cut->tail;
		ksmdev_cut_middle(region, cut, start, end);
		cut->tail = NULL;
		region->end = start;
		/* A reference of its own to the domain, which @region holds. */
		tail->domain = region->domain;
		if (tail->domain)
			tail->domain->regions++;
		ksmdev_region_prune(tail);
		ksmdev_region_insert(ctx, tail);
		ctx->nr_regions++;
		ksmdev_stats_add(1, 0);
	}
	ksmdev_region_prune(region);
}

/**
 * ksmdev_region_remove - unmerge and unregister the regions inside a range
 * @ctx: the caller's context (ctx->mm == current->mm)
 * @r:   without KSM_REGION_SPLIT, a range that must cover one or more whole
 *       regions; with it, any range: the parts of regions outside it stay
 *       registered, as regions of their own
 *
 * Every region is unmerged before any is removed: if unmerging fails, all
 * stay registered, what was unmerged stays correct, and the call can be
 * repeated. With KSM_REGION_SPLIT only the pages inside the range are
 * unmerged; what a cut needs is allocated before anything changes, so
 * that ENOMEM and ENOSPC leave everything as it was.
 *
 * Locking: ctx->lock throughout, so that the regions stay (nothing else
 * removes them: close cannot run during an ioctl of the same file, the
 * scanner drops an exited context's regions only with a trylock of
 * ctx->lock). The regions are marked going under ksmdev_lock, so that the
 * scanner leaves them alone (a region being cut, all of it, for that
 * time), then unmerged without ksmdev_lock (the unmerge takes it for a
 * moment per chunk), then removed or cut under it again.
 *
 * Return: 0, -EINVAL (the range cuts a region, without KSM_REGION_SPLIT),
 * -ENOENT (no registered page in it), -ENOSPC (a cut would pass
 * max_regions), -ENOMEM or -EINTR (unmerging failed, or no memory for a
 * cut).
 */
int ksmdev_region_remove(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	bool split = r->flags & KSM_REGION_SPLIT;
	struct ksmdev_region *first, *region;
	struct ksmdev_cut cut = { };
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
	for (node = &first->node; node && !split; node = rb_next(node)) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		if (region->start < start || region->end > end) {
			err = -EINVAL;
			goto out;
		}
	}
	ksmdev_lock_acquire();
	/* Only a region cut at both ends makes one more. */
	if (first->start < start && first->end > end) {
		if (ctx->nr_regions >= READ_ONCE(ksmdev_max_regions))
			err = -ENOSPC;
		else
			err = ksmdev_cut_prepare(&cut, first, start, end);
		if (err) {
			mutex_unlock(&ksmdev_lock);
			goto out;
		}
	}
	ksmdev_regions_set_going(first, end, true);
	mutex_unlock(&ksmdev_lock);

	if (mmap_read_lock_killable(ctx->mm)) {
		err = -EINTR;
	} else {
		for (node = &first->node; node && !err; node = rb_next(node)) {
			region = rb_entry(node, struct ksmdev_region, node);
			if (region->start >= end)
				break;
			err = ksmdev_unmerge_range(ctx, region,
						   max(start, region->start),
						   min(end, region->end));
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
		if (region->start < start || region->end > end) {
			ksmdev_region_cut(ctx, region, max(start, region->start),
					  min(end, region->end), &cut);
			continue;
		}
		rb_erase(&region->node, &ctx->regions);
		ksmdev_region_drop(ctx, region);
	}
unlock:
	ksmdev_cut_free(&cut);
	mutex_unlock(&ksmdev_lock);
out:
	mutex_unlock(&ctx->lock);
	return err;
}

/*
 * This context's share of metadata_bytes (struct ksm_mm_stats): its
 * regions with their directories, leaves and chunks, and its unstable
 * nodes. Not the context itself, nor the stable nodes and domains, which
 * serve every context that maps them. Called with ksmdev_lock held.
 */
u64 ksmdev_ctx_metadata(struct ksmdev_ctx *ctx)
{
	struct rb_node *node;
	u64 bytes;

	lockdep_assert_held(&ksmdev_lock);
	bytes = (u64)ctx->nr_unstable * ksmdev_unstable_bytes();
	for (node = rb_first(&ctx->regions); node; node = rb_next(node))
		bytes += rb_entry(node, struct ksmdev_region, node)->meta_bytes;
	return bytes;
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
