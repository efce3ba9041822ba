// SPDX-License-Identifier: GPL-2.0
/*
 * libksmdev-preload.so under a program that behaves like QEMU (fakevm.c:
 * threads, several RAM blocks, MADV_MERGEABLE, then munmap): its memory is
 * registered, merges across blocks, comes back on MADV_UNMERGEABLE and
 * munmap with every byte intact; other advice passes through; without
 * access to /dev/ksm it says so in one line and leaves the work to the
 * kernel's madvise(). What the kernel's KSM does with part of a range,
 * it does too (ABI version 2, KSM_REGION_SPLIT): MADV_UNMERGEABLE on part
 * of a block unmerges only those pages, a partial munmap() unregisters
 * only those; the rest stays registered and merged. mremap() carries the
 * registration and the merged pages along (the old range unregistered,
 * with MREMAP_DONTUNMAP kept; a grown tail registered), and
 * KSMDEV_SCOPE=mm registers with KSM_REGION_SCOPE_MM. Those checks stop
 * the scanner first: what stays merged was never unmerged, not merged
 * again meanwhile. The regions and their pages are read from debugfs
 * "regions" and /proc/PID/pagemap.
 *
 * Runs as root in a QEMU guest with ksmdev loaded, and /tests/fakevm,
 * /tests/libksmdev-preload.so and the dynamic loader in the image; never
 * on a host.
 */
#define _GNU_SOURCE
#include <sys/wait.h>

#include "ksmdev_test.h"

#define FAKEVM		"/tests/fakevm"
#define PRELOAD		"/tests/libksmdev-preload.so"
#define BLOCKS		4
#define BLOCK_MB	4
#define WAIT_S		120

struct vm {
	pid_t pid;
	FILE *in, *out;
	int err;	/* its stderr, read end */
};

FIXTURE(preload) {
	int fd;
	struct ksm_stats base;
	struct ksm_config saved;
};

FIXTURE_SETUP(preload)
{
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG(KSM_DEV_PATH ": %s", strerror(-self->fd));
	ASSERT_EQ(0, access(FAKEVM, X_OK));
	ASSERT_EQ(0, access(PRELOAD, R_OK));
}

FIXTURE_TEARDOWN(preload)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/*
 * Start fakevm under the library, as @uid (0: root), with KSMDEV_SCOPE
 * @scope (NULL: unset).
 */
static int vm_start_scope(struct vm *vm, uid_t uid, const char *scope)
{
	int in[2], out[2], err[2];

	if (pipe(in) || pipe(out) || pipe(err))
		return -errno;
	vm->pid = fork();
	if (vm->pid < 0)
		return -errno;
	if (vm->pid == 0) {
		char blocks[8], mb[8];

		dup2(in[0], 0);
		dup2(out[1], 1);
		dup2(err[1], 2);
		close(in[1]);
		close(out[0]);
		close(err[0]);
		if (uid && (setgid(uid) || setuid(uid)))
			_exit(99);
		snprintf(blocks, sizeof(blocks), "%d", BLOCKS);
		snprintf(mb, sizeof(mb), "%d", BLOCK_MB);
		setenv("LD_PRELOAD", PRELOAD, 1);
		if (scope)
			setenv("KSMDEV_SCOPE", scope, 1);
		else
			unsetenv("KSMDEV_SCOPE");
		execl(FAKEVM, "fakevm", blocks, mb, (char *)NULL);
		_exit(98);
	}
	close(in[0]);
	close(out[1]);
	close(err[1]);
	vm->in = fdopen(in[1], "w");
	vm->out = fdopen(out[0], "r");
	vm->err = err[0];
	if (!vm->in || !vm->out)
		return -ENOMEM;
	setvbuf(vm->in, NULL, _IOLBF, 0);
	return 0;
}

static int vm_start(struct vm *vm, uid_t uid)
{
	return vm_start_scope(vm, uid, NULL);
}

/* Send @cmd, return its one-line answer in @buf (bounded by the harness). */
static char *vm_call(struct vm *vm, const char *cmd, char *buf, size_t size)
{
	if (cmd && fprintf(vm->in, "%s\n", cmd) < 0)
		return NULL;
	if (!fgets(buf, size, vm->out))
		return NULL;
	buf[strcspn(buf, "\n")] = 0;
	return buf;
}

static int vm_stop(struct vm *vm, char *errbuf, size_t size)
{
	int status;
	ssize_t n;

	fprintf(vm->in, "exit\n");
	fclose(vm->in);
	if (ksm_waitpid_timeout(vm->pid, &status, 60))
		return -ETIMEDOUT;
	n = read(vm->err, errbuf, size - 1);
	errbuf[n > 0 ? n : 0] = 0;
	fclose(vm->out);
	close(vm->err);
	return ksm_exit_code(status);
}

static bool regions_are(const struct ksm_stats *s, const void *arg)
{
	return s->regions == *(const uint64_t *)arg;
}

/* ---- part of a range, mremap, scope: the tools ---- */

#define NPAGES		((size_t)BLOCK_MB << 20 >> 12)	/* 4 KiB pages */
#define HALF		(NPAGES / 2)			/* shared per block */

struct rline {
	unsigned long long start, end, domain, flags, merging;
};

/*
 * The lines of debugfs "regions" of process @pid that overlap
 * [@start, @end), into @out (at most @max): how many, or -1.
 */
static int regions_in(pid_t pid, uintptr_t start, uintptr_t end,
		      struct rline *out, int max)
{
	char line[256];
	struct rline r;
	long long lpid;
	int n = 0;
	FILE *f = fopen(KSM_DEBUGFS_DIR "/regions", "r");

	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lld %llx %llx %llu %llx %llu", &lpid,
			   &r.start, &r.end, &r.domain, &r.flags,
			   &r.merging) != 6) {
			n = -1;
			break;
		}
		if (lpid == pid && r.start < end && start < r.end && n < max)
			out[n++] = r;
	}
	fclose(f);
	return n;
}

/* @n PFNs of process @pid from @addr (0: absent), from its pagemap. */
static int pid_pfns(pid_t pid, uintptr_t addr, size_t n, uint64_t *pfns)
{
	char path[64];
	ssize_t got, want = n * sizeof(uint64_t);
	size_t i;
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	got = pread(fd, pfns, want, addr / ksm_page_size() * sizeof(uint64_t));
	close(fd);
	if (got != want)
		return -EIO;
	for (i = 0; i < n; i++)
		pfns[i] = pfns[i] & KSM_PM_PRESENT ? pfns[i] & KSM_PM_PFN_MASK : 0;
	return 0;
}

/* Pages i of [@first, @end) where (a[i] == b[i]) != @same, or a[i] is 0. */
static size_t count_not(const uint64_t *a, const uint64_t *b, size_t first,
			size_t end, bool same)
{
	size_t i, bad = 0;

	for (i = first; i < end; i++)
		bad += !a[i] || (a[i] == b[i]) != same;
	return bad;
}

static uintptr_t vm_addr(struct vm *vm, int b)
{
	char cmd[32], buf[64];
	unsigned long long a = 0;

	snprintf(cmd, sizeof(cmd), "addr %d", b);
	if (!vm_call(vm, cmd, buf, sizeof(buf)) ||
	    sscanf(buf, "addr %llx", &a) != 1)
		return 0;
	return a;
}

/*
 * The line of debugfs "regions" for [@start, @end) of @pid has @merging
 * pages merging, within @timeout_s.
 */
static bool wait_region_merging(pid_t pid, uintptr_t start, uintptr_t end,
				unsigned long long merging, int timeout_s)
{
	uint64_t until = ksm_now_ms() + timeout_s * 1000ULL;
	struct rline r[2];

	do {
		if (regions_in(pid, start, end, r, 2) == 1 &&
		    r[0].start == start && r[0].end == end &&
		    r[0].merging == merging)
			return true;
		ksm_sleep_ms(50);
	} while (ksm_now_ms() < until);
	return false;
}

/*
 * fakevm started (scope unset), its blocks merged (every block's first
 * half with the others'), then the scanner stopped: from here on, a page
 * merged was never unmerged. @pfn0: block 0's PFNs.
 */
static void vm_merged_stopped(struct __test_metadata *_metadata,
			      FIXTURE_DATA(preload) *self, struct vm *vm,
			      uint64_t *pfn0)
{
	char buf[256];
	struct ksm_stats s;

	ASSERT_EQ(NPAGES, (size_t)((uint64_t)BLOCK_MB << 20) / ksm_page_size());
	ASSERT_EQ(0, vm_start(vm, 0));
	ASSERT_NE(NULL, vm_call(vm, NULL, buf, sizeof(buf)));
	ASSERT_STREQ("ready", buf);
	ASSERT_EQ(0, ksm_wait_merged(self->fd, HALF, (BLOCKS - 1) * HALF, 0,
				     &s, WAIT_S))
		TH_LOG("pages_shared %llu pages_sharing %llu",
		       (unsigned long long)s.pages_shared,
		       (unsigned long long)s.pages_sharing);
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	ASSERT_EQ(0, pid_pfns(vm->pid, vm_addr(vm, 0), NPAGES, pfn0));
}

/* fakevm's end: bytes intact, nothing said, its regions and merges gone. */
static void vm_finish(struct __test_metadata *_metadata,
		      FIXTURE_DATA(preload) *self, struct vm *vm)
{
	char buf[256], errbuf[1024];
	struct ksm_stats s;
	uint64_t want = self->base.regions;

	EXPECT_STREQ("ok", vm_call(vm, "check", buf, sizeof(buf)));
	EXPECT_EQ(0, vm_stop(vm, errbuf, sizeof(errbuf)));
	EXPECT_EQ(0, errbuf[0]) TH_LOG("stderr: %s", errbuf);
	EXPECT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	EXPECT_EQ(0, ksm_wait_stats(self->fd, regions_are, &want, &s, 10));
	EXPECT_EQ(0, ksm_wait_merged(self->fd, 0, 0, 0, &s, WAIT_S));
}

TEST_F_TIMEOUT(preload, qemu_like_program, 300)
{
	const uint64_t half = ((uint64_t)BLOCK_MB << 20) / ksm_page_size() / 2;
	char buf[256], errbuf[1024];
	struct ksm_stats s;
	struct vm vm;
	uint64_t want;

	ASSERT_EQ(0, vm_start(&vm, 0));
	ASSERT_NE(NULL, vm_call(&vm, NULL, buf, sizeof(buf)));
	ASSERT_STREQ("ready", buf);

	/* Every block registered, by two threads; the duplicates merge. */
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.regions + BLOCKS, s.regions);
	EXPECT_EQ(self->base.mms + 1, s.mms);
	ASSERT_EQ(0, ksm_wait_merged(self->fd, half, (BLOCKS - 1) * half, 0,
				     &s, WAIT_S))
		TH_LOG("pages_shared %llu pages_sharing %llu",
		       (unsigned long long)s.pages_shared,
		       (unsigned long long)s.pages_sharing);
	ASSERT_STREQ("ok", vm_call(&vm, "check", buf, sizeof(buf)));

	/* munmap of a block: it leaves ksmdev too. */
	ASSERT_STREQ("done 0", vm_call(&vm, "munmap 0", buf, sizeof(buf)));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.regions + BLOCKS - 1, s.regions);
	EXPECT_EQ(0, ksm_wait_merged(self->fd, half, (BLOCKS - 2) * half, 0,
				     &s, WAIT_S));

	/* MADV_UNMERGEABLE: unregistered and unmerged, bytes intact. */
	ASSERT_STREQ("done 0", vm_call(&vm, "unmerge 1", buf, sizeof(buf)));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.regions + BLOCKS - 2, s.regions);
	EXPECT_EQ(0, ksm_wait_merged(self->fd, half, (BLOCKS - 3) * half, 0,
				     &s, WAIT_S));
	EXPECT_STREQ("ok", vm_call(&vm, "check", buf, sizeof(buf)));

	/* Any other advice goes to the kernel. */
	EXPECT_STREQ("done 0", vm_call(&vm, "dontneed 2", buf, sizeof(buf)));
	EXPECT_STREQ("ok", vm_call(&vm, "check", buf, sizeof(buf)));

	EXPECT_EQ(0, vm_stop(&vm, errbuf, sizeof(errbuf)));
	EXPECT_EQ(0, errbuf[0]) TH_LOG("stderr: %s", errbuf);
	want = self->base.regions;
	EXPECT_EQ(0, ksm_wait_stats(self->fd, regions_are, &want, &s, 10));
	EXPECT_EQ(0, ksm_wait_merged(self->fd, 0, 0, 0, &s, WAIT_S));
}

/*
 * Block @a of @pid after pages 128 .. 383 were cut out of it: two
 * regions, around the hole, their pages still merged and counted.
 */
static void expect_cut_regions(struct __test_metadata *_metadata, pid_t pid,
			       uintptr_t a)
{
	size_t ps = ksm_page_size();
	struct rline r[4];

	ASSERT_EQ(2, regions_in(pid, a, a + NPAGES * ps, r, 4));
	EXPECT_EQ(a, r[0].start);
	EXPECT_EQ(a + 128 * ps, r[0].end);
	EXPECT_EQ(128, r[0].merging);
	EXPECT_EQ(a + 384 * ps, r[1].start);
	EXPECT_EQ(a + NPAGES * ps, r[1].end);
	EXPECT_EQ(HALF - 384, r[1].merging);
}

/*
 * Cut pages 128 .. 383 out of block 1 of a merged, stopped VM with @cmd
 * ("unmerge" or "munmap"): pages 0 .. 127 and 384 .. 511 stay merged (the
 * scanner is stopped: never unmerged), in two regions that still count
 * them; with @unmerged, the pages inside (still mapped) are unmerged.
 */
static void cut_block(struct __test_metadata *_metadata,
		      FIXTURE_DATA(preload) *self, const char *cmd,
		      bool unmerged)
{
	uint64_t pfn0[NPAGES], pfn1[NPAGES];
	struct vm vm;
	char buf[64], line[64];
	uintptr_t a;

	vm_merged_stopped(_metadata, self, &vm, pfn0);
	a = vm_addr(&vm, 1);
	ASSERT_NE(0, a);
	if (unmerged) {
		ASSERT_EQ(0, pid_pfns(vm.pid, a, NPAGES, pfn1));
		ASSERT_EQ(0, count_not(pfn1, pfn0, 0, HALF, true));
	}
	snprintf(line, sizeof(line), "%s 1 128 256", cmd);
	ASSERT_STREQ("done 0", vm_call(&vm, line, buf, sizeof(buf)));
	ASSERT_EQ(0, pid_pfns(vm.pid, a, NPAGES, pfn1));
	EXPECT_EQ(0, count_not(pfn1, pfn0, 0, 128, true));
	if (unmerged)
		EXPECT_EQ(0, count_not(pfn1, pfn0, 128, 384, false));
	EXPECT_EQ(0, count_not(pfn1, pfn0, 384, HALF, true));
	expect_cut_regions(_metadata, vm.pid, a);
	vm_finish(_metadata, self, &vm);
}

/*
 * MADV_UNMERGEABLE on pages 128 .. 383 of a block: those are unmerged and
 * unregistered; the rest stays registered and merged.
 */
TEST_F_TIMEOUT(preload, partial_unmergeable, 300)
{
	cut_block(_metadata, self, "unmerge", true);
}

/*
 * munmap() of pages 128 .. 383 of a block: the rest stays registered, in
 * two regions, and merged.
 */
TEST_F_TIMEOUT(preload, partial_munmap, 300)
{
	cut_block(_metadata, self, "munmap", false);
}

/*
 * mremap() of a block to a fresh place: the old range leaves ksmdev, the
 * new one is registered and its merged pages, moved by the kernel, stay
 * merged (and are counted by the region once the scanner runs again).
 * With MREMAP_DONTUNMAP the old range stays registered as well.
 */
TEST_F_TIMEOUT(preload, mremap_move, 300)
{
	uint64_t pfn0[NPAGES], pfn[NPAGES];
	size_t ps = ksm_page_size();
	struct rline r[4];
	uintptr_t a, b, c, d;
	struct vm vm;
	char buf[64];

	vm_merged_stopped(_metadata, self, &vm, pfn0);
	a = vm_addr(&vm, 1);
	c = vm_addr(&vm, 2);
	ASSERT_NE(0, a);
	ASSERT_NE(0, c);

	ASSERT_STREQ("done 0", vm_call(&vm, "mremap 1 1024 mf", buf, sizeof(buf)));
	b = vm_addr(&vm, 1);
	ASSERT_NE(a, b);
	EXPECT_EQ(0, regions_in(vm.pid, a, a + NPAGES * ps, r, 4));
	ASSERT_EQ(1, regions_in(vm.pid, b, b + NPAGES * ps, r, 4));
	EXPECT_EQ(b, r[0].start);
	EXPECT_EQ(b + NPAGES * ps, r[0].end);
	ASSERT_EQ(0, pid_pfns(vm.pid, b, NPAGES, pfn));
	EXPECT_EQ(0, count_not(pfn, pfn0, 0, HALF, true));

	ASSERT_STREQ("done 0", vm_call(&vm, "mremap 2 1024 md", buf, sizeof(buf)));
	d = vm_addr(&vm, 2);
	ASSERT_NE(c, d);
	ASSERT_EQ(1, regions_in(vm.pid, c, c + NPAGES * ps, r, 4));
	EXPECT_EQ(c, r[0].start);
	EXPECT_EQ(c + NPAGES * ps, r[0].end);
	ASSERT_EQ(1, regions_in(vm.pid, d, d + NPAGES * ps, r, 4));
	EXPECT_EQ(d, r[0].start);
	EXPECT_EQ(d + NPAGES * ps, r[0].end);
	ASSERT_EQ(0, pid_pfns(vm.pid, d, NPAGES, pfn));
	EXPECT_EQ(0, count_not(pfn, pfn0, 0, HALF, true));

	/* The scanner counts the moved merged pages where they are now. */
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	EXPECT_TRUE(wait_region_merging(vm.pid, b, b + NPAGES * ps, HALF, WAIT_S));
	EXPECT_TRUE(wait_region_merging(vm.pid, d, d + NPAGES * ps, HALF, WAIT_S));
	EXPECT_TRUE(wait_region_merging(vm.pid, c, c + NPAGES * ps, 0, WAIT_S));
	vm_finish(_metadata, self, &vm);
}

/*
 * mremap() that grows a block (moved to a fresh place): the grown tail,
 * written with copies of the shared half, is registered with the rest
 * (one region) and merges once the scanner runs again.
 */
TEST_F_TIMEOUT(preload, mremap_grow, 300)
{
	uint64_t pfn0[NPAGES], pfn[NPAGES + HALF];
	size_t ps = ksm_page_size(), bad = 0, i;
	uint64_t until;
	struct rline r[4];
	struct vm vm;
	char buf[64];
	uintptr_t b;

	vm_merged_stopped(_metadata, self, &vm, pfn0);
	ASSERT_STREQ("done 0", vm_call(&vm, "mremap 1 1536 mf", buf, sizeof(buf)));
	b = vm_addr(&vm, 1);
	ASSERT_NE(0, b);
	ASSERT_EQ(1, regions_in(vm.pid, b, b + (NPAGES + HALF) * ps, r, 4));
	EXPECT_EQ(b, r[0].start);
	EXPECT_EQ(b + (NPAGES + HALF) * ps, r[0].end);

	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	until = ksm_now_ms() + WAIT_S * 1000ULL;
	do {
		ASSERT_EQ(0, pid_pfns(vm.pid, b, NPAGES + HALF, pfn));
		for (bad = 0, i = 0; i < HALF; i++)
			bad += !pfn[NPAGES + i] || pfn[NPAGES + i] != pfn0[i];
		if (!bad)
			break;
		ksm_sleep_ms(50);
	} while (ksm_now_ms() < until);
	EXPECT_EQ(0, bad);
	EXPECT_TRUE(wait_region_merging(vm.pid, b, b + (NPAGES + HALF) * ps,
					2 * HALF, WAIT_S));
	vm_finish(_metadata, self, &vm);
}

/*
 * KSMDEV_SCOPE=mm: every region with KSM_REGION_SCOPE_MM. Any other value:
 * said once, and ignored.
 */
TEST_F_TIMEOUT(preload, scope_mm, 300)
{
	char buf[256], errbuf[1024], *line;
	struct rline r[BLOCKS + 1];
	struct vm vm;
	int i, n;

	ASSERT_EQ(0, vm_start_scope(&vm, 0, "mm"));
	ASSERT_NE(NULL, vm_call(&vm, NULL, buf, sizeof(buf)));
	ASSERT_STREQ("ready", buf);
	n = regions_in(vm.pid, 0, UINTPTR_MAX, r, BLOCKS + 1);
	ASSERT_EQ(BLOCKS, n);
	for (i = 0; i < n; i++)
		EXPECT_EQ(KSM_REGION_SCOPE_MM, r[i].flags);
	EXPECT_EQ(0, vm_stop(&vm, errbuf, sizeof(errbuf)));
	EXPECT_EQ(0, errbuf[0]) TH_LOG("stderr: %s", errbuf);

	ASSERT_EQ(0, vm_start_scope(&vm, 0, "global"));
	ASSERT_NE(NULL, vm_call(&vm, NULL, buf, sizeof(buf)));
	ASSERT_STREQ("ready", buf);
	n = regions_in(vm.pid, 0, UINTPTR_MAX, r, BLOCKS + 1);
	ASSERT_EQ(BLOCKS, n);
	for (i = 0; i < n; i++)
		EXPECT_EQ(0, r[i].flags);
	EXPECT_EQ(0, vm_stop(&vm, errbuf, sizeof(errbuf)));
	line = strstr(errbuf, "ksmdev-preload: KSMDEV_SCOPE=global: not \"mm\", ignored\n");
	EXPECT_NE(NULL, line) TH_LOG("stderr: %s", errbuf);
	if (line)
		EXPECT_EQ(NULL, strstr(line + 1, "ksmdev-preload:"));
}

/* No access to /dev/ksm (mode 0600): one line, then the kernel's KSM. */
TEST_F_TIMEOUT(preload, falls_back_without_dev_ksm, 120)
{
	char buf[256], errbuf[1024], *line;
	struct ksm_stats s;
	struct vm vm;

	ASSERT_EQ(0, vm_start(&vm, 65534));
	ASSERT_NE(NULL, vm_call(&vm, NULL, buf, sizeof(buf)));
	EXPECT_STREQ("ready", buf);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.regions, s.regions);
	EXPECT_STREQ("ok", vm_call(&vm, "check", buf, sizeof(buf)));
	EXPECT_STREQ("done 0", vm_call(&vm, "munmap 0", buf, sizeof(buf)));
	EXPECT_EQ(0, vm_stop(&vm, errbuf, sizeof(errbuf)));
	line = strstr(errbuf, "ksmdev-preload: /dev/ksm: Permission denied; MADV_MERGEABLE goes to the kernel's KSM\n");
	EXPECT_NE(NULL, line) TH_LOG("stderr: %s", errbuf);
	/* Said once, though two threads advised four blocks. */
	if (line)
		EXPECT_EQ(NULL, strstr(line + 1, "ksmdev-preload:"));
}

TEST_HARNESS_MAIN
