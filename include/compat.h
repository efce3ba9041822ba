/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The compat layer: the one place where ksmdev knows which kernel it runs
 * on. Force-included before everything else (see Kbuild), so that the logic
 * files read like upstream code. Each block is keyed on a feature probe
 * done by Kbuild (KSMDEV_HAVE_*), never on a version number.
 *
 * Kernel-internal functions that are not exported to modules are resolved
 * at load (compat.c) and called through static calls: the call site becomes
 * a direct call, which IBT (6.12: CONFIG_X86_KERNEL_IBT) allows, where an
 * indirect call to a sealed function would fault. Each static call takes
 * its type from the kernel's own declaration of the function (typeof), so a
 * changed prototype breaks the build instead of the kernel.
 */
#ifndef _KSMDEV_COMPAT_H
#define _KSMDEV_COMPAT_H

#include <linux/static_call.h>
#include <linux/kallsyms.h>
#include <linux/mm.h>
#include <linux/rmap.h>
#include <linux/swap.h>
#include <linux/huge_mm.h>
#include <linux/mmu_notifier.h>
#include <linux/pgtable.h>
#include <linux/pid.h>
#include <linux/sched/mm.h>

#ifdef CONFIG_LOCKDEP
/* The map that mmu_notifier_invalidate_range_start() takes (symbols.h). */
extern struct lockdep_map *ksmdev_mmu_start_map;
#endif

/* The static calls of include/symbols.h, and the types of its variables. */
#define KSMDEV_SYMBOL(sym)	DECLARE_STATIC_CALL(ksmdev_sc_##sym, sym)
#define KSMDEV_DATA_SYMBOL(var, sym)	static_assert(__same_type(&(sym), var))
#include "symbols.h"
#undef KSMDEV_DATA_SYMBOL
#undef KSMDEV_SYMBOL

/* 6.11 added MAP_DROPPABLE; before it, no VMA is droppable. */
#ifndef KSMDEV_HAVE_VM_DROPPABLE
#define VM_DROPPABLE	VM_NONE
#endif

/* 6.6 added x86 user shadow stacks (VM_SHADOW_STACK); before, none. */
#ifndef VM_SHADOW_STACK
#define VM_SHADOW_STACK	VM_NONE
#endif

/*
 * After 6.12 (7.2 has none), nth_page() is gone: the memmap of a folio is
 * contiguous on every configuration, so the pages of a huge page are found
 * by pointer arithmetic. Before, nth_page() is the way (a macro, which
 * #ifndef sees).
 */
#ifndef nth_page
#define nth_page(page, n)	((page) + (n))
#endif

/*
 * The page flags word, for the bit operations on PG_owner_priv_1 (tree.c).
 * After 6.12 (7.2 has it), page->flags became a memdesc_flags_t wrapping it.
 */
#ifdef KSMDEV_HAVE_MEMDESC_FLAGS
#define ksmdev_page_flags(page)	(&(page)->flags.f)
#else
#define ksmdev_page_flags(page)	(&(page)->flags)
#endif

/*
 * The pfn of the zero page a read fault at @addr would map. After 6.12 (7.2
 * has it), my_zero_pfn() became zero_pfn(), and the variable zero_pfn
 * became zero_page_pfn.
 */
#ifdef KSMDEV_HAVE_ZERO_PFN_FN
#define ksmdev_zero_pfn(addr)	zero_pfn(addr)
#else
#define ksmdev_zero_pfn(addr)	my_zero_pfn(addr)
#endif

/* Found first, through a kprobe: the key to all the others. */
DECLARE_STATIC_CALL(ksmdev_sc_kallsyms_lookup_name, kallsyms_lookup_name);

/*
 * 6.5 maps page tables under RCU and may find none: __pte_offset_map_lock()
 * behind an inline pte_offset_map_lock(). After 6.12 (7.2 has it), the
 * inline is gone and pte_offset_map_lock() is that function itself. Neither
 * is exported (include/symbols.h).
 */
#if defined(KSMDEV_HAVE_PTE_MAP_LOCK_FN) || \
	defined(KSMDEV_HAVE_PTE_MAP_LOCK_EXTERN)
#define KSMDEV_HAVE_PTE_MAP_RCU
#endif

/*
 * Map the page table of @addr and take its lock. Returns NULL if the pmd no
 * longer points to a page table (6.5+ checks that under RCU); then nothing
 * is held, and the caller says so to sparse with ksmdev_pte_map_failed().
 * Release with pte_unmap_unlock().
 */
static inline pte_t *ksmdev_pte_map_lock(struct mm_struct *mm, pmd_t *pmd,
					 unsigned long addr, spinlock_t **ptlp)
	__acquires(*ptlp)
{
#ifdef KSMDEV_HAVE_PTE_MAP_RCU
#ifdef KSMDEV_HAVE_PTE_MAP_LOCK_EXTERN
	pte_t *pte = static_call(ksmdev_sc_pte_offset_map_lock)(mm, pmd, addr,
								 ptlp);
#else
	pte_t *pte = static_call(ksmdev_sc___pte_offset_map_lock)(mm, pmd,
								   addr, ptlp);
#endif

	/* For sparse: the page table is mapped under RCU, then locked. */
	__acquire(RCU);
	__acquire(*ptlp);
	return pte;
#else
	return pte_offset_map_lock(mm, pmd, addr, ptlp);
#endif
}

/* Sparse only: ksmdev_pte_map_lock() returned NULL and holds nothing. */
static inline void ksmdev_pte_map_failed(spinlock_t *ptl)
	__releases(ptl)
{
	__release(ptl);
#ifdef KSMDEV_HAVE_PTE_MAP_RCU
	__release(RCU);
#endif
}

/*
 * Set PG_mlocked on @page (counted in NR_MLOCK if it was clear), what
 * mlock_vma_folio() does for a locked mapping; callers hold the PTE lock
 * of one that maps @page.
 */
static inline void ksmdev_mlock_page(struct page *page)
{
	struct folio *folio = page_folio(page);

	/*
	 * What mlock_folio() (mm/mlock.c, 6.1 to 7.2) does for a folio off
	 * the LRU, which ours always is: its per-CPU batch would only hold a
	 * reference until that CPU drains, and keep an orphan from being
	 * freed meanwhile (review). Exported helpers only.
	 */
	if (!folio_test_set_mlocked(folio)) {
		zone_stat_mod_folio(folio, NR_MLOCK, 1);
		count_vm_event(UNEVICTABLE_PGMLOCKED);
	}
}

/* lru_add_drain_all(): flush the per-CPU batches that hold page references. */
static inline void ksmdev_lru_add_drain_all(void)
{
	static_call(ksmdev_sc_lru_add_drain_all)();
}

/*
 * folio_free_swap() (mm/swapfile.c, 6.1 to 7.2): take a locked folio out of
 * the swap cache and free its swap slot, unless a swap entry (another
 * process's PTE) still refers to it, it is under writeback, or
 * hibernation has stopped swap I/O (pm_suspended_storage()). Only
 * spinlocks: mm/ksm.c's replace_page() calls it under the page table lock.
 */
static inline bool ksmdev_folio_free_swap(struct folio *folio)
{
	return static_call(ksmdev_sc_folio_free_swap)(folio);
}

static inline pte_t ksmdev_ptep_clear_flush(struct vm_area_struct *vma,
					    unsigned long addr, pte_t *ptep)
{
	return static_call(ksmdev_sc_ptep_clear_flush)(vma, addr, ptep);
}

/* Map @page (order 0, not anonymous) into @vma with file rmap accounting. */
static inline void ksmdev_page_add_file_rmap(struct page *page,
					     struct vm_area_struct *vma)
{
#ifdef KSMDEV_HAVE_FOLIO_RMAP_PTES
	static_call(ksmdev_sc_folio_add_file_rmap_ptes)(page_folio(page), page,
							1, vma);
#else
	static_call(ksmdev_sc_page_add_file_rmap)(page, vma, false);
#endif
}

/* Undo the rmap of one PTE mapping of @page in @vma. */
static inline void ksmdev_page_remove_rmap(struct page *page,
					   struct vm_area_struct *vma)
{
#ifdef KSMDEV_HAVE_FOLIO_RMAP_PTES
	static_call(ksmdev_sc_folio_remove_rmap_ptes)(page_folio(page), page,
						      1, vma);
#else
	static_call(ksmdev_sc_page_remove_rmap)(page, vma, false);
#endif
}

/* Mappings of the order-0 page @page. */
static inline int ksmdev_page_mapcount(struct page *page)
{
#ifdef KSMDEV_HAVE_INLINE_FOLIO_MAPCOUNT
	return folio_mapcount(page_folio(page));
#else
	return page_mapcount(page);
#endif
}

/*
 * ksmdev_unshare - give @addr of @vma (mmap lock held) a private copy of
 * the merged page or merged zero page it maps, as mm/ksm.c's break_ksm()
 * does: the copy is an exclusive anonymous page, still read-only (the next
 * write reuses it), with the PTE's uffd-wp and soft-dirty bits kept.
 *
 * Not a write fault: under userfaultfd write protection a write fault is
 * the monitor's (handle_userfault(), VM_FAULT_SIGBUS without
 * FAULT_FLAG_ALLOW_RETRY), and it would drop the uffd-wp bit if it copied.
 *
 * 6.2 ("mm: extend FAULT_FLAG_UNSHARE support to anything in a COW
 * mapping") made an unshare fault copy any page of a private mapping
 * (6.12 do_wp_page(): "Private mapping: create an exclusive anonymous page
 * copy if reuse is impossible"; wp_page_copy() keeps both bits "if
 * (unlikely(unshare))"). Before, it returns at a page that is not
 * anonymous (6.1 do_wp_page(): "No anonymous page -> nothing to do"), so
 * compat.c makes the same copy the same way (ksmdev_unshare_copy()).
 *
 * Return: 0 (unshared, or the PTE changed meanwhile: look again), -ENOMEM,
 * or -EFAULT.
 */
#ifdef KSMDEV_HAVE_UNSHARE_COW
static inline int ksmdev_unshare(struct vm_area_struct *vma,
				 unsigned long addr)
{
	vm_fault_t ret;

	ret = handle_mm_fault(vma, addr, FAULT_FLAG_UNSHARE | FAULT_FLAG_REMOTE,
			      NULL);
	if (ret & VM_FAULT_OOM)
		return -ENOMEM;
	/*
	 * A machine check in the copy: the page is being marked poisoned
	 * (memory_failure_queue()); looking again, the caller unmaps it.
	 */
	if (ret & VM_FAULT_HWPOISON)
		return 0;
	if (ret & VM_FAULT_ERROR)
		return -EFAULT;
	return 0;
}
#else
int ksmdev_unshare_copy(struct vm_area_struct *vma, unsigned long addr);

static inline int ksmdev_unshare(struct vm_area_struct *vma,
				 unsigned long addr)
{
	return ksmdev_unshare_copy(vma, addr);
}
#endif

/* Split the locked huge page @page into order-0 pages. */
static inline int ksmdev_split_huge_page(struct page *page)
{
#if defined(KSMDEV_HAVE_SPLIT_TO_ORDER_FN)
	return static_call(ksmdev_sc___split_huge_page_to_list_to_order)(page,
									 NULL,
									 0);
#elif defined(KSMDEV_HAVE_SPLIT_TO_ORDER)
	return static_call(ksmdev_sc_split_huge_page_to_list_to_order)(page,
								       NULL, 0);
#else
	return static_call(ksmdev_sc_split_huge_page_to_list)(page, NULL);
#endif
}

/*
 * add_mm_counter() cannot be linked from a module (its tracepoint helper is
 * not exported): update the counter it updates.
 */
static inline void ksmdev_add_mm_counter(struct mm_struct *mm, int member,
					 long value)
{
#ifdef KSMDEV_HAVE_PERCPU_RSS
	percpu_counter_add(&mm->rss_stat[member], value);
#else
	atomic_long_add(value, &mm->rss_stat.count[member]);
#endif
}

static inline void ksmdev_mmu_range_init(struct mmu_notifier_range *range,
					 struct vm_area_struct *vma,
					 unsigned long start, unsigned long end)
{
#ifdef KSMDEV_HAVE_MMU_RANGE_VMA
	mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, vma, vma->vm_mm,
				start, end);
#else
	mmu_notifier_range_init(range, MMU_NOTIFY_CLEAR, 0, vma->vm_mm,
				start, end);
#endif
}

/*
 * The kernel's inline mmu_notifier_invalidate_range_start(), with the error
 * returned: secondary MMUs (KVM, and interval-notifier subscribers such as
 * GPU userptr, RDMA ODP or Xen gntdev, which refuse a range that may not
 * sleep) drop their mappings of [range->start, range->end) before it
 * returns 0. The range is blockable, as in the kernel's own callers: an
 * interval notifier that had to refuse it would keep mapping the page that
 * the merge then frees. Only a subscriber that breaks the rules (the kernel
 * WARNs) fails a blockable range; then, as after a failed
 * mmu_notifier_invalidate_range_start_nonblock(), the caller must not call
 * ksmdev_mmu_invalidate_end() (it would end the invalidation twice and
 * leave the mm's interval tree "invalidating" for ever): it gives up.
 *
 * The lockdep map is the one the kernel's wrapper takes, even when the mm
 * has no notifiers, so that the debug kernel checks our locks against every
 * subscriber's. Call with no spinlock held and not under RCU: it may sleep.
 */
static inline int __must_check
ksmdev_mmu_invalidate_start(struct mmu_notifier_range *range)
{
	int err = 0;

	might_sleep();
	lock_map_acquire(ksmdev_mmu_start_map);
	if (mm_has_notifiers(range->mm)) {
		range->flags |= MMU_NOTIFIER_RANGE_BLOCKABLE;
		err = static_call(ksmdev_sc___mmu_notifier_invalidate_range_start)(range);
	}
	lock_map_release(ksmdev_mmu_start_map);
	return err;
}

/* The inline mmu_notifier_invalidate_range_end(), after a start that was 0. */
static inline void ksmdev_mmu_invalidate_end(struct mmu_notifier_range *range)
{
	if (mmu_notifier_range_blockable(range))
		might_sleep();
	if (!mm_has_notifiers(range->mm))
		return;
#ifdef KSMDEV_HAVE_MMU_END_ONLY_END
	static_call(ksmdev_sc___mmu_notifier_invalidate_range_end)(range, false);
#else
	static_call(ksmdev_sc___mmu_notifier_invalidate_range_end)(range);
#endif
}

#endif /* _KSMDEV_COMPAT_H */
