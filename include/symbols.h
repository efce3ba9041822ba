/* SPDX-License-Identifier: GPL-2.0 */
/*
 * Every kernel function ksmdev resolves at load, and the only place that
 * names them. No include guard: the includer defines KSMDEV_SYMBOL(sym)
 * first, to declare, define or resolve the static call ksmdev_sc_<sym>,
 * whose type is that of the kernel's own declaration of <sym>; and
 * KSMDEV_DATA_SYMBOL(var, sym), for a kernel variable (data is never
 * called): the pointer <var>, declared in compat.h, is set to <sym>, whose
 * type it must have. Loading fails, naming each one missing, unless all of
 * them are found.
 */
KSMDEV_SYMBOL(ptep_clear_flush);
KSMDEV_SYMBOL(__mmu_notifier_invalidate_range_start);
KSMDEV_SYMBOL(__mmu_notifier_invalidate_range_end);
KSMDEV_SYMBOL(lru_add_drain_all);
/* A merged page read back from swap: its swap slot, freed at once. */
KSMDEV_SYMBOL(folio_free_swap);
/* KSM_ATTACH_PROCESS: a pidfd's task, and its mm if we may ptrace it. */
KSMDEV_SYMBOL(pidfd_get_task);
KSMDEV_SYMBOL(mm_access);
#ifdef KSMDEV_HAVE_FOLIO_RMAP_PTES
KSMDEV_SYMBOL(folio_add_file_rmap_ptes);
KSMDEV_SYMBOL(folio_remove_rmap_ptes);
#else
KSMDEV_SYMBOL(page_add_file_rmap);
KSMDEV_SYMBOL(page_remove_rmap);
#endif
#if defined(KSMDEV_HAVE_SPLIT_TO_ORDER_FN)
KSMDEV_SYMBOL(__split_huge_page_to_list_to_order);
#elif defined(KSMDEV_HAVE_SPLIT_TO_ORDER)
KSMDEV_SYMBOL(split_huge_page_to_list_to_order);
#else
KSMDEV_SYMBOL(split_huge_page_to_list);
#endif
#if defined(KSMDEV_HAVE_PTE_MAP_LOCK_EXTERN)
KSMDEV_SYMBOL(pte_offset_map_lock);
#elif defined(KSMDEV_HAVE_PTE_MAP_LOCK_FN)
KSMDEV_SYMBOL(__pte_offset_map_lock);
#endif
#ifdef CONFIG_LOCKDEP
/* What the kernel's inline mmu_notifier_invalidate_range_start() takes. */
KSMDEV_DATA_SYMBOL(ksmdev_mmu_start_map,
		   __mmu_notifier_invalidate_range_start_map);
#endif
#ifndef KSMDEV_HAVE_UNSHARE_COW
/* ksmdev_unshare_copy(), what an unshare fault does from 6.2 on. */
KSMDEV_SYMBOL(__anon_vma_prepare);
KSMDEV_SYMBOL(__mem_cgroup_charge);
KSMDEV_SYMBOL(page_add_new_anon_rmap);
KSMDEV_SYMBOL(lru_cache_add_inactive_or_unevictable);
#endif
