// SPDX-License-Identifier: GPL-2.0
/*
 * DOC: merging and unmerging
 *
 * A module cannot make pages PageKsm: the kernel's rmap would call into
 * mm/ksm.c for them. So a merged page is a plain kernel page (the 2009
 * KSM's "unswappable kernel page"), mapped read-only into private anonymous
 * VMAs with file rmap accounting, as vm_insert_page() maps a driver's page.
 * The kernel then needs no help from us: a write fault on a private mapping
 * of a non-anonymous page copies it (copy-on-write), fork duplicates the
 * mapping, munmap and exit unmap it and drop its reference.
 *
 * ksmdev_replace_page() swaps one anonymous PTE for the stable page (or the
 * zero page). Under the page table lock it clears and flushes the PTE, so
 * nobody can write through it or map it anew; then the page's references
 * must be its mappings and ours alone (a pin by O_DIRECT, vmsplice or
 * io_uring would show as one more: then the PTE is put back), and the
 * content must still be identical. Only then is the new PTE installed.
 *
 * Unmerging copies as mm/ksm.c's break_ksm() does: each address that maps
 * a stable page or a zero page we put there takes an unshare fault
 * (ksmdev_unshare()), which gives it an exclusive anonymous copy, read-only
 * until written, keeping the PTE's uffd-wp and soft-dirty bits; a write
 * fault would be userfaultfd's to handle. Out of memory and signals come
 * back as errors, at once, never as a retry loop (seed 001).
 */
#include <linux/highmem.h>
#include <linux/pagemap.h>
#include <linux/userfaultfd_k.h>
#include <linux/sched/signal.h>
#include <linux/swapops.h>

#include "ksmdev.h"

/*
 * Private anonymous memory: the scanner may read its pages. Not
 * VM_DROPPABLE memory (MAP_DROPPABLE, 6.11): its pages are there for the
 * kernel to free under pressure, which a merged page can never be. Not
 * VM_DONTEXPAND (a driver's or a special mapping), as mm/ksm.c skips it.
 * Not a shadow stack (VM_SHADOW_STACK): mm/ksm.c would merge one, and the
 * CPU's next call would fault and copy it back (7.2 arch/x86/mm/fault.c
 * treats a shadow-stack access as a write); return addresses gain nothing
 * from sharing, KSM_REGION_ALL meets them in every process with user
 * shadow stacks, and TCG, where we test, has no CET to prove that path.
 */
bool ksmdev_vma_scannable(struct vm_area_struct *vma)
{
	return vma_is_anonymous(vma) &&
	       !(vma->vm_flags & (VM_SHARED | VM_MAYSHARE | VM_PFNMAP |
				  VM_MIXEDMAP | VM_HUGETLB | VM_IO |
				  VM_DONTEXPAND | VM_DROPPABLE |
				  VM_SHADOW_STACK));
}

/*
 * Merging is done only in VMAs where the kernel will do the rest right.
 * Not with userfaultfd armed: its PTE bits would be lost.
 *
 * mlocked VMAs (VM_LOCKED: mlock(), mlockall(), QEMU's mem-lock=on) merge,
 * and the rmap functions keep the mlock accounting, as they do for
 * mm/ksm.c's replace_page(), on 6.1 to 7.2 alike (mm/mlock.c):
 * - The old page's rmap removal munlocks it (munlock_vma_folio(): its
 *   mlock_count drops, PG_mlocked and NR_MLOCK with it), before it is
 *   freed; a munlock still queued holds a reference, and the free clears a
 *   PG_mlocked left over (free_pages_prepare()): no "Bad page state".
 * - The stable page's file rmap in a VM_LOCKED VMA mlocks it
 *   (mlock_vma_folio()): PG_mlocked, counted once in NR_MLOCK however many
 *   VMAs lock it, as ksmd's page. It is never on the LRU, so mlock_folio()
 *   and munlock_folio() never touch its mlock_count (which shares
 *   page->lru; page->private, our node, is another word) nor move it
 *   between LRU lists: they stop at !folio_test_clear_lru(), and a
 *   munlock there clears PG_mlocked at once. So the first locked sharer
 *   to go (munmap, munlock, exit, COW, unmerge) un-counts the page while
 *   others may still lock it, where ksmd's page, on the unevictable LRU,
 *   keeps a count; reclaim corrects that for LRU pages, the scanner does
 *   it for ours, within a pass (ksmdev_kpage_mlock()). PG_mlocked matters
 *   to nothing but NR_MLOCK here: reclaim and migration never see the
 *   page.
 * - A copy made by a COW or an unshare fault in a VM_LOCKED VMA is mlocked
 *   by the fault (folio_add_lru_vma(), 6.1: the same through
 *   lru_cache_add_inactive_or_unevictable(), which ksmdev_unshare_copy()
 *   calls as wp_page_copy() does).
 * mlock() of a writable range faults it for write and so unmerges it;
 * merging resumes after. Pages of a VM_LOCKONFAULT VMA merge once faulted.
 */
bool ksmdev_vma_mergeable(struct vm_area_struct *vma)
{
	return ksmdev_vma_scannable(vma) && !userfaultfd_armed(vma);
}

/**
 * ksmdev_kpage_mlock - count a stable page mlocked again where it is locked
 * @vma:  a mergeable VMA (mmap lock held for read: VM_LOCKED cannot change)
 * @addr: an address in it, where the scanner found @page mapped
 * @page: a page that is not anonymous (a stable page), referenced
 *
 * A stable page is off the LRU, so the munlock of any one of its locked
 * mappings clears its PG_mlocked, while other VMAs may still lock it (see
 * ksmdev_vma_mergeable()). For a page on the LRU, reclaim would find such
 * a VMA and mlock the page again (folio_referenced_one()); reclaim never
 * sees ours, so the scanner does it, as mlock_pte_range() does: under the
 * PTE lock, with the PTE still mapping @page, so that the munlock of this
 * very mapping, when it goes, comes after and clears the flag. The page
 * is never counted locked without a locked mapping.
 */
void ksmdev_kpage_mlock(struct vm_area_struct *vma, unsigned long addr,
			struct page *page)
{
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *ptep, pte;
	pmd_t *pmd;

	/* As mlock_vma_folio(); no mergeable VMA is VM_SPECIAL anyway. */
	if ((vma->vm_flags & (VM_LOCKED | VM_SPECIAL)) != VM_LOCKED ||
	    folio_test_mlocked(page_folio(page)) || PageAnon(page) ||
	    PageHWPoison(page))
		return;
	pmd = ksmdev_table_pmd(vma->vm_mm, addr);
	if (!pmd)
		return;
	ptep = ksmdev_pte_map_lock(vma->vm_mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		return;
	}
	pte = ptep_get(ptep);
	if (pte_present(pte) && pte_pfn(pte) == page_to_pfn(page))
		ksmdev_mlock_page(page);
	pte_unmap_unlock(ptep, ptl);
}

/**
 * ksmdev_page_candidate - may the scanner take @page for merging?
 * @page: a page mapped in a mergeable VMA (a reference held)
 *
 * Only anonymous pages are, and not all of them. The in-kernel KSM's
 * merged pages are anonymous too (PageKsm: PAGE_MAPPING_KSM has the anon
 * bit), but their mapping points to ksmd's stable node and rmap walks go
 * through mm/ksm.c: in a range that is also MADV_MERGEABLE, ksmd's pages
 * are ksmd's. ZONE_DEVICE pages (device-coherent memory that a driver
 * migrated in) are the driver's to migrate back. A page marked poisoned
 * (memory_failure()) must not be read again: on real hardware that is a
 * machine check.
 */
bool ksmdev_page_candidate(struct page *page)
{
	return PageAnon(page) && !folio_test_ksm(page_folio(page)) &&
	       !is_zone_device_page(page) && !PageHWPoison(page);
}

/*
 * The pmd that maps @addr, or NULL with *@next set past the empty (or huge
 * or bad) upper level entry that stands in the way. Needs the mmap lock.
 */
pmd_t *ksmdev_walk_to_pmd(struct mm_struct *mm, unsigned long addr,
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

bool ksmdev_pages_identical(struct page *a, struct page *b)
{
	void *ka = kmap_local_page(a);
	void *kb = kmap_local_page(b);
	bool same = !memcmp(ka, kb, PAGE_SIZE);

	kunmap_local(kb);
	kunmap_local(ka);
	return same;
}

bool ksmdev_page_is_zero(struct page *page)
{
	void *kaddr = kmap_local_page(page);
	bool zero = !memchr_inv(kaddr, 0, PAGE_SIZE);

	kunmap_local(kaddr);
	return zero;
}

/* A pmd that points to a page table (not empty, huge or bad). */
pmd_t *ksmdev_table_pmd(struct mm_struct *mm, unsigned long addr)
{
	unsigned long next;
	pmd_t *pmd = ksmdev_walk_to_pmd(mm, addr, addr + PAGE_SIZE, &next);
	pmd_t pmdval;

	if (!pmd)
		return NULL;
	pmdval = READ_ONCE(*pmd);
	if (pmd_none(pmdval) || !pmd_present(pmdval) ||
	    pmd_trans_huge(pmdval) || pmd_bad(pmdval))
		return NULL;
	return pmd;
}

/**
 * ksmdev_get_anon_page - the candidate page mapped at @addr, referenced
 * @vma:  a mergeable VMA (mmap lock held)
 * @addr: an address in it
 *
 * Return: the page with a reference taken, or NULL.
 */
struct page *ksmdev_get_anon_page(struct vm_area_struct *vma,
				  unsigned long addr)
{
	struct mm_struct *mm = vma->vm_mm;
	struct page *page = NULL;
	unsigned long next;
	spinlock_t *ptl;	/* the page table's (or the pmd's) lock */
	pte_t *ptep, pte;
	pmd_t *pmd;

	pmd = ksmdev_walk_to_pmd(mm, addr, addr + PAGE_SIZE, &next);
	if (!pmd)
		return NULL;
	if (pmd_trans_huge(READ_ONCE(*pmd))) {
		ptl = pmd_lock(mm, pmd);
		if (pmd_trans_huge(*pmd) && PageAnon(pmd_page(*pmd))) {
			page = nth_page(pmd_page(*pmd),
					(addr & ~PMD_MASK) >> PAGE_SHIFT);
			if (ksmdev_page_candidate(page))
				get_page(page);
			else
				page = NULL;
		}
		spin_unlock(ptl);
		return page;
	}
	pmd = ksmdev_table_pmd(mm, addr);
	if (!pmd)
		return NULL;
	ptep = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		return NULL;
	}
	pte = ptep_get(ptep);
	if (pte_present(pte) && !pte_special(pte) && pfn_valid(pte_pfn(pte))) {
		page = pfn_to_page(pte_pfn(pte));
		if (ksmdev_page_candidate(page))
			get_page(page);
		else
			page = NULL;
	}
	pte_unmap_unlock(ptep, ptl);
	return page;
}

/**
 * ksmdev_split_page - make @page an order-0 page, if it is part of a THP
 * @page: an anonymous page; the caller holds one reference, and no other
 *        reference to the same huge page
 *
 * Return: 0, or -EBUSY if it could not be split now (try next scan).
 */
int ksmdev_split_page(struct page *page)
{
	int err;

	if (!PageCompound(page))
		return 0;
	if (!trylock_page(page))
		return -EBUSY;
	/* @page stays locked through the split; the other parts do not. */
	err = ksmdev_split_huge_page(page);
	unlock_page(page);
	return err ? -EBUSY : 0;
}

/*
 * No pin: the references are the mappings, the caller's one, and the swap
 * cache's if @page is in it (read back from swap, its slot still held:
 * one reference for an order-0 page), as in mm/ksm.c's
 * write_protect_page(). Under the page lock, which adding to and deleting
 * from the swap cache take: the flag cannot change meanwhile.
 */
static bool ksmdev_page_unpinned(struct page *page)
{
	return page_count(page) == ksmdev_page_mapcount(page) + 1 +
				   folio_test_swapcache(page_folio(page));
}

/**
 * ksmdev_page_unpinned_hint - would ksmdev_replace_page() find no pin?
 * @page: an order-0 candidate page; the caller holds one reference
 *
 * A look without the page lock and with the PTE in place, so only a hint:
 * a reference taken or dropped after it changes the answer, which
 * ksmdev_replace_page() decides under both. For a caller about to allocate
 * and copy a stable page for a merge that a pin would make fail.
 */
bool ksmdev_page_unpinned_hint(struct page *page)
{
	return ksmdev_page_unpinned(page);
}

/**
 * ksmdev_replace_page - map @kpage at @addr instead of @page
 * @vma:   a mergeable VMA; its mmap lock held for read
 * @addr:  where @page is mapped
 * @page:  an order-0 candidate page (ksmdev_page_candidate()); the caller
 *         holds a reference
 * @kpage: a stable page with @page's content, or NULL for the zero page
 *
 * Called with ksmdev_lock and the mmap lock held (see below), and nothing
 * else: the invalidation of secondary MMUs may sleep.
 *
 * A page in the swap cache merges like any other: a read fault leaves a
 * page read back from swap there, with its swap slot, unless swap is
 * nearly full (vm_swap_full(), a memcg's swap limit), the page is mlocked,
 * or the device is synchronous (zram: 6.1 and 6.12 skip the swap cache,
 * 7.2 frees it at once). If that was its last mapping, its swap slot is
 * freed with it, as mm/ksm.c's replace_page() does: else the page and the
 * slot would stay until reclaim came by, and merging would save nothing
 * meanwhile.
 *
 * Return: 0, or -EAGAIN if the PTE changed, the page is locked or pinned,
 * is no longer a candidate (ksmd took it), its content is no longer that of
 * @kpage, or a secondary MMU refused to drop its mapping of @page.
 */
int ksmdev_replace_page(struct vm_area_struct *vma, unsigned long addr,
			struct page *page, struct page *kpage)
{
	struct mm_struct *mm = vma->vm_mm;
	struct mmu_notifier_range range;
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *ptep, orig, newpte;
	int err = -EAGAIN;
	pmd_t *pmd;

	mmap_assert_locked(mm);
	if (PageCompound(page))
		return -EAGAIN;
	pmd = ksmdev_table_pmd(mm, addr);
	if (!pmd)
		return -EAGAIN;
	/*
	 * ksmd makes a mapped page PageKsm in place, under the page lock
	 * (try_to_merge_one_page()): holding it, the test below stays true.
	 */
	if (!trylock_page(page))
		return -EAGAIN;
	if (!ksmdev_page_candidate(page)) {
		unlock_page(page);
		return -EAGAIN;
	}

	/*
	 * A secondary MMU (KVM's EPT, a device mapping user memory through an
	 * interval notifier) must drop the old page first, and may sleep to
	 * do so (wait for its own lock, or for DMA in flight to end). That
	 * is safe with what we hold, ksmdev_lock and the mmap read lock (of
	 * one or two mms, see ksmdev_merge_unstable()): mm/ksm.c's
	 * write_protect_page() and replace_page() do the same under
	 * ksm_thread_mutex and the mmap read lock; munmap invalidates under
	 * the mmap write lock, reclaim from inside any allocation. So no
	 * subscriber may wait, in its invalidate callback, for anything that
	 * needs an mmap lock or allocates memory (lockdep's
	 * mmu_notifier_invalidate_range_start map, which we take too, checks
	 * that), and none can wait for ksmdev_lock: only the scanner and
	 * /dev/ksm's callers take it, and no kernel path that a subscriber
	 * holds a lock across (faults, GUP, reclaim) ever calls into ksmdev.
	 * A subscriber's invalidate that sleeps long (GPU fences) holds up
	 * the scanner and, behind it, the ioctls: not a deadlock.
	 * A start that fails has not started: nothing to end, no merge.
	 */
	ksmdev_mmu_range_init(&range, vma, addr, addr + PAGE_SIZE);
	if (ksmdev_mmu_invalidate_start(&range)) {
		unlock_page(page);
		return -EAGAIN;
	}
	ptep = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		goto out;
	}
	orig = ptep_get(ptep);
	if (!pte_present(orig) || pte_pfn(orig) != page_to_pfn(page))
		goto unlock;

	/* From here nobody can write the page through this PTE. */
	orig = ksmdev_ptep_clear_flush(vma, addr, ptep);
	if (!ksmdev_page_unpinned(page) ||
	    (kpage ? !ksmdev_pages_identical(page, kpage) :
		     !ksmdev_page_is_zero(page))) {
		set_pte_at(mm, addr, ptep, orig);
		goto unlock;
	}

	if (kpage) {
		get_page(kpage);
		ksmdev_page_add_file_rmap(kpage, vma);
		ksmdev_add_mm_counter(mm, MM_FILEPAGES, 1);
		newpte = mk_pte(kpage, vma->vm_page_prot);
	} else {
		/* What a read fault on an absent page would install. */
		newpte = pte_mkspecial(pfn_pte(ksmdev_zero_pfn(addr),
					       vma->vm_page_prot));
	}
	/* Soft-dirty tracking (CRIU) must not lose a write it has not seen. */
	if (pte_soft_dirty(orig))
		newpte = pte_mksoft_dirty(newpte);
	set_pte_at(mm, addr, ptep, newpte);

	/*
	 * A write through this PTE that the page does not know of yet: on
	 * reclaim, a clean page in the swap cache is dropped unwritten, its
	 * slot's old copy kept. It can still be mapped elsewhere with clean
	 * PTEs: fork() copies a PTE before write-protecting it, and a thread
	 * writing in between dirties the parent's alone (6.12's and 7.2's
	 * swap-in maps an exclusive page writable and clean). Reclaim's
	 * try_to_unmap_one() and mm/ksm.c's write_protect_page() move the bit
	 * to the page for the same reason.
	 */
	if (pte_dirty(orig))
		folio_mark_dirty(page_folio(page));
	ksmdev_page_remove_rmap(page, vma);
	ksmdev_add_mm_counter(mm, MM_ANONPAGES, -1);
	/*
	 * Unmapped now, and in the swap cache: drop that and the swap slot.
	 * We hold the page lock it needs, and with it the mapcount read
	 * cannot go stale: a swap-in fault (do_swap_page()) maps a page of
	 * the swap cache only under that lock, and fork() copies only a
	 * mapping that exists. Kept if another process's PTE still holds
	 * the swap entry (then its fault finds the page there), or the page
	 * is under writeback.
	 */
	if (folio_test_swapcache(page_folio(page)) &&
	    !ksmdev_page_mapcount(page))
		ksmdev_folio_free_swap(page_folio(page));
	/* The PTE's reference; the caller still holds its own. */
	put_page(page);
	ksmdev_event(&ksmdev_events.merges);
	err = 0;
unlock:
	pte_unmap_unlock(ptep, ptl);
out:
	ksmdev_mmu_invalidate_end(&range);
	unlock_page(page);
	return err;
}

/* Merged pages found under ksmdev_lock at a time, then unshared without it. */
#define KSMDEV_UNMERGE_CHUNK	64
/* Page tables (2 MiB each) looked at under ksmdev_lock at a time. */
#define KSMDEV_UNMERGE_TABLES	16
/* Slots cleared under ksmdev_lock at a time. */
#define KSMDEV_UNMERGE_SLOTS	(16 * KSMDEV_CHUNK_PAGES)
/* Rounds in which the first merged page backs out before it is passed by. */
#define KSMDEV_UNSHARE_TRIES	16

/*
 * Find, from *@addrp up to @end of @vma, the first address that maps a
 * stable page, or the zero page where the slot says we put it: true, with
 * *@addrp set to it. False when there is none before @end, or when
 * *@tables page tables have been looked at (the caller holds ksmdev_lock
 * and lets go between rounds, however sparse the merged pages): *@addrp is
 * then where to look on.
 */
static bool ksmdev_next_merged(struct vm_area_struct *vma,
			       struct ksmdev_region *region,
			       unsigned long *addrp, unsigned long end,
			       unsigned int *tables)
{
	struct mm_struct *mm = vma->vm_mm;
	unsigned long addr = *addrp, next;
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *start_pte, *ptep;
	pmd_t *pmd;

	for (; addr < end && *tables; addr = next, (*tables)--) {
		pmd = ksmdev_walk_to_pmd(mm, addr, end, &next);
		if (!pmd || !ksmdev_table_pmd(mm, addr))
			continue;
		start_pte = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
		if (!start_pte) {
			ksmdev_pte_map_failed(ptl);
			continue;
		}
		for (ptep = start_pte; addr < next; ptep++, addr += PAGE_SIZE) {
			pte_t pte = ptep_get(ptep);
			u64 *slot;

			if (!pte_present(pte))
				continue;
			if (is_zero_pfn(pte_pfn(pte))) {
				slot = ksmdev_region_slot_lookup(region, addr);
				if (slot && (*slot & KSMDEV_SLOT_ZERO))
					break;
				continue;
			}
			/* Merged PTEs are never writable (nor unshared). */
			if (!pte_write(pte) && !pte_special(pte) &&
			    pfn_valid(pte_pfn(pte)) &&
			    !PageAnon(pfn_to_page(pte_pfn(pte))))
				break;
		}
		pte_unmap_unlock(start_pte, ptl);
		if (addr < next) {
			*addrp = addr;
			return true;
		}
	}
	*addrp = min(addr, end);
	return false;
}

/*
 * If @addr maps a merged page marked poisoned, unmap it as memory_failure()
 * unmaps a poisoned anonymous page (try_to_unmap_one() with TTU_HWPOISON):
 * a hwpoison entry takes the PTE's place, so that the next access gets
 * SIGBUS, as with any lost page, and nothing reads the page again (a copy
 * would: memory_failure() leaves a page it does not know, like ours,
 * mapped). Returns true if it did.
 */
static bool ksmdev_unmerge_poisoned(struct vm_area_struct *vma,
				    unsigned long addr)
{
	struct mm_struct *mm = vma->vm_mm;
	struct mmu_notifier_range range;
	struct page *page = NULL;
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *ptep, pte;
	bool done = false;
	pmd_t *pmd;

	pmd = ksmdev_table_pmd(mm, addr);
	if (!pmd)
		return false;
	ptep = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		return false;
	}
	pte = ptep_get(ptep);
	if (pte_present(pte) && !pte_special(pte) && pfn_valid(pte_pfn(pte))) {
		page = pfn_to_page(pte_pfn(pte));
		if (!PageAnon(page) && PageHWPoison(page))
			get_page(page);
		else
			page = NULL;
	}
	pte_unmap_unlock(ptep, ptl);
	if (!page)
		return false;

	/* make_hwpoison_entry() wants it locked, as memory_failure() has it. */
	lock_page(page);
	ksmdev_mmu_range_init(&range, vma, addr, addr + PAGE_SIZE);
	/* Refused (never, for a blockable range): the unmerge looks again. */
	if (ksmdev_mmu_invalidate_start(&range))
		goto unlock_page;
	ptep = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		goto out;
	}
	if (pte_same(ptep_get(ptep), pte)) {
		ksmdev_ptep_clear_flush(vma, addr, ptep);
		set_pte_at(mm, addr, ptep,
			   swp_entry_to_pte(make_hwpoison_entry(page)));
		ksmdev_page_remove_rmap(page, vma);
		ksmdev_add_mm_counter(mm, MM_FILEPAGES, -1);
		/* The PTE's reference; ours goes below. */
		put_page(page);
		done = true;
	}
	pte_unmap_unlock(ptep, ptl);
out:
	ksmdev_mmu_invalidate_end(&range);
unlock_page:
	unlock_page(page);
	put_page(page);
	return done;
}

/*
 * Forget that pages of [addr, end) of @region were merged: they were all
 * unmerged.
 */
static void ksmdev_region_unmerged(struct ksmdev_ctx *ctx,
				   struct ksmdev_region *region,
				   unsigned long addr, unsigned long end)
{
	unsigned int n;
	u64 *slot;

	/*
	 * ksmdev_lock a few thousand slots at a time: the caller's ctx->lock
	 * keeps the region, and nothing merges into it (see below).
	 */
	while (addr < end) {
		ksmdev_lock_acquire();
		for (n = 0; n < KSMDEV_UNMERGE_SLOTS; n++) {
			addr = ksmdev_region_slot_next(region, addr, end, &slot);
			if (addr >= end)
				break;
			if (*slot & KSMDEV_SLOT_MERGED)
				ksmdev_slot_set(ctx, region, slot, 0);
			addr += PAGE_SIZE;
		}
		ksmdev_lock_pass();
	}
}

/*
 * Somebody waits for the mmap lock of @mm: the process's own mmap() or
 * munmap() (a writer) while another process unmerges it (run=2, or an
 * unregister through a file attached to it), or, on 6.1, its page faults
 * queued behind such a writer. Let them in between two chunks, so that an
 * unmerge of gigabytes never stalls the process it works on for longer
 * than one chunk, as mm/ksm.c's unmerge does not do. Returns true if the
 * lock was dropped: the VMAs must be found again. The lock is taken back
 * whatever happens (the callers unlock it); a fatal signal is seen by the
 * unmerge loop at its next chunk.
 */
static bool ksmdev_mmap_yield(struct mm_struct *mm)
{
	if (!mmap_lock_is_contended(mm))
		return false;
	mmap_read_unlock(mm);
	cond_resched();
	mmap_read_lock(mm);
	return true;
}

/**
 * ksmdev_unmerge_range - give every merged page of part of @region a
 * private copy
 * @ctx:    the region's context
 * @region: the region
 * @start:  first address, inside @region, page aligned
 * @stop:   address past the last page, inside @region
 *
 * Called with ctx->lock held, a reference on ctx->mm and its mmap lock held
 * for read (the unshare fault runs without FAULT_FLAG_ALLOW_RETRY, so keeps it
 * held; between chunks it is let go to a waiter, see ksmdev_mmap_yield(), and
 * held again on return), and without ksmdev_lock: the page faults run without
 * it, so that nobody else waits for them. It is taken for a moment per chunk,
 * to find the next merged pages (their slots say which zero pages are ours),
 * and at the end to forget that the region's pages were merged. Nothing merges
 * into @region meanwhile: it is going (the scanner leaves it alone), or run is
 * stopped (unmerge-all).
 *
 * Returns promptly on failure; what was unmerged stays unmerged, and the
 * call can be repeated.
 *
 * Return: 0, -ENOMEM (a memory cgroup limit, or no memory), -ERESTARTSYS
 * (a signal: EINTR for the caller, or a restart), -ESRCH (the context is
 * being closed, or its process is gone: ksmdev_ctx_abandoned()), or -EFAULT
 * (the fault failed otherwise: not seen).
 */
int ksmdev_unmerge_range(struct ksmdev_ctx *ctx, struct ksmdev_region *region,
			 unsigned long start, unsigned long stop)
{
	unsigned long addr = start, end, last = 0;
	unsigned long chunk[KSMDEV_UNMERGE_CHUNK];
	struct mm_struct *mm = ctx->mm;
	struct vm_area_struct *vma;
	unsigned int i, nr, tables, tries = 0;
	long ret;

	lockdep_assert_held(&ctx->lock);
	lockdep_assert_not_held(&ksmdev_lock);
	mmap_assert_locked(mm);
	while (addr < stop) {
		vma = find_vma(mm, addr);
		if (!vma || vma->vm_start >= stop)
			break;
		addr = max(addr, vma->vm_start);
		end = min(vma->vm_end, stop);
		/* Only a COW mapping has pages to unshare. */
		if (!vma_is_anonymous(vma) || !is_cow_mapping(vma->vm_flags)) {
			addr = end;
			continue;
		}
		while (addr < end) {
			/*
			 * A signal, or task work (io_uring): restart the call
			 * after it, or return EINTR to a handler that asked
			 * for no restart. What was unmerged stays unmerged.
			 */
			if (signal_pending(current))
				return -ERESTARTSYS;
			if (ksmdev_ctx_abandoned(ctx))
				return -ESRCH;
			tables = KSMDEV_UNMERGE_TABLES;
			ksmdev_lock_acquire();
			for (nr = 0; nr < KSMDEV_UNMERGE_CHUNK; nr++) {
				if (!ksmdev_next_merged(vma, region, &addr, end,
							&tables))
					break;
				chunk[nr] = addr;
				addr += PAGE_SIZE;
			}
			ksmdev_lock_pass();
			if (!nr) {
				/* None in this round's page tables: on. */
				if (ksmdev_mmap_yield(mm))
					break;
				continue;
			}
			/*
			 * The first of a chunk found again, round after round:
			 * its unshare keeps backing out (the PTE changed under
			 * the fault, as break_ksm() allows for), or it is
			 * something the fault cannot unshare. Look again a few
			 * times, then pass it by rather than loop for ever.
			 */
			tries = chunk[0] == last ? tries + 1 : 0;
			last = chunk[0];
			if (tries > KSMDEV_UNSHARE_TRIES) {
				addr = last + PAGE_SIZE;
				tries = 0;
				continue;
			}
			for (i = 0; i < nr; i++) {
				if (signal_pending(current))
					return -ERESTARTSYS;
				if (ksmdev_unmerge_poisoned(vma, chunk[i]))
					ret = 0;
				else
					ret = ksmdev_unshare(vma, chunk[i]);
				if (ret < 0)
					return ret;
				cond_resched();
			}
			ksmdev_lock_acquire();
			WRITE_ONCE(ksmdev_events.unmerges,
				   ksmdev_events.unmerges + nr);
			mutex_unlock(&ksmdev_lock);
			/*
			 * From the chunk's first page again: what was unshared
			 * is passed by at once, what backed out is looked at
			 * again.
			 */
			addr = chunk[0];
			/* After a chunk's work, so that each yield is earned. */
			if (ksmdev_mmap_yield(mm))
				break;
		}
	}
	ksmdev_region_unmerged(ctx, region, start, stop);
	return 0;
}

/* ksmdev_unmerge_range() of all of @region. */
int ksmdev_unmerge_region(struct ksmdev_ctx *ctx, struct ksmdev_region *region)
{
	return ksmdev_unmerge_range(ctx, region, region->start, region->end);
}
