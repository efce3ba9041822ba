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
 */
#include <linux/kthread.h>
#include <linux/freezer.h>
#include <linux/highmem.h>
#include <linux/sched/mm.h>
#include <linux/xxhash.h>

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
	return READ_ONCE(ksmdev_config.run) == KSM_RUN_MERGE &&
	       READ_ONCE(ksmdev_stats.registered_pages);
}

void ksmdev_scan_wake(void)
{
	atomic_inc(&ksmdev_wake_seq);
	wake_up_interruptible(&ksmdev_thread_wait);
}

/* The scan window on one mm must end now. */
static bool ksmdev_must_yield(struct mm_struct *mm)
{
	return atomic_read(&ksmdev_lock_waiters) || need_resched() ||
	       mmap_lock_is_contended(mm) ||
	       atomic_read(&mm->mm_users) <= 1 || kthread_should_stop();
}

/* Called with ksmdev_lock held by whoever is about to free @ctx. */
void ksmdev_scan_forget_ctx(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	if (ksmdev_cursor.ctx != ctx)
		return;
	if (list_is_last(&ctx->list, &ksmdev_ctx_list))
		ksmdev_cursor.ctx = NULL;
	else
		ksmdev_cursor.ctx = list_next_entry(ctx, list);
	ksmdev_cursor.addr = 0;
}

static bool ksmdev_vma_scannable(struct vm_area_struct *vma)
{
	if (!vma_is_anonymous(vma))
		return false;
	return !(vma->vm_flags & (VM_SHARED | VM_MAYSHARE | VM_PFNMAP |
				  VM_MIXEDMAP | VM_HUGETLB | VM_IO));
}

/*
 * The pmd that maps @addr, or NULL with *@next set past the empty (or huge
 * or bad) upper level entry that stands in the way.
 */
static pmd_t *ksmdev_walk_to_pmd(struct mm_struct *mm, unsigned long addr,
				 unsigned long end, unsigned long *next)
{
	pgd_t *pgd;
	p4d_t *p4d;
	pud_t *pud;

	pgd = pgd_offset(mm, addr);
	if (pgd_none(*pgd) || pgd_bad(*pgd)) {
		*next = pgd_addr_end(addr, end);
		return NULL;
	}
	p4d = p4d_offset(pgd, addr);
	if (p4d_none(*p4d) || p4d_bad(*p4d)) {
		*next = p4d_addr_end(addr, end);
		return NULL;
	}
	pud = pud_offset(p4d, addr);
	if (pud_none(*pud) || !pud_present(*pud) || pud_trans_huge(*pud) ||
	    pud_bad(*pud)) {
		*next = pud_addr_end(addr, end);
		return NULL;
	}
	*next = pmd_addr_end(addr, end);
	return pmd_offset(pud, addr);
}

static void ksmdev_batch_add(struct ksmdev_batch *b, unsigned long addr,
			     struct page *page)
{
	get_page(page);
	b->addr[b->nr] = addr;
	b->page[b->nr++] = page;
}

/* Gather subpages of the PMD-mapped huge page at @pmd, if anonymous. */
static unsigned long ksmdev_gather_huge(struct vm_area_struct *vma,
					pmd_t *pmd, unsigned long addr,
					unsigned long end,
					struct ksmdev_batch *b, unsigned int max)
{
	spinlock_t *ptl = pmd_lock(vma->vm_mm, pmd);
	struct page *head = pmd_page(*pmd);

	if (!pmd_trans_huge(*pmd) || !PageAnon(head)) {
		spin_unlock(ptl);
		return end;
	}
	for (; addr < end && b->nr < max; addr += PAGE_SIZE)
		ksmdev_batch_add(b, addr,
				 nth_page(head, (addr & ~PMD_MASK) >> PAGE_SHIFT));
	spin_unlock(ptl);
	return addr;
}

/* Gather the present anonymous pages of the page table at @pmd. */
static unsigned long ksmdev_gather_ptes(struct vm_area_struct *vma,
					pmd_t *pmd, unsigned long addr,
					unsigned long end,
					struct ksmdev_batch *b, unsigned int max)
{
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *start_pte, *pte;

	start_pte = ksmdev_pte_map_lock(vma->vm_mm, pmd, addr, &ptl);
	if (!start_pte) {
		ksmdev_pte_map_failed(ptl);
		return end;	/* the page table went away under us */
	}
	for (pte = start_pte; addr < end && b->nr < max; pte++, addr += PAGE_SIZE) {
		pte_t entry = ptep_get(pte);
		struct page *page;

		if (!pte_present(entry) || pte_special(entry) ||
		    is_zero_pfn(pte_pfn(entry)) || !pfn_valid(pte_pfn(entry)))
			continue;
		page = pfn_to_page(pte_pfn(entry));
		/* Mapped and under the PTE lock: it cannot be freed. */
		if (PageAnon(page))
			ksmdev_batch_add(b, addr, page);
	}
	pte_unmap_unlock(start_pte, ptl);
	return addr;
}

/*
 * Gather the present anonymous pages of [addr, end), within one pmd, taking
 * a reference on each, at most @max in @b. Returns where it stopped.
 */
static unsigned long ksmdev_gather(struct vm_area_struct *vma, pmd_t *pmd,
				   unsigned long addr, unsigned long end,
				   struct ksmdev_batch *b, unsigned int max)
{
	pmd_t pmdval = READ_ONCE(*pmd);

	if (pmd_none(pmdval) || !pmd_present(pmdval))
		return end;
	if (pmd_trans_huge(pmdval))
		return ksmdev_gather_huge(vma, pmd, addr, end, b, max);
	if (pmd_bad(pmdval))
		return end;
	return ksmdev_gather_ptes(vma, pmd, addr, end, b, max);
}

/* Look at one page of @region: checksum it and remember the result. */
static void ksmdev_scan_page(struct ksmdev_region *region, unsigned long addr,
			     struct page *page)
{
	void *kaddr = kmap_local_page(page);
	u64 csum = xxh64(kaddr, PAGE_SIZE, 0) & KSMDEV_SLOT_CSUM_MASK;
	u64 *slot;

	kunmap_local(kaddr);
	slot = ksmdev_region_slot(region, addr);
	if (slot)
		*slot = csum | KSMDEV_SLOT_SEEN;
	WRITE_ONCE(ksmdev_stats.pages_scanned, ksmdev_stats.pages_scanned + 1);
}

/*
 * Scan [*addr, end) of @region, which lies inside @vma, up to @budget
 * present pages. Returns the pages scanned; *addr is where to go on.
 */
static unsigned long ksmdev_scan_vma(struct ksmdev_region *region,
				     struct vm_area_struct *vma,
				     unsigned long *addr, unsigned long end,
				     unsigned long budget)
{
	struct ksmdev_batch b;
	unsigned long scanned = 0, next;
	unsigned int i;
	pmd_t *pmd;

	while (*addr < end && scanned < budget) {
		pmd = ksmdev_walk_to_pmd(vma->vm_mm, *addr, end, &next);
		if (!pmd) {
			*addr = next;
			continue;
		}
		b.nr = 0;
		*addr = ksmdev_gather(vma, pmd, *addr, next, &b,
				      min_t(unsigned long, KSMDEV_BATCH,
					    budget - scanned));
		for (i = 0; i < b.nr; i++) {
			ksmdev_scan_page(region, b.addr[i], b.page[i]);
			put_page(b.page[i]);
		}
		scanned += b.nr;
		if (ksmdev_must_yield(vma->vm_mm))
			break;
	}
	return scanned;
}

/*
 * One window on @ctx's mm, from the cursor: up to @budget pages. Returns
 * the pages scanned; moves the cursor's address on, to ULONG_MAX when the
 * context is done for this pass.
 */
static unsigned long ksmdev_scan_ctx(struct ksmdev_ctx *ctx,
				     unsigned long budget)
{
	struct mm_struct *mm = ctx->mm;
	unsigned long addr = ksmdev_cursor.addr, scanned = 0;
	struct ksmdev_region *region;
	struct vm_area_struct *vma;

	if (ctx->exited || !mmget_not_zero(mm)) {
		/*
		 * The process is gone (its fd lives on elsewhere): nothing
		 * can be merged there any more, so its bookkeeping goes now.
		 */
		if (!ctx->exited) {
			ctx->exited = true;
			ksmdev_ctx_drop_regions(ctx);
		}
		ksmdev_cursor.addr = ULONG_MAX;
		return 0;
	}
	mmap_read_lock(mm);
	while (scanned < budget) {
		region = ksmdev_region_next(ctx, addr);
		if (!region) {
			addr = ULONG_MAX;
			break;
		}
		addr = max(addr, region->start);
		vma = find_vma(mm, addr);
		if (!vma || vma->vm_start >= region->end) {
			addr = region->end;
			continue;
		}
		addr = max(addr, vma->vm_start);
		if (!ksmdev_vma_scannable(vma)) {
			addr = min(vma->vm_end, region->end);
			continue;
		}
		scanned += ksmdev_scan_vma(region, vma, &addr,
					   min(vma->vm_end, region->end),
					   budget - scanned);
		if (ksmdev_must_yield(mm))
			break;
	}
	mmap_read_unlock(mm);
	/* If the process exited meanwhile, its teardown runs in a worker. */
	mmput_async(mm);
	ksmdev_cursor.addr = addr;
	return scanned;
}

/* One batch: pages_to_scan pages, or up to the end of a pass. */
static void ksmdev_scan_batch(void)
{
	unsigned long budget = READ_ONCE(ksmdev_config.pages_to_scan);
	struct ksmdev_ctx *ctx;

	mutex_lock(&ksmdev_lock);
	while (budget && ksmdev_should_run() && !kthread_should_stop()) {
		if (!ksmdev_cursor.ctx) {
			if (list_empty(&ksmdev_ctx_list))
				break;
			ksmdev_cursor.ctx = list_first_entry(&ksmdev_ctx_list,
							     struct ksmdev_ctx,
							     list);
			ksmdev_cursor.addr = 0;
		}
		ctx = ksmdev_cursor.ctx;
		budget -= min(budget, ksmdev_scan_ctx(ctx, budget));

		if (ksmdev_cursor.addr == ULONG_MAX) {
			if (list_is_last(&ctx->list, &ksmdev_ctx_list)) {
				/* A pass over every context is complete. */
				ksmdev_cursor.ctx = NULL;
				WRITE_ONCE(ksmdev_stats.full_scans,
					   ksmdev_stats.full_scans + 1);
				break;
			}
			ksmdev_cursor.ctx = list_next_entry(ctx, list);
			ksmdev_cursor.addr = 0;
		}
		if (atomic_read(&ksmdev_lock_waiters) || need_resched()) {
			/* Let the ioctl in; the cursor stays valid. */
			mutex_unlock(&ksmdev_lock);
			cond_resched();
			mutex_lock(&ksmdev_lock);
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
		seq = atomic_read(&ksmdev_wake_seq);
		if (ksmdev_should_run())
			ksmdev_scan_batch();

		if (!ksmdev_should_run()) {
			/* Nothing to do: sleep until there is, no timer. */
			wait_event_freezable(ksmdev_thread_wait,
					     ksmdev_should_run() ||
					     kthread_should_stop());
		} else if (READ_ONCE(ksmdev_config.sleep_millisecs)) {
			unsigned long timeout;

			timeout = msecs_to_jiffies(READ_ONCE(ksmdev_config.sleep_millisecs));

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
 * Unmerge every merged page of every context. Called with ksmdev_lock
 * held and the scanner stopped (run is KSM_RUN_STOP).
 */
int ksmdev_unmerge_all(void)
{
	lockdep_assert_held(&ksmdev_lock);
	/* Nothing is merged yet: the merge engine is not built. */
	return 0;
}

int ksmdev_scan_init(void)
{
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
