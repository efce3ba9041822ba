// SPDX-License-Identifier: GPL-2.0
/*
 * The registry: contexts (one per open of /dev/ksm) and their regions.
 *
 * A context's regions live in an rbtree ordered by start address. Regions
 * never overlap, so "the first region that ends after addr" answers both
 * the overlap check of a registration and the scanner's "where next", in
 * O(log n) for thousands of regions.
 *
 * Locking (include/ksmdev.h): the region tree of a context changes only
 * under both its ctx->lock and ksmdev_lock, so either is enough to read it.
 * Register and unregister hold ctx->lock throughout, and ksmdev_lock only
 * for the short steps that touch shared state: the VMA checks and the
 * unmerge (page faults) run without it, so that another process's exit,
 * close, register or stats never waits for them.
 */
#include <linux/mm.h>
#include <linux/pid.h>
#include <linux/ptrace.h>
#include <linux/sched/mm.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/slab.h>
#include <linux/wait.h>
#include <linux/workqueue.h>

#include "ksmdev.h"

LIST_HEAD(ksmdev_ctx_list);

static void ksmdev_stats_add(long regions, long pages)
{
	WRITE_ONCE(ksmdev_stats.regions, ksmdev_stats.regions + regions);
	WRITE_ONCE(ksmdev_stats.registered_pages,
		   ksmdev_stats.registered_pages + pages);
}

/* Called at open(): a context bound to the caller's mm. */
struct ksmdev_ctx *ksmdev_ctx_create(void)
{
	struct ksmdev_ctx *ctx;

	if (!current->mm)
		return ERR_PTR(-EINVAL);

	ksmdev_lock_acquire();
	/* Under ksmdev_lock: one try at reclaim, ENOMEM rather than an OOM. */
	ctx = ksmdev_meta_alloc(sizeof(*ctx),
				GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!ctx) {
		mutex_unlock(&ksmdev_lock);
		return ERR_PTR(-ENOMEM);
	}
	ctx->mm = current->mm;
	mmgrab(ctx->mm);
	ctx->pid = task_tgid_nr(current);
	mutex_init(&ctx->lock);
	refcount_set(&ctx->ref, 1);
	ctx->regions = RB_ROOT;
	ctx->trees.stable = RB_ROOT;
	ctx->trees.unstable = RB_ROOT;
	INIT_LIST_HEAD(&ctx->unstable);
	list_add_tail(&ctx->list, &ksmdev_ctx_list);
	WRITE_ONCE(ksmdev_stats.mms, ksmdev_stats.mms + 1);
	mutex_unlock(&ksmdev_lock);
	return ctx;
}

/*
 * Runs exit work (struct ksmdev_ctx.exit_work); drained at unload, after
 * every context is unhooked, so that no work runs module code afterwards.
 */
static struct workqueue_struct *ksmdev_exit_wq;
/* Set at unload under ksmdev_lock: no entry goes back on a queue. */
static bool ksmdev_exit_closing;

/*
 * Take @ctx off its target's wait_pidfd queue, if it is still on it.
 * Returns true if it was: then no wake-up has taken it off (and queued
 * the work) and none will.
 */
static bool ksmdev_exit_unhook(struct ksmdev_ctx *ctx)
{
	wait_queue_head_t *wq = &ctx->target->wait_pidfd;
	unsigned long flags;
	bool queued;

	spin_lock_irqsave(&wq->lock, flags);
	queued = !list_empty(&ctx->exit_wait.entry);
	list_del_init(&ctx->exit_wait.entry);
	spin_unlock_irqrestore(&wq->lock, flags);
	return queued;
}

/**
 * ksmdev_ctx_put - drop a reference to @ctx, freeing it with the last
 * @ctx: a context, already off the list if this is the last reference
 *
 * Called with ksmdev_lock held (the metadata counters change).
 */
void ksmdev_ctx_put(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	if (!refcount_dec_and_test(&ctx->ref))
		return;
	if (ctx->target)
		ksmdev_exit_unhook(ctx);
	put_pid(ctx->target);
	mmdrop(ctx->mm);
	mutex_destroy(&ctx->lock);
	ksmdev_meta_free(ctx, sizeof(*ctx));
}

/*
 * Take @ctx off the list for good, dropping its regions without unmerging
 * (ABI.md, "Close and exit"): merged pages stay mapped copy-on-write. With
 * ksmdev_lock and ctx->lock held; the caller then drops the reference the
 * list held, if any.
 */
static void ksmdev_ctx_unlink(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	lockdep_assert_held(&ctx->lock);
	ksmdev_scan_forget_ctx(ctx);
	ksmdev_ctx_drop_regions(ctx);
	ctx->exited = true;
	/* Its pages were its unstable nodes' and its stable pages' only users. */
	WARN_ON_ONCE(!list_empty(&ctx->unstable) ||
		     !RB_EMPTY_ROOT(&ctx->trees.stable));
	list_del_init(&ctx->list);
	WRITE_ONCE(ksmdev_stats.mms, ksmdev_stats.mms - 1);
}

/*
 * Called at the last close() of a context that is not persistent: the
 * regions are dropped without unmerging.
 *
 * No ioctl of this context can be running (it holds a reference to the
 * file), so ctx->lock is held, if at all, by an unmerge-all working on this
 * context, which sees ctx->closing and lets go at its next chunk. No other
 * context's work is ever waited for: ksmdev_lock is only held briefly.
 */
void ksmdev_ctx_destroy(struct ksmdev_ctx *ctx)
{
	WRITE_ONCE(ctx->closing, true);
	mutex_lock(&ctx->lock);
	ksmdev_lock_acquire();
	if (!list_empty(&ctx->list))
		ksmdev_ctx_unlink(ctx);
	mutex_unlock(&ctx->lock);
	ksmdev_ctx_put(ctx);
	mutex_unlock(&ksmdev_lock);
}

/**
 * ksmdev_ctx_close - the last close() of a file of /dev/ksm
 * @ctx: the context the file works on
 * @own: the context its open() made (@ctx, unless @ctx is a persistent
 *       context that an attach found: then @own is already off the list)
 *
 * A persistent context loses a handle, and stays with its regions, unless
 * it has none left and no other handle: then nothing is left to persist.
 * Only then is ctx->lock taken (to take it off the list): a handle's close
 * never waits for an unmerge-all at work on the target's regions.
 */
void ksmdev_ctx_close(struct ksmdev_ctx *ctx, struct ksmdev_ctx *own)
{
	bool unlink;

	if (!ctx->persistent) {
		ksmdev_ctx_destroy(ctx);
		return;
	}
	ksmdev_lock_acquire();
	unlink = !--ctx->handles && !ctx->nr_regions &&
		 !list_empty(&ctx->list);
	if (unlink) {
		/* Regions change under both locks: look again under both. */
		mutex_unlock(&ksmdev_lock);
		mutex_lock(&ctx->lock);
		ksmdev_lock_acquire();
		unlink = !ctx->handles && !ctx->nr_regions &&
			 !list_empty(&ctx->list);
		if (unlink)
			ksmdev_ctx_unlink(ctx);
		mutex_unlock(&ctx->lock);
		if (unlink)
			ksmdev_ctx_put(ctx);	/* the list's */
	}
	ksmdev_ctx_put(ctx);			/* the handle's */
	if (own != ctx)
		ksmdev_ctx_put(own);
	mutex_unlock(&ksmdev_lock);
}

/**
 * ksmdev_ctx_gone - the users of @ctx's mm are gone: nothing to merge there
 * @ctx: the context (ksmdev_lock and ctx->lock held)
 *
 * Its regions go, without unmerging (the memory is gone or going); a
 * persistent context leaves the list too: nobody can reach it again but
 * its handles, which then see ESRCH. This runs when the target's exit
 * wakes its pidfd waiters (ksmdev_exit_work()), or, after an exec (which
 * wakes nobody), when the scanner, an unmerge-all or a handle's ioctl first
 * finds the mm without users or without the target.
 *
 * Return: true if the caller must drop the list's reference, after it let
 * go of ctx->lock.
 */
bool ksmdev_ctx_gone(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	lockdep_assert_held(&ctx->lock);
	if (ctx->persistent && !list_empty(&ctx->list)) {
		ksmdev_ctx_unlink(ctx);
		return true;
	}
	ctx->exited = true;
	ksmdev_ctx_drop_regions(ctx);
	return false;
}

static bool ksmdev_target_alive(struct ksmdev_ctx *ctx);

static void ksmdev_exit_arm(struct ksmdev_ctx *ctx);

/*
 * The target of @ctx has exited; or its leader thread has, the others
 * running on: then the entry goes back on the queue for the real exit.
 * Takes ctx->lock, then ksmdev_lock, as any call does; an unmerge-all
 * holding ctx->lock on the exited mm sees it abandoned and lets go.
 */
static void ksmdev_exit_work(struct work_struct *work)
{
	struct ksmdev_ctx *ctx = container_of(work, struct ksmdev_ctx,
					      exit_work);
	bool put = false;

	mutex_lock(&ctx->lock);
	if (!ctx->exited) {
		ksmdev_lock_acquire();
		if (!ksmdev_target_alive(ctx))
			put = ksmdev_ctx_gone(ctx);
		else if (!ksmdev_exit_closing)
			/*
			 * Its leader thread exited, the others run on: 7.2
			 * wakes pidfd waiters then if the leader is ptraced
			 * (kernel/exit.c:764).
			 */
			ksmdev_exit_arm(ctx);
		mutex_unlock(&ksmdev_lock);
	}
	mutex_unlock(&ctx->lock);
	ksmdev_lock_acquire();
	if (put)
		ksmdev_ctx_put(ctx);	/* the list's */
	ksmdev_ctx_put(ctx);		/* the work's */
	mutex_unlock(&ksmdev_lock);
}

/*
 * Called by the wake-up of the target's wait_pidfd queue, with its lock
 * held and interrupts off (exit_notify(), and on 7.2 the reaping as
 * well): nothing but taking the entry off and queueing the work. A context
 * whose last reference is going (refcount zero) is left alone: its
 * ksmdev_ctx_put() unhooks it under the same lock.
 */
static int ksmdev_exit_wake(struct wait_queue_entry *wait, unsigned int mode,
			    int sync, void *key)
{
	struct ksmdev_ctx *ctx = container_of(wait, struct ksmdev_ctx,
					      exit_wait);

	list_del_init(&wait->entry);
	if (refcount_inc_not_zero(&ctx->ref))
		queue_work(ksmdev_exit_wq, &ctx->exit_work);
	return 0;
}

/*
 * Put @ctx's entry on its target's queue (under ksmdev_lock, which keeps
 * ksmdev_exit_closing as it is). If the process exited before the entry
 * was in place, its wake-up came first, and its threads' mm pointers were
 * cleared before it (exit_mm() precedes exit_notify()), which the queue's
 * lock orders before the check here: the work is queued by hand.
 */
static void ksmdev_exit_arm(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ksmdev_lock);
	add_wait_queue(&ctx->target->wait_pidfd, &ctx->exit_wait);
	if (ksmdev_target_alive(ctx))
		return;
	/*
	 * Whoever takes the entry off queues the work: a wake-up that came
	 * after add_wait_queue() did so already, with its own reference, and
	 * the work may still be pending, so that a second queue_work() would
	 * do nothing and leak ours.
	 */
	if (!ksmdev_exit_unhook(ctx))
		return;
	refcount_inc(&ctx->ref);
	queue_work(ksmdev_exit_wq, &ctx->exit_work);
}

/* Hook @ctx, just attached to a process (ctx->target), into its exit. */
static void ksmdev_exit_hook(struct ksmdev_ctx *ctx)
{
	init_waitqueue_func_entry(&ctx->exit_wait, ksmdev_exit_wake);
	INIT_LIST_HEAD(&ctx->exit_wait.entry);
	INIT_WORK(&ctx->exit_work, ksmdev_exit_work);
	ksmdev_exit_arm(ctx);
}

/* The persistent context of @mm, if it has one (under ksmdev_lock). */
static struct ksmdev_ctx *ksmdev_persistent_find(struct mm_struct *mm)
{
	struct ksmdev_ctx *ctx;

	lockdep_assert_held(&ksmdev_lock);
	list_for_each_entry(ctx, &ksmdev_ctx_list, list)
		if (ctx->persistent && ctx->mm == mm && !ctx->exited)
			return ctx;
	return NULL;
}

/*
 * The mm of the process of @pidfd, if the caller may ptrace-attach it
 * (what process_vm_writev() asks: mm_access() checks it with the target's
 * exec_update_lock held, so that an exec of a setuid program cannot come
 * in between), with a reference (mmget()); its struct pid in *@pid, with
 * a reference too.
 */
static struct mm_struct *ksmdev_pidfd_mm(u64 pidfd, struct pid **pid)
{
	struct task_struct *task;
	struct mm_struct *mm;
	unsigned int f_flags;

	/* 7.2 gives meanings to some negative numbers: not ours to take. */
	if (pidfd > INT_MAX)
		return ERR_PTR(-EBADF);
	task = static_call(ksmdev_sc_pidfd_get_task)(pidfd, &f_flags);
	if (IS_ERR(task))
		return ERR_CAST(task);
	mm = static_call(ksmdev_sc_mm_access)(task,
					      PTRACE_MODE_ATTACH_REALCREDS);
	if (mm == ERR_PTR(-ESRCH)) {
		/*
		 * The leader exited (a zombie until the group is empty), but
		 * the process may live on in other threads: ask one of them.
		 */
		struct task_struct *t, *live = NULL;

		rcu_read_lock();
		for_each_thread(task, t) {
			if (READ_ONCE(t->mm) && !(t->flags & PF_KTHREAD)) {
				live = get_task_struct(t);
				break;
			}
		}
		rcu_read_unlock();
		if (live) {
			mm = static_call(ksmdev_sc_mm_access)(live,
							      PTRACE_MODE_ATTACH_REALCREDS);
			put_task_struct(live);
		}
	}
	if (!IS_ERR(mm))
		*pid = get_task_pid(task, PIDTYPE_TGID);
	put_task_struct(task);
	/* Exited, or a kernel thread: ESRCH. Not allowed: EPERM, as there. */
	if (mm == ERR_PTR(-EACCES))
		return ERR_PTR(-EPERM);
	return mm;
}

/**
 * ksmdev_ctx_attach - KSM_ATTACH_PROCESS: bind a file to another process
 * @own: the context the file's open() made; no region, not attached yet
 * @at:  the pidfd and flags
 *
 * Without KSM_ATTACH_PERSIST, @own itself now belongs to the target's mm.
 * With it, the file becomes a handle to the target's persistent context:
 * @own becomes it if there is none yet; else @own leaves the list (it
 * stays allocated until the file's release, for an ioctl that raced with
 * this one) and the context found gains a handle.
 *
 * Return: the context the file works on from now on, or ERR_PTR(-EINVAL)
 * (unknown flag), -EBUSY (@own has regions or was attached), -EBADF (not
 * a pidfd), -ESRCH (exited, or no mm), -EPERM (no ptrace access), -EINTR.
 */
struct ksmdev_ctx *ksmdev_ctx_attach(struct ksmdev_ctx *own,
				     const struct ksm_attach *at)
{
	struct ksmdev_ctx *ctx = own, *found = NULL;
	struct mm_struct *mm = NULL, *old = NULL;
	struct pid *pid = NULL;
	int err = 0;

	if (at->flags & ~KSM_ATTACH_PERSIST)
		return ERR_PTR(-EINVAL);
	if (mutex_lock_killable(&own->lock))
		return ERR_PTR(-EINTR);
	if (own->attached || own->nr_regions || own->exited) {
		err = -EBUSY;
		goto unlock;
	}
	mm = ksmdev_pidfd_mm(at->pidfd, &pid);
	if (IS_ERR(mm)) {
		err = PTR_ERR(mm);
		mm = NULL;
		goto unlock;
	}

	ksmdev_lock_acquire();
	if (at->flags & KSM_ATTACH_PERSIST)
		found = ksmdev_persistent_find(mm);
	own->attached = true;
	if (found) {
		found->handles++;
		refcount_inc(&found->ref);
		ksmdev_ctx_unlink(own);
		ctx = found;
	} else {
		/* No region, so neither the scanner nor a tree points to @mm. */
		old = own->mm;
		mmgrab(mm);
		own->mm = mm;
		own->pid = pid_nr(pid);
		own->target = pid;
		pid = NULL;
		ksmdev_exit_hook(own);
		if (at->flags & KSM_ATTACH_PERSIST) {
			own->persistent = true;
			own->handles = 1;
			refcount_inc(&own->ref);	/* the list's */
		}
	}
	mutex_unlock(&ksmdev_lock);
unlock:
	mutex_unlock(&own->lock);
	if (old)
		mmdrop(old);
	if (mm)
		mmput(mm);
	put_pid(pid);
	return err ? ERR_PTR(err) : ctx;
}

/**
 * ksmdev_ctx_abandoned - an unmerge of @ctx should stop: nobody needs it
 * @ctx: the context being unmerged (ctx->lock held)
 *
 * True when the context is being closed, or when its process is gone and
 * the caller (an unmerge-all, or an unregister through a file attached to
 * it, in another process) holds the mm's last user. The owner's own
 * unregister never abandons: its process is alive.
 */
bool ksmdev_ctx_abandoned(struct ksmdev_ctx *ctx)
{
	lockdep_assert_held(&ctx->lock);
	if (READ_ONCE(ctx->closing))
		return true;
	return current->mm != ctx->mm &&
	       atomic_read(&ctx->mm->mm_users) <= 1;
}

static unsigned long ksmdev_region_pages(const struct ksmdev_region *region)
{
	return region->nr_pages;
}

/**
 * ksmdev_region_pass_end - the scanner reached the end of @region
 * @ctx:    its context
 * @region: the region
 *
 * For KSM_REGION_ALL, registered_pages counts the pages of the suitable
 * VMAs the scanner met in its last complete pass over the region.
 */
void ksmdev_region_pass_end(struct ksmdev_ctx *ctx,
			    struct ksmdev_region *region)
{
	long delta;

	lockdep_assert_held(&ksmdev_lock);
	if (!(region->flags & KSM_REGION_ALL) || !region->pass_valid)
		return;
	region->pass_valid = false;
	delta = region->pass_pages - region->nr_pages;
	region->nr_pages = region->pass_pages;
	ctx->nr_pages += delta;
	ksmdev_stats_add(0, delta);
}

/*
 * The per-page state of a region is a radix tree of tables of
 * KSMDEV_LEAF_CHUNKS pointers (4 KiB), over chunks of KSMDEV_CHUNK_PAGES
 * slots. A page's chunk number is counted from the region's @base (its
 * start, but for a region cut off the tail of another, see ksmdev_cut):
 * level 0 tables point to chunks, level l > 0 tables to tables of level
 * l - 1. The top table (level height - 1) has only as many entries as the
 * region needs, and is the one thing allocated at registration: 8 bytes
 * for a region of up to 1 GiB, 2 KiB for the 128 TiB (or 64 PiB) of
 * KSM_REGION_ALL. Everything below it is allocated when the scanner first
 * finds a present page there, so a sparse region costs memory in
 * proportion to its present pages at every level.
 *
 * Every table and chunk is counted in the region's @meta_bytes, which
 * changes under ksmdev_lock like the tree itself.
 */
static unsigned int ksmdev_level_shift(unsigned int level)
{
	return level * KSMDEV_LEAF_SHIFT;
}

/* The span of address space one entry of a level-@level table covers. */
static unsigned int ksmdev_level_bits(unsigned int level)
{
	return KSMDEV_CHUNK_BITS + ksmdev_level_shift(level);
}

/* The index into the level-@level table on the way to chunk @ci. */
static unsigned long ksmdev_level_index(const struct ksmdev_region *region,
					unsigned int level, unsigned long ci)
{
	unsigned long idx = ci >> ksmdev_level_shift(level);

	if (level == region->height - 1)
		return idx;
	return idx & (KSMDEV_LEAF_CHUNKS - 1);
}

/* Bytes of a table of @nr entries, and of a chunk, as ksmdev_meta_alloc()
 * counts them.
 */
#define KSMDEV_TABLE_BYTES(nr)	ksmdev_meta_size((nr) * sizeof(void *))
#define KSMDEV_CHUNK_BYTES	ksmdev_meta_size(sizeof(struct ksmdev_chunk))

/*
 * A region [start, end) whose chunks are numbered from @base (@start, but
 * for a region cut off the tail of another), without a domain yet.
 */
static struct ksmdev_region *ksmdev_region_alloc(unsigned long base,
						 unsigned long start,
						 unsigned long end, u64 flags)
{
	unsigned long entries = DIV_ROUND_UP((end - base) >> PAGE_SHIFT,
					     KSMDEV_CHUNK_PAGES);
	struct ksmdev_region *region;

	/*
	 * Called under ksmdev_lock (metadata_bytes changes under it): one try
	 * at reclaim, then ENOMEM, so that nobody else waits for an OOM kill.
	 */
	region = ksmdev_meta_alloc(sizeof(*region),
				   GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!region)
		return NULL;
	region->base = base;
	region->start = start;
	region->end = end;
	region->flags = flags;
	region->nr_pages = (end - start) >> PAGE_SHIFT;
	region->height = 1;
	while (entries > KSMDEV_LEAF_CHUNKS) {
		entries = DIV_ROUND_UP(entries, KSMDEV_LEAF_CHUNKS);
		region->height++;
	}
	region->nr_top = entries;
	region->top = ksmdev_meta_alloc(entries * sizeof(*region->top),
					GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	if (!region->top) {
		ksmdev_meta_free(region, sizeof(*region));
		return NULL;
	}
	region->meta_bytes = ksmdev_meta_size(sizeof(*region)) +
		KSMDEV_TABLE_BYTES(entries);
	return region;
}

/*
 * Free entry @i of the level-@level table @table of @region, and all below
 * it (their slots are 0).
 */
static void ksmdev_entry_free(struct ksmdev_region *region, void **table,
			      unsigned long i, unsigned int level)
{
	void **below = table[i];
	unsigned long j;

	if (!below)
		return;
	table[i] = NULL;
	if (!level) {
		ksmdev_meta_free(below, sizeof(struct ksmdev_chunk));
		region->meta_bytes -= KSMDEV_CHUNK_BYTES;
		return;
	}
	for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++)
		ksmdev_entry_free(region, below, j, level - 1);
	ksmdev_meta_free(below, KSMDEV_LEAF_CHUNKS * sizeof(void *));
	region->meta_bytes -= KSMDEV_TABLE_BYTES(KSMDEV_LEAF_CHUNKS);
	cond_resched();
}

/*
 * Free @region and its scan state, which @ctx no longer counts, and drop
 * its domain.
 */
static void ksmdev_region_free(struct ksmdev_region *region)
{
	unsigned long i;

	for (i = 0; i < region->nr_top; i++)
		ksmdev_entry_free(region, region->top, i, region->height - 1);
	ksmdev_domain_put(region->domain);
	ksmdev_meta_free(region->top, region->nr_top * sizeof(*region->top));
	ksmdev_meta_free(region, sizeof(*region));
}

/*
 * The level-0 entry that points to chunk @ci of @region. With @gfp, the
 * tables on the way are allocated where missing (NULL if that fails);
 * without, NULL where one is missing.
 */
static void **ksmdev_chunk_entry(struct ksmdev_region *region,
				 unsigned long ci, gfp_t gfp)
{
	unsigned int level = region->height - 1;
	void **entryp = &region->top[ksmdev_level_index(region, level, ci)];

	while (level) {
		if (!*entryp) {
			if (!gfp)
				return NULL;
			*entryp = ksmdev_meta_alloc(KSMDEV_LEAF_CHUNKS *
						    sizeof(void *), gfp);
			if (!*entryp)
				return NULL;
			region->meta_bytes +=
				KSMDEV_TABLE_BYTES(KSMDEV_LEAF_CHUNKS);
		}
		level--;
		entryp = &((void **)*entryp)[ksmdev_level_index(region, level,
								 ci)];
	}
	return entryp;
}

/**
 * ksmdev_region_slot_next - the first page in [addr, end) that has a slot
 * @region: the region
 * @addr:   where to start
 * @end:    where to stop, at most region->end
 * @slotp:  set to the page's slot
 *
 * Only pages whose chunk exists have slots; whatever a missing table would
 * cover is skipped at once, so a walk costs in proportion to pages once
 * present, whatever the region's size.
 *
 * Return: the page's address, or @end.
 */
unsigned long ksmdev_region_slot_next(struct ksmdev_region *region,
				      unsigned long addr, unsigned long end,
				      u64 **slotp)
{
	while (addr < end) {
		unsigned long off = addr - region->base;
		unsigned long ci = off >> ksmdev_level_bits(0);
		unsigned int level = region->height - 1;
		void *entry = region->top[ksmdev_level_index(region, level, ci)];
		struct ksmdev_chunk *chunk;

		while (entry && level) {
			level--;
			entry = ((void **)entry)[ksmdev_level_index(region,
								    level, ci)];
		}
		if (!entry) {
			/* Nothing below: on to the next entry of this level. */
			off = ((off >> ksmdev_level_bits(level)) + 1) <<
			      ksmdev_level_bits(level);
			if (off >= end - region->base)
				break;
			addr = region->base + off;
			continue;
		}
		chunk = entry;
		*slotp = &chunk->slot[(off >> PAGE_SHIFT) & (KSMDEV_CHUNK_PAGES - 1)];
		return addr;
	}
	return end;
}

/* The slot of the page at @addr of @region, if its chunk exists. */
u64 *ksmdev_region_slot_lookup(struct ksmdev_region *region,
			       unsigned long addr)
{
	u64 *slot;

	if (ksmdev_region_slot_next(region, addr, addr + PAGE_SIZE, &slot) != addr)
		return NULL;
	return slot;
}

/**
 * ksmdev_region_forget - drop the scan state of [start, end) of @region
 * @ctx:    the region's context
 * @region: the region
 * @start:  first address
 * @end:    address past the last page
 *
 * For pages that are gone, or that can no longer be merged: their counts
 * go, the stable pages they mapped lose them as sharers, and their unstable
 * nodes are erased.
 */
void ksmdev_region_forget(struct ksmdev_ctx *ctx,
			  struct ksmdev_region *region,
			  unsigned long start, unsigned long end)
{
	unsigned long addr;
	u64 *slot;

	lockdep_assert_held(&ksmdev_lock);
	for (addr = ksmdev_region_slot_next(region, start, end, &slot);
	     addr < end;
	     addr = ksmdev_region_slot_next(region, addr + PAGE_SIZE, end, &slot))
		if (*slot)
			ksmdev_slot_set(ctx, region, slot, 0);
}

/**
 * ksmdev_region_slot - the scan state word of the page at @addr
 * @region: a region of a live context
 * @addr:   an address inside @region
 *
 * Allocates the tables and the chunk on first use, charged to the active
 * memory cgroup (the scanner's window sets the context's, see scan.c).
 * Returns NULL when memory runs out, or at the cgroup's limit: the page is
 * then simply not tracked this time.
 */
u64 *ksmdev_region_slot(struct ksmdev_region *region, unsigned long addr)
{
	unsigned long page = (addr - region->base) >> PAGE_SHIFT;
	struct ksmdev_chunk **chunkp;

	lockdep_assert_held(&ksmdev_lock);
	chunkp = (struct ksmdev_chunk **)
		ksmdev_chunk_entry(region, page >> KSMDEV_CHUNK_SHIFT,
				   KSMDEV_GFP_SCAN);
	if (!chunkp)
		return NULL;
	if (!*chunkp) {
		*chunkp = ksmdev_meta_alloc(sizeof(**chunkp), KSMDEV_GFP_SCAN);
		if (!*chunkp)
			return NULL;
		region->meta_bytes += KSMDEV_CHUNK_BYTES;
	}
	return &(*chunkp)->slot[page & (KSMDEV_CHUNK_PAGES - 1)];
}

/* The region of @ctx that holds @addr, or NULL. */
struct ksmdev_region *ksmdev_region_find(struct ksmdev_ctx *ctx,
					 unsigned long addr)
{
	struct ksmdev_region *region = ksmdev_region_next(ctx, addr);

	return region && region->start <= addr ? region : NULL;
}

/**
 * ksmdev_region_next - the first region of @ctx that ends after @addr
 * @ctx:  a context
 * @addr: an address
 *
 * Return: that region (which may start after @addr), or NULL.
 */
struct ksmdev_region *ksmdev_region_next(struct ksmdev_ctx *ctx,
					 unsigned long addr)
{
	struct rb_node *node = ctx->regions.rb_node;
	struct ksmdev_region *found = NULL;

	lockdep_assert(lockdep_is_held(&ksmdev_lock) ||
		       lockdep_is_held(&ctx->lock));
	while (node) {
		struct ksmdev_region *region;

		region = rb_entry(node, struct ksmdev_region, node);
		if (region->end > addr) {
			found = region;
			node = node->rb_left;
		} else {
			node = node->rb_right;
		}
	}
	return found;
}

static bool ksmdev_vma_suitable(struct vm_area_struct *vma)
{
	if (!vma_is_anonymous(vma))
		return false;
	return !(vma->vm_flags & (VM_SHARED | VM_MAYSHARE | VM_PFNMAP |
				  VM_MIXEDMAP | VM_HUGETLB | VM_IO));
}

/* Every byte of [start, end) is mapped by private anonymous memory. */
static int ksmdev_check_vmas(struct mm_struct *mm, unsigned long start,
			     unsigned long end)
{
	struct vm_area_struct *vma;
	unsigned long addr = start;
	int err = 0;

	if (mmap_read_lock_killable(mm))
		return -EINTR;
	while (addr < end) {
		vma = find_vma(mm, addr);
		if (!vma || vma->vm_start > addr) {
			err = -ENOMEM;
			break;
		}
		if (!ksmdev_vma_suitable(vma)) {
			err = -EINVAL;
			break;
		}
		addr = vma->vm_end;
	}
	mmap_read_unlock(mm);
	return err;
}

/*
 * A region of any live context of @mm overlaps [start, end): each page of
 * an mm is registered through one context only, or it would be counted
 * (and its merges) once per context.
 */
static bool ksmdev_mm_overlaps(struct mm_struct *mm, unsigned long start,
			       unsigned long end)
{
	struct ksmdev_region *next;
	struct ksmdev_ctx *ctx;

	lockdep_assert_held(&ksmdev_lock);
	list_for_each_entry(ctx, &ksmdev_ctx_list, list) {
		if (ctx->mm != mm || ctx->exited)
			continue;
		next = ksmdev_region_next(ctx, start);
		if (next && next->start < end)
			return true;
	}
	return false;
}

/* The pages of the VMAs of @mm that KSM_REGION_ALL scans. */
static int ksmdev_count_vmas(struct mm_struct *mm, unsigned long *pages)
{
	VMA_ITERATOR(vmi, mm, 0);
	struct vm_area_struct *vma;

	*pages = 0;
	if (mmap_read_lock_killable(mm))
		return -EINTR;
	for_each_vma(vmi, vma)
		if (ksmdev_vma_scannable(vma))
			*pages += vma_pages(vma);
	mmap_read_unlock(mm);
	return 0;
}

/*
 * The process @ctx is attached to still runs in @ctx's mm: one of its
 * threads has neither exited nor exec'd. Checked on the tasks, not on
 * mm_users, which another holder (the scanner's window) may keep above
 * zero for a moment after the exit.
 */
static bool ksmdev_target_alive(struct ksmdev_ctx *ctx)
{
	struct task_struct *leader, *t;
	bool alive = false;

	if (!ctx->target)
		return true;
	rcu_read_lock();
	leader = pid_task(ctx->target, PIDTYPE_TGID);
	if (leader) {
		for_each_thread(leader, t) {
			/* A pointer compared, never followed. */
			if (READ_ONCE(t->mm) == ctx->mm) {
				alive = true;
				break;
			}
		}
	}
	rcu_read_unlock();
	return alive;
}

/*
 * The users of @ctx's mm, for the call of a register or unregister: always
 * there for the opener's own mm; for an attached context, ESRCH once its
 * process is gone, which this call then finds out for the scanner.
 */
static int ksmdev_ctx_mmget(struct ksmdev_ctx *ctx)
{
	bool put;

	lockdep_assert_held(&ctx->lock);
	if (ctx->exited)
		return -ESRCH;
	if (mmget_not_zero(ctx->mm)) {
		if (ksmdev_target_alive(ctx))
			return 0;
		mmput_async(ctx->mm);
	}
	ksmdev_lock_acquire();
	put = ksmdev_ctx_gone(ctx);
	mutex_unlock(&ksmdev_lock);
	/* The list's reference: the caller's file holds another. */
	if (put)
		refcount_dec(&ctx->ref);
	return -ESRCH;
}

/**
 * ksmdev_region_merge - KSM_MERGE_REGION: merge the registered pages of a
 * range of @ctx's mm now, on the caller's CPU
 * @ctx: the file's context (called from any holder of the file)
 * @r:   the range, already validated; or KSM_REGION_ALL: all of @ctx
 *
 * Holds ctx->lock through the call, so that the context's regions stay as
 * they are (its owner's register and unregister wait; an unmerge-all that
 * comes to this context waits too, and makes us stop with EBUSY).
 *
 * Return: the pages of the range that map a merged page, or -EBUSY, -EINTR,
 * -ESRCH (see ksmdev_merge_now(); -ESRCH also for an attached context
 * whose process is gone).
 */
long ksmdev_region_merge(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	long ret;

	if (mutex_lock_killable(&ctx->lock))
		return -EINTR;
	ret = ksmdev_ctx_mmget(ctx);
	if (!ret) {
		if (r->flags & KSM_REGION_ALL) {
			start = 0;
			end = ctx->mm->task_size;
		}
		ret = ksmdev_merge_now(ctx, start, end);
		mmput_async(ctx->mm);
	}
	mutex_unlock(&ctx->lock);
	return ret;
}

/**
 * ksmdev_region_add - register a range of @ctx's mm, or all of it
 * @ctx: the caller's context (called from the opener's mm)
 * @r:   the range, already validated for alignment, size and flags; or
 *       KSM_REGION_ALL: [0, TASK_SIZE), of which the scanner takes the
 *       suitable VMAs at every pass, skipping the rest
 *
 * Return: 0, -EEXIST (overlap with a region of any context of this mm; a
 * KSM_REGION_ALL overlaps every region), -ENOSPC (max_regions), -ENOMEM
 * (hole in the mapping, or no memory), -EINVAL (unsuitable mapping), -EINTR,
 * -ESRCH (the process the context is attached to is gone).
 */
int ksmdev_region_add(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len, pages = 0;
	bool all = r->flags & KSM_REGION_ALL;
	struct rb_node **link, *parent = NULL;
	struct ksmdev_region *region;
	int err;

	if (mutex_lock_killable(&ctx->lock))
		return -EINTR;
	err = ksmdev_ctx_mmget(ctx);
	if (err)
		goto out;
	if (all) {
		start = 0;
		end = ctx->mm->task_size;
	}
	/* A first look, so that an overlap is EEXIST whatever is mapped. */
	ksmdev_lock_acquire();
	err = ksmdev_mm_overlaps(ctx->mm, start, end) ? -EEXIST : 0;
	mutex_unlock(&ksmdev_lock);
	if (err)
		goto put;
	if (ctx->nr_regions >= READ_ONCE(ksmdev_max_regions)) {
		err = -ENOSPC;
		goto put;
	}
	/* The mmap lock, without ksmdev_lock: it may wait for a writer. */
	if (all)
		err = ksmdev_count_vmas(ctx->mm, &pages);
	else
		err = ksmdev_check_vmas(ctx->mm, start, end);
	if (err)
		goto put;

	ksmdev_lock_acquire();
	/*
	 * Again, under the lock that the insertion holds too: another context
	 * of this mm may have registered the range meanwhile (ctx->lock only
	 * keeps this context's regions as they are).
	 */
	if (ksmdev_mm_overlaps(ctx->mm, start, end)) {
		err = -EEXIST;
		goto unlock;
	}
	region = ksmdev_region_alloc(start, start, end, r->flags);
	if (!region) {
		err = -ENOMEM;
		goto unlock;
	}
	if (all)
		region->nr_pages = pages;
	if (r->domain) {
		region->domain = ksmdev_domain_get(r->domain);
		if (!region->domain) {
			ksmdev_region_free(region);
			err = -ENOMEM;
			goto unlock;
		}
	}
	link = &ctx->regions.rb_node;
	while (*link) {
		parent = *link;
		if (start < rb_entry(parent, struct ksmdev_region, node)->start)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&region->node, parent, link);
	rb_insert_color(&region->node, &ctx->regions);
	ctx->nr_regions++;
	ctx->nr_pages += ksmdev_region_pages(region);
	ksmdev_stats_add(1, ksmdev_region_pages(region));
	ksmdev_scan_wake();
unlock:
	mutex_unlock(&ksmdev_lock);
put:
	mmput_async(ctx->mm);
out:
	mutex_unlock(&ctx->lock);
	return err;
}

/*
 * Count @region out of @ctx and free it; the caller unlinks it, and has
 * erased @ctx's unstable nodes that point into it.
 */
static void __ksmdev_region_drop(struct ksmdev_ctx *ctx,
				 struct ksmdev_region *region)
{
	ksmdev_region_forget(ctx, region, region->start, region->end);
	ctx->nr_regions--;
	ctx->nr_pages -= ksmdev_region_pages(region);
	ksmdev_stats_add(-1, -(long)ksmdev_region_pages(region));
	ksmdev_region_free(region);
}

static void ksmdev_region_drop(struct ksmdev_ctx *ctx,
			       struct ksmdev_region *region)
{
	ksmdev_unstable_forget(ctx, region->start, region->end);
	__ksmdev_region_drop(ctx, region);
}

/* The regions of @ctx from @first that lie before @end: mark them going. */
static void ksmdev_regions_set_going(struct ksmdev_region *first,
				     unsigned long end, bool going)
{
	struct ksmdev_region *region;
	struct rb_node *node;

	lockdep_assert_held(&ksmdev_lock);
	for (node = &first->node; node; node = rb_next(node)) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		region->going = going;
	}
}

/*
 * What cutting the middle out of a region needs, allocated before anything
 * changes (KSM_REGION_SPLIT): the region for the tail, with the tables on
 * the way to every chunk that will move to it, and a chunk for the tail's
 * share of a chunk that the cut goes through (the head keeps the original).
 * Unused parts are freed again.
 *
 * The tail's chunks are numbered from the start of the head's chunk that
 * its first page is in, so that chunks and slots move over as they are
 * (only chunk numbers change) and a cut costs in proportion to the chunks
 * that exist, not to the size of the region.
 */
struct ksmdev_cut {
	struct ksmdev_region *tail;
	struct ksmdev_chunk *chunk;
};

static void ksmdev_cut_free(struct ksmdev_cut *cut)
{
	if (cut->tail)
		ksmdev_region_free(cut->tail);
	ksmdev_meta_free(cut->chunk, sizeof(*cut->chunk));
	memset(cut, 0, sizeof(*cut));
}

/* The number of @region's chunk that holds @addr. */
static unsigned long ksmdev_chunk_index(const struct ksmdev_region *region,
					unsigned long addr)
{
	return (addr - region->base) >> KSMDEV_CHUNK_BITS;
}

/*
 * The first chunk of @region numbered @ci or more that exists and holds a
 * page of it, or ULONG_MAX. A walk over the chunks costs in proportion to
 * the ones that exist.
 */
static unsigned long ksmdev_chunk_next(struct ksmdev_region *region,
				       unsigned long ci)
{
	unsigned long addr = region->base + (ci << KSMDEV_CHUNK_BITS);
	unsigned long end = region->end;
	u64 *slot;

	if (addr >= end)
		return ULONG_MAX;
	addr = ksmdev_region_slot_next(region, addr, end, &slot);
	return addr < end ? ksmdev_chunk_index(region, addr) : ULONG_MAX;
}

/*
 * Allocate @cut for taking [start, end) out of the middle of @region (under
 * ksmdev_lock, which is held until @region is marked going: from then on
 * the scanner adds no chunk to it, so the tables made here are all the cut
 * will need).
 */
static int ksmdev_cut_prepare(struct ksmdev_cut *cut,
			      struct ksmdev_region *region,
			      unsigned long start, unsigned long end)
{
	const gfp_t gfp = GFP_KERNEL_ACCOUNT | __GFP_NORETRY;
	unsigned long ce = ksmdev_chunk_index(region, end);
	unsigned long ci;

	lockdep_assert_held(&ksmdev_lock);
	cut->tail = ksmdev_region_alloc(region->base +
					(ce << KSMDEV_CHUNK_BITS), end,
					region->end, region->flags);
	cut->chunk = ksmdev_meta_alloc(sizeof(*cut->chunk), gfp);
	if (!cut->tail || !cut->chunk)
		goto nomem;
	for (ci = ksmdev_chunk_next(region, ce); ci != ULONG_MAX;
	     ci = ksmdev_chunk_next(region, ci + 1))
		if (!ksmdev_chunk_entry(cut->tail, ci - ce, gfp))
			goto nomem;
	return 0;
nomem:
	ksmdev_cut_free(cut);
	return -ENOMEM;
}

/*
 * Free what of entry @i of the level-@level table @table, which covers
 * from @addr, lies outside [region->start, region->end) (its slots were
 * forgotten). Only entries that a bound of the region goes through are
 * looked into, so this costs in proportion to the tree's height.
 */
static void ksmdev_entry_prune(struct ksmdev_region *region, void **table,
			       unsigned long i, unsigned int level,
			       unsigned long addr)
{
	unsigned long span = BIT(ksmdev_level_bits(level));
	void **below = table[i];
	unsigned long j;

	if (!below)
		return;
	if (addr >= region->end || addr + span <= region->start) {
		ksmdev_entry_free(region, table, i, level);
		return;
	}
	if (!level || (addr >= region->start && addr + span <= region->end))
		return;
	span = BIT(ksmdev_level_bits(level - 1));
	for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++)
		ksmdev_entry_prune(region, below, j, level - 1, addr + j * span);
	for (j = 0; j < KSMDEV_LEAF_CHUNKS; j++)
		if (below[j])
			return;
	ksmdev_entry_free(region, table, i, level);
}

/* Free the tables and chunks of @region that no longer cover any of it. */
static void ksmdev_region_prune(struct ksmdev_region *region)
{
	unsigned int top = region->height - 1;
	unsigned long i;

	for (i = 0; i < region->nr_top; i++)
		ksmdev_entry_prune(region, region->top, i, top, region->base +
				   (i << ksmdev_level_bits(top)));
}

/* @chunk goes from @region to @tail: its merged slots with it. */
static void ksmdev_cut_account(struct ksmdev_region *region,
			       struct ksmdev_region *tail,
			       const struct ksmdev_chunk *chunk,
			       unsigned long first)
{
	unsigned long k, merged = 0;

	for (k = first; k < KSMDEV_CHUNK_PAGES; k++)
		merged += !!(chunk->slot[k] & KSMDEV_SLOT_MERGED);
	region->nr_merging -= merged;
	tail->nr_merging += merged;
}

/*
 * Take [start, end) out of the middle of @region, whose slots there are
 * forgotten already: @region keeps [region->start, start), cut->tail gets
 * [end, region->end) with the slots of those pages, as they are (same
 * context, so every counter stays right; unstable nodes are found by
 * address, not by slot). Chunks wholly after the cut move; the tail's share
 * of one that the cut goes through goes to the spare chunk of @cut. No
 * allocation: ksmdev_cut_prepare() made every table the tail needs.
 */
static void ksmdev_cut_middle(struct ksmdev_region *region,
			      struct ksmdev_cut *cut,
			      unsigned long start, unsigned long end)
{
	struct ksmdev_region *tail = cut->tail;
	unsigned long ce = ksmdev_chunk_index(region, end);
	unsigned long first = ((end - region->base) >> PAGE_SHIFT) &
			      (KSMDEV_CHUNK_PAGES - 1);
	struct ksmdev_chunk **from, **to, *chunk;
	unsigned long ci, k;

	for (ci = ksmdev_chunk_next(region, ce); ci != ULONG_MAX;
	     ci = ksmdev_chunk_next(region, ci + 1)) {
		from = (struct ksmdev_chunk **)ksmdev_chunk_entry(region, ci, 0);
		to = (struct ksmdev_chunk **)ksmdev_chunk_entry(tail, ci - ce, 0);
		if (WARN_ON_ONCE(!from || !*from || !to))
			break;
		chunk = *from;
		if (ci == ce && start > region->base + (ce << KSMDEV_CHUNK_BITS)) {
			/* Both keep pages in it: the tail's slots go over. */
			*to = cut->chunk;
			cut->chunk = NULL;
			tail->meta_bytes += KSMDEV_CHUNK_BYTES;
			ksmdev_cut_account(region, tail, chunk, first);
			for (k = first; k < KSMDEV_CHUNK_PAGES; k++) {
				(*to)->slot[k] = chunk->slot[k];
				chunk->slot[k] = 0;
			}
			continue;
		}
		ksmdev_cut_account(region, tail, chunk, 0);
		*to = chunk;
		*from = NULL;
		region->meta_bytes -= KSMDEV_CHUNK_BYTES;
		tail->meta_bytes += KSMDEV_CHUNK_BYTES;
	}
}

/* Link @region into @ctx's tree, by start (it overlaps none there). */
static void ksmdev_region_insert(struct ksmdev_ctx *ctx,
				 struct ksmdev_region *region)
{
	struct rb_node **link = &ctx->regions.rb_node, *parent = NULL;

	while (*link) {
		parent = *link;
		if (region->start <
		    rb_entry(parent, struct ksmdev_region, node)->start)
			link = &parent->rb_left;
		else
			link = &parent->rb_right;
	}
	rb_link_node(&region->node, parent, link);
	rb_insert_color(&region->node, &ctx->regions);
}

/*
 * Take [start, end) (inside @region, not all of it) out of @region of @ctx,
 * under ksmdev_lock: its pages' scan state is forgotten (their merges were
 * undone), the rest keeps its own. Cutting the middle out uses @cut.
 */
static void ksmdev_region_cut(struct ksmdev_ctx *ctx,
			      struct ksmdev_region *region,
			      unsigned long start, unsigned long end,
			      struct ksmdev_cut *cut)
{
	unsigned long pages = (end - start) >> PAGE_SHIFT;
	struct ksmdev_region *tail;

	lockdep_assert_held(&ksmdev_lock);
	ksmdev_unstable_forget(ctx, start, end);
	ksmdev_region_forget(ctx, region, start, end);
	ctx->nr_pages -= pages;
	ksmdev_stats_add(0, -(long)pages);
	region->going = false;
	if (start == region->start) {
		/* The order in the tree stays: regions never overlap. */
		region->start = end;
	} else if (end == region->end) {
		region->end = start;
	} else {
		tail = cut->tail;
		ksmdev_cut_middle(region, cut, start, end);
		cut->tail = NULL;
		region->end = start;
		/* A reference of its own to the domain, which @region holds. */
		tail->domain = region->domain;
		if (tail->domain)
			tail->domain->regions++;
		ksmdev_region_prune(tail);
		ksmdev_region_insert(ctx, tail);
		ctx->nr_regions++;
		ksmdev_stats_add(1, 0);
	}
	/* Never KSM_REGION_ALL, whose count is not its size: it is not cut. */
	region->nr_pages = (region->end - region->start) >> PAGE_SHIFT;
	ksmdev_region_prune(region);
}

/**
 * ksmdev_region_remove - unmerge and unregister the regions inside a range
 * @ctx: the caller's context (ctx->mm == current->mm)
 * @r:   without KSM_REGION_SPLIT, a range that must cover one or more whole
 *       regions; with it, any range: the parts of regions outside it stay
 *       registered, as regions of their own
 *
 * Every region is unmerged before any is removed: if unmerging fails, all
 * stay registered, what was unmerged stays correct, and the call can be
 * repeated. With KSM_REGION_SPLIT only the pages inside the range are
 * unmerged; what a cut needs is allocated before anything changes, so
 * that ENOMEM and ENOSPC leave everything as it was.
 *
 * Locking: ctx->lock throughout, so that the regions stay (nothing else
 * removes them: close cannot run during an ioctl of the same file, the
 * scanner drops an exited context's regions only with a trylock of
 * ctx->lock). The regions are marked going under ksmdev_lock, so that the
 * scanner leaves them alone (a region being cut, all of it, for that
 * time), then unmerged without ksmdev_lock (the unmerge takes it for a
 * moment per chunk), then removed or cut under it again.
 *
 * With KSM_REGION_ALL (addr = len = 0): the context's KSM_REGION_ALL
 * region, which a range never removes nor cuts (-EINVAL, with or without
 * KSM_REGION_SPLIT): it stands for all of the address space, including
 * what is mapped later, so a part of it cannot be let go.
 *
 * Return: 0, -EINVAL (the range cuts a region, without KSM_REGION_SPLIT,
 * or meets the KSM_REGION_ALL region), -ENOENT (no registered page in it),
 * -ENOSPC (a cut would pass max_regions), -ENOMEM or -EINTR (unmerging
 * failed, or no memory for a cut), -ESRCH (the process the context is
 * attached to is gone).
 */
int ksmdev_region_remove(struct ksmdev_ctx *ctx, const struct ksm_region *r)
{
	unsigned long start = r->addr, end = r->addr + r->len;
	bool split = r->flags & KSM_REGION_SPLIT;
	struct ksmdev_region *first, *region;
	struct ksmdev_cut cut = { };
	struct rb_node *node;
	int err = 0;

	if (mutex_lock_killable(&ctx->lock))
		return -EINTR;
	err = ksmdev_ctx_mmget(ctx);
	if (err)
		goto out;
	first = ksmdev_region_next(ctx, start);
	if (r->flags & KSM_REGION_ALL) {
		if (!first || !(first->flags & KSM_REGION_ALL)) {
			err = -ENOENT;
			goto put;
		}
		start = first->start;
		end = first->end;
	}
	if (!first || first->start >= end) {
		err = -ENOENT;
		goto put;
	}
	/* Check the whole range before changing anything. */
	for (node = &first->node; node; node = rb_next(node)) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		if ((!split && (region->start < start || region->end > end)) ||
		    (region->flags & ~r->flags & KSM_REGION_ALL)) {
			err = -EINVAL;
			goto put;
		}
	}
	ksmdev_lock_acquire();
	/* Only a region cut at both ends makes one more. */
	if (first->start < start && first->end > end) {
		if (ctx->nr_regions >= READ_ONCE(ksmdev_max_regions))
			err = -ENOSPC;
		else
			err = ksmdev_cut_prepare(&cut, first, start, end);
		if (err) {
			mutex_unlock(&ksmdev_lock);
			goto put;
		}
	}
	ksmdev_regions_set_going(first, end, true);
	mutex_unlock(&ksmdev_lock);

	if (mmap_read_lock_killable(ctx->mm)) {
		err = -EINTR;
	} else {
		for (node = &first->node; node && !err; node = rb_next(node)) {
			region = rb_entry(node, struct ksmdev_region, node);
			if (region->start >= end)
				break;
			err = ksmdev_unmerge_range(ctx, region,
						   max(start, region->start),
						   min(end, region->end));
		}
		mmap_read_unlock(ctx->mm);
	}

	ksmdev_lock_acquire();
	if (err) {
		/* Registered as before; the scanner counts what changed. */
		ksmdev_regions_set_going(first, end, false);
		goto unlock;
	}
	node = &first->node;
	while (node) {
		region = rb_entry(node, struct ksmdev_region, node);
		if (region->start >= end)
			break;
		node = rb_next(node);
		if (region->start < start || region->end > end) {
			ksmdev_region_cut(ctx, region, max(start, region->start),
					  min(end, region->end), &cut);
			continue;
		}
		rb_erase(&region->node, &ctx->regions);
		ksmdev_region_drop(ctx, region);
	}
unlock:
	ksmdev_cut_free(&cut);
	mutex_unlock(&ksmdev_lock);
put:
	mmput_async(ctx->mm);
out:
	mutex_unlock(&ctx->lock);
	return err;
}

/*
 * This context's share of metadata_bytes (struct ksm_mm_stats): its
 * regions with their directories, leaves and chunks, and its unstable
 * nodes. Not the context itself, nor the stable nodes and domains, which
 * serve every context that maps them. Called with ksmdev_lock held.
 */
u64 ksmdev_ctx_metadata(struct ksmdev_ctx *ctx)
{
	struct rb_node *node;
	u64 bytes;

	lockdep_assert_held(&ksmdev_lock);
	bytes = (u64)ctx->nr_unstable * ksmdev_unstable_bytes();
	for (node = rb_first(&ctx->regions); node; node = rb_next(node))
		bytes += rb_entry(node, struct ksmdev_region, node)->meta_bytes;
	return bytes;
}

/*
 * Forget every region of @ctx, without unmerging (close, or exit). Called
 * with both ksmdev_lock and ctx->lock held.
 */
void ksmdev_ctx_drop_regions(struct ksmdev_ctx *ctx)
{
	struct ksmdev_region *region, *tmp;

	lockdep_assert_held(&ksmdev_lock);
	lockdep_assert_held(&ctx->lock);
	/* Every unstable node of @ctx at once, not a list walk per region. */
	ksmdev_unstable_forget(ctx, 0, ULONG_MAX);
	rbtree_postorder_for_each_entry_safe(region, tmp, &ctx->regions, node)
		__ksmdev_region_drop(ctx, region);
	ctx->regions = RB_ROOT;
}

/* At load: the workqueue of the exit hooks (struct ksmdev_ctx.exit_work). */
int ksmdev_registry_init(void)
{
	ksmdev_exit_wq = alloc_workqueue("ksmdev_exit", WQ_UNBOUND, 0);
	return ksmdev_exit_wq ? 0 : -ENOMEM;
}

/*
 * At unload: no file is open (each holds the module), and the scanner has
 * stopped, so what is left on the list is persistent contexts without a
 * handle. They go as at a close: regions dropped without unmerging.
 */
void ksmdev_registry_exit(void)
{
	struct ksmdev_ctx *ctx, *tmp;

	/*
	 * No file is open: every context left is a persistent one on the
	 * list. Unhooked first, so that no exit queues work any more; then
	 * the work queued already runs to its end.
	 */
	ksmdev_lock_acquire();
	ksmdev_exit_closing = true;
	list_for_each_entry(ctx, &ksmdev_ctx_list, list)
		if (ctx->target)
			ksmdev_exit_unhook(ctx);
	mutex_unlock(&ksmdev_lock);
	destroy_workqueue(ksmdev_exit_wq);

	ksmdev_lock_acquire();
	list_for_each_entry_safe(ctx, tmp, &ksmdev_ctx_list, list) {
		/* Nobody else can hold it: see above. */
		if (WARN_ON_ONCE(!ctx->persistent || ctx->handles ||
				 !mutex_trylock(&ctx->lock)))
			continue;
		ksmdev_ctx_unlink(ctx);
		mutex_unlock(&ctx->lock);
		ksmdev_ctx_put(ctx);
	}
	mutex_unlock(&ksmdev_lock);
}
