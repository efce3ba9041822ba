// SPDX-License-Identifier: GPL-2.0
/*
 * A secondary MMU for the test suite, and for nothing else: it is built
 * with the tests and loaded only in the test guest (tests/notifier.c).
 *
 * Each open file of /dev/ksmdev_test_notifier may subscribe one
 * mmu_interval_notifier to a range of the caller's mm, as a GPU userptr,
 * RDMA ODP or Xen gntdev driver does for the user memory it maps. Like
 * those drivers, it refuses an invalidation that may not sleep (returns
 * false): a real driver could not drop its device's mapping then, and the
 * kernel's caller must give up. It counts every invalidation and each one
 * it refused; the test reads the counts, and removes the subscription
 * (mmu_interval_notifier_remove(), which waits for the mm's invalidations
 * in flight to end: it never returns if an invalidation was ended twice).
 *
 * There is no device page table here; the rules of the interval notifier
 * are kept all the same (lib/test_hmm.c): the sequence number is set under
 * the driver's lock, which a blockable invalidation may wait for.
 */
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/mmu_notifier.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/uaccess.h>

#include "ksmdev_test_notifier.h"

/**
 * struct tn_file - the state of one open file
 * @state_lock:    serialises insert and remove; never taken by the
 *                 invalidate callback (remove waits for those to end)
 * @inserted:      @notifier is subscribed (under @state_lock)
 * @lock:          the "device page table" lock: mmu_interval_set_seq()
 *                 is called under it, as a driver must
 * @notifier:      the subscription
 * @invalidations: calls of the invalidate callback
 * @nonblockable:  of which non-blockable, all refused
 */
struct tn_file {
	struct mutex state_lock;	/* insert and remove */
	bool inserted;
	struct mutex lock;		/* the device page table's */
	struct mmu_interval_notifier notifier;
	atomic64_t invalidations;
	atomic64_t nonblockable;
};

static bool tn_invalidate(struct mmu_interval_notifier *mni,
			  const struct mmu_notifier_range *range,
			  unsigned long cur_seq)
{
	struct tn_file *tf = container_of(mni, struct tn_file, notifier);

	atomic64_inc(&tf->invalidations);
	if (!mmu_notifier_range_blockable(range)) {
		/* A device's mapping cannot be torn down without sleeping. */
		atomic64_inc(&tf->nonblockable);
		return false;
	}
	mutex_lock(&tf->lock);
	mmu_interval_set_seq(mni, cur_seq);
	mutex_unlock(&tf->lock);
	return true;
}

static const struct mmu_interval_notifier_ops tn_ops = {
	.invalidate = tn_invalidate,
};

static int tn_open(struct inode *inode, struct file *file)
{
	struct tn_file *tf = kzalloc(sizeof(*tf), GFP_KERNEL);

	if (!tf)
		return -ENOMEM;
	mutex_init(&tf->state_lock);
	mutex_init(&tf->lock);
	atomic64_set(&tf->invalidations, 0);
	atomic64_set(&tf->nonblockable, 0);
	file->private_data = tf;
	return 0;
}

static int tn_release(struct inode *inode, struct file *file)
{
	struct tn_file *tf = file->private_data;

	if (tf->inserted)
		mmu_interval_notifier_remove(&tf->notifier);
	mutex_destroy(&tf->lock);
	mutex_destroy(&tf->state_lock);
	kfree(tf);
	return 0;
}

static long tn_insert(struct tn_file *tf, void __user *arg)
{
	struct ksmdev_tn_range r;
	long ret;

	if (copy_from_user(&r, arg, sizeof(r)))
		return -EFAULT;
	if (!r.length || !PAGE_ALIGNED(r.start) || !PAGE_ALIGNED(r.length) ||
	    r.start + r.length < r.start)
		return -EINVAL;
	if (!current->mm)
		return -EINVAL;
	mutex_lock(&tf->state_lock);
	if (tf->inserted) {
		ret = -EBUSY;
	} else {
		ret = mmu_interval_notifier_insert(&tf->notifier, current->mm,
						   r.start, r.length, &tn_ops);
		tf->inserted = !ret;
	}
	mutex_unlock(&tf->state_lock);
	return ret;
}

static long tn_remove(struct tn_file *tf)
{
	long ret = -EINVAL;

	mutex_lock(&tf->state_lock);
	if (tf->inserted) {
		mmu_interval_notifier_remove(&tf->notifier);
		tf->inserted = false;
		ret = 0;
	}
	mutex_unlock(&tf->state_lock);
	return ret;
}

static long tn_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	struct tn_file *tf = file->private_data;
	struct ksmdev_tn_counts c;

	switch (cmd) {
	case KSMDEV_TN_INSERT:
		return tn_insert(tf, (void __user *)arg);
	case KSMDEV_TN_COUNTS:
		c.invalidations = atomic64_read(&tf->invalidations);
		c.nonblockable = atomic64_read(&tf->nonblockable);
		return copy_to_user((void __user *)arg, &c, sizeof(c)) ?
		       -EFAULT : 0;
	case KSMDEV_TN_REMOVE:
		return tn_remove(tf);
	}
	return -ENOTTY;
}

static const struct file_operations tn_fops = {
	.owner = THIS_MODULE,
	.open = tn_open,
	.release = tn_release,
	.unlocked_ioctl = tn_ioctl,
};

static struct miscdevice tn_misc = {
	.minor = MISC_DYNAMIC_MINOR,
	.name = KSMDEV_TN_DEV_NAME,
	.fops = &tn_fops,
	.mode = 0600,
};

module_misc_device(tn_misc);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("ksmdev test suite: an interval notifier that refuses non-blockable invalidations");
