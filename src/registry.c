// SPDX-License-Identifier: GPL-2.0
/*
 * The registry: contexts (one per open of /dev/ksm) and their regions.
 *
 * A context's regions live in an rbtree ordered by start address. Regions
 * never overlap, so "the first region that ends after addr" answers both
 * the overlap check of a registration and the scanner's "where next", in
 * O(log n) for thousands of regions.
 *
 * Every function here runs with ksmdev_lock held, except the allocation
 * and freeing of objects nobody else can see yet (or any more).
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
	ctx = ksmdev_meta_alloc(sizeof(*ctx), GFP_KERNEL_ACCOUNT);
	if (!ctx) {
		mutex_unlock(&ksmdev_lock);
		return ERR_PTR(-ENOMEM);
	}
	ctx->mm = current->mm;
	mmgrab(ctx->mm);
	ctx->pid = task_tgid_nr(current);
	ctx->regions = RB_ROOT;
	list_add_tail(&ctx->list, &ksmdev_ctx_list);
	WRITE_ONCE(ksmdev_stats.mms, ksmdev_stats.mms + 1);
	mutex_unlock(&ksmdev_lock);
	return ctx;
}

/*
 * Called at the last close(): the regions are dropped without unmerging
 * (ABI.md, "Close and exit"); merged pages stay mapped copy-on-write.
 */
void ksmdev_ctx_destroy(struct ksmdev_ctx *ctx)
{
	ksmdev_lock_acquire();
	ksmdev_scan_forget_ctx(ctx);
	ksmdev_ctx_drop_regions(ctx);
	list_del(&ctx->list);
	WRITE_ONCE(ksmdev_stats.mms, ksmdev_stats.mms - 1);
	mmdrop(ctx->mm);
	ksmdev_meta_free(ctx, sizeof(*ctx));
	mutex_unlock(&ksmdev_lock);
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

	region = ksmdev_meta_alloc(sizeof(*region), GFP_KERNEL_ACCOUNT);
	if (!region)
		return NULL;
	region->start = start;
	region->end = end;
	region->flags = flags;
	region->nr_dir = DIV_ROUND_UP(chunks, KSMDEV_LEAF_CHUNKS);
	region->dir = ksmdev_meta_alloc(region->nr_dir * sizeof(*region->dir),
					GFP_KERNEL_ACCOUNT);
	if (!region->dir) {
		ksmdev_meta_free(region, sizeof(*region));
		return NULL;
	}
	return region;
}

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
 * ksmdev_region_slot - the scan state word of the page at @addr
 * @region: a region of a live context
 * @addr:   an address inside @region
 *
 * Allocates the leaf and the chunk on first use. Returns NULL when memory
 * runs out: the page is then simply not tracked this time.
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
					   GFP_KERNEL);
		if (!*leafp)
			return NULL;
	}
	chunkp = &(*leafp)[chunk & (KSMDEV_LEAF_CHUNKS - 1)];
	if (!*chunkp) {
		*chunkp = ksmdev_meta_alloc(sizeof(**chunkp), GFP_KERNEL);
		if (!*chunkp)
			return NULL;
	}
	return &(*chunkp)->slot[page & (KSMDEV_CHUNK_PAGES - 1)];
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

	lockdep_assert_held(&ksmdev_lock);
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

/**
 * ksmdev_region_add - register [r->addr, r->addr + r->len) of the caller
 * @ctx: the caller's context (ctx->mm == current->mm)
 * @r:   the range, already validated for alignment, size and flags
 *
 * Return: 0, -EEXIST (overlap), -ENOSPC (max_regions), -ENOMEM (hole in the
 * mapping, or no memory), -EINVAL (unsuitable mapping), -EINTR.
 */
int ksmdev_region_add(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	struct rb_node **link, *parent = NULL;
	struct ksmdev_region *region, *next;
	int err;

	ksmdev_lock_acquire();
	next = ksmdev_region_next(ctx, start);
	if (next && next->start < end) {
		err = -EEXIST;
		goto out;
	}
	if (ctx->nr_regions >= READ_ONCE(ksmdev_max_regions)) {
		err = -ENOSPC;
		goto out;
	}
	err = ksmdev_check_vmas(ctx->mm, start, end);
	if (err)
		goto out;
	region = ksmdev_region_alloc(start, end, r->flags);
	if (!region) {
		err = -ENOMEM;
		goto out;
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
out:
	mutex_unlock(&ksmdev_lock);
	return err;
}

/* Count @region out of @ctx and free it; the caller unlinks it. */
static void ksmdev_region_forget(struct ksmdev_ctx *ctx,
				 struct ksmdev_region *region)
{
	ctx->nr_regions--;
	ctx->nr_pages -= ksmdev_region_pages(region);
	ksmdev_stats_add(-1, -(long)ksmdev_region_pages(region));
	ksmdev_region_free(region);
}

/**
 * ksmdev_region_remove - unregister the regions inside a range
 * @ctx: the caller's context
 * @r:   a range that must cover one or more whole regions
 *
 * Return: 0, -EINVAL (the range cuts a region), -ENOENT (no region in it).
 */
int ksmdev_region_remove(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	struct ksmdev_region *first, *region;
	struct rb_node *node;
	int err = 0;

	ksmdev_lock_acquire();
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
	node = &first->node;
	while (node) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		node = rb_next(node);
		rb_erase(&region->node, &ctx->regions);
		ksmdev_region_forget(ctx, region);
	}
out:
	mutex_unlock(&ksmdev_lock);
	return err;
}

/* Forget every region of @ctx, without unmerging (close, or exit). */
void ksmdev_ctx_drop_regions(struct ksmdev_ctx *ctx)
{
	struct ksmdev_region *region, *tmp;

	lockdep_assert_held(&ksmdev_lock);
	rbtree_postorder_for_each_entry_safe(region, tmp, &ctx->regions, node)
		ksmdev_region_forget(ctx, region);
	ctx->regions = RB_ROOT;
}
