// SPDX-License-Identifier: GPL-2.0
/*
 * /dev/ksm: the misc device and its ioctls (uapi/linux/ksmdev.h).
 *
 * Each open() makes a context bound to the opener's mm, which
 * KSM_ATTACH_PROCESS may bind to another process's mm instead, or exchange
 * for a handle to that process's persistent context. Argument structures
 * are size-tolerant: the size is taken from _IOC_SIZE(cmd), so an ioctl
 * number is matched with its size bits masked out.
 */
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/fs.h>
#include <linux/uaccess.h>
#include <linux/capability.h>
#include <linux/sched/mm.h>

#include "ksmdev.h"

/*
 * A fixed minor from the range devices.txt reserves for local use, so that
 * udev (kmod static-nodes) can create /dev/ksm before the module is loaded
 * and the first open loads it. If another driver holds it, fall back to a
 * dynamic minor (then on-demand loading does not work).
 */
#define KSMDEV_MINOR	247

/**
 * struct ksmdev_file - an open file of /dev/ksm
 * @ctx:    the context its ioctls work on: @own, or, after a
 *          KSM_ATTACH_PERSIST that found the target's persistent context,
 *          that context (the file is a handle to it). Set once, by the
 *          attach (which @own->lock serializes); read with READ_ONCE()
 * @own:    the context open() made, kept until release even when @ctx
 *          replaced it, so that an ioctl racing with the attach still
 *          works on a context that exists (it finds it exited: ESRCH)
 * @opener: the opener's mm (mmgrab()): the one mm from which the regions
 *          may change, whatever mm the context belongs to
 */
struct ksmdev_file {
	struct ksmdev_ctx *ctx;
	struct ksmdev_ctx *own;
	struct mm_struct *opener;
};

static int ksmdev_open(struct inode *inode, struct file *file)
{
	struct ksmdev_file *f;
	struct ksmdev_ctx *ctx;

	if (!current->mm)
		return -EINVAL;
	ksmdev_lock_acquire();
	f = ksmdev_meta_alloc(sizeof(*f), GFP_KERNEL_ACCOUNT | __GFP_NORETRY);
	mutex_unlock(&ksmdev_lock);
	if (!f)
		return -ENOMEM;
	ctx = ksmdev_ctx_create();
	if (IS_ERR(ctx)) {
		ksmdev_lock_acquire();
		ksmdev_meta_free(f, sizeof(*f));
		mutex_unlock(&ksmdev_lock);
		return PTR_ERR(ctx);
	}
	f->ctx = ctx;
	f->own = ctx;
	f->opener = current->mm;
	mmgrab(f->opener);
	file->private_data = f;
	return nonseekable_open(inode, file);
}

static int ksmdev_release(struct inode *inode, struct file *file)
{
	struct ksmdev_file *f = file->private_data;
	struct mm_struct *opener = f->opener;

	ksmdev_ctx_close(f->ctx, f->own);
	ksmdev_lock_acquire();
	ksmdev_meta_free(f, sizeof(*f));
	mutex_unlock(&ksmdev_lock);
	mmdrop(opener);
	return 0;
}

/* Copy a structure out, zeroing the tail of a larger (newer) user one. */
static int ksmdev_copy_out(void __user *uarg, size_t usize, const void *kbuf,
			   size_t ksize)
{
	if (copy_to_user(uarg, kbuf, min(usize, ksize)))
		return -EFAULT;
	if (usize > ksize && clear_user(uarg + ksize, usize - ksize))
		return -EFAULT;
	return 0;
}

/* Checks shared by register and unregister (ABI.md, "Register"). */
static int ksmdev_region_check(const struct ksm_region *r, u64 flags_allowed)
{
	u64 end;

	if (r->flags & ~flags_allowed)
		return -EINVAL;
	/* The whole address space (ABI.md, "The whole address space"). */
	if (r->flags & KSM_REGION_ALL)
		return r->addr || r->len ? -EINVAL : 0;
	if (!r->len || !PAGE_ALIGNED(r->addr) || !PAGE_ALIGNED(r->len))
		return -EINVAL;
	if (check_add_overflow(r->addr, r->len, &end) || end > TASK_SIZE)
		return -EINVAL;
	return 0;
}

/* What a struct ksm_region is given for. */
enum ksmdev_region_op { KSMDEV_REGISTER, KSMDEV_UNREGISTER, KSMDEV_MERGE };

/* The flags each takes (ABI.md); any other is EINVAL. */
static const u64 ksmdev_region_flags[] = {
	[KSMDEV_REGISTER] = KSM_REGION_FLAGS_ALL | KSM_REGION_ALL,
	[KSMDEV_UNREGISTER] = KSM_REGION_ALL | KSM_REGION_SPLIT,
	[KSMDEV_MERGE] = KSM_REGION_ALL,
};

/*
 * KSM_REGISTER_REGION, KSM_UNREGISTER_REGION and KSM_MERGE_REGION: only
 * the mm that opened the device may change what it registers, in its own
 * mm or, once attached, in the target's; and only it may merge now: the
 * exact count KSM_MERGE_REGION returns for one page is a content oracle,
 * with which any other holder of the file (a child that inherited it, or
 * one it was passed to) could read a byte of the opener's memory in 256
 * guesses, where the in-kernel KSM's side channel needs two scans and a
 * timed write per guess (review of #15).
 */
static long ksmdev_region_ioctl(struct ksmdev_file *f,
				enum ksmdev_region_op op, void __user *uarg,
				size_t usize)
{
	struct ksmdev_ctx *ctx = READ_ONCE(f->ctx);
	struct ksm_region r;
	int err;

	if (current->mm != f->opener)
		return -EPERM;
	err = copy_struct_from_user(&r, sizeof(r), uarg, usize);
	if (err)
		return err;
	err = ksmdev_region_check(&r, ksmdev_region_flags[op]);
	if (err)
		return err;
	/*
	 * Domains (ABI version 2): a non-zero one only at registration (at a
	 * merge, the regions' domains decide), never with
	 * KSM_REGION_SCOPE_MM (EINVAL), and only the host draws tenant lines
	 * (EPERM).
	 */
	if (r.domain && (op != KSMDEV_REGISTER ||
			 (r.flags & KSM_REGION_SCOPE_MM)))
		return -EINVAL;
	if (r.domain && !capable(CAP_SYS_ADMIN))
		return -EPERM;
	switch (op) {
	case KSMDEV_REGISTER:
		return ksmdev_region_add(ctx, &r);
	case KSMDEV_UNREGISTER:
		return ksmdev_region_remove(ctx, &r);
	default:
		return ksmdev_region_merge(ctx, &r);
	}
}

/* KSM_ATTACH_PROCESS (ABI.md, "Attach to a running process"). */
static long ksmdev_attach_ioctl(struct ksmdev_file *f, void __user *uarg,
				size_t usize)
{
	struct ksmdev_ctx *ctx;
	struct ksm_attach at;
	int err;

	if (current->mm != f->opener)
		return -EPERM;
	err = copy_struct_from_user(&at, sizeof(at), uarg, usize);
	if (err)
		return err;
	ctx = ksmdev_ctx_attach(f->own, &at);
	if (IS_ERR(ctx))
		return PTR_ERR(ctx);
	WRITE_ONCE(f->ctx, ctx);
	return 0;
}

static long ksmdev_mm_stats_ioctl(struct ksmdev_ctx *ctx, void __user *uarg,
				  size_t usize)
{
	struct ksm_mm_stats st = {};

	ksmdev_lock_acquire();
	st.regions = ctx->nr_regions;
	st.registered_pages = ctx->nr_pages;
	st.merging_pages = ctx->nr_merging;
	st.ksm_zero_pages = ctx->nr_zero;
	st.metadata_bytes = ksmdev_ctx_metadata(ctx);
	mutex_unlock(&ksmdev_lock);
	return ksmdev_copy_out(uarg, usize, &st, sizeof(st));
}

static long ksmdev_set_config_ioctl(void __user *uarg, size_t usize)
{
	struct ksm_config cfg;
	int err;

	if (!capable(CAP_SYS_ADMIN))
		return -EPERM;
	err = copy_struct_from_user(&cfg, sizeof(cfg), uarg, usize);
	if (err)
		return err;
	return ksmdev_config_set(&cfg, usize);
}

/* @cmd is @ref, whatever size the caller's structure has. */
static bool ksmdev_cmd_is(unsigned int cmd, unsigned int ref)
{
	return (cmd & ~IOCSIZE_MASK) == (ref & ~IOCSIZE_MASK);
}

static long ksmdev_ioctl(struct file *file, unsigned int cmd,
			 unsigned long arg)
{
	struct ksmdev_file *f = file->private_data;
	void __user *uarg = (void __user *)arg;
	size_t usize = _IOC_SIZE(cmd);

	if (cmd == KSM_GET_API_VERSION)
		return KSMDEV_API_VERSION;
	if (ksmdev_cmd_is(cmd, KSM_REGISTER_REGION))
		return ksmdev_region_ioctl(f, KSMDEV_REGISTER, uarg, usize);
	if (ksmdev_cmd_is(cmd, KSM_UNREGISTER_REGION))
		return ksmdev_region_ioctl(f, KSMDEV_UNREGISTER, uarg, usize);
	if (ksmdev_cmd_is(cmd, KSM_ATTACH_PROCESS))
		return ksmdev_attach_ioctl(f, uarg, usize);
	if (ksmdev_cmd_is(cmd, KSM_MERGE_REGION))
		return ksmdev_region_ioctl(f, KSMDEV_MERGE, uarg, usize);
	if (ksmdev_cmd_is(cmd, KSM_GET_STATS))
		/* A momentarily stale snapshot is fine (see stats.c). */
		return ksmdev_copy_out(uarg, usize, &ksmdev_stats,
				       sizeof(ksmdev_stats));
	if (ksmdev_cmd_is(cmd, KSM_GET_MM_STATS))
		return ksmdev_mm_stats_ioctl(READ_ONCE(f->ctx), uarg, usize);
	if (ksmdev_cmd_is(cmd, KSM_GET_CONFIG))
		return ksmdev_copy_out(uarg, usize, &ksmdev_config,
				       sizeof(ksmdev_config));
	if (ksmdev_cmd_is(cmd, KSM_SET_CONFIG))
		return ksmdev_set_config_ioctl(uarg, usize);
	return -ENOTTY;
}

static const struct file_operations ksmdev_fops = {
	.owner		= THIS_MODULE,
	.open		= ksmdev_open,
	.release	= ksmdev_release,
	.unlocked_ioctl	= ksmdev_ioctl,
	/* Every structure is made of __u64: 32-bit callers lay them out alike. */
	.compat_ioctl	= compat_ptr_ioctl,
};

static struct miscdevice ksmdev_misc = {
	.minor	= KSMDEV_MINOR,
	.name	= "ksm",
	.fops	= &ksmdev_fops,
	.mode	= 0600,
};

int ksmdev_dev_init(void)
{
	int err = misc_register(&ksmdev_misc);

	if (err == -EBUSY) {
		pr_info("misc minor %d is taken; using a dynamic one\n",
			KSMDEV_MINOR);
		ksmdev_misc.minor = MISC_DYNAMIC_MINOR;
		err = misc_register(&ksmdev_misc);
	}
	return err;
}

void ksmdev_dev_exit(void)
{
	misc_deregister(&ksmdev_misc);
}

MODULE_ALIAS_MISCDEV(KSMDEV_MINOR);
MODULE_ALIAS("devname:ksm");
