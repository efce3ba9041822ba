/* SPDX-License-Identifier: GPL-2.0 WITH Linux-syscall-note */
/*
 * The interface of ksmdev_test_notifier.ko, a module of the test suite
 * only (tests/notifier.c loads it in the guest): a secondary MMU as GPU
 * userptr, RDMA ODP and Xen gntdev drivers are one, subscribed to a range of
 * the caller's mm with an interval notifier, refusing (and counting) every
 * invalidation that may not sleep.
 */
#ifndef _KSMDEV_TEST_NOTIFIER_H
#define _KSMDEV_TEST_NOTIFIER_H

#include <linux/ioctl.h>
#include <linux/types.h>

#define KSMDEV_TN_DEV_NAME	"ksmdev_test_notifier"

/* A range of the caller's mm: page aligned, not empty. */
struct ksmdev_tn_range {
	__u64 start;
	__u64 length;
};

/* What the subscription has received since it was inserted. */
struct ksmdev_tn_counts {
	__u64 invalidations;	/* every call of the invalidate callback */
	__u64 nonblockable;	/* of which non-blockable, all refused */
};

/* Subscribe (one subscription per open file); EBUSY if already done. */
#define KSMDEV_TN_INSERT	_IOW('K', 0xe0, struct ksmdev_tn_range)
#define KSMDEV_TN_COUNTS	_IOR('K', 0xe1, struct ksmdev_tn_counts)
/* mmu_interval_notifier_remove(); EINVAL if not subscribed. */
#define KSMDEV_TN_REMOVE	_IO('K', 0xe2)

#endif /* _KSMDEV_TEST_NOTIFIER_H */
