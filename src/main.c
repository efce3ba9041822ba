// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev: Kernel Samepage Merging for any process, through /dev/ksm.
 *
 * This file holds the module's entry points, the global lock and the scanner
 * configuration, which is both struct ksm_config (KSM_GET/SET_CONFIG) and a
 * set of root-writable module parameters; both go through
 * ksmdev_config_set(), which validates the whole configuration before it
 * changes anything.
 */
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mm.h>
#include <linux/jiffies.h>
#include <linux/sched/clock.h>

#include "ksmdev.h"

/* See include/ksmdev.h for what it protects and the lock order. */
DEFINE_MUTEX(ksmdev_lock);
/*
 * Tasks waiting for ksmdev_lock: the scanner and a merge-now let go early
 * when non-zero, ksmdev_lock_pass() waits for one of them to get it.
 */
atomic_t ksmdev_lock_waiters = ATOMIC_INIT(0);
/*
 * Serializes configuration changes (KSM_SET_CONFIG, module parameters),
 * taken before any other ksmdev lock. Held across run=2's unmerge of every
 * context, which holds no ksmdev_lock while it faults: so a second run=2, or
 * any other configuration change, waits for the first to end (killably),
 * while everything else goes on.
 */
static DEFINE_MUTEX(ksmdev_config_lock);
/*
 * Set by the module's exit under ksmdev_config_lock: a parameter store
 * holds no reference to the module (kernel/params.c), and sysfs goes only
 * after the exit (free_module()), so a store that comes later must not
 * touch what the exit freed, and one in progress (a run=2 unmerging) is
 * waited for.
 */
static bool ksmdev_unloading;

/* Before load completes, max_kernel_pages holds this: "a quarter of RAM". */
#define KSMDEV_MAX_KERNEL_PAGES_DEFAULT	U64_MAX

/*
 * Written under ksmdev_config_lock and ksmdev_lock (so run is stable for
 * whoever holds either); the scanner and KSM_GET_CONFIG read single fields
 * locklessly.
 */
struct ksm_config ksmdev_config = {
	.run = KSM_RUN_MERGE,
	.pages_to_scan = 100,
	.sleep_millisecs = 20,
	.max_kernel_pages = KSMDEV_MAX_KERNEL_PAGES_DEFAULT,
	.use_zero_pages = 0,
	.scan_all_pages = 0,
	.merge_across_nodes = 1,
	.advisor_target_scan_ms = 0,
	.advisor_max_cpu_percent = 25,
};

unsigned int ksmdev_max_regions = 4096;
module_param_named(max_regions, ksmdev_max_regions, uint, 0644);
MODULE_PARM_DESC(max_regions, "most regions one context may register (4096)");

/*
 * Kept for ksmdev_lock_pass(): how many times ksmdev_lock was taken, and
 * when it was taken last (local_clock()), written under it; the turn that
 * a pass last waited for in vain, written by that pass after it let go (a
 * lost update costs one more bounded wait). Read without the lock.
 */
static unsigned long ksmdev_lock_turns;
static u64 ksmdev_lock_since;
static unsigned long ksmdev_lock_turn_missed = ULONG_MAX;

/*
 * Take ksmdev_lock, telling whoever holds it that somebody is waiting
 * (ksmdev_lock_waiters). Every taker of ksmdev_lock goes through here.
 */
void ksmdev_lock_acquire(void)
{
	atomic_inc(&ksmdev_lock_waiters);
	mutex_lock(&ksmdev_lock);
	atomic_dec(&ksmdev_lock_waiters);
	WRITE_ONCE(ksmdev_lock_turns, ksmdev_lock_turns + 1);
	ksmdev_lock_since = local_clock();
}

/**
 * ksmdev_lock_pass - let go of ksmdev_lock so that a waiter gets it
 *
 * For a loop that works in bounded steps under ksmdev_lock and takes it
 * again at once (an unmerge's walk, the scanner's batches, a merge-now).
 * An unlock followed by a lock does not let a waiter in: one spinning on
 * the owner (mutex optimistic spinning, kernel/locking/mutex.c
 * mutex_spin_on_owner()) sees the same owner before and after, unless it
 * looks in the instant between, and only a waiter asleep on the wait list
 * is ever handed the lock (MUTEX_FLAG_HANDOFF). A bystander's
 * KSM_GET_MM_STATS was seen spinning 150 ms of a 200 ms unregister that
 * took the lock 512 times (tests/limits.c, under TCG).
 *
 * So, while somebody waits, wait until one of them has had it: at most as
 * long as this step held it, so that waiters that cannot run (at nice 19,
 * in a throttled cgroup) slow the loop to half its speed at worst; not
 * again for a turn already missed, so that one such waiter costs one wait;
 * and not when this CPU is wanted. The waiters' own sections are short.
 *
 * Called with ksmdev_lock held; returns without it. The unmerge and
 * merge-now callers also hold their ctx->lock and their mm's mmap lock for
 * reading while it waits: whoever waits for those (that process's mmap()
 * or munmap(), a close of that context) waits at most as long again as
 * the step itself, which it waited for anyway.
 */
void ksmdev_lock_pass(void)
{
	unsigned long turn = ksmdev_lock_turns, tick = jiffies + 2;
	u64 now = local_clock(), until = now + (now - ksmdev_lock_since);
	bool wait;

	lockdep_assert_held(&ksmdev_lock);
	wait = atomic_read(&ksmdev_lock_waiters) &&
	       READ_ONCE(ksmdev_lock_turn_missed) != turn;
	mutex_unlock(&ksmdev_lock);
	while (wait && READ_ONCE(ksmdev_lock_turns) == turn &&
	       atomic_read(&ksmdev_lock_waiters) && !need_resched()) {
		/* jiffies too: local_clock() may differ between CPUs. */
		if (local_clock() > until || time_after(jiffies, tick)) {
			WRITE_ONCE(ksmdev_lock_turn_missed, turn);
			break;
		}
		cpu_relax();
	}
	cond_resched();
}

static int ksmdev_config_check(const struct ksm_config *cfg)
{
	if (cfg->run > KSM_RUN_UNMERGE ||
	    !cfg->pages_to_scan || cfg->pages_to_scan > KSM_PAGES_TO_SCAN_MAX ||
	    cfg->sleep_millisecs > KSM_SLEEP_MSECS_MAX ||
	    cfg->max_kernel_pages > totalram_pages() ||
	    cfg->use_zero_pages > 1 || cfg->scan_all_pages > 1 ||
	    cfg->merge_across_nodes > 1 ||
	    (cfg->advisor_target_scan_ms &&
	     (cfg->advisor_target_scan_ms < KSM_ADVISOR_TARGET_MIN ||
	      cfg->advisor_target_scan_ms > KSM_ADVISOR_TARGET_MAX)) ||
	    !cfg->advisor_max_cpu_percent || cfg->advisor_max_cpu_percent > 100)
		return -EINVAL;
	return 0;
}

/*
 * Merged pages in existence: merge_across_nodes may not change then, as in
 * the in-kernel KSM (a stable page would be in the wrong tree).
 */
static bool ksmdev_merged_pages_exist(void)
{
	return READ_ONCE(ksmdev_stats.pages_shared) ||
	       READ_ONCE(ksmdev_stats.ksm_zero_pages) ||
	       READ_ONCE(ksmdev_stats.pages_orphaned);
}

/*
 * Install a configuration that passed ksmdev_config_check(). Switching run
 * to KSM_RUN_UNMERGE unmerges everything first; if that fails (-ENOMEM,
 * -EINTR) nothing else changes and run is left at KSM_RUN_STOP.
 */
static int ksmdev_config_apply(const struct ksm_config *cfg)
{
	int err;

	lockdep_assert_held(&ksmdev_config_lock);
	if (cfg->run == KSM_RUN_UNMERGE && ksmdev_config.run != KSM_RUN_UNMERGE) {
		/*
		 * The scanner stays stopped while everything is unmerged: it
		 * reads run under ksmdev_lock before every window, and only
		 * this function (under ksmdev_config_lock) changes it.
		 */
		ksmdev_lock_acquire();
		WRITE_ONCE(ksmdev_config.run, KSM_RUN_STOP);
		mutex_unlock(&ksmdev_lock);
		err = ksmdev_unmerge_all();
		if (err) {
			ksmdev_lock_acquire();
			ksmdev_unmerge_all_end();
			mutex_unlock(&ksmdev_lock);
			return err;
		}
	}
	ksmdev_lock_acquire();
	ksmdev_unmerge_all_end();
	/*
	 * Under ksmdev_lock, which every merge holds: no merged page can
	 * appear between this check and the change (tree.c, "NUMA"). After
	 * a failed check, as after a failed unmerge, nothing else changes
	 * (run=2 has stopped the scanner, though).
	 */
	if (cfg->merge_across_nodes != ksmdev_config.merge_across_nodes &&
	    ksmdev_merged_pages_exist()) {
		mutex_unlock(&ksmdev_lock);
		return -EBUSY;
	}
	WRITE_ONCE(ksmdev_config.run, cfg->run);
	WRITE_ONCE(ksmdev_config.pages_to_scan, cfg->pages_to_scan);
	WRITE_ONCE(ksmdev_config.sleep_millisecs, cfg->sleep_millisecs);
	WRITE_ONCE(ksmdev_config.max_kernel_pages, cfg->max_kernel_pages);
	WRITE_ONCE(ksmdev_config.use_zero_pages, cfg->use_zero_pages);
	WRITE_ONCE(ksmdev_config.scan_all_pages, cfg->scan_all_pages);
	WRITE_ONCE(ksmdev_config.merge_across_nodes, cfg->merge_across_nodes);
	WRITE_ONCE(ksmdev_config.advisor_target_scan_ms,
		   cfg->advisor_target_scan_ms);
	WRITE_ONCE(ksmdev_config.advisor_max_cpu_percent,
		   cfg->advisor_max_cpu_percent);
	if (!cfg->advisor_target_scan_ms)
		WRITE_ONCE(ksmdev_stats.advisor_pages_to_scan,
			   cfg->pages_to_scan);
	mutex_unlock(&ksmdev_lock);
	return 0;
}

/* The end of struct ksm_config as version 1 knew it. */
#define KSMDEV_CONFIG_V1_SIZE	offsetofend(struct ksm_config, scan_all_pages)

/**
 * ksmdev_config_set - validate and install a whole scanner configuration
 * @cfg:  the new configuration
 * @size: how much of it the caller's structure holds: a version-2 setting
 *        past its end keeps its value (uapi header), since 0 is not its
 *        default
 *
 * Return: 0, -EINVAL for a value out of range (nothing changes), -EBUSY
 * (merge_across_nodes changed while merged pages exist), -EINTR (a fatal signal
 * while waiting for another configuration change), or the error of the
 * unmerge that run=2 asks for.
 */
int ksmdev_config_set(const struct ksm_config *cfg, size_t size)
{
	/* A structure that ends inside a field: that field is not given. */
	size_t keep = max(round_down(size, sizeof(u64)), KSMDEV_CONFIG_V1_SIZE);
	struct ksm_config new = *cfg;
	int err;

	if (mutex_lock_killable(&ksmdev_config_lock))
		return -EINTR;
	if (keep < sizeof(new))
		memcpy((char *)&new + keep, (char *)&ksmdev_config + keep,
		       sizeof(new) - keep);
	err = ksmdev_config_check(&new);
	if (!err)
		err = ksmdev_config_apply(&new);
	mutex_unlock(&ksmdev_config_lock);
	ksmdev_scan_wake();
	return err;
}

/* Module parameters: each is one field of ksmdev_config. */
static int ksmdev_param_set(const char *val, const struct kernel_param *kp)
{
	size_t field = (u64 *)kp->arg - (u64 *)&ksmdev_config;
	struct ksm_config cfg;
	u64 value;
	int err;

	err = kstrtou64(val, 0, &value);
	if (err)
		return err;

	if (mutex_lock_killable(&ksmdev_config_lock))
		return -EINTR;
	if (ksmdev_unloading) {
		mutex_unlock(&ksmdev_config_lock);
		return -ENODEV;
	}
	cfg = ksmdev_config;
	/* Parameters given to modprobe are set before ksmdev_init(). */
	if (cfg.max_kernel_pages == KSMDEV_MAX_KERNEL_PAGES_DEFAULT)
		cfg.max_kernel_pages = totalram_pages() / 4;
	((u64 *)&cfg)[field] = value;
	err = ksmdev_config_check(&cfg);
	if (!err)
		err = ksmdev_config_apply(&cfg);
	/* Under the lock: the exit stops the scanner only after taking it. */
	ksmdev_scan_wake();
	mutex_unlock(&ksmdev_config_lock);
	return err;
}

static const struct kernel_param_ops ksmdev_param_ops = {
	.set = ksmdev_param_set,
	.get = param_get_ullong,
};

module_param_cb(run, &ksmdev_param_ops, &ksmdev_config.run, 0644);
MODULE_PARM_DESC(run, "0 stop, 1 scan and merge (default), 2 unmerge all and stop");
module_param_cb(pages_to_scan, &ksmdev_param_ops, &ksmdev_config.pages_to_scan,
		0644);
MODULE_PARM_DESC(pages_to_scan, "pages per batch (100)");
module_param_cb(sleep_millisecs, &ksmdev_param_ops,
		&ksmdev_config.sleep_millisecs, 0644);
MODULE_PARM_DESC(sleep_millisecs, "pause between batches, 0 yields only (20)");
module_param_cb(max_kernel_pages, &ksmdev_param_ops,
		&ksmdev_config.max_kernel_pages, 0644);
MODULE_PARM_DESC(max_kernel_pages, "most merged pages held, 0 no limit (RAM/4)");
module_param_cb(use_zero_pages, &ksmdev_param_ops,
		&ksmdev_config.use_zero_pages, 0644);
MODULE_PARM_DESC(use_zero_pages, "1 maps zero-filled pages to the zero page (0)");
module_param_cb(scan_all_pages, &ksmdev_param_ops,
		&ksmdev_config.scan_all_pages, 0644);
MODULE_PARM_DESC(scan_all_pages, "1 looks at every page on every pass, 0 skips pages that keep failing to merge (0)");
module_param_cb(merge_across_nodes, &ksmdev_param_ops,
		&ksmdev_config.merge_across_nodes, 0644);
MODULE_PARM_DESC(merge_across_nodes, "0 merges pages only within a NUMA node (1)");
module_param_cb(advisor_target_scan_ms, &ksmdev_param_ops,
		&ksmdev_config.advisor_target_scan_ms, 0644);
MODULE_PARM_DESC(advisor_target_scan_ms, "0 off, else the time a full scan should take, 100..3600000 ms (0)");
module_param_cb(advisor_max_cpu_percent, &ksmdev_param_ops,
		&ksmdev_config.advisor_max_cpu_percent, 0644);
MODULE_PARM_DESC(advisor_max_cpu_percent, "most of one CPU the advisor lets the scanner use, 1..100 (25)");

static int __init ksmdev_init(void)
{
	int err;

	if (ksmdev_config.max_kernel_pages == KSMDEV_MAX_KERNEL_PAGES_DEFAULT)
		ksmdev_config.max_kernel_pages = totalram_pages() / 4;
	ksmdev_stats.advisor_pages_to_scan = ksmdev_config.pages_to_scan;

	err = ksmdev_compat_init();
	if (err)
		return err;
	err = ksmdev_trees_init();
	if (err)
		return err;
	err = ksmdev_registry_init();
	if (err)
		goto err_trees;
	ksmdev_debugfs_init();
	err = ksmdev_scan_init();
	if (err)
		goto err_debugfs;
	/* Last: once /dev/ksm exists, everything behind it must work. */
	err = ksmdev_dev_init();
	if (err)
		goto err_scan;
	return 0;

err_scan:
	ksmdev_scan_exit();
err_debugfs:
	ksmdev_debugfs_exit();
	ksmdev_registry_exit();
err_trees:
	ksmdev_trees_exit();
	return err;
}

static void __exit ksmdev_exit(void)
{
	mutex_lock(&ksmdev_config_lock);
	ksmdev_unloading = true;
	mutex_unlock(&ksmdev_config_lock);
	ksmdev_dev_exit();
	ksmdev_scan_exit();
	/* Before the trees: dropping regions makes orphans of stable pages. */
	ksmdev_registry_exit();
	ksmdev_debugfs_exit();
	ksmdev_trees_exit();
}

module_init(ksmdev_init);
module_exit(ksmdev_exit);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Kernel Samepage Merging for any process, through /dev/ksm");
MODULE_AUTHOR("The ksmdev developers");
MODULE_VERSION(KSMDEV_VERSION);
