// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev module lifecycle: refuses to unload while in use, unloads cleanly,
 * refuses to load (cleanly, saying why) when a kernel symbol is missing, and
 * loads again. The tests run in order and leave the module loaded.
 *
 * Runs last, as root, in a QEMU guest; never on a host: it unloads and loads
 * the DKMS-installed ksmdev.ko.
 */
#define _GNU_SOURCE
#include <sys/klog.h>
#include <sys/syscall.h>
#include <sys/utsname.h>

#include "ksmdev_test.h"

#define MODULE_NAME		"ksmdev"
#define MISSING_SYMBOL		"ksmdev_no_such_symbol"
#ifndef MODULE_INIT_COMPRESSED_FILE
#define MODULE_INIT_COMPRESSED_FILE	4
#endif

static bool path_exists(const char *path)
{
	return !access(path, F_OK);
}

/* Poll (at most @timeout_s) until @path exists (@want) or not. */
static bool wait_path(const char *path, bool want, unsigned int timeout_s)
{
	uint64_t end = ksm_now_ms() + timeout_s * 1000ULL;

	while (path_exists(path) != want) {
		if (ksm_now_ms() > end)
			return false;
		ksm_sleep_ms(10);
	}
	return true;
}

/* How many times @s occurs in the kernel log. */
static int klog_count(const char *s)
{
	int size = klogctl(10 /* SYSLOG_ACTION_SIZE_BUFFER */, NULL, 0);
	int n, count = 0;
	char *buf, *p;

	if (size <= 0)
		return -1;
	buf = malloc(size + 1);
	if (!buf)
		return -1;
	n = klogctl(3 /* SYSLOG_ACTION_READ_ALL */, buf, size);
	if (n < 0) {
		free(buf);
		return -1;
	}
	buf[n] = '\0';
	for (p = buf; (p = strstr(p, s)); p += strlen(s))
		count++;
	free(buf);
	return count;
}

/*
 * The context a test opens, if any; closed at teardown. A test that unloads
 * the module in order to load it again sets @reload: if it stops half way,
 * teardown loads the module, so that it is left loaded. @child: a child
 * process to kill at teardown.
 */
FIXTURE(module) {
	int fd;
	bool reload;
	pid_t child;
};

FIXTURE_SETUP(module)
{
	self->fd = -1;
	self->reload = false;
	self->child = -1;
}

static int ksm_load_module(const char *params);
static bool wait_path(const char *path, bool want, unsigned int timeout_s);

FIXTURE_TEARDOWN(module)
{
	if (self->fd >= 0)
		close(self->fd);
	if (self->child > 0) {
		kill(self->child, SIGKILL);
		waitpid(self->child, NULL, 0);
	}
	if (self->reload && access("/sys/module/" MODULE_NAME, F_OK)) {
		EXPECT_EQ(0, ksm_load_module(""));
		EXPECT_TRUE(wait_path(KSM_DEV_PATH, true, 10));
	}
}

TEST_F(module, busy_module_stays)
{
	struct ksm_stats s;
	int fd2, ret;

	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ret = ksm_delete_module(MODULE_NAME, O_NONBLOCK);
	EXPECT_TRUE(ret == -EWOULDBLOCK || ret == -EAGAIN || ret == -EBUSY)
		TH_LOG("delete_module with /dev/ksm open: %d", ret);
	EXPECT_TRUE(path_exists("/sys/module/" MODULE_NAME));
	EXPECT_EQ(KSMDEV_API_VERSION, ioctl(self->fd, KSM_GET_API_VERSION));
	EXPECT_EQ(0, ksm_get_stats(self->fd, &s));
	fd2 = ksm_open();
	EXPECT_LE(0, fd2);
	if (fd2 >= 0)
		close(fd2);
}

TEST_F(module, unload)
{
	/* The last fput of the previous test's process may still be due. */
	int ret = ksm_unload_module();

	ASSERT_EQ(0, ret) TH_LOG("delete_module: %s", strerror(-ret));
	EXPECT_TRUE(wait_path(KSM_DEV_PATH, false, 5))
		TH_LOG(KSM_DEV_PATH " still exists");
	EXPECT_TRUE(wait_path("/sys/module/" MODULE_NAME, false, 5));
}

TEST_F(module, missing_symbol_refused)
{
	int before, after, ret;

	ASSERT_FALSE(path_exists("/sys/module/" MODULE_NAME))
		TH_LOG("the module is still loaded");
	before = klog_count(MISSING_SYMBOL);
	ASSERT_LE(0, before) TH_LOG("cannot read the kernel log");
	ret = ksm_load_module("test_missing_symbol=" MISSING_SYMBOL);
	ASSERT_NE(-ENOPKG, ret);
	EXPECT_EQ(-ENOENT, ret);
	EXPECT_TRUE(wait_path("/sys/module/" MODULE_NAME, false, 5));
	EXPECT_FALSE(path_exists(KSM_DEV_PATH));
	after = klog_count(MISSING_SYMBOL);
	EXPECT_LT(before, after) TH_LOG("no kernel log line names " MISSING_SYMBOL);
}

TEST_F(module, reload)
{
	struct ksm_stats s;

	ASSERT_EQ(0, ksm_load_module(""));
	ASSERT_TRUE(wait_path(KSM_DEV_PATH, true, 10))
		TH_LOG(KSM_DEV_PATH " did not appear");
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	EXPECT_EQ(KSMDEV_API_VERSION, ioctl(self->fd, KSM_GET_API_VERSION));
	/* A fresh module: only this context. */
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(1, s.mms);
	EXPECT_EQ(0, s.regions);
	EXPECT_EQ(0, s.registered_pages);
}

/*
 * Merged pages outlive their context and the module: a child's merged pages
 * stay mapped, intact and copy-on-write after it closed /dev/ksm and the
 * module was unloaded (the kernel alone maps, copies and frees them). Then
 * the module loads again.
 */
TEST_F_TIMEOUT(module, merged_pages_survive_unload, 300)
{
	const uint64_t val = 0x5eed00, val2 = 0x5eed01;
	const size_t npages = 64;
	uint64_t pfns[64], kpfn;
	struct ksm_child ch;
	struct ksm_stats s;
	size_t i;
	int ret;

	ASSERT_TRUE(path_exists("/sys/module/" MODULE_NAME))
		TH_LOG("the module is not loaded");
	/* The child first: it must not inherit a /dev/ksm of ours. */
	ret = ksm_child_start(&ch, npages, val, 0);
	ASSERT_EQ(0, ret) TH_LOG("child: %d", ret);
	self->child = ch.pid;
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ret = ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 120);
	ASSERT_EQ(0, ret) TH_LOG("not merged: pages_shared %llu pages_sharing %llu",
				 (unsigned long long)s.pages_shared,
				 (unsigned long long)s.pages_sharing);
	ASSERT_EQ(0, ksm_child_pfns(&ch, pfns));
	ASSERT_TRUE(ksm_pfns_merged(pfns, npages));
	kpfn = pfns[0];

	/* Closed: the regions go without unmerging, and leave the counters. */
	ASSERT_EQ(0, ksm_child_call(&ch, KSM_CHILD_CLOSE, 0, 0, NULL, 0));
	EXPECT_EQ(0, ksm_wait_merge_idle(self->fd, &s, 10));
	ASSERT_EQ(0, ksm_child_pfns(&ch, pfns));
	EXPECT_EQ(npages, ksm_count_eq(pfns, npages, kpfn));
	close(self->fd);
	self->fd = -1;

	self->reload = true;
	ret = ksm_unload_module();
	ASSERT_EQ(0, ret) TH_LOG("delete_module: %s", strerror(-ret));
	EXPECT_TRUE(wait_path("/sys/module/" MODULE_NAME, false, 5));

	/* Without the module: still one page, intact, copied on write. */
	EXPECT_EQ(0, ksm_child_check(&ch));
	ASSERT_EQ(0, ksm_child_pfns(&ch, pfns));
	EXPECT_EQ(npages, ksm_count_eq(pfns, npages, kpfn));
	for (i = 0; i < npages; i += 2) {
		ASSERT_EQ(0, ksm_child_set(&ch, i, val2));
	}
	EXPECT_EQ(0, ksm_child_check(&ch));
	ASSERT_EQ(0, ksm_child_pfns(&ch, pfns));
	EXPECT_EQ(npages / 2, ksm_count_eq(pfns, npages, kpfn));
	for (i = 0; i < npages; i++) {
		if (i % 2) {
			EXPECT_EQ(kpfn, pfns[i]) TH_LOG("page %zu", i);
		} else {
			EXPECT_NE(kpfn, pfns[i]) TH_LOG("page %zu", i);
			EXPECT_NE(0, pfns[i]) TH_LOG("page %zu", i);
		}
	}
	EXPECT_EQ(npages / 2, ksm_count_distinct(pfns, npages) - 1);
	EXPECT_EQ(0, ksm_child_stop(&ch));
	self->child = -1;

	/* Loaded again, as the reload test does. */
	ASSERT_EQ(0, ksm_load_module(""));
	ASSERT_TRUE(wait_path(KSM_DEV_PATH, true, 10))
		TH_LOG(KSM_DEV_PATH " did not appear");
	self->reload = false;
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	EXPECT_EQ(KSMDEV_API_VERSION, ioctl(self->fd, KSM_GET_API_VERSION));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(1, s.mms);
	EXPECT_EQ(0, s.regions);
	EXPECT_EQ(0, s.pages_shared);
	EXPECT_EQ(0, s.pages_sharing);
}

/*
 * 100 load/merge/close/unload cycles: each one loads, merges pages, closes
 * and unloads cleanly, and the kernel's unreclaimable slab does not grow
 * with them (a coarse leak check; kmemleak in the debug lane is the fine
 * one).
 */
TEST_F_TIMEOUT(module, load_unload_cycles, 900)
{
	const size_t npages = 32, cycles = 100, warm = 10;
	long slab_warm = 0, slab_end;
	struct ksm_stats s;
	size_t c, i;
	char *p;
	int ret;

	self->reload = true;
	for (c = 0; c < cycles; c++) {
		self->fd = ksm_open();
		ASSERT_LE(0, self->fd) TH_LOG("cycle %zu: open: %s", c, strerror(errno));
		ASSERT_EQ(0, ksm_set_fast_config(self->fd));
		p = ksm_mmap_anon(npages * ksm_page_size());
		ASSERT_NE(NULL, p);
		for (i = 0; i < npages; i++)
			memset(p + i * ksm_page_size(), 'm', ksm_page_size());
		ASSERT_EQ(0, ksm_register(self->fd, p, npages * ksm_page_size(), 0));
		ret = ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 60);
		ASSERT_EQ(0, ret) TH_LOG("cycle %zu: not merged", c);
		close(self->fd);
		self->fd = -1;
		munmap(p, npages * ksm_page_size());

		ret = ksm_unload_module();
		ASSERT_EQ(0, ret) TH_LOG("cycle %zu: delete_module: %s", c, strerror(-ret));
		ASSERT_EQ(0, ksm_load_module(""));
		ASSERT_TRUE(wait_path(KSM_DEV_PATH, true, 10));
		if (c + 1 == warm)
			slab_warm = ksm_meminfo_kb("SUnreclaim");
	}
	self->reload = false;
	slab_end = ksm_meminfo_kb("SUnreclaim");
	TH_LOG("SUnreclaim %ld kB after %zu cycles, %ld kB after %zu",
	       slab_warm, warm, slab_end, cycles);
	/* 90 cycles: even 20 kB lost per cycle would show. */
	EXPECT_GT(slab_warm + 2048, slab_end);
}

TEST_HARNESS_MAIN
