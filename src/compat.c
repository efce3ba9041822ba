// SPDX-License-Identifier: GPL-2.0
/*
 * Resolution of the kernel-internal symbols ksmdev needs (the list is
 * include/symbols.h: functions, and the odd variable).
 *
 * kallsyms_lookup_name() has not been exported since 5.7; a kprobe on it
 * tells its address. Every address found is installed into a static call,
 * never kept in a function pointer (see compat.h). Resolution is all or
 * nothing: with one function missing the module refuses to load, naming it.
 */
#include <linux/kprobes.h>
#include <linux/moduleparam.h>
#include <linux/highmem.h>
#include <linux/memcontrol.h>
#include <linux/mm.h>

#include "ksmdev.h"

#define KSMDEV_SYMBOL(sym)	DEFINE_STATIC_CALL_NULL(ksmdev_sc_##sym, sym)
#define KSMDEV_DATA_SYMBOL(var, sym)	static_assert(__same_type(&(sym), var))
#include "symbols.h"
#undef KSMDEV_DATA_SYMBOL
#undef KSMDEV_SYMBOL
DEFINE_STATIC_CALL_NULL(ksmdev_sc_kallsyms_lookup_name, kallsyms_lookup_name);
#ifdef CONFIG_LOCKDEP
struct lockdep_map *ksmdev_mmu_start_map __ro_after_init;
#endif

/*
 * For the test suite only: one more symbol to resolve, so that a load that
 * fails on a missing symbol can be exercised on a kernel that has them all.
 */
static char *test_missing_symbol;
module_param(test_missing_symbol, charp, 0);
MODULE_PARM_DESC(test_missing_symbol,
		 "testing only: fail to load as if this kernel symbol were missing");

static unsigned long ksmdev_find_kallsyms_lookup_name(void)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long addr;

	if (register_kprobe(&kp) < 0)
		return 0;
	/*
	 * On IBT kernels this is past the function's landing instruction; a
	 * direct call may enter there.
	 */
	addr = (unsigned long)kp.addr;
	unregister_kprobe(&kp);
	return addr;
}

static unsigned long ksmdev_lookup(const char *name)
{
	unsigned long addr;

	addr = static_call(ksmdev_sc_kallsyms_lookup_name)(name);
	if (!addr)
		pr_err("cannot resolve kernel symbol %s\n", name);
	return addr;
}

int ksmdev_compat_init(void)
{
	unsigned long kln;
	int missing = 0;

	kln = ksmdev_find_kallsyms_lookup_name();
	if (!kln) {
		pr_err("cannot resolve kernel symbol kallsyms_lookup_name (needs CONFIG_KPROBES)\n");
		return -ENOENT;
	}
	static_call_update(ksmdev_sc_kallsyms_lookup_name,
			   (void *)kln);

	/* All or nothing: look every one up before installing any. */
#define KSMDEV_SYMBOL(sym)	(missing += !ksmdev_lookup(#sym))
#define KSMDEV_DATA_SYMBOL(var, sym)					\
	(missing += !(var = (typeof(var))ksmdev_lookup(#sym)))
#include "symbols.h"
#undef KSMDEV_DATA_SYMBOL
#undef KSMDEV_SYMBOL
	if (test_missing_symbol && !ksmdev_lookup(test_missing_symbol))
		missing++;
	if (missing) {
		pr_err("this kernel lacks %d symbol(s) ksmdev needs; not loading\n",
		       missing);
		return -ENOENT;
	}

#define KSMDEV_SYMBOL(sym)						\
	static_call_update(ksmdev_sc_##sym, (void *)ksmdev_lookup(#sym))
#define KSMDEV_DATA_SYMBOL(var, sym)					\
	(var = (typeof(var))ksmdev_lookup(#sym))
#include "symbols.h"
#undef KSMDEV_DATA_SYMBOL
#undef KSMDEV_SYMBOL
	return 0;
}

#ifndef KSMDEV_HAVE_UNSHARE_COW
/* anon_vma_prepare() and mem_cgroup_charge(), which call unexported code. */
static int ksmdev_anon_vma_prepare(struct vm_area_struct *vma)
{
	if (likely(vma->anon_vma))
		return 0;
	return static_call(ksmdev_sc___anon_vma_prepare)(vma);
}

static int ksmdev_memcg_charge(struct page *page, struct mm_struct *mm)
{
	if (mem_cgroup_disabled())
		return 0;
	return static_call(ksmdev_sc___mem_cgroup_charge)(page_folio(page), mm,
							  GFP_KERNEL);
}

/**
 * ksmdev_unshare_copy - an unshare fault at @addr, for kernels before 6.2
 * @vma:  a private anonymous VMA, its mmap lock held for read
 * @addr: an address in it that maps a merged page or the zero page
 *
 * The unshare branch of 6.2's wp_page_copy(), for the one case 6.1's
 * do_wp_page() leaves alone: copy the page into a new anonymous page
 * (charged to @vma's mm, on the LRU, exclusive), then, under the page
 * table lock and only if the PTE is still the one read, switch the PTE to
 * the copy. The new PTE is read-only and carries the old one's uffd-wp and
 * soft-dirty bits: the switch happens under the lock, so no write can come
 * between the two that the uffd monitor or soft-dirty tracking would miss.
 *
 * Return: 0 (done, or the PTE changed: look again), or -ENOMEM.
 */
int ksmdev_unshare_copy(struct vm_area_struct *vma, unsigned long addr)
{
	struct mm_struct *mm = vma->vm_mm;
	struct mmu_notifier_range range;
	struct page *old = NULL, *new;
	spinlock_t *ptl;	/* the page table's lock */
	pte_t *ptep, orig, entry;
	int err = 0;
	pmd_t *pmd;

	mmap_assert_locked(mm);
	if (ksmdev_anon_vma_prepare(vma))
		return -ENOMEM;
	pmd = ksmdev_table_pmd(mm, addr);
	if (!pmd)
		return 0;
	ptep = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		return 0;
	}
	orig = ptep_get(ptep);
	if (!pte_present(orig) || pte_write(orig)) {
		pte_unmap_unlock(ptep, ptl);
		return 0;
	}
	if (!is_zero_pfn(pte_pfn(orig))) {
		if (pte_special(orig) || !pfn_valid(pte_pfn(orig)) ||
		    PageAnon(pfn_to_page(pte_pfn(orig)))) {
			/* Not a merged page: nothing to unshare here. */
			pte_unmap_unlock(ptep, ptl);
			return 0;
		}
		old = pfn_to_page(pte_pfn(orig));
		get_page(old);
	}
	pte_unmap_unlock(ptep, ptl);

	new = alloc_page_vma(GFP_HIGHUSER_MOVABLE, vma, addr);
	if (!new) {
		err = -ENOMEM;
		goto out;
	}
	if (!old) {
		clear_user_highpage(new, addr);
	} else if (copy_mc_user_highpage(new, old, addr, vma)) {
		/*
		 * A machine check in the copy (what 6.1's wp_page_copy()
		 * does too): have the page marked poisoned, and look again;
		 * the caller then unmaps it (ksmdev_unmerge_poisoned()).
		 */
		memory_failure_queue(page_to_pfn(old), 0);
		put_page(new);
		goto out;
	}
	if (ksmdev_memcg_charge(new, mm)) {
		put_page(new);
		err = -ENOMEM;
		goto out;
	}
	__folio_mark_uptodate(page_folio(new));

	ksmdev_mmu_range_init(&range, vma, addr, addr + PAGE_SIZE);
	/* Refused (never, for a blockable range): the unmerge looks again. */
	if (ksmdev_mmu_invalidate_start(&range)) {
		put_page(new);
		goto out;
	}
	ptep = ksmdev_pte_map_lock(mm, pmd, addr, &ptl);
	if (!ptep) {
		ksmdev_pte_map_failed(ptl);
		put_page(new);
		goto end;
	}
	if (!pte_same(ptep_get(ptep), orig)) {
		/* Written, unmapped or unshared meanwhile: look again. */
		pte_unmap_unlock(ptep, ptl);
		put_page(new);
		goto end;
	}
	entry = pte_sw_mkyoung(mk_pte(new, vma->vm_page_prot));
	if (pte_soft_dirty(orig))
		entry = pte_mksoft_dirty(entry);
	if (pte_uffd_wp(orig))
		entry = pte_mkuffd_wp(entry);
	ksmdev_ptep_clear_flush(vma, addr, ptep);
	static_call(ksmdev_sc_page_add_new_anon_rmap)(new, vma, addr);
	static_call(ksmdev_sc_lru_cache_add_inactive_or_unevictable)(new, vma);
	set_pte_at(mm, addr, ptep, entry);
	update_mmu_cache(vma, addr, ptep);
	ksmdev_add_mm_counter(mm, MM_ANONPAGES, 1);
	if (old) {
		/* As wp_page_copy(): only after the PTE points to the copy. */
		ksmdev_page_remove_rmap(old, vma);
		ksmdev_add_mm_counter(mm, MM_FILEPAGES, -1);
		/* The PTE's reference; ours goes below. */
		put_page(old);
	}
	pte_unmap_unlock(ptep, ptl);
end:
	ksmdev_mmu_invalidate_end(&range);
out:
	if (old)
		put_page(old);
	return err;
}
#endif
