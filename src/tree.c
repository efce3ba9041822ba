// SPDX-License-Identifier: GPL-2.0
/*
 * DOC: the stable and unstable trees
 *
 * As in mm/ksm.c, merged pages live in a stable tree and this full scan's
 * candidates in an unstable tree, both searched by content. Unlike mm/ksm.c,
 * both are ordered by the xxh64 hash of the content, which the scanner has
 * computed anyway to tell volatile pages: a search costs no page lookups
 * and no memcmp() per level, only one memcmp() to confirm a hit. A stable
 * page's content never changes, so its key is exact. An unstable node's key
 * is the content when it was inserted: the page may have changed since, so
 * a hit is only a hint, and the merge compares again under the page table
 * lock (ksmdev_replace_page()). Because keys never change once inserted,
 * the unstable tree cannot be corrupted by writes, as mm/ksm.c's can.
 *
 * The unstable tree is emptied at the start of every full scan. A stable
 * node is in its tree while a slot counts it as mapped (its sharers). At
 * zero, if nothing else holds the page, the node is freed with its page.
 * If something does (PTEs left after a close, in a forked child, or moved
 * out of every region by mremap; a pin), the node becomes an *orphan*: it
 * leaves its tree (which may be a closed context's, and no candidate may
 * find a page that no registered page maps) and waits on the orphan list,
 * counted in pages_orphaned and against max_kernel_pages, keeping its page
 * reference, until the page has no other holder (ksmdev_orphans_reap(),
 * from a delayed work while orphans exist). Otherwise a tenant could close
 * its contexts and merge again, round after round, to hold any number of
 * merged pages outside the limit. An orphan is never used again for a new
 * merge: its content is merged into a new stable page if found again, so
 * that a scope's tree only ever holds pages of that scope's live sharers.
 * run=2 cannot unmerge orphans (no registered page maps them): they stay
 * counted until freed.
 *
 * Memory cgroups: a stable page is allocated with __GFP_ACCOUNT while the
 * scanner works on the context whose page it first replaces (scan.c sets
 * the active memcg to that mm's for each window), so it is charged, as
 * kernel memory, to that process's cgroup, and uncharged by the kernel
 * when it is freed (mem_cgroup_uncharge() handles kmem-charged pages on the
 * __folio_put() path; folio_memcg() of a kmem page is its objcg's memcg,
 * so the NR_FILE_MAPPED updates of the file rmap go to that cgroup too).
 * If the charge fails (memory.max), the merge is not done. Nodes and slots
 * are charged the same way (__GFP_ACCOUNT).
 *
 * A slot that maps a stable page holds the page's PFN; the node is found
 * from the page itself: while the node lives, its page carries
 * PG_owner_priv_1 and page->private points to the node. Both are the
 * owner's to use on a page that is neither page cache (no mapping) nor
 * swap cache (not swap-backed), as ours never are; both are cleared when
 * the node is freed, so a page left mapped after that (or by an earlier
 * load of the module) is no longer taken for ours.
 *
 * Counters follow the in-kernel meanings: pages_shared is the number of
 * stable pages with a sharer, pages_sharing the further sharers, and
 * pages_unshared the slots that went into an unstable tree (counted until
 * the page's next visit, as mm/ksm.c does); pages_volatile is the candidates
 * seen but in no tree.
 *
 * NUMA (merge_across_nodes=0): pages merge only with pages of their own
 * node, into a stable page allocated on that node. Rather than a tree per
 * node (mm/ksm.c's root_stable_tree[nid]), which every scope (the global
 * trees, each context's, each domain's) would need, the node is part of
 * the key: ksmdev_tree_key() puts it in the top bits of the hash, so that
 * one node's pages sort together and never meet another's. The setting
 * changes only while no merged page exists (main.c), so the stable trees
 * hold keys of one kind; unstable nodes filed under the other kind until
 * the next full scan are only missed, never wrongly merged (a merge always
 * compares contents, and checks the nodes, scan.c).
 *
 * Everything here runs under ksmdev_lock.
 */
#include <linux/highmem.h>
#include <linux/slab.h>
#include <linux/workqueue.h>

#include "ksmdev.h"

struct ksmdev_trees ksmdev_global_trees = {
	.stable = RB_ROOT,
	.unstable = RB_ROOT,
};

/*
 * Unstable nodes are the most numerous objects (a unique page visited in
 * this pass has one), stable nodes the next (one per distinct merged
 * content): caches of their own hold them at their size, not in the next
 * kmalloc bucket (72 and 56 bytes, not 96 and 64).
 */
static struct kmem_cache *ksmdev_unstable_cache;
static struct kmem_cache *ksmdev_stable_cache;

/* Stable nodes alive, orphans included: what max_kernel_pages limits. */
static unsigned long ksmdev_nr_stable;
/* Orphaned stable nodes (struct ksmdev_stable.orphan). */
static LIST_HEAD(ksmdev_orphans);

static void ksmdev_reap_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(ksmdev_reap_work, ksmdev_reap_fn);
/*
 * How often orphans are looked at: a read of each orphan's page count,
 * under ksmdev_lock. An orphan's page (and its memcg charge) outlives its
 * last mapping by at most this long.
 */
#define KSMDEV_REAP_INTERVAL	(HZ / 2)
/* Slots with KSMDEV_SLOT_SEEN: candidates being tracked. */
static unsigned long ksmdev_nr_tracked;

/*
 * The merge domains (ABI version 2), by id: a region with a non-zero
 * domain holds a reference (struct ksmdev_domain.regions). A handful of
 * tenants, looked up at registration only.
 */
static struct rb_root ksmdev_domains = RB_ROOT;

struct ksmdev_trees *ksmdev_trees_of(struct ksmdev_ctx *ctx,
				     struct ksmdev_region *region)
{
	if (region->flags & KSM_REGION_SCOPE_MM)
		return &ctx->trees;
	if (region->domain)
		return &region->domain->trees;
	return &ksmdev_global_trees;
}

/**
 * ksmdev_domain_get - a reference to domain @id, made on first use
 * @id: non-zero
 *
 * Called with ksmdev_lock held. Return: the domain, or NULL without memory.
 */
struct ksmdev_domain *ksmdev_domain_get(u64 id)
{
	struct rb_node **link = &ksmdev_domains.rb_node, *parent = NULL;
	struct ksmdev_domain *domain;

	lockdep_assert_held(&ksmdev_lock);
	while (*link) {
		parent = *link;
		domain = rb_entry(parent, struct ksmdev_domain, node);
		if (id == domain->id) {
			domain->regions++;
			return domain;
		}
		link = id < domain->id ? &parent->rb_left : &parent->rb_right;
	}
	/* Under ksmdev_lock: one try at reclaim, ENOMEM rather than an OOM. */
	domain = ksmdev_meta_alloc(sizeof(*domain),
				   GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!domain)
		return NULL;
	domain->id = id;
	domain->regions = 1;
	domain->trees.stable = RB_ROOT;
	domain->trees.unstable = RB_ROOT;
	rb_link_node(&domain->node, parent, link);
	rb_insert_color(&domain->node, &ksmdev_domains);
	return domain;
}

/*
 * Drop a region's reference to @domain (NULL: the global domain). With the
 * last, the domain goes: its trees are empty (see struct ksmdev_domain).
 * Should a stable node remain all the same, the domain stays, to be freed
 * at unload, rather than leave the node pointing at freed trees.
 */
void ksmdev_domain_put(struct ksmdev_domain *domain)
{
	lockdep_assert_held(&ksmdev_lock);
	if (!domain || --domain->regions)
		return;
	if (WARN_ON_ONCE(!RB_EMPTY_ROOT(&domain->trees.stable)))
		return;
	ksmdev_unstable_reset(&domain->trees);
	rb_erase(&domain->node, &ksmdev_domains);
	ksmdev_meta_free(domain, sizeof(*domain));
}

/* A full scan begins: every domain's unstable tree is emptied. */
void ksmdev_domains_unstable_reset(void)
{
	struct ksmdev_domain *domain;
	struct rb_node *node;

	lockdep_assert_held(&ksmdev_lock);
	for (node = rb_first(&ksmdev_domains); node; node = rb_next(node)) {
		domain = rb_entry(node, struct ksmdev_domain, node);
		ksmdev_unstable_reset(&domain->trees);
	}
}

/* What one unstable node costs (struct ksm_mm_stats.metadata_bytes). */
size_t ksmdev_unstable_bytes(void)
{
	return kmem_cache_size(ksmdev_unstable_cache);
}

static void ksmdev_stat_add(u64 *counter, long delta)
{
	WRITE_ONCE(*counter, *counter + delta);
}

/* Free @stable, out of its tree or orphan list already, and drop its page. */
static void ksmdev_stable_free(struct ksmdev_stable *stable)
{
	ksmdev_nr_stable--;
	/* No longer ours: PTEs that still map the page keep it alive. */
	clear_bit(PG_owner_priv_1, ksmdev_page_flags(stable->kpage));
	set_page_private(stable->kpage, 0);
	put_page(stable->kpage);
	ksmdev_meta_cache_free(ksmdev_stable_cache, stable);
}

/*
 * Nothing but us holds @stable's page any more, or the page is poisoned:
 * memory_failure() keeps its own reference to a poisoned page for good
 * (the frame must never be used again), so its page count never comes
 * back to one. A poisoned page is nobody's memory to limit or charge; it
 * is not ours to keep counting either.
 */
static bool ksmdev_orphan_done(struct ksmdev_stable *stable)
{
	return page_count(stable->kpage) == 1 || PageHWPoison(stable->kpage);
}

/*
 * @stable lost its last sharer (or never had one): free it, or orphan it if
 * something else still holds its page. A reference taken in passing (a
 * speculative get_page_unless_zero() of a PFN walker, GUP-fast) only
 * makes it an orphan that the next reap frees.
 */
static void ksmdev_stable_retire(struct ksmdev_stable *stable)
{
	rb_erase(&stable->node, &stable->trees->stable);
	stable->trees = NULL;
	if (ksmdev_orphan_done(stable)) {
		ksmdev_stable_free(stable);
		return;
	}
	list_add_tail(&stable->orphan, &ksmdev_orphans);
	ksmdev_stat_add(&ksmdev_stats.pages_orphaned, 1);
	/* Does nothing if already pending. */
	schedule_delayed_work(&ksmdev_reap_work, KSMDEV_REAP_INTERVAL);
}

/**
 * ksmdev_orphans_reap - free the orphans whose page nobody else holds
 *
 * Called with ksmdev_lock held. A page count of one is our reference
 * alone: no PTE maps the page and nobody pins it, and nobody can map it
 * again (only a PTE copied from another could, and there is none).
 */
void ksmdev_orphans_reap(void)
{
	struct ksmdev_stable *stable, *tmp;

	lockdep_assert_held(&ksmdev_lock);
	list_for_each_entry_safe(stable, tmp, &ksmdev_orphans, orphan) {
		if (!ksmdev_orphan_done(stable))
			continue;
		list_del(&stable->orphan);
		ksmdev_stat_add(&ksmdev_stats.pages_orphaned, -1);
		ksmdev_stable_free(stable);
	}
}

static void ksmdev_reap_fn(struct work_struct *work)
{
	bool more;

	ksmdev_lock_acquire();
	ksmdev_orphans_reap();
	more = !list_empty(&ksmdev_orphans);
	mutex_unlock(&ksmdev_lock);
	if (more)
		schedule_delayed_work(&ksmdev_reap_work, KSMDEV_REAP_INTERVAL);
}

static void ksmdev_stable_get(struct ksmdev_stable *stable)
{
	if (stable->sharers++)
		ksmdev_stat_add(&ksmdev_stats.pages_sharing, 1);
	else
		ksmdev_stat_add(&ksmdev_stats.pages_shared, 1);
}

static void ksmdev_stable_put(struct ksmdev_stable *stable)
{
	if (--stable->sharers) {
		ksmdev_stat_add(&ksmdev_stats.pages_sharing, -1);
		return;
	}
	ksmdev_stat_add(&ksmdev_stats.pages_shared, -1);
	ksmdev_stable_retire(stable);
}

/* Retire @stable if nobody came to map it after all. */
void ksmdev_stable_release(struct ksmdev_stable *stable)
{
	if (!stable->sharers) {
		ksmdev_event(&ksmdev_events.stable_unused);
		ksmdev_stable_retire(stable);
	}
}

/**
 * ksmdev_stable_of - the stable node of a page, if it is one of ours
 * @page: a page the caller holds a reference to, or that a slot maps
 *
 * Return: the node, or NULL if @page is not a stable page of this load of
 * the module (see DOC).
 */
struct ksmdev_stable *ksmdev_stable_of(struct page *page)
{
	if (PageAnon(page) || page->mapping ||
	    !test_bit(PG_owner_priv_1, ksmdev_page_flags(page)))
		return NULL;
	return (struct ksmdev_stable *)page_private(page);
}

static u64 ksmdev_slot_pfn(u64 slot)
{
	return slot & KSMDEV_SLOT_PFN_MASK;
}

static struct ksmdev_stable *ksmdev_slot_stable(u64 slot)
{
	struct ksmdev_stable *stable;

	if (!(slot & KSMDEV_SLOT_STABLE))
		return NULL;
	stable = ksmdev_stable_of(pfn_to_page(ksmdev_slot_pfn(slot)));
	/* A slot counts as a sharer: its node cannot be gone. */
	WARN_ON_ONCE(!stable);
	return stable;
}

static long ksmdev_flag_delta(u64 old, u64 new, u64 flag)
{
	return (long)!!(new & flag) - (long)!!(old & flag);
}

/**
 * ksmdev_slot_set - change a page's scan state, and the counters with it
 * @ctx:    the context of the page's region
 * @region: the page's region
 * @slot:   the page's slot
 * @value: the new state
 *
 * The only place where slots change, so that the counters (global, of @ctx
 * and of @region) and the stable nodes' sharers always agree with the
 * slots. (Cutting a region moves slots as they are, with their counts:
 * registry.c.)
 */
void ksmdev_slot_set(struct ksmdev_ctx *ctx, struct ksmdev_region *region,
		     u64 *slot, u64 value)
{
	long merged = ksmdev_flag_delta(*slot, value, KSMDEV_SLOT_MERGED);
	u64 old = *slot;
	long zero = ksmdev_flag_delta(old, value, KSMDEV_SLOT_ZERO);

	lockdep_assert_held(&ksmdev_lock);
	if ((old & KSMDEV_SLOT_STABLE) != (value & KSMDEV_SLOT_STABLE) ||
	    ((old & KSMDEV_SLOT_STABLE) &&
	     ksmdev_slot_pfn(old) != ksmdev_slot_pfn(value))) {
		struct ksmdev_stable *from = ksmdev_slot_stable(old);
		struct ksmdev_stable *to = ksmdev_slot_stable(value);

		if (to)
			ksmdev_stable_get(to);
		if (from)
			ksmdev_stable_put(from);
	}
	*slot = value;

	ksmdev_nr_tracked += ksmdev_flag_delta(old, value, KSMDEV_SLOT_SEEN);
	ksmdev_stat_add(&ksmdev_stats.pages_unshared,
			ksmdev_flag_delta(old, value, KSMDEV_SLOT_UNSTABLE));
	ksmdev_stat_add(&ksmdev_stats.ksm_zero_pages, zero);
	WRITE_ONCE(ksmdev_stats.pages_volatile,
		   ksmdev_nr_tracked - ksmdev_stats.pages_unshared);
	ctx->nr_zero += zero;
	ctx->nr_merging += merged;
	region->nr_merging += merged;
}

/* The first node of @root whose hash is not below @hash. */
static struct rb_node *ksmdev_tree_lower_bound(struct rb_root *root, u64 hash,
					       size_t offset)
{
	struct rb_node *node = root->rb_node, *found = NULL;

	while (node) {
		u64 key = *(u64 *)((char *)node + offset);

		if (key >= hash) {
			found = node;
			node = node->rb_left;
		} else {
			node = node->rb_right;
		}
	}
	return found;
}

static void ksmdev_tree_insert(struct rb_root *root, struct rb_node *new,
			       u64 hash, size_t offset)
{
	struct rb_node **link = &root->rb_node, *parent = NULL;

	while (*link) {
		parent = *link;
		if (hash < *(u64 *)((char *)parent + offset))
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(new, parent, link);
	rb_insert_color(new, root);
}

#define KSMDEV_STABLE_HASH	(offsetof(struct ksmdev_stable, hash) - \
				 offsetof(struct ksmdev_stable, node))
#define KSMDEV_UNSTABLE_HASH	(offsetof(struct ksmdev_unstable, hash) - \
				 offsetof(struct ksmdev_unstable, node))

/* Bits of the key that hold the node when merge_across_nodes=0. */
#define KSMDEV_KEY_NID_SHIFT	(64 - NODES_SHIFT)

/**
 * ksmdev_tree_key - what @page is filed under in the trees
 * @hash: xxh64 of @page's content
 * @page: the page (a reference held)
 *
 * Return: @hash; with merge_across_nodes=0 on a NUMA kernel, its top
 * NODES_SHIFT bits replaced by @page's node (see DOC). A key is only ever
 * a hint: equal keys are confirmed by comparing the pages.
 */
u64 ksmdev_tree_key(u64 hash, struct page *page)
{
#if NODES_SHIFT
	if (!READ_ONCE(ksmdev_config.merge_across_nodes))
		return (hash & (U64_MAX >> NODES_SHIFT)) |
		       ((u64)page_to_nid(page) << KSMDEV_KEY_NID_SHIFT);
#endif
	return hash;
}

/**
 * ksmdev_stable_search - a stable page of @trees with @page's content
 * @trees: the scope's trees
 * @hash:  @page's key (ksmdev_tree_key())
 * @page:  the candidate page (a reference held)
 *
 * Return: the node, or NULL.
 */
struct ksmdev_stable *ksmdev_stable_search(struct ksmdev_trees *trees,
					   u64 hash, struct page *page)
{
	struct rb_node *node;

	node = ksmdev_tree_lower_bound(&trees->stable, hash,
				       KSMDEV_STABLE_HASH);
	for (; node; node = rb_next(node)) {
		struct ksmdev_stable *stable;

		stable = rb_entry(node, struct ksmdev_stable, node);
		if (stable->hash != hash)
			break;
		/* Poisoned: never read again, never given a sharer. */
		if (PageHWPoison(stable->kpage))
			continue;
		if (ksmdev_pages_identical(stable->kpage, page))
			return stable;
	}
	return NULL;
}

/*
 * A stable page is allocated on the node of the page it first replaces:
 * with merge_across_nodes=0 only there (__GFP_THISNODE: no merge rather
 * than a page on another node), otherwise there by preference.
 */
static gfp_t ksmdev_kpage_gfp(void)
{
	gfp_t gfp = GFP_HIGHUSER | __GFP_ACCOUNT | __GFP_NORETRY | __GFP_NOWARN;

	if (!READ_ONCE(ksmdev_config.merge_across_nodes))
		gfp |= __GFP_THISNODE;
	return gfp;
}

/**
 * ksmdev_stable_create - a new stable page with @page's content
 * @trees: the scope's trees
 * @hash:  @page's key (ksmdev_tree_key())
 * @page:  the page to copy
 *
 * The node has no sharer yet: give it some with ksmdev_slot_set(), then
 * ksmdev_stable_release() it, which frees it if none came.
 *
 * The page is charged to the active memory cgroup (see DOC): at that
 * cgroup's memory.max, no page, no merge.
 *
 * Return: the node, or NULL at max_kernel_pages (orphans included) or
 * without memory.
 */
struct ksmdev_stable *ksmdev_stable_create(struct ksmdev_trees *trees,
					   u64 hash, struct page *page)
{
	u64 limit = READ_ONCE(ksmdev_config.max_kernel_pages);
	struct ksmdev_stable *stable;

	if (limit && ksmdev_nr_stable >= limit) {
		ksmdev_stat_add(&ksmdev_stats.stable_nodes_limit_hits, 1);
		return NULL;
	}
	stable = ksmdev_meta_cache_alloc(ksmdev_stable_cache, KSMDEV_GFP_SCAN);
	if (!stable)
		return NULL;
	/*
	 * Not movable, not on the LRU: the kernel never migrates it. At the
	 * cgroup's limit, one try at reclaim and no OOM kill (__GFP_NORETRY):
	 * a merge is never worth killing a task of the tenant for.
	 */
	stable->kpage = alloc_pages_node(page_to_nid(page), ksmdev_kpage_gfp(),
					 0);
	if (!stable->kpage) {
		ksmdev_meta_cache_free(ksmdev_stable_cache, stable);
		return NULL;
	}
	copy_highpage(stable->kpage, page);
	stable->hash = hash;
	stable->trees = trees;
	ksmdev_tree_insert(&trees->stable, &stable->node, hash,
			   KSMDEV_STABLE_HASH);
	/* Ours until ksmdev_stable_free() (see DOC); nobody maps it yet. */
	set_page_private(stable->kpage, (unsigned long)stable);
	set_bit(PG_owner_priv_1, ksmdev_page_flags(stable->kpage));
	ksmdev_nr_stable++;
	return stable;
}

struct ksmdev_unstable *ksmdev_unstable_first(struct ksmdev_trees *trees,
					      u64 hash)
{
	struct rb_node *node;
	struct ksmdev_unstable *un;

	node = ksmdev_tree_lower_bound(&trees->unstable, hash,
				       KSMDEV_UNSTABLE_HASH);
	if (!node)
		return NULL;
	un = rb_entry(node, struct ksmdev_unstable, node);
	return un->hash == hash ? un : NULL;
}

struct ksmdev_unstable *ksmdev_unstable_next(struct ksmdev_unstable *un)
{
	struct rb_node *node = rb_next(&un->node);
	struct ksmdev_unstable *next;

	if (!node)
		return NULL;
	next = rb_entry(node, struct ksmdev_unstable, node);
	return next->hash == un->hash ? next : NULL;
}

int ksmdev_unstable_insert(struct ksmdev_trees *trees, u64 hash,
			   struct ksmdev_ctx *ctx, unsigned long addr)
{
	struct ksmdev_unstable *un;

	un = ksmdev_meta_cache_alloc(ksmdev_unstable_cache, KSMDEV_GFP_SCAN);
	if (!un)
		return -ENOMEM;
	un->trees = trees;
	un->hash = hash;
	un->ctx = ctx;
	un->addr = addr;
	list_add(&un->link, &ctx->unstable);
	ctx->nr_unstable++;
	ksmdev_tree_insert(&trees->unstable, &un->node, hash,
			   KSMDEV_UNSTABLE_HASH);
	return 0;
}

void ksmdev_unstable_erase(struct ksmdev_unstable *un)
{
	rb_erase(&un->node, &un->trees->unstable);
	list_del(&un->link);
	un->ctx->nr_unstable--;
	ksmdev_meta_cache_free(ksmdev_unstable_cache, un);
}

/* Erase @ctx's unstable nodes for addresses in [start, end). */
void ksmdev_unstable_forget(struct ksmdev_ctx *ctx, unsigned long start,
			    unsigned long end)
{
	struct ksmdev_unstable *un, *tmp;

	lockdep_assert_held(&ksmdev_lock);
	list_for_each_entry_safe(un, tmp, &ctx->unstable, link)
		if (un->addr >= start && un->addr < end)
			ksmdev_unstable_erase(un);
}

/* Empty @trees' unstable tree (a full scan begins). */
void ksmdev_unstable_reset(struct ksmdev_trees *trees)
{
	struct ksmdev_unstable *un, *tmp;

	lockdep_assert_held(&ksmdev_lock);
	rbtree_postorder_for_each_entry_safe(un, tmp, &trees->unstable, node) {
		list_del(&un->link);
		un->ctx->nr_unstable--;
		ksmdev_meta_cache_free(ksmdev_unstable_cache, un);
	}
	trees->unstable = RB_ROOT;
}

int ksmdev_trees_init(void)
{
	ksmdev_unstable_cache = KMEM_CACHE(ksmdev_unstable, 0);
	if (!ksmdev_unstable_cache)
		return -ENOMEM;
	ksmdev_stable_cache = KMEM_CACHE(ksmdev_stable, 0);
	if (!ksmdev_stable_cache) {
		kmem_cache_destroy(ksmdev_unstable_cache);
		return -ENOMEM;
	}
	return 0;
}

/*
 * Every context is gone, and the scanner stopped: only orphans are left,
 * and, as insurance, any node the global tree still holds (each should have
 * gone with its last sharer). Neither may leave PG_owner_priv_1 and
 * page->private on a page that outlives the module (mapped still), where a
 * reload's ksmdev_stable_of() would follow a pointer into freed memory:
 * ksmdev_stable_free() clears both. Their pages stay alive as long as their
 * mappings, no longer ours; their charge goes with them.
 */
void ksmdev_trees_exit(void)
{
	struct ksmdev_domain *domain, *dtmp;
	struct ksmdev_stable *stable, *tmp;

	cancel_delayed_work_sync(&ksmdev_reap_work);
	ksmdev_lock_acquire();
	list_for_each_entry_safe(stable, tmp, &ksmdev_orphans, orphan) {
		list_del(&stable->orphan);
		ksmdev_stat_add(&ksmdev_stats.pages_orphaned, -1);
		ksmdev_stable_free(stable);
	}
	rbtree_postorder_for_each_entry_safe(stable, tmp,
					     &ksmdev_global_trees.stable, node)
		ksmdev_stable_free(stable);
	ksmdev_global_trees.stable = RB_ROOT;
	/* Domains, as insurance too: each went with its last region. */
	rbtree_postorder_for_each_entry_safe(domain, dtmp, &ksmdev_domains,
					     node) {
		rbtree_postorder_for_each_entry_safe(stable, tmp,
						     &domain->trees.stable,
						     node)
			ksmdev_stable_free(stable);
		ksmdev_meta_free(domain, sizeof(*domain));
	}
	ksmdev_domains = RB_ROOT;
	mutex_unlock(&ksmdev_lock);
	kmem_cache_destroy(ksmdev_stable_cache);
	kmem_cache_destroy(ksmdev_unstable_cache);
}
