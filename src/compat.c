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
