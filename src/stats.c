// SPDX-License-Identifier: GPL-2.0
/*
 * Counters and their debugfs view, /sys/kernel/debug/ksm/: one read-only
 * file per struct ksm_stats field (decimal and a newline), except that
 * "mms" is a table with a line per context, "pid regions registered_pages
 * merging_pages": ABI.md gives that name to both, and the table's line
 * count is the counter; "regions" likewise (ABI version 2), a line per
 * region, "pid start end domain flags merging_pages".
 *
 * The counters are written only under ksmdev_lock. Readers (the ioctl,
 * debugfs) read them without it and accept a momentarily stale value; each
 * field is a naturally aligned u64, so no reader sees a torn one.
 */
#include <linux/debugfs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>

#include "ksmdev.h"

struct ksm_stats ksmdev_stats;
struct ksmdev_events ksmdev_events;

static struct dentry *ksmdev_debugfs_dir;

/*
 * Bookkeeping memory goes through these two, so that metadata_bytes counts
 * what the allocator really hands out (the slab bucket, or whole pages for
 * a vmalloc) and returns to its old value when the objects are gone.
 * Called with ksmdev_lock held, or before an object is visible to anyone.
 */
size_t ksmdev_meta_size(size_t size)
{
	if (size > KMALLOC_MAX_CACHE_SIZE)
		return PAGE_ALIGN(size);
	return kmalloc_size_roundup(size);
}

void *ksmdev_meta_alloc(size_t size, gfp_t gfp)
{
	void *ptr = kvzalloc(size, gfp | __GFP_NOWARN);

	if (ptr)
		WRITE_ONCE(ksmdev_stats.metadata_bytes,
			   ksmdev_stats.metadata_bytes + ksmdev_meta_size(size));
	return ptr;
}

void ksmdev_meta_free(const void *ptr, size_t size)
{
	if (!ptr)
		return;
	kvfree(ptr);
	WRITE_ONCE(ksmdev_stats.metadata_bytes,
		   ksmdev_stats.metadata_bytes - ksmdev_meta_size(size));
}

/* The same, for objects of a cache of our own: their size is the cache's. */
void *ksmdev_meta_cache_alloc(struct kmem_cache *cache, gfp_t gfp)
{
	void *ptr = kmem_cache_zalloc(cache, gfp | __GFP_NOWARN);

	if (ptr)
		WRITE_ONCE(ksmdev_stats.metadata_bytes,
			   ksmdev_stats.metadata_bytes + kmem_cache_size(cache));
	return ptr;
}

void ksmdev_meta_cache_free(struct kmem_cache *cache, void *ptr)
{
	if (!ptr)
		return;
	kmem_cache_free(cache, ptr);
	WRITE_ONCE(ksmdev_stats.metadata_bytes,
		   ksmdev_stats.metadata_bytes - kmem_cache_size(cache));
}

#define KSMDEV_STAT(field)	{ #field, &ksmdev_stats.field }
static const struct {
	const char *name;
	u64 *value;
} ksmdev_stat_files[] = {
	KSMDEV_STAT(pages_shared),
	KSMDEV_STAT(pages_sharing),
	KSMDEV_STAT(pages_unshared),
	KSMDEV_STAT(pages_volatile),
	KSMDEV_STAT(full_scans),
	KSMDEV_STAT(pages_scanned),
	KSMDEV_STAT(ksm_zero_pages),
	KSMDEV_STAT(regions),
	KSMDEV_STAT(mms),
	KSMDEV_STAT(registered_pages),
	KSMDEV_STAT(stable_nodes_limit_hits),
	KSMDEV_STAT(metadata_bytes),
	KSMDEV_STAT(pages_orphaned),
	KSMDEV_STAT(advisor_pages_to_scan),
};

static_assert(ARRAY_SIZE(ksmdev_stat_files) * sizeof(u64) ==
	      sizeof(struct ksm_stats));

static int ksmdev_stat_get(void *data, u64 *val)
{
	*val = READ_ONCE(*(u64 *)data);
	return 0;
}
DEFINE_DEBUGFS_ATTRIBUTE(ksmdev_stat_fops, ksmdev_stat_get, NULL, "%llu\n");

static int ksmdev_mms_show(struct seq_file *m, void *unused)
{
	struct ksmdev_ctx *ctx;

	ksmdev_lock_acquire();
	list_for_each_entry(ctx, &ksmdev_ctx_list, list)
		seq_printf(m, "%d %lu %lu %lu\n", ctx->pid, ctx->nr_regions,
			   ctx->nr_pages, ctx->nr_merging);
	mutex_unlock(&ksmdev_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ksmdev_mms);

/*
 * One line per region of every context, in list then address order:
 * "pid start end domain flags merging_pages", the addresses and flags in
 * hexadecimal (0x...), the rest in decimal. ksmdev_lock is held for as
 * many lines as there are regions, as "mms" holds it for a line per
 * context: a few thousand lines of formatting, no page work.
 */
static int ksmdev_regions_show(struct seq_file *m, void *unused)
{
	struct ksmdev_region *region;
	struct ksmdev_ctx *ctx;
	struct rb_node *node;

	ksmdev_lock_acquire();
	list_for_each_entry(ctx, &ksmdev_ctx_list, list) {
		for (node = rb_first(&ctx->regions); node; node = rb_next(node)) {
			region = rb_entry(node, struct ksmdev_region, node);
			seq_printf(m, "%d %#lx %#lx %llu %#llx %lu\n", ctx->pid,
				   region->start, region->end,
				   region->domain ? region->domain->id : 0,
				   region->flags, region->nr_merging);
		}
	}
	mutex_unlock(&ksmdev_lock);
	return 0;
}
DEFINE_SHOW_ATTRIBUTE(ksmdev_regions);

void ksmdev_debugfs_init(void)
{
	int i;

	/* debugfs is optional: without it the ioctls still tell everything. */
	ksmdev_debugfs_dir = debugfs_create_dir("ksm", NULL);
	for (i = 0; i < ARRAY_SIZE(ksmdev_stat_files); i++) {
		/*
		 * "mms" and "regions" are the tables below; the line count
		 * of each is the counter.
		 */
		if (ksmdev_stat_files[i].value == &ksmdev_stats.mms ||
		    ksmdev_stat_files[i].value == &ksmdev_stats.regions)
			continue;
		debugfs_create_file_unsafe(ksmdev_stat_files[i].name, 0444,
					   ksmdev_debugfs_dir,
					   ksmdev_stat_files[i].value,
					   &ksmdev_stat_fops);
	}
	debugfs_create_file("mms", 0444, ksmdev_debugfs_dir, NULL,
			    &ksmdev_mms_fops);
	debugfs_create_file("regions", 0444, ksmdev_debugfs_dir, NULL,
			    &ksmdev_regions_fops);
	/* Diagnostics, not ABI: how much merging and breaking went on. */
	debugfs_create_file_unsafe("merge_events", 0444, ksmdev_debugfs_dir,
				   &ksmdev_events.merges, &ksmdev_stat_fops);
	debugfs_create_file_unsafe("cow_breaks", 0444, ksmdev_debugfs_dir,
				   &ksmdev_events.cow_breaks, &ksmdev_stat_fops);
	debugfs_create_file_unsafe("unmerge_events", 0444, ksmdev_debugfs_dir,
				   &ksmdev_events.unmerges, &ksmdev_stat_fops);
	debugfs_create_file_unsafe("pages_skipped", 0444, ksmdev_debugfs_dir,
				   &ksmdev_events.skips, &ksmdev_stat_fops);
	debugfs_create_file_unsafe("stable_unused", 0444, ksmdev_debugfs_dir,
				   &ksmdev_events.stable_unused,
				   &ksmdev_stat_fops);
}

void ksmdev_debugfs_exit(void)
{
	debugfs_remove(ksmdev_debugfs_dir);
}
