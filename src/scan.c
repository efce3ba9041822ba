// SPDX-License-Identifier: GPL-2.0
/*
 * DOC: the scanner
 *
 * One kthread, "ksmdev", walks every registered page of every context in
 * turn: pages_to_scan pages a batch, sleep_millisecs between batches. It
 * sleeps without any timer while nothing is registered or run is not
 * KSM_RUN_MERGE, and any configuration change or registration wakes it.
 *
 * Where the next batch starts is the scan cursor: a context and an address
 * in it. Only the cursor survives from one batch to the next (or across a
 * release of ksmdev_lock), never a pointer to a region: whoever removes the
 * context under the cursor moves the cursor on (ksmdev_scan_forget_ctx()),
 * and regions are found again from the address.
 *
 * An mm is worked on only inside a window that holds mmget_not_zero() and
 * mmap_read_lock, no longer than one batch, and cut short when its process
 * is exiting (we hold its last user), when somebody waits for ksmdev_lock or
 * for the mmap lock, or when the CPU is wanted: exit, munmap and the OOM
 * reaper are never held back by more than a page table's worth of work. The
 * page tables are walked directly, skipping empty PUDs and PMDs, so a sparse
 * region costs time in proportion to its present pages. Absent pages are
 * never faulted in, and only present anonymous pages of suitable VMAs are
 * read.
 *
 * The scanner holds ksmdev_lock through a window, so it never waits for an
 * mmap lock while holding it (include/ksmdev.h): it tries the lock, and if
 * that fails, lets go of ksmdev_lock, waits for the mmap lock, then takes
 * ksmdev_lock again and checks that the cursor still points at the same
 * context. A contended mm is thus scanned late, never skipped for good.
 * Regions being unregistered (region->going) are left alone: their unmerge
 * runs without ksmdev_lock and must not race with new merges.
 *
 * While advisor_target_scan_ms is set, the advisor (struct ksmdev_advisor)
 * chooses the batch size instead of pages_to_scan, and may make the scanner
 * sleep longer than sleep_millisecs to stay under advisor_max_cpu_percent.
 */
#include <linux/bitfield.h>
#include <linux/jiffies.h>
#include <linux/kthread.h>
#include <linux/moduleparam.h>
#include <linux/freezer.h>
#include <linux/highmem.h>
#include <linux/sched/mm.h>
#include <linux/math64.h>
#include <linux/xxhash.h>
#include <linux/slab.h>
#include <linux/memcontrol.h>

#include "ksmdev.h"

static struct task_struct *ksmdev_thread;
static DECLARE_WAIT_QUEUE_HEAD(ksmdev_thread_wait);
/* Bumped by every wake-up, so that a sleeping scanner notices a change. */
static atomic_t ksmdev_wake_seq = ATOMIC_INIT(0);

/**
 * struct ksmdev_cursor - where the scanner goes on (under ksmdev_lock)
 * @ctx:  the context being scanned; NULL: a new pass starts at the list head
 * @addr: the next address to look at in @ctx
 */
static struct ksmdev_cursor {
	struct ksmdev_ctx *ctx;
	unsigned long addr;
} ksmdev_cursor;

/* Pages gathered under one page table lock, examined after it is dropped. */
#define KSMDEV_BATCH	32

struct ksmdev_batch {
	unsigned int nr;
	unsigned long addr[KSMDEV_BATCH];
	struct page *page[KSMDEV_BATCH];
};

static bool ksmdev_should_run(void)
{
	/* Regions, not pages: a KSM_REGION_ALL may count none yet. */
	return READ_ONCE(ksmdev_config.run) == KSM_RUN_MERGE &&
	       READ_ONCE(ksmdev_stats.regions);
}

void ksmdev_scan_wake(void)
{
	atomic_inc(&ksmdev_wake_seq);
	wake_up_interruptible(&ksmdev_thread_wait);
}

/*
 * The scan window on one mm must end now. A KSM_MERGE_REGION caller (not a
 * kthread) stops for a signal instead of kthread_should_stop().
 */
static bool ksmdev_must_yield(struct mm_struct *mm, bool now)
{
	return atomic_read(&ksmdev_lock_waiters) || need_resched() ||
	       mmap_lock_is_contended(mm) ||
	       atomic_read(&mm->mm_users) <= 1 ||
	       (now ? signal_pending(current) : kthread_should_stop());
}

/*
 * The context an unmerge-all (run=2) works on, or goes to next (under
 * ksmdev_lock; NULL when none runs or it reached the list's end).
 */
static struct ksmdev_ctx *ksmdev_unmerge_cursor;
/*
 * An unmerge-all (run=2) runs (under ksmdev_lock): KSM_MERGE_REGION, which
 * merges whatever run is, must not merge behind it (EBUSY).
 */
static bool ksmdev_unmerging;

/* The context after @ctx on the list, or NULL. */
static struct ksmdev_ctx *ksmdev_ctx_next(struct ksmdev_ctx *ctx)
{
	if (list_is_last(&ctx->list, &ksmdev_ctx_list))
		return NULL;
	return list_next_entry(ctx, list);
}

/*
 * Called with ksmdev_lock held by whoever is about to take @ctx off the
 * list: the cursors that point at it move on to the next context.
 */
void ksmdev_scan_forget_ctx(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	if (ksmdev_unmerge_cursor == ctx)
		ksmdev_unmerge_cursor = ksmdev_ctx_next(ctx);
	if (ksmdev_cursor.ctx != ctx)
		return;
	ksmdev_cursor.ctx = ksmdev_ctx_next(ctx);
	ksmdev_cursor.addr = 0;
}

/*
 * What the scanner, or a KSM_MERGE_REGION caller, works on at one moment
 * (under ksmdev_lock).
 */
struct ksmdev_scan {
	struct ksmdev_ctx *ctx;
	struct ksmdev_region *region;
	struct vm_area_struct *vma;	/* mmap lock held for read */
	bool mergeable;			/* ksmdev_vma_mergeable(vma) */
	bool now;			/* KSM_MERGE_REGION: first sight */
	bool count_skipped;		/* skipped pages count: advisor */
	unsigned long visited;		/* now: candidate pages met so far */
};

static void ksmdev_batch_add(struct ksmdev_batch *b, unsigned long addr,
			     struct page *page)
{
	if (page)
		get_page(page);
	b->addr[b->nr] = addr;
	b->page[b->nr++] = page;
}

/*
 * Gather one subpage of the PMD-mapped huge page at @pmd, if anonymous: one
 * at a time, so that a merge can split the huge page, which needs the
 * caller to hold its only extra reference.
 */
static unsigned long ksmdev_gather_huge(struct vm_area_struct *vma,
					pmd_t *pmd, unsigned long addr,
					unsigned long end,
					struct ksmdev_batch *b)
{
	spinlock_t *ptl = pmd_lock(vma->vm_mm, pmd);
	struct page *head = pmd_page(*pmd);

	if (!pmd_trans_huge(*pmd) || !PageAnon(head)) {
		spin_unlock(ptl);
		return end;
	}
	ksmdev_batch_add(b, addr,
			 nth_page(head, (addr & ~PMD_MASK) >> PAGE_SHIFT));
	spin_unlock(ptl);
	return addr + PAGE_SIZE;
}

/*
 * Gather the pages mapped by the page table at @pmd: anonymous pages (merge
 * candidates), other normal pages (stable pages) and zero pages (NULL). At
 * most one page of a large folio, for the reason above.
 */
static unsigned long ksmdev_gather_ptes(struct vm_area_struct *vma,
					pmd_t *pmd, unsigned long addr,
					unsigned long end,
					struct ksmdev_batch *b)
{
	struct folio *large = NULL;
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *start_pte, *pte;

	start_pte = ksmdev_pte_map_lock(vma->vm_mm, pmd, addr, &ptl);
	if (!start_pte) {
		ksmdev_pte_map_failed(ptl);
		return end;	/* the page table went away under us */
	}
	for (pte = start_pte; addr < end && b->nr < KSMDEV_BATCH;
	     pte++, addr += PAGE_SIZE) {
		pte_t entry = ptep_get(pte);
		struct page *page;

		if (!pte_present(entry))
			continue;
		if (is_zero_pfn(pte_pfn(entry))) {
			ksmdev_batch_add(b, addr, NULL);
			continue;
		}
		if (pte_special(entry) || !pfn_valid(pte_pfn(entry)))
			continue;
		page = pfn_to_page(pte_pfn(entry));
		if (PageCompound(page)) {
			if (large)
				break;
			large = page_folio(page);
		}
		/* Mapped and under the PTE lock: it cannot be freed. */
		ksmdev_batch_add(b, addr, page);
	}
	pte_unmap_unlock(start_pte, ptl);
	return addr;
}

/*
 * Gather the present pages of [addr, end), within one pmd, taking a
 * reference on each, into @b. Returns where it stopped.
 */
static unsigned long ksmdev_gather(struct vm_area_struct *vma, pmd_t *pmd,
				   unsigned long addr, unsigned long end,
				   struct ksmdev_batch *b)
{
	pmd_t pmdval = READ_ONCE(*pmd);

	if (pmd_none(pmdval) || !pmd_present(pmdval))
		return end;
	if (pmd_trans_huge(pmdval))
		return ksmdev_gather_huge(vma, pmd, addr, end, b);
	if (pmd_bad(pmdval))
		return end;
	return ksmdev_gather_ptes(vma, pmd, addr, end, b);
}

static u64 ksmdev_page_hash(struct page *page)
{
	void *kaddr = kmap_local_page(page);
	u64 hash = xxh64(kaddr, PAGE_SIZE, 0);

	kunmap_local(kaddr);
	return hash;
}

/*
 * First-sight merging: a page the scanner meets for the first time (its
 * slot is 0: never seen, or forgotten since it was last absent) is merged,
 * or filed in the unstable tree, at once, where mm/ksm.c waits for a
 * second visit to find its checksum unchanged. Duplicates converge in one
 * pass instead of two. This is safe because our unstable tree is keyed by
 * a snapshot of the hash and every merge compares the contents again
 * under the page table lock: a page written meanwhile is never merged,
 * and a write after the merge is an ordinary COW. What it may cost is
 * churn, a merge undone by the next write: once each time the scanner
 * meets the page anew (its slot is forgotten when the page is absent at a
 * visit: swapped out, migrating, freed by MADV_DONTNEED and faulted
 * again); a page whose merge was broken (its slot then holds the stable
 * page's PFN, not 0), or that changed between two visits, must prove quiet
 * over two visits again, as in mm/ksm.c. The events file cow_breaks counts
 * such breaks (bench: cow_breaks_first_pass). Not ABI: a parameter only,
 * for the benchmark's comparison with two-pass merging.
 */
static bool ksmdev_first_sight = true;
module_param_named(first_sight, ksmdev_first_sight, bool, 0644);
MODULE_PARM_DESC(first_sight, "merge pages met for the first time at once, not on the next pass (Y)");

/* The hash of a zero-filled page. */
static u64 ksmdev_zero_hash;

/*
 * May a page be merged at first sight (ksmdev_first_sight)? Only one met
 * anew (slot 0), and not a zero-filled one nor part of a huge page: a
 * freshly faulted huge page is mostly zeroes that its owner is about to
 * write, and merging one would split it for a merge undone at once. A page
 * met anew is young (faulted since the last visit, unless it was there
 * when its region was registered), and a young zero-filled page is most
 * often memory cleared to be used: a guest kernel's init_on_alloc
 * (Debian's default), a guest's huge page filled over time on our small
 * ones, memory populated or locked at start-up. Those wait for a second
 * visit, as in mm/ksm.c (6.12's cmp_and_merge_page() checks the checksum
 * before anything else). The wait costs the bench's pages that never
 * change a pass (tried without it: time to 90% of the savings 0.36x
 * ksmd's, not 0.6x); KSM_MERGE_REGION merges them at once for a caller
 * that knows its memory is quiet.
 */
static bool ksmdev_first_sight_ok(u64 old, u64 hash, struct page *page)
{
	return !old && READ_ONCE(ksmdev_first_sight) &&
	       hash != ksmdev_zero_hash && !PageCompound(page);
}

static u64 ksmdev_slot_stable_value(struct page *kpage)
{
	return KSMDEV_SLOT_STABLE | page_to_pfn(kpage);
}

/*
 * Try to merge @page with the page of the unstable node @un. Returns true
 * if @page now maps a stable page. @un is erased if it was used or stale.
 */
static bool ksmdev_merge_unstable(struct ksmdev_scan *s, unsigned long addr,
				  struct page *page, u64 *slot,
				  struct ksmdev_unstable *un, u64 hash)
{
	struct ksmdev_ctx *qctx = un->ctx;
	struct mm_struct *qmm = qctx->mm;
	bool other_mm = qmm != s->vma->vm_mm, merged = false;
	unsigned long qaddr = un->addr;
	struct ksmdev_region *qregion;
	struct ksmdev_stable *stable;
	struct vm_area_struct *qvma;
	struct page *qpage;
	u64 *qslot;

	qregion = ksmdev_region_find(qctx, qaddr);
	/* A region being unregistered is being unmerged: merge nothing in. */
	if (!qregion || qregion->going ||
	    ksmdev_trees_of(qctx, qregion) != un->trees) {
		ksmdev_unstable_erase(un);
		return false;
	}
	/* Split ours first: its page must hold our only extra reference. */
	if (ksmdev_split_page(page))
		return false;
	/*
	 * Another mm: never wait for its mmap lock while we hold ours (the
	 * scanner would be the only task ever to nest two); try again next
	 * scan instead.
	 */
	if (other_mm) {
		if (!mmget_not_zero(qmm))
			return false;
		if (!mmap_read_trylock(qmm)) {
			mmput_async(qmm);
			return false;
		}
	}
	qvma = vma_lookup(qmm, qaddr);
	if (!qvma || !ksmdev_vma_mergeable(qvma))
		goto out;
	qpage = ksmdev_get_anon_page(qvma, qaddr);
	if (!qpage)
		goto out;
	qslot = ksmdev_region_slot(qregion, qaddr);
	/*
	 * The node of this very page (filed by an earlier KSM_MERGE_REGION,
	 * which no pass has reset since), or of a page that changed: stale,
	 * gone, so that a page never has two nodes of one content.
	 */
	if (qpage == page || !ksmdev_pages_identical(page, qpage)) {
		ksmdev_unstable_erase(un);
		goto put;
	}
	if (!qslot || ksmdev_split_page(qpage))
		goto put;
	/* Moved to another node since it was filed (merge_across_nodes=0). */
	if (!READ_ONCE(ksmdev_config.merge_across_nodes) &&
	    page_to_nid(qpage) != page_to_nid(page))
		goto put;

	/*
	 * A pin on either page (O_DIRECT in flight; a VFIO, RDMA or io_uring
	 * buffer, pinned for good and met at every pass) would make the merge
	 * fail, or leave ours alone on the stable page: look before the
	 * stable page is allocated and copied for nothing. @un stays, and
	 * ours is filed beside it, a candidate for the pages to come. A pin
	 * taken after this look is caught by ksmdev_replace_page().
	 */
	if (!ksmdev_page_unpinned_hint(page) ||
	    !ksmdev_page_unpinned_hint(qpage))
		goto put;
	stable = ksmdev_stable_create(un->trees, hash, page);
	if (!stable)
		goto put;
	/*
	 * Ours first, and @qpage only if ours is merged: alone on the stable
	 * page it would save nothing, and cost a page off the LRU, charged to
	 * our cgroup for another context's page (mm/ksm.c's
	 * try_to_merge_two_pages() undoes its first merge when the second
	 * fails). Ours fails this way when pinned since the look above; @un
	 * stays, a candidate for others. The other way round (ours merged,
	 * @qpage pinned since that look) ours stays on the stable page, for
	 * the pages to come.
	 */
	if (ksmdev_replace_page(s->vma, addr, page, stable->kpage)) {
		ksmdev_stable_release(stable);
		goto put;
	}
	ksmdev_slot_set(s->ctx, s->region, slot,
			ksmdev_slot_stable_value(stable->kpage));
	merged = true;
	if (!ksmdev_replace_page(qvma, qaddr, qpage, stable->kpage))
		ksmdev_slot_set(qctx, qregion, qslot,
				ksmdev_slot_stable_value(stable->kpage));
	ksmdev_stable_release(stable);
	ksmdev_unstable_erase(un);
put:
	put_page(qpage);
out:
	if (other_mm) {
		mmap_read_unlock(qmm);
		mmput_async(qmm);
	}
	return merged;
}

/*
 * A page that is not anonymous, in a mergeable VMA: a stable page (ours, or
 * left by an earlier load of the module). Count it where it is now.
 */
static void ksmdev_scan_kpage(struct ksmdev_scan *s, struct page *page,
			      u64 *slot)
{
	u64 mapped = ksmdev_slot_stable_value(page);
	struct ksmdev_stable *stable;

	/* Still mapping the stable page it was counted for: the usual case. */
	if (*slot == mapped)
		return;
	/*
	 * Moved here (mremap) or not counted yet: count it, unless it is a
	 * stable page of another scope (then leave it alone), none of ours, or
	 * poisoned (no new sharer for it: unmerging will unmap it).
	 */
	stable = ksmdev_stable_of(page);
	if (stable && stable->trees == ksmdev_trees_of(s->ctx, s->region) &&
	    !PageHWPoison(page))
		ksmdev_slot_set(s->ctx, s->region, slot, mapped);
	else if (*slot)
		ksmdev_slot_set(s->ctx, s->region, slot, 0);
}

/* The passes a page of age @age may be passed by, as mm/ksm.c's skip_age(). */
static unsigned int ksmdev_skip_age(unsigned int age)
{
	if (age <= 3)
		return 1;
	if (age <= 5)
		return 2;
	if (age <= 8)
		return 4;
	return 8;
}

/*
 * Smart scan (mm/ksm.c's should_skip_rmap_item()): a candidate that has
 * failed to merge on three visits is looked at only every other pass, then
 * one in three, five, nine. Hashing it is most of what a visit costs, and
 * most such pages are unique, or rewritten all the time. A page passed by
 * stays counted where it was (pages_unshared or pages_volatile) and keeps
 * its checksum; it only misses this pass's unstable tree. Returns true if
 * the scanner passes the page by this time.
 */
static bool ksmdev_smart_skip(struct ksmdev_scan *s, u64 *slot)
{
	u64 old = *slot, value = old;
	unsigned int age, skips;

	if (READ_ONCE(ksmdev_config.scan_all_pages) ||
	    (old & (KSMDEV_SLOT_SEEN | KSMDEV_SLOT_MERGED)) != KSMDEV_SLOT_SEEN)
		return false;
	age = FIELD_GET(KSMDEV_SLOT_AGE, old);
	skips = FIELD_GET(KSMDEV_SLOT_SKIPS, old);
	if (age < FIELD_MAX(KSMDEV_SLOT_AGE))
		value += FIELD_PREP(KSMDEV_SLOT_AGE, 1);
	if (age >= 3) {
		if (skips) {
			value -= FIELD_PREP(KSMDEV_SLOT_SKIPS, 1);
			ksmdev_slot_set(s->ctx, s->region, slot, value);
			ksmdev_event(&ksmdev_events.skips);
			return true;
		}
		value |= FIELD_PREP(KSMDEV_SLOT_SKIPS, ksmdev_skip_age(age));
	}
	ksmdev_slot_set(s->ctx, s->region, slot, value);
	return false;
}

/*
 * One anonymous page, as mm/ksm.c's cmp_and_merge_page(): a page that
 * changed since its last visit is volatile; one that did not is merged
 * with a stable page of the same content, or with an unstable one, or goes
 * into the unstable tree.
 */
static void ksmdev_cmp_and_merge(struct ksmdev_scan *s, unsigned long addr,
				 struct page *page, u64 *slot)
{
	struct ksmdev_trees *trees = ksmdev_trees_of(s->ctx, s->region);
	struct ksmdev_unstable *un, *next;
	struct ksmdev_stable *stable;
	u64 old = *slot, hash, value;

	if (old & KSMDEV_SLOT_MERGED)
		ksmdev_event(&ksmdev_events.cow_breaks);
	hash = ksmdev_page_hash(page);
	value = KSMDEV_SLOT_SEEN | (hash & KSMDEV_SLOT_CSUM_MASK);
	/* A candidate keeps its age (ksmdev_smart_skip()); a merge resets it. */
	if ((old & (KSMDEV_SLOT_SEEN | KSMDEV_SLOT_MERGED)) == KSMDEV_SLOT_SEEN)
		value |= old & (KSMDEV_SLOT_AGE | KSMDEV_SLOT_SKIPS);
	/*
	 * Changed since the last visit, or written after a merge (COW broke
	 * it): volatile, unless a KSM_MERGE_REGION caller vouches that it is
	 * quiet. A page seen for the first time (a slot never used, or
	 * forgotten since: see ksmdev_first_sight) is a candidate at once.
	 */
	if (!s->now && !ksmdev_first_sight_ok(old, hash, page) &&
	    (!(old & KSMDEV_SLOT_SEEN) ||
	     (old & KSMDEV_SLOT_CSUM_MASK) != (hash & KSMDEV_SLOT_CSUM_MASK))) {
		ksmdev_slot_set(s->ctx, s->region, slot, value);
		return;
	}

	if (READ_ONCE(ksmdev_config.use_zero_pages) &&
	    hash == ksmdev_zero_hash) {
		if (!ksmdev_split_page(page) &&
		    !ksmdev_replace_page(s->vma, addr, page, NULL)) {
			ksmdev_slot_set(s->ctx, s->region, slot,
					KSMDEV_SLOT_ZERO);
			return;
		}
		/*
		 * A zero-filled page that could not be mapped to the zero
		 * page this time (an extra reference: a per-CPU LRU batch's
		 * until the next drain, a pin; locked this instant; a huge
		 * page that did not split) waits for its next visit, counted
		 * in pages_volatile. Filed in a tree, it could merge with
		 * another such page into a stable page of zeroes (mm/ksm.c
		 * lets that happen), which would stay: a merged page is never
		 * looked at for zeroes again. Only a page whose hash merely
		 * collides goes on.
		 */
		if (ksmdev_page_is_zero(page)) {
			ksmdev_slot_set(s->ctx, s->region, slot, value);
			return;
		}
	}

	hash = ksmdev_tree_key(hash, page);
	stable = ksmdev_stable_search(trees, hash, page);
	if (stable) {
		if (!ksmdev_split_page(page) &&
		    !ksmdev_replace_page(s->vma, addr, page, stable->kpage))
			value = ksmdev_slot_stable_value(stable->kpage);
		ksmdev_slot_set(s->ctx, s->region, slot, value);
		return;
	}

	for (un = ksmdev_unstable_first(trees, hash); un; un = next) {
		next = ksmdev_unstable_next(un);
		if (ksmdev_merge_unstable(s, addr, page, slot, un, hash))
			return;
	}
	/*
	 * A pass files a page once, and the next pass begins anew. Only
	 * KSM_MERGE_REGION calls, which no pass resets while run is not 1,
	 * can pile up more (a page rewritten between calls leaves a node of
	 * its old content): past about one node per registered page, or per
	 * page this call has met (the count of a KSM_REGION_ALL region is of
	 * its last pass), its nodes go, all at once.
	 */
	if (s->now && s->ctx->nr_unstable >=
		      max(s->ctx->nr_pages, s->visited) + KSMDEV_BATCH)
		ksmdev_unstable_forget(s->ctx, 0, ULONG_MAX);
	if (!ksmdev_unstable_insert(trees, hash, s->ctx, addr))
		value |= KSMDEV_SLOT_UNSTABLE;
	ksmdev_slot_set(s->ctx, s->region, slot, value);
}

/*
 * Look at the pages gathered from [start, end) of the current region, then
 * forget the state of every address there that had no page. Returns how
 * many count against pages_to_scan: all but those passed by (smart scan),
 * which, as in mm/ksm.c, cost next to nothing and shorten the pass; all of
 * them for the advisor (s->count_skipped, see struct ksmdev_advisor).
 */
static unsigned int ksmdev_scan_pages(struct ksmdev_scan *s,
				      unsigned long start, unsigned long end,
				      struct ksmdev_batch *b)
{
	unsigned long addr = start;
	unsigned int i, skipped = 0;
	u64 *slot;

	for (i = 0; i < b->nr; i++) {
		unsigned long at = b->addr[i];
		struct page *page = b->page[i];

		ksmdev_region_forget(s->ctx, s->region, addr, at);
		addr = at + PAGE_SIZE;
		if (!s->mergeable) {
			/* Looked at, nothing to remember: see vma_mergeable. */
			ksmdev_region_forget(s->ctx, s->region, at, addr);
		} else if (!page) {
			/* A zero page: still ours if the slot says so. */
			slot = ksmdev_region_slot_lookup(s->region, at);
			if (slot && *slot != (*slot & KSMDEV_SLOT_ZERO))
				ksmdev_slot_set(s->ctx, s->region, slot,
						*slot & KSMDEV_SLOT_ZERO);
		} else {
			slot = ksmdev_region_slot(s->region, at);
			if (slot && ksmdev_page_candidate(page)) {
				s->visited++;
				if (!s->now && ksmdev_smart_skip(s, slot)) {
					put_page(page);
					skipped++;
					continue;
				}
				ksmdev_cmp_and_merge(s, at, page, slot);
			} else if (slot && !PageAnon(page)) {
				ksmdev_scan_kpage(s, page, slot);
				ksmdev_kpage_mlock(s->vma, at, page);
			} else if (slot) {
				/* ksmd's, or a device's: not ours to track. */
				ksmdev_region_forget(s->ctx, s->region, at,
						     addr);
			}
		}
		if (page) {
			/* The scanner's work only, as ksmd's in mm/ksm.c. */
			if (!s->now)
				WRITE_ONCE(ksmdev_stats.pages_scanned,
					   ksmdev_stats.pages_scanned + 1);
			put_page(page);
		}
	}
	ksmdev_region_forget(s->ctx, s->region, addr, end);
	return b->nr - (s->count_skipped ? 0 : skipped);
}

/*
 * Scan [*addr, end) of s->region, which lies inside s->vma, up to @budget
 * pages. Returns the pages scanned; *addr is where to go on.
 */
static unsigned long ksmdev_scan_vma(struct ksmdev_scan *s,
				     unsigned long *addr, unsigned long end,
				     unsigned long budget)
{
	struct mm_struct *mm = s->vma->vm_mm;
	struct ksmdev_batch b;
	unsigned long scanned = 0, next, start;
	pmd_t *pmd;

	while (*addr < end && scanned < budget) {
		start = *addr;
		pmd = ksmdev_walk_to_pmd(mm, start, end, &next);
		b.nr = 0;
		if (pmd)
			*addr = ksmdev_gather(s->vma, pmd, start, next, &b);
		else
			*addr = next;
		scanned += ksmdev_scan_pages(s, start, *addr, &b);
		if (ksmdev_must_yield(mm, s->now))
			break;
	}
	return scanned;
}

/*
 * One window on @ctx's mm, from the cursor: up to @budget pages (counted
 * as ksmdev_scan_pages() says, @count_skipped passed to it). Returns the
 * pages scanned; moves the cursor's address on, to ULONG_MAX when the
 * context is done for this pass.
 */
static unsigned long ksmdev_scan_ctx(struct ksmdev_ctx *ctx,
				     unsigned long budget, bool count_skipped)
{
	struct ksmdev_scan s = { .ctx = ctx, .count_skipped = count_skipped };
	struct mm_struct *mm = ctx->mm;
	unsigned long addr = ksmdev_cursor.addr, scanned = 0, end;
	struct mem_cgroup *memcg, *old_memcg;

	if (ctx->exited || !mmget_not_zero(mm)) {
		/*
		 * The process is gone (its fd lives on elsewhere, or its
		 * context is persistent): nothing can be merged there any
		 * more, so its bookkeeping goes now, unless somebody holds
		 * ctx->lock this instant (then at the next pass): we never
		 * wait for it under ksmdev_lock. A persistent context leaves
		 * the list, which moves the cursor on.
		 */
		if (!ctx->exited && mutex_trylock(&ctx->lock)) {
			bool put = ksmdev_ctx_gone(ctx);

			mutex_unlock(&ctx->lock);
			if (put)
				ksmdev_ctx_put(ctx);
		}
		if (ksmdev_cursor.ctx == ctx)
			ksmdev_cursor.addr = ULONG_MAX;
		return 0;
	}
	if (!mmap_read_trylock(mm)) {
		/*
		 * Never wait for an mmap lock under ksmdev_lock (see
		 * ksmdev.h): wait without it. Meanwhile the context may be
		 * closed (the cursor then moves on) or the scanner stopped.
		 */
		mutex_unlock(&ksmdev_lock);
		mmap_read_lock(mm);
		ksmdev_lock_acquire();
		if (ksmdev_cursor.ctx != ctx || ctx->mm != mm ||
		    !ksmdev_should_run() || kthread_should_stop()) {
			mmap_read_unlock(mm);
			mmput_async(mm);
			return 0;
		}
		addr = ksmdev_cursor.addr;
	}
	/*
	 * What the window allocates with __GFP_ACCOUNT (slots, nodes, and the
	 * stable pages that first replace a page of this mm) is charged to
	 * the mm's memory cgroup, as of now: a process that moves takes its
	 * future charges with it.
	 */
	memcg = get_mem_cgroup_from_mm(mm);
	old_memcg = set_active_memcg(memcg);
	while (scanned < budget) {
		unsigned long from;

		s.region = ksmdev_region_next(ctx, addr);
		if (!s.region) {
			addr = ULONG_MAX;
			break;
		}
		if (s.region->going) {
			addr = s.region->end;
			continue;
		}
		if (addr <= s.region->start) {
			/* A pass over the region begins (KSM_REGION_ALL). */
			s.region->pass_pages = 0;
			s.region->pass_valid = true;
		}
		addr = max(addr, s.region->start);
		s.vma = find_vma(mm, addr);
		if (!s.vma || s.vma->vm_start >= s.region->end) {
			/* Unmapped to the region's end: nothing to merge. */
			ksmdev_region_forget(ctx, s.region, addr, s.region->end);
			addr = s.region->end;
			ksmdev_region_pass_end(ctx, s.region);
			continue;
		}
		if (s.vma->vm_start > addr) {
			/* A hole in the region: nothing is there any more. */
			ksmdev_region_forget(ctx, s.region, addr,
					     s.vma->vm_start);
			addr = s.vma->vm_start;
		}
		end = min(s.vma->vm_end, s.region->end);
		if (!ksmdev_vma_scannable(s.vma)) {
			/*
			 * Not private anonymous memory (any more): skipped,
			 * as KSM_REGION_ALL skips it at every pass.
			 */
			ksmdev_region_forget(ctx, s.region, addr, end);
			addr = end;
		} else {
			s.mergeable = ksmdev_vma_mergeable(s.vma);
			from = addr;
			scanned += ksmdev_scan_vma(&s, &addr, end,
						   budget - scanned);
			s.region->pass_pages += (addr - from) >> PAGE_SHIFT;
		}
		if (addr >= s.region->end)
			ksmdev_region_pass_end(ctx, s.region);
		if (ksmdev_must_yield(mm, false))
			break;
	}
	mmap_read_unlock(mm);
	set_active_memcg(old_memcg);
	mem_cgroup_put(memcg);
	/* If the process exited meanwhile, its teardown runs in a worker. */
	mmput_async(mm);
	ksmdev_cursor.addr = addr;
	return scanned;
}

/*
 * At most this often the per-CPU LRU batches are drained: with small
 * regions and sleep_millisecs=0, full scans come thousands of times a
 * second, and every drain queues work on every CPU.
 */
#define KSMDEV_DRAIN_INTERVAL	(HZ / 10)

/* When the scanner drains them next (under ksmdev_lock). */
static unsigned long ksmdev_next_drain;

/* A full scan begins: a new unstable tree, and no page held in LRU batches. */
static void ksmdev_scan_pass_begin(void)
{
	struct ksmdev_ctx *ctx;

	ksmdev_unstable_reset(&ksmdev_global_trees);
	ksmdev_domains_unstable_reset();
	list_for_each_entry(ctx, &ksmdev_ctx_list, list)
		ksmdev_unstable_reset(&ctx->trees);
	/*
	 * Freshly faulted pages sit in per-CPU add-to-LRU batches, each with
	 * a reference that would make every merge fail the pin check; one
	 * that escapes a drain merges on a later pass.
	 */
	if (time_after_eq(jiffies, ksmdev_next_drain)) {
		ksmdev_lru_add_drain_all();
		ksmdev_next_drain = jiffies + KSMDEV_DRAIN_INTERVAL;
	}
}

/*
 * The advisor's averages weigh a new sample this much, in percent, as
 * mm/ksm.c's EWMA_WEIGHT: one slow batch does not swing the batch size.
 */
#define KSMDEV_ADVISOR_WEIGHT	30

/*
 * Under the CPU cap, a batch is sized to take about its share of a cycle of
 * at least this long (us), so that with sleep_millisecs=0 the scanner
 * still alternates short batches and short rests rather than taking a page
 * at a time, or a long burst followed by a long rest.
 */
#define KSMDEV_ADVISOR_MIN_CYCLE_US	(10 * USEC_PER_MSEC)

/**
 * struct ksmdev_advisor - batch sizing while advisor_target_scan_ms is set
 * @on:         the advisor is on; the fields below belong to this stint
 * @timed:      @last_ns and @last_run mark the end of the last batch
 * @resting:    the CPU cap forbids a batch before @resume
 * @last_ns:    ktime_get_ns() at the end of the last batch
 * @last_run:   the scanner's sum_exec_runtime then
 * @credit:     CPU time (ns) the cap still grants: never positive, so that
 *              an idle spell cannot pay for a burst above the cap later
 * @cost:       average CPU time (ns) per page looked at, 0 not known yet
 * @idle_us:    average time (us) per cycle that the scanner did not run:
 *              its sleep, as the timer and wake-ups made it, 0 not known
 * @scanned:    pages looked at since the end of the last batch
 * @pass_pages: pages looked at by the pass under way
 * @last_pass:  pages a full pass looks at: the last one's, or more if an
 *              earlier one saw more (see ksmdev_advisor_pass_end()),
 *              0 none yet
 * @resume:     in jiffies, the end of the rest the cap asks for
 *
 * The scanner thread is its only user, so it needs no lock of its own; the
 * batch size is chosen under ksmdev_lock, which orders its publication in
 * advisor_pages_to_scan with a configuration change turning the advisor off
 * (that writes pages_to_scan there, under ksmdev_lock too).
 *
 * Sizes count the pages looked at, those that smart scan passes by too
 * (unlike pages_to_scan, which does not count them), but not absent ones:
 * a pass's size is what the last full pass looked at (registered_pages
 * before one completed). Smart scan passes by most pages on some passes
 * and few on others (pages that stopped merging together age together);
 * counted as pages_to_scan counts, the short passes went by in a fraction
 * of the target (0.4x in the bench), while a skipped page costs next to
 * nothing, which @cost, an average over all pages looked at, reflects.
 * To make a pass of P pages take the target T, each cycle (a batch, then
 * a rest) must scan P/T of its own length: a batch of B pages costs
 * B * @cost of CPU after a rest of @idle_us, so
 * B = R * (@idle_us + B * @cost) with R = P / T, that is
 * B = P * @idle_us / (T - P * @cost) (upstream's advisor scales
 * pages_to_scan by the last pass's time instead; ours measures the parts,
 * since a pass may take many minutes). When T - P * @cost <= 0 the target
 * takes more than a whole CPU: then as much as the cap allows.
 *
 * The cap is a budget of CPU time earned at advisor_max_cpu_percent of the
 * wall time and spent by the scanner's runtime: after a batch that overspent
 * it the scanner rests until the budget is paid back, whatever
 * sleep_millisecs is. It is measured from the thread's own sum_exec_runtime
 * (task_sched_runtime() is not exported: the value may lag by up to a tick,
 * which the next batch's reading makes up). Batches are also kept short
 * enough to spend at most their share of a cycle, so rests stay short.
 */
static struct ksmdev_advisor {
	bool on;
	bool timed;
	bool resting;
	u64 last_ns;
	u64 last_run;
	s64 credit;
	u64 cost;
	u64 idle_us;
	unsigned long scanned;
	unsigned long pass_pages;
	unsigned long last_pass;
	unsigned long resume;
} ksmdev_advisor;

static u64 ksmdev_advisor_ewma(u64 prev, u64 sample)
{
	if (!prev)
		return sample;
	return div_u64((100 - KSMDEV_ADVISOR_WEIGHT) * prev +
		       KSMDEV_ADVISOR_WEIGHT * sample, 100);
}

/*
 * The pages the next batch scans: pages_to_scan, or the advisor's choice,
 * which is published in advisor_pages_to_scan (under ksmdev_lock).
 */
static unsigned long ksmdev_advisor_pages(void)
{
	struct ksmdev_advisor *a = &ksmdev_advisor;
	u64 target_us = READ_ONCE(ksmdev_config.advisor_target_scan_ms) *
			USEC_PER_MSEC;
	u64 cap = READ_ONCE(ksmdev_config.advisor_max_cpu_percent);
	u64 pass, idle_us, busy_us, want, most;

	lockdep_assert_held(&ksmdev_lock);
	if (!target_us) {
		a->on = false;
		return READ_ONCE(ksmdev_config.pages_to_scan);
	}
	if (!a->on) {
		/* A new stint: nothing measured yet but the passes. */
		*a = (struct ksmdev_advisor){ .on = true,
					      .pass_pages = a->pass_pages,
					      .last_pass = a->last_pass };
	}
	if (a->last_pass)
		pass = max(a->last_pass, a->pass_pages);
	else
		pass = max_t(u64, ksmdev_stats.registered_pages,
			     a->pass_pages);
	/* Bounds that keep the products below in 64 bits. */
	pass = clamp_val(pass, 1, U32_MAX);
	idle_us = a->idle_us ?:
		  READ_ONCE(ksmdev_config.sleep_millisecs) * USEC_PER_MSEC;
	idle_us = min_t(u64, idle_us, KSM_SLEEP_MSECS_MAX * USEC_PER_MSEC * 2);
	busy_us = div_u64(pass * min_t(u64, a->cost, U32_MAX), NSEC_PER_USEC);
	if (busy_us < target_us)
		want = div64_u64(pass * idle_us + target_us - busy_us - 1,
				 target_us - busy_us);
	else
		want = KSM_PAGES_TO_SCAN_MAX;
	if (cap < 100 && a->cost) {
		/* At most cap% of a cycle, the rest being idle_us or more. */
		most = div64_u64(cap * max_t(u64, idle_us,
					     KSMDEV_ADVISOR_MIN_CYCLE_US) *
				 NSEC_PER_USEC,
				 (100 - cap) * a->cost);
		want = min(want, most);
	}
	want = clamp_val(want, 1, KSM_PAGES_TO_SCAN_MAX);
	WRITE_ONCE(ksmdev_stats.advisor_pages_to_scan, want);
	return want;
}

/*
 * After a batch: measure it against the cycle it ended, and return how long
 * (jiffies) the CPU cap asks the scanner to rest from now, 0 if not at all.
 */
static unsigned long ksmdev_advisor_account(void)
{
	struct ksmdev_advisor *a = &ksmdev_advisor;
	u64 cap = READ_ONCE(ksmdev_config.advisor_max_cpu_percent);
	u64 now, run, wall, used, rest;

	if (!a->on)
		return 0;
	now = ktime_get_ns();
	run = READ_ONCE(current->se.sum_exec_runtime);
	if (a->timed) {
		wall = now - a->last_ns;
		used = run > a->last_run ? run - a->last_run : 0;
		if (a->scanned)
			a->cost = ksmdev_advisor_ewma(a->cost,
						      div64_u64(used,
								a->scanned) ?: 1);
		a->idle_us = ksmdev_advisor_ewma(a->idle_us,
						 div_u64(wall > used ?
							 wall - used : 0,
							 NSEC_PER_USEC) ?: 1);
		a->credit += (s64)div_u64(wall * cap, 100) - (s64)used;
		a->credit = min_t(s64, a->credit, 0);
	}
	a->timed = true;
	a->last_ns = now;
	a->last_run = run;
	a->scanned = 0;
	if (a->credit >= 0)
		return 0;
	rest = nsecs_to_jiffies64(div64_u64((u64)-a->credit * 100, cap)) + 1;
	a->resting = true;
	a->resume = jiffies + rest;
	return rest;
}

/* The rest (jiffies) the CPU cap still asks for, 0 if none. */
static unsigned long ksmdev_advisor_rest(void)
{
	struct ksmdev_advisor *a = &ksmdev_advisor;

	if (!a->resting)
		return 0;
	if (a->on && READ_ONCE(ksmdev_config.advisor_target_scan_ms) &&
	    time_before(jiffies, a->resume))
		return a->resume - jiffies;
	a->resting = false;
	return 0;
}

/*
 * A full pass ended. Passes differ in size when memory comes and goes (or
 * when the advisor was turned on in the middle of one, counting as
 * pages_to_scan does until then): a pass that looked at fewer pages than
 * the last ones only lowers the estimate by the weight of a sample, so
 * that the next full-sized pass is not sized from a short one (its batches
 * would grow only with its own progress, too late).
 */
static void ksmdev_advisor_pass_end(void)
{
	struct ksmdev_advisor *a = &ksmdev_advisor;

	a->last_pass = max_t(u64, a->pass_pages,
			     ksmdev_advisor_ewma(a->last_pass, a->pass_pages));
}

/* The scanner goes to sleep with nothing to do: that idle is no cycle. */
static void ksmdev_advisor_idle(void)
{
	ksmdev_advisor.timed = false;
	ksmdev_advisor.resting = false;
}

/*
 * One batch: pages_to_scan pages (or the advisor's count), or up to the end
 * of a pass.
 */
static void ksmdev_scan_batch(void)
{
	unsigned long budget, scanned;
	struct ksmdev_ctx *ctx;

	ksmdev_lock_acquire();
	budget = ksmdev_advisor_pages();
	while (budget && ksmdev_should_run() && !kthread_should_stop()) {
		if (!ksmdev_cursor.ctx) {
			if (list_empty(&ksmdev_ctx_list))
				break;
			ksmdev_scan_pass_begin();
			ksmdev_advisor.pass_pages = 0;
			ksmdev_cursor.ctx = list_first_entry(&ksmdev_ctx_list,
							     struct ksmdev_ctx,
							     list);
			ksmdev_cursor.addr = 0;
		}
		ctx = ksmdev_cursor.ctx;
		scanned = ksmdev_scan_ctx(ctx, budget, ksmdev_advisor.on);
		ksmdev_advisor.scanned += scanned;
		ksmdev_advisor.pass_pages += scanned;
		budget -= min(budget, scanned);
		/* Closed while the scanner waited for its mm: moved on. */
		if (ksmdev_cursor.ctx != ctx)
			continue;

		if (ksmdev_cursor.addr == ULONG_MAX) {
			if (list_is_last(&ctx->list, &ksmdev_ctx_list)) {
				/* A pass over every context is complete. */
				ksmdev_cursor.ctx = NULL;
				WRITE_ONCE(ksmdev_stats.full_scans,
					   ksmdev_stats.full_scans + 1);
				ksmdev_advisor_pass_end();
				break;
			}
			ksmdev_cursor.ctx = list_next_entry(ctx, list);
			ksmdev_cursor.addr = 0;
		}
		if (atomic_read(&ksmdev_lock_waiters) || need_resched()) {
			/* Let the ioctl in; the cursor stays valid. */
			ksmdev_lock_pass();
			ksmdev_lock_acquire();
		}
	}
	mutex_unlock(&ksmdev_lock);
}

static int ksmdev_scan_thread(void *unused)
{
	int seq;

	set_freezable();
	set_user_nice(current, 5);

	while (!kthread_should_stop()) {
		/* What the advisor's CPU cap asks for, beyond sleep_millisecs. */
		unsigned long rest = 0;

		seq = atomic_read(&ksmdev_wake_seq);
		if (ksmdev_should_run()) {
			/* Woken early from a rest: the rest goes on. */
			rest = ksmdev_advisor_rest();
			if (!rest) {
				ksmdev_scan_batch();
				rest = ksmdev_advisor_account();
			}
		}

		if (!ksmdev_should_run()) {
			ksmdev_advisor_idle();
			/* Nothing to do: sleep until there is, no timer. */
			wait_event_freezable(ksmdev_thread_wait,
					     ksmdev_should_run() ||
					     kthread_should_stop());
		} else if (READ_ONCE(ksmdev_config.sleep_millisecs) || rest) {
			unsigned long timeout;

			timeout = msecs_to_jiffies(READ_ONCE(ksmdev_config.sleep_millisecs));
			timeout = max(timeout, rest);

			wait_event_freezable_timeout(ksmdev_thread_wait,
						     atomic_read(&ksmdev_wake_seq) != seq ||
						     kthread_should_stop(),
						     timeout);
		} else {
			cond_resched();
			try_to_freeze();
		}
	}
	return 0;
}

/*
 * Unmerge every merged page of @ctx, holding ctx->lock (so that its regions
 * stay) but not ksmdev_lock. A context being closed, or whose process is
 * gone, is not unmerged but dropped: nobody needs its pages private.
 */
static int ksmdev_unmerge_ctx(struct ksmdev_ctx *ctx)
{
	struct ksmdev_region *region;
	struct rb_node *node;
	int err = 0;

	/*
	 * The owner may hold it across its own long unregister: wait, but
	 * killably (run=2 returns EINTR on a signal, ABI.md).
	 */
	if (mutex_lock_killable(&ctx->lock))
		return -EINTR;
	if (ctx->exited)
		goto out;
	if (!mmget_not_zero(ctx->mm)) {
		err = -ESRCH;
		goto drop;
	}
	if (mmap_read_lock_killable(ctx->mm)) {
		mmput_async(ctx->mm);
		err = -EINTR;
		goto out;
	}
	for (node = rb_first(&ctx->regions); node && !err;
	     node = rb_next(node)) {
		region = rb_entry(node, struct ksmdev_region, node);
		err = ksmdev_unmerge_region(ctx, region);
	}
	mmap_read_unlock(ctx->mm);
	mmput_async(ctx->mm);
drop:
	if (err == -ESRCH) {
		ksmdev_lock_acquire();
		/* The list's reference: ours keeps @ctx until we are done. */
		if (ksmdev_ctx_gone(ctx))
			refcount_dec(&ctx->ref);
		mutex_unlock(&ksmdev_lock);
		err = 0;
	}
out:
	mutex_unlock(&ctx->lock);
	return err;
}

/*
 * Unmerge every merged page of every context (run=2). Called with
 * ksmdev_config_lock held and run at KSM_RUN_STOP, so that nothing merges
 * anew, and without ksmdev_lock: the contexts are unmerged one at a time,
 * under their own lock, while other contexts are opened, used and closed.
 * The unmerge cursor walks the list; a context closed meanwhile moves it
 * on (ksmdev_scan_forget_ctx()), and a reference keeps the one being
 * unmerged. Contexts opened meanwhile go to the list's tail, so none is
 * missed (seed 004). Stops at the first error (-ENOMEM, -EINTR), which the
 * caller returns. KSM_MERGE_REGION is refused (EBUSY) from its start until
 * the caller calls ksmdev_unmerge_all_end().
 */
int ksmdev_unmerge_all(void)
{
	struct ksmdev_ctx *ctx;
	int err = 0;

	ksmdev_lock_acquire();
	ksmdev_unmerging = true;
	ksmdev_unmerge_cursor = list_first_entry_or_null(&ksmdev_ctx_list,
							 struct ksmdev_ctx,
							 list);
	while (!err && (ctx = ksmdev_unmerge_cursor)) {
		refcount_inc(&ctx->ref);
		mutex_unlock(&ksmdev_lock);
		err = ksmdev_unmerge_ctx(ctx);
		ksmdev_lock_acquire();
		if (ksmdev_unmerge_cursor == ctx)
			ksmdev_unmerge_cursor = ksmdev_ctx_next(ctx);
		ksmdev_ctx_put(ctx);
	}
	ksmdev_unmerge_cursor = NULL;
	mutex_unlock(&ksmdev_lock);
	return err;
}

/*
 * The unmerge-all is over: run=2 is written, or it failed and run stays 0
 * (under ksmdev_lock, by ksmdev_config_apply()). Only now may
 * KSM_MERGE_REGION merge again: not between the unmerge's end and run=2.
 */
void ksmdev_unmerge_all_end(void)
{
	lockdep_assert_held(&ksmdev_lock);
	ksmdev_unmerging = false;
}

/*
 * Pages of [start, end) of @ctx's regions that map a merged page or a
 * merged zero page, as their slots say: each was looked at just now, or
 * merged since (under ksmdev_lock).
 */
static unsigned long ksmdev_count_merged(struct ksmdev_ctx *ctx,
					 unsigned long start,
					 unsigned long end)
{
	struct ksmdev_region *region;
	unsigned long addr, stop, nr = 0;
	u64 *slot;

	lockdep_assert_held(&ksmdev_lock);
	for (region = ksmdev_region_next(ctx, start);
	     region && region->start < end;
	     region = ksmdev_region_next(ctx, region->end)) {
		/* A whole region: its count, not a walk of its slots. */
		if (start <= region->start && region->end <= end) {
			nr += region->nr_merging;
			continue;
		}
		stop = min(end, region->end);
		for (addr = ksmdev_region_slot_next(region,
						    max(start, region->start),
						    stop, &slot);
		     addr < stop;
		     addr = ksmdev_region_slot_next(region, addr + PAGE_SIZE,
						    stop, &slot))
			if (*slot & KSMDEV_SLOT_MERGED)
				nr++;
	}
	return nr;
}

/*
 * Let go of ksmdev_lock, and of the mmap lock if somebody waits for it,
 * for a moment. Returns -EINTR, without the mmap lock, if a signal came
 * while waiting for it.
 */
static int ksmdev_merge_now_yield(struct mm_struct *mm)
{
	ksmdev_lock_pass();
	if (mmap_lock_is_contended(mm)) {
		mmap_read_unlock(mm);
		cond_resched();
		if (mmap_read_lock_killable(mm))
			return -EINTR;
	}
	ksmdev_lock_acquire();
	return 0;
}

/**
 * ksmdev_merge_now - KSM_MERGE_REGION: merge [start, end) of @ctx now
 * @ctx:   the context
 * @start: first address, page aligned
 * @end:   address past the last page
 *
 * The caller's thread does what the scanner does, on its own CPU time and
 * at first sight: a page seen for the first time is merged with an equal
 * stable page or unstable one, or goes into the unstable tree at once,
 * without waiting for a second visit to prove it quiet (ABI.md: the caller
 * vouches for that). The unstable tree holds a hash only as a hint and
 * every merge compares the contents again under the page table lock, so
 * a page written meanwhile is never merged; it only costs a COW break.
 * Pages outside @ctx's regions, and regions being unregistered, are left
 * alone.
 *
 * Called with ctx->lock held (so that the regions' owner cannot change
 * them under us; an unmerge-all waits for it) and a user of ctx->mm held,
 * without ksmdev_lock or the mmap lock. The mmap lock is held for read
 * through the call, let go to whoever waits for it between page tables, as
 * ksmdev_lock is between batches: the scanner's rules (ksmdev.h), in the
 * caller's context. Allocations are charged to the memory cgroup of @ctx's
 * mm, as the scanner's are, not to the caller's.
 *
 * Return: how many pages of the range map a merged page or a merged zero
 * page (at most INT_MAX, the ioctl's return value); -EBUSY (an unmerge-all
 * runs), -ERESTARTSYS (a signal: EINTR unless the call restarts; what
 * merged stays merged), -EINTR (a fatal signal), -ESRCH (the process
 * exited meanwhile).
 */
long ksmdev_merge_now(struct ksmdev_ctx *ctx, unsigned long start,
		      unsigned long end)
{
	struct ksmdev_scan s = { .ctx = ctx, .now = true };
	struct mm_struct *mm = ctx->mm;
	struct mem_cgroup *memcg, *old_memcg;
	struct ksmdev_region *region;
	unsigned long addr = start, stop;
	long ret = 0;

	lockdep_assert_held(&ctx->lock);
	/* ctx->lock keeps the regions: nothing registered there, nothing to do. */
	region = ksmdev_region_next(ctx, start);
	if (!region || region->start >= end)
		return 0;
	/*
	 * The caller has just written the pages: they sit in per-CPU LRU
	 * batches, with a reference that fails every merge's pin check.
	 * Drain them, as madvise(MADV_COLLAPSE) does for any caller
	 * (madvise_collapse(), mm/khugepaged.c, 6.1 to 7.2); it queues work
	 * only on the CPUs that hold some, and waits for it. Before the
	 * mmap lock: nobody waits for that while we wait for the drain.
	 */
	ksmdev_lru_add_drain_all();
	if (mmap_read_lock_killable(mm))
		return -EINTR;
	memcg = get_mem_cgroup_from_mm(mm);
	old_memcg = set_active_memcg(memcg);
	ksmdev_lock_acquire();
	while (addr < end) {
		if (ksmdev_unmerging) {
			ret = -EBUSY;
			break;
		}
		if (signal_pending(current)) {
			/* EINTR for a handler without SA_RESTART. */
			ret = -ERESTARTSYS;
			break;
		}
		if (atomic_read(&mm->mm_users) <= 1) {
			ret = -ESRCH;	/* we hold the last user */
			break;
		}
		s.region = ksmdev_region_next(ctx, addr);
		if (!s.region || s.region->start >= end)
			break;
		stop = min(end, s.region->end);
		addr = max(addr, s.region->start);
		if (s.region->going) {
			addr = stop;
			continue;
		}
		/*
		 * Holes and unsuitable mappings hold nothing mergeable any
		 * more: their slots go, as in a pass, so that the count
		 * returned is of pages mapped now.
		 */
		s.vma = find_vma(mm, addr);
		if (!s.vma || s.vma->vm_start >= stop) {
			ksmdev_region_forget(ctx, s.region, addr, stop);
			addr = stop;
			continue;
		}
		if (s.vma->vm_start > addr) {
			ksmdev_region_forget(ctx, s.region, addr,
					     s.vma->vm_start);
			addr = s.vma->vm_start;
		}
		stop = min(stop, s.vma->vm_end);
		if (!ksmdev_vma_scannable(s.vma)) {
			ksmdev_region_forget(ctx, s.region, addr, stop);
			addr = stop;
			continue;
		}
		s.mergeable = ksmdev_vma_mergeable(s.vma);
		ksmdev_scan_vma(&s, &addr, stop, ULONG_MAX);
		if (addr < end && ksmdev_must_yield(mm, true)) {
			ret = ksmdev_merge_now_yield(mm);
			if (ret)
				goto out;	/* without either lock */
		}
	}
	if (!ret)
		ret = min_t(unsigned long, ksmdev_count_merged(ctx, start, end),
			    INT_MAX);
	mutex_unlock(&ksmdev_lock);
	mmap_read_unlock(mm);
out:
	set_active_memcg(old_memcg);
	mem_cgroup_put(memcg);
	return ret;
}

int ksmdev_scan_init(void)
{
	void *zero = kzalloc(PAGE_SIZE, GFP_KERNEL);

	if (!zero)
		return -ENOMEM;
	ksmdev_zero_hash = xxh64(zero, PAGE_SIZE, 0);
	kfree(zero);
	ksmdev_next_drain = jiffies;

	ksmdev_thread = kthread_run(ksmdev_scan_thread, NULL, "ksmdev");
	if (IS_ERR(ksmdev_thread)) {
		pr_err("cannot start the scanner thread\n");
		return PTR_ERR(ksmdev_thread);
	}
	return 0;
}

void ksmdev_scan_exit(void)
{
	kthread_stop(ksmdev_thread);
}
