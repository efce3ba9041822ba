// SPDX-License-Identifier: GPL-2.0
/*
 * ABI version 2, enrolment: KSM_ATTACH_PROCESS (with and without
 * KSM_ATTACH_PERSIST) and KSM_REGION_ALL (ABI.md, "Attach to a running
 * process" and "The whole address space"): every rule and error code, a
 * merge across two processes enrolled by a third, the targets' exit, the
 * ptrace permission check, and the cost of a whole address space.
 *
 * The targets are children that map memory of their own, never open
 * /dev/ksm, and wait for their command pipe to close. Their pages are read
 * through /proc/PID/pagemap (root sees PFNs).
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <grp.h>
#include <pthread.h>
#include <sys/prctl.h>

#include "ksmdev_test.h"

#ifndef __NR_pidfd_open
#define __NR_pidfd_open		434
#endif

#define NOBODY			65534
#define WAIT_S			60	/* every bounded wait here */
/* A test's own bound: its waits, one after another (the debug kernel). */
#define TEST_S			(4 * KSM_MERGE_WAIT_S)

static int pidfd_open(pid_t pid)
{
	int fd = syscall(__NR_pidfd_open, pid, 0);

	return fd < 0 ? -errno : fd;
}

static int ksm_attach(int fd, uint64_t pidfd, uint64_t flags)
{
	struct ksm_attach at = { .pidfd = pidfd, .flags = flags };

	return ksm_ioctl(fd, KSM_ATTACH_PROCESS, &at);
}

static int ksm_region_all(int fd, unsigned long cmd)
{
	return ksm_region_ioctl(fd, cmd, NULL, 0, KSM_REGION_ALL);
}

/* ---- targets: processes that never open /dev/ksm themselves ---- */

struct target {
	pid_t pid;
	int cmd;		/* closing it makes the target exit */
	char *addr;		/* its pages, in its address space */
	size_t npages;
};

/*
 * Fork a target that maps @npages, fills page i with @val (@distinct:
 * @val + i), and waits. Returns 0 once it has, or -errno.
 */
static int target_start(struct target *t, size_t npages, uint64_t val,
			bool distinct)
{
	pid_t parent = getpid();
	int cmd[2], rdy[2], fd;
	size_t i;
	char c;

	if (pipe(cmd) || pipe(rdy))
		return -errno;
	fflush(NULL);
	t->pid = fork();
	if (t->pid < 0)
		return -errno;
	if (!t->pid) {
		char *p;

		for (fd = 3; fd < 1024; fd++)
			if (fd != cmd[0] && fd != rdy[1])
				close(fd);
		if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
			_exit(1);
		/* A hole after them, for sure: one page more, unmapped. */
		p = ksm_mmap_anon((npages + 1) * ksm_page_size());
		if (!p || munmap(p + npages * ksm_page_size(), ksm_page_size()))
			_exit(1);
		for (i = 0; i < npages; i++)
			ksm_fill_val(p, i, distinct ? val + i : val);
		if (write(rdy[1], &p, sizeof(p)) != sizeof(p))
			_exit(1);
		while (read(cmd[0], &c, 1) > 0)
			;
		/* Still what it was given: merging changed no byte. */
		for (i = 0; i < npages; i++)
			if (!ksm_check_val(p, i, distinct ? val + i : val))
				_exit(3);
		_exit(0);
	}
	close(cmd[0]);
	close(rdy[1]);
	t->cmd = cmd[1];
	t->npages = npages;
	if (ksm_pipe_io(rdy[0], &t->addr, sizeof(t->addr), false, WAIT_S)) {
		close(rdy[0]);
		kill(t->pid, SIGKILL);
		waitpid(t->pid, NULL, 0);
		t->pid = -1;
		return -EIO;
	}
	close(rdy[0]);
	return 0;
}

/* Let the target exit; returns its exit code (0: its pages were intact). */
static int target_stop(struct target *t)
{
	int status, ret;

	if (t->pid <= 0)
		return -ESRCH;
	close(t->cmd);
	ret = ksm_waitpid_timeout(t->pid, &status, WAIT_S);
	t->pid = -1;
	return ret ? ret : ksm_exit_code(status);
}

/* The target's PFNs (0: absent), from its pagemap. */
static int target_pfns(const struct target *t, uint64_t *pfns)
{
	size_t ps = ksm_page_size(), i;
	ssize_t len = t->npages * sizeof(uint64_t), n;
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)t->pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	n = pread(fd, pfns, len, (uintptr_t)t->addr / ps * sizeof(uint64_t));
	close(fd);
	if (n != len)
		return -EIO;
	for (i = 0; i < t->npages; i++)
		pfns[i] = pfns[i] & KSM_PM_PRESENT ? pfns[i] & KSM_PM_PFN_MASK : 0;
	return 0;
}

/* Wait until every page of @n targets maps one same PFN. */
static int wait_all_one_pfn(struct target *ts, int n, uint64_t *pfn)
{
	uint64_t end = ksm_now_ms() + KSM_MERGE_WAIT_S * 1000ULL;
	uint64_t *pfns = calloc(ts[0].npages, sizeof(*pfns));
	int i, ret = -ETIMEDOUT;
	size_t j;

	if (!pfns)
		return -ENOMEM;
	while (ksm_now_ms() < end) {
		bool one = true;

		*pfn = 0;
		for (i = 0; i < n && one; i++) {
			if (target_pfns(&ts[i], pfns)) {
				one = false;
				break;
			}
			for (j = 0; j < ts[i].npages && one; j++) {
				if (!*pfn)
					*pfn = pfns[j];
				one = pfns[j] && pfns[j] == *pfn;
			}
		}
		if (one) {
			ret = 0;
			break;
		}
		ksm_sleep_ms(50);
	}
	free(pfns);
	return ret;
}

/* The pages of @t whose PFN is @pfn. */
static size_t target_count_pfn(const struct target *t, uint64_t pfn)
{
	uint64_t *pfns = calloc(t->npages, sizeof(*pfns));
	size_t n = 0;

	if (pfns && !target_pfns(t, pfns))
		n = ksm_count_eq(pfns, t->npages, pfn);
	free(pfns);
	return n;
}

/*
 * Is there a line "pid regions registered_pages ..." in debugfs mms? With
 * @pages -1: any registered_pages.
 */
static bool mms_line(pid_t pid, uint64_t regions, int64_t pages)
{
	char buf[65536], want[64], *line;

	if (ksm_read_text(KSM_DEBUGFS_DIR "/mms", buf, sizeof(buf)) < 0)
		return false;
	if (pages < 0)
		snprintf(want, sizeof(want), "%d %llu ", (int)pid,
			 (unsigned long long)regions);
	else
		snprintf(want, sizeof(want), "%d %llu %llu ", (int)pid,
			 (unsigned long long)regions,
			 (unsigned long long)pages);
	for (line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		if (!strncmp(line, want, strlen(want)))
			return true;
	return false;
}

/* Wait until this context's regions count is @n. */
static int wait_mm_regions(int fd, uint64_t n, struct ksm_mm_stats *ms)
{
	uint64_t end = ksm_now_ms() + WAIT_S * 1000ULL;

	while (!ksm_get_mm_stats(fd, ms)) {
		if (ms->regions == n)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(20);
	}
	return -EIO;
}

FIXTURE(attach) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	struct ksm_stats base;
	struct target t[2];
};

FIXTURE_SETUP(attach)
{
	self->ps = ksm_page_size();
	self->t[0].pid = self->t[1].pid = -1;
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s",
				      strerror(-self->fd));
	ASSERT_EQ(0, ksm_set_config_field(self->fd,
					  offsetof(struct ksm_config, scan_all_pages), 1));
}

FIXTURE_TEARDOWN(attach)
{
	int i;

	for (i = 0; i < 2; i++)
		if (self->t[i].pid > 0)
			target_stop(&self->t[i]);
	/* After unload_with_persistent, on the module loaded again. */
	if (self->fd < 0)
		return;
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Wait until the bookkeeping counters are back to the fixture's baseline. */
static void expect_baseline(struct __test_metadata *_metadata, int fd,
			    const struct ksm_stats *base)
{
	struct ksm_stats s;
	int ret = ksm_wait_bookkeeping(fd, base, &s, WAIT_S);

	EXPECT_EQ(0, ret) TH_LOG("mms %llu/%llu regions %llu/%llu registered_pages %llu/%llu metadata_bytes %llu/%llu pages_orphaned %llu/%llu (now/before)",
				 (unsigned long long)s.mms, (unsigned long long)base->mms,
				 (unsigned long long)s.regions, (unsigned long long)base->regions,
				 (unsigned long long)s.registered_pages,
				 (unsigned long long)base->registered_pages,
				 (unsigned long long)s.metadata_bytes,
				 (unsigned long long)base->metadata_bytes,
				 (unsigned long long)s.pages_orphaned,
				 (unsigned long long)base->pages_orphaned);
}

/* Every error code of KSM_ATTACH_PROCESS but the ptrace check's. */
TEST_F_TIMEOUT(attach, errors, TEST_S)
{
	int fd = ksm_open(), fd2 = ksm_open(), pidfd, zfd, kfd, nfd, st;
	char *p = ksm_mmap_anon(self->ps);
	pid_t pid;

	ASSERT_LE(0, fd);
	ASSERT_LE(0, fd2);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, target_start(&self->t[0], 4, 1, false));
	pidfd = pidfd_open(self->t[0].pid);
	ASSERT_LE(0, pidfd);

	/* An unknown flag. */
	EXPECT_EQ(-EINVAL, ksm_attach(fd, pidfd, 2));
	EXPECT_EQ(-EINVAL, ksm_attach(fd, pidfd, 1ULL << 63));
	/* Not a pidfd: another file, no file, not an int. */
	nfd = open("/dev/null", O_RDONLY);
	ASSERT_LE(0, nfd);
	EXPECT_EQ(-EBADF, ksm_attach(fd, nfd, 0));
	EXPECT_EQ(-EBADF, ksm_attach(fd, fd2, 0));
	EXPECT_EQ(-EBADF, ksm_attach(fd, 1000, 0));
	EXPECT_EQ(-EBADF, ksm_attach(fd, 1ULL << 32, 0));
	EXPECT_EQ(-EBADF, ksm_attach(fd, -1ULL, 0));
	close(nfd);
	/* A kernel thread (kthreadd) has no mm. */
	kfd = pidfd_open(2);
	ASSERT_LE(0, kfd);
	EXPECT_EQ(-ESRCH, ksm_attach(fd, kfd, 0));
	EXPECT_EQ(-ESRCH, ksm_attach(fd, kfd, KSM_ATTACH_PERSIST));
	close(kfd);
	/* An exited process: a zombie (no mm), then reaped (no task). */
	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid)
		_exit(0);
	zfd = pidfd_open(pid);
	ASSERT_LE(0, zfd);
	ASSERT_EQ(0, waitid(P_PID, pid, NULL, WEXITED | WNOWAIT) ? -errno : 0);
	EXPECT_EQ(-ESRCH, ksm_attach(fd, zfd, 0));
	ASSERT_EQ(pid, waitpid(pid, &st, 0));
	EXPECT_EQ(-ESRCH, ksm_attach(fd, zfd, KSM_ATTACH_PERSIST));
	close(zfd);

	/* A context with a region: EBUSY; once attached: EBUSY. */
	ASSERT_EQ(0, ksm_register(fd2, p, self->ps, 0));
	EXPECT_EQ(-EBUSY, ksm_attach(fd2, pidfd, 0));
	EXPECT_EQ(0, ksm_unregister(fd2, p, self->ps));
	EXPECT_EQ(0, ksm_attach(fd2, pidfd, 0));
	EXPECT_EQ(-EBUSY, ksm_attach(fd2, pidfd, 0));
	EXPECT_EQ(-EBUSY, ksm_attach(fd2, pidfd, KSM_ATTACH_PERSIST));

	/* From another mm than the opener's (an inherited fd): EPERM. */
	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		int bad = 0;

		bad |= (ksm_attach(fd, pidfd, 0) != -EPERM) << 0;
		bad |= (ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST) != -EPERM) << 1;
		/* Attached or not, regions change from the opener only. */
		bad |= (ksm_register(fd2, self->t[0].addr, self->ps, 0) != -EPERM) << 2;
		bad |= (ksm_region_all(fd2, KSM_REGISTER_REGION) != -EPERM) << 3;
		bad |= (ksm_region_all(fd2, KSM_UNREGISTER_REGION) != -EPERM) << 4;
		_exit(bad);
	}
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &st, WAIT_S));
	EXPECT_EQ(0, ksm_exit_code(st));
	/* ... and the opener may still attach fd, which it did not use. */
	EXPECT_EQ(0, ksm_attach(fd, pidfd, 0));

	close(pidfd);
	close(fd);
	close(fd2);
	munmap(p, self->ps);
	EXPECT_EQ(0, target_stop(&self->t[0]));
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * Attached without PERSIST: register and unregister act on the target's
 * mm, KSM_GET_MM_STATS and debugfs mms report it, pages merge and unmerge
 * there; the last close drops the regions, as in version 1.
 */
TEST_F_TIMEOUT(attach, acts_on_target, TEST_S)
{
	const size_t n = 64;
	struct target *t = &self->t[0];
	uint64_t *pfns = calloc(n, sizeof(*pfns)), pfn;
	struct ksm_mm_stats ms;
	unsigned char vec;
	int fd = ksm_open(), pidfd;

	ASSERT_LE(0, fd);
	ASSERT_NE(NULL, pfns);
	ASSERT_EQ(0, target_start(t, n, 0x5eed0001, false));
	/* The target's pages are not mapped here: only there. */
	ASSERT_EQ(-1, mincore(t->addr, self->ps, &vec));
	ASSERT_EQ(ENOMEM, errno);
	pidfd = pidfd_open(t->pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, 0));
	close(pidfd);
	EXPECT_EQ(1, mms_line(t->pid, 0, 0));

	/* Checked against the target's VMAs: one page past them is a hole. */
	EXPECT_EQ(-ENOMEM, ksm_register(fd, t->addr, (n + 1) * self->ps, 0));
	ASSERT_EQ(0, ksm_register(fd, t->addr, n * self->ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(fd, t->addr, self->ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(n, ms.registered_pages);
	EXPECT_EQ(1, mms_line(t->pid, 1, n));

	ASSERT_EQ(0, wait_all_one_pfn(t, 1, &pfn));
	ASSERT_EQ(0, ksm_wait_mm_merging(fd, n, &ms, WAIT_S));

	/* Unregister through the fd unmerges the target's pages. */
	ASSERT_EQ(0, ksm_unregister(fd, t->addr, n * self->ps));
	ASSERT_EQ(0, target_pfns(t, pfns));
	EXPECT_EQ(n, ksm_count_distinct(pfns, n));
	EXPECT_EQ(0, ksm_count_eq(pfns, n, pfn));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(0, ms.regions);
	EXPECT_EQ(0, ms.merging_pages);

	/* The last close drops the regions without unmerging. */
	ASSERT_EQ(0, ksm_register(fd, t->addr, n * self->ps, 0));
	ASSERT_EQ(0, wait_all_one_pfn(t, 1, &pfn));
	close(fd);
	EXPECT_EQ(n, target_count_pfn(t, pfn));
	EXPECT_EQ(0, target_stop(t));
	free(pfns);
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * A third process enrols two with KSM_ATTACH_PERSIST and KSM_REGION_ALL
 * and closes its files: their pages merge with each other; a new
 * PERSIST attach finds the same context again; the targets' exit frees
 * everything, with no handle open.
 */
TEST_F_TIMEOUT(attach, persist_merge_across_two, TEST_S)
{
	const size_t n = 128;
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	uint64_t pfn;
	int i, fd, pidfd;

	for (i = 0; i < 2; i++) {
		ASSERT_EQ(0, target_start(&self->t[i], n, 0xa11a11 + getpid(),
					  false));
		fd = ksm_open();
		ASSERT_LE(0, fd);
		pidfd = pidfd_open(self->t[i].pid);
		ASSERT_LE(0, pidfd);
		ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
		close(pidfd);
		ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
		ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
		EXPECT_EQ(1, ms.regions);
		/* At least its n pages: private anonymous memory. */
		EXPECT_LE(n, ms.registered_pages);
		close(fd);
	}
	/* Closed, and still there: one context per target. */
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 2, s.mms);
	EXPECT_EQ(self->base.regions + 2, s.regions);
	for (i = 0; i < 2; i++)
		EXPECT_EQ(1, mms_line(self->t[i].pid, 1, -1));

	ASSERT_EQ(0, wait_all_one_pfn(self->t, 2, &pfn))
		TH_LOG("the two targets' pages did not come to one page");
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_LE(self->base.pages_sharing + 2 * n - 1, s.pages_sharing);

	/* The next PERSIST attach is a handle to the same context. */
	fd = ksm_open();
	ASSERT_LE(0, fd);
	pidfd = pidfd_open(self->t[0].pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_LE(n, ms.merging_pages);
	EXPECT_EQ(-EEXIST, ksm_region_all(fd, KSM_REGISTER_REGION));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 2, s.mms);
	/* A second handle at once: one context still. */
	i = ksm_open();
	ASSERT_LE(0, i);
	ASSERT_EQ(0, ksm_attach(i, pidfd, KSM_ATTACH_PERSIST));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 2, s.mms);
	close(i);
	close(pidfd);
	close(fd);

	/* The targets exit: everything goes, though no handle is open. */
	EXPECT_EQ(0, target_stop(&self->t[0]));
	EXPECT_EQ(0, target_stop(&self->t[1]));
	expect_baseline(_metadata, self->fd, &self->base);
	ksm_wait_orphans_reaped(self->fd, WAIT_S);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.pages_shared, s.pages_shared);
	EXPECT_EQ(self->base.pages_sharing, s.pages_sharing);
	EXPECT_EQ(self->base.pages_orphaned, s.pages_orphaned);
}

/*
 * A persistent context: kept with its regions when its handles close,
 * dropped when it has none left; through a handle of a target that
 * exited, register is ESRCH.
 */
TEST_F_TIMEOUT(attach, persist_lifetime, TEST_S)
{
	struct target *t = &self->t[0];
	const size_t n = 16;
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int fd, pidfd;

	ASSERT_EQ(0, target_start(t, n, 7, true));
	pidfd = pidfd_open(t->pid);
	ASSERT_LE(0, pidfd);

	/* Nothing registered: nothing persists. */
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	close(fd);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms, s.mms);

	/* A range persists, and is found again; unregistered, it goes. */
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	ASSERT_EQ(0, ksm_register(fd, t->addr, n * self->ps, 0));
	close(fd);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 1, s.mms);
	EXPECT_EQ(self->base.regions + 1, s.regions);
	EXPECT_EQ(self->base.registered_pages + n, s.registered_pages);
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(n, ms.registered_pages);
	EXPECT_EQ(1, mms_line(t->pid, 1, n));
	EXPECT_EQ(0, ksm_unregister(fd, t->addr, n * self->ps));
	close(fd);
	expect_baseline(_metadata, self->fd, &self->base);

	/* A handle open while the target exits: ESRCH, then nothing left. */
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	close(pidfd);
	EXPECT_EQ(0, target_stop(t));
	EXPECT_EQ(-ESRCH, ksm_register(fd, (void *)0x100000, self->ps, 0));
	EXPECT_EQ(-ESRCH, ksm_region_all(fd, KSM_REGISTER_REGION));
	EXPECT_EQ(-ESRCH, ksm_region_all(fd, KSM_UNREGISTER_REGION));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(0, ms.regions);
	EXPECT_EQ(0, ms.registered_pages);
	/* Gone from the list already, though this handle is open. */
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms, s.mms);
	close(fd);
	expect_baseline(_metadata, self->fd, &self->base);
}

/* A target that exits while a (non-persistent) file is attached to it. */
TEST_F_TIMEOUT(attach, target_exits_while_attached, TEST_S)
{
	struct target *t = &self->t[0];
	const size_t n = 32;
	struct ksm_mm_stats ms;
	struct ksm_stats s;
	int fd = ksm_open(), pidfd;
	uint64_t pfn;

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, target_start(t, n, 0xe417 + getpid(), false));
	pidfd = pidfd_open(t->pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, 0));
	close(pidfd);
	ASSERT_EQ(0, ksm_register(fd, t->addr, n * self->ps, 0));
	ASSERT_EQ(0, wait_all_one_pfn(t, 1, &pfn));

	/* SIGKILL, without the target's own check of its pages. */
	kill(t->pid, SIGKILL);
	EXPECT_NE(0, target_stop(t));
	/* The scanner, or the next call, drops what it registered. */
	ASSERT_EQ(0, wait_mm_regions(fd, 0, &ms));
	EXPECT_EQ(0, ms.registered_pages);
	EXPECT_EQ(0, ms.merging_pages);
	EXPECT_EQ(-ESRCH, ksm_register(fd, (void *)0x100000, self->ps, 0));
	/* The context is the file's, until it closes. */
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 1, s.mms);
	EXPECT_EQ(self->base.regions, s.regions);
	close(fd);
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * The target's exit frees what was registered in it at once, without the
 * scanner (run=0) and without a call through a file (ABI.md: "The target's
 * exit frees all of it, persistent or not, without waiting on the
 * scanner"): a persistent context with no handle left goes whole; a
 * context attached by a file that stays open loses its regions.
 */
TEST_F_TIMEOUT(attach, exit_frees_without_scanner, TEST_S)
{
	struct target *t = self->t;
	const size_t n = 16;
	uint64_t end;
	struct ksm_stats s;
	int fd, pidfd;

	ASSERT_EQ(0, ksm_set_run(self->fd, 0));
	ASSERT_EQ(0, target_start(&t[0], n, 0xe1, true));
	ASSERT_EQ(0, target_start(&t[1], n, 0xe2, true));

	pidfd = pidfd_open(t[0].pid);
	ASSERT_LE(0, pidfd);
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	close(fd);
	close(pidfd);

	pidfd = pidfd_open(t[1].pid);
	ASSERT_LE(0, pidfd);
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, 0));
	close(pidfd);
	ASSERT_EQ(0, ksm_register(fd, t[1].addr, n * self->ps, 0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 2, s.mms);
	EXPECT_EQ(self->base.regions + 2, s.regions);

	EXPECT_EQ(0, target_stop(&t[0]));
	EXPECT_EQ(0, target_stop(&t[1]));
	/* Only the open file's context is left, with no region. */
	end = ksm_now_ms() + WAIT_S * 1000ULL;
	for (;;) {
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
		if ((s.mms == self->base.mms + 1 &&
		     s.regions == self->base.regions &&
		     s.registered_pages == self->base.registered_pages) ||
		    ksm_now_ms() > end)
			break;
		ksm_sleep_ms(10);
	}
	EXPECT_EQ(self->base.mms + 1, s.mms);
	EXPECT_EQ(self->base.regions, s.regions);
	EXPECT_EQ(self->base.registered_pages, s.registered_pages);
	close(fd);
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * The ptrace check (PTRACE_MODE_ATTACH_REALCREDS): nobody may not attach
 * to a root process (EPERM), but may to a process of its own.
 */
TEST_F_TIMEOUT(attach, ptrace_denied, TEST_S)
{
	struct target *t = &self->t[0];
	int st, pipefd[2], res[2] = { 1, 1 };
	pid_t pid;

	ASSERT_EQ(0, target_start(t, 4, 3, false));
	ASSERT_EQ(0, pipe(pipefd));
	fflush(NULL);
	pid = fork();
	ASSERT_LE(0, pid);
	if (!pid) {
		/* Opened as root (the device is 0600 root), then nobody. */
		int fd1 = ksm_open(), fd2 = ksm_open(), pidfd;
		pid_t own;

		if (fd1 < 0 || fd2 < 0 || setgroups(0, NULL) ||
		    setgid(NOBODY) || setuid(NOBODY) ||
		    prctl(PR_SET_DUMPABLE, 1))
			_exit(2);
		pidfd = pidfd_open(t->pid);
		res[0] = pidfd < 0 ? pidfd : ksm_attach(fd1, pidfd, 0);
		/* A child of its own, nobody's too: allowed. */
		own = fork();
		if (!own) {
			pause();
			_exit(0);
		}
		pidfd = pidfd_open(own);
		res[1] = pidfd < 0 ? pidfd : ksm_attach(fd2, pidfd,
							KSM_ATTACH_PERSIST);
		kill(own, SIGKILL);
		waitpid(own, NULL, 0);
		if (write(pipefd[1], res, sizeof(res)) != sizeof(res))
			_exit(3);
		_exit(0);
	}
	close(pipefd[1]);
	ASSERT_EQ(0, ksm_pipe_io(pipefd[0], res, sizeof(res), false, WAIT_S));
	close(pipefd[0]);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &st, WAIT_S));
	EXPECT_EQ(0, ksm_exit_code(st));
	EXPECT_EQ(-EPERM, res[0]) TH_LOG("nobody attaching to root: %d", res[0]);
	EXPECT_EQ(0, res[1]) TH_LOG("nobody attaching to its own child: %d",
				    res[1]);
	EXPECT_EQ(0, target_stop(t));
	expect_baseline(_metadata, self->fd, &self->base);
}

/* KSM_REGION_ALL's own rules, on the caller's own mm. */
TEST_F_TIMEOUT(attach, region_all_rules, TEST_S)
{
	const size_t n = 32;
	char *p = ksm_mmap_anon(n * self->ps);
	struct ksm_mm_stats ms;
	struct ksm_region r = { .flags = KSM_REGION_ALL };
	int fd = ksm_open();

	ASSERT_LE(0, fd);
	ASSERT_NE(NULL, p);
	/* addr = len = 0, else EINVAL. */
	r.addr = (uintptr_t)p;
	EXPECT_EQ(-EINVAL, ksm_ioctl(fd, KSM_REGISTER_REGION, &r));
	r.addr = 0;
	r.len = self->ps;
	EXPECT_EQ(-EINVAL, ksm_ioctl(fd, KSM_REGISTER_REGION, &r));
	EXPECT_EQ(-EINVAL, ksm_ioctl(fd, KSM_UNREGISTER_REGION, &r));
	r.len = 0;
	/* Unregister: ENOENT when there is none. */
	EXPECT_EQ(-ENOENT, ksm_ioctl(fd, KSM_UNREGISTER_REGION, &r));
	/* With a range registered: EEXIST; unregister ALL still ENOENT. */
	ASSERT_EQ(0, ksm_register(fd, p, n * self->ps, 0));
	EXPECT_EQ(-EEXIST, ksm_ioctl(fd, KSM_REGISTER_REGION, &r));
	EXPECT_EQ(-ENOENT, ksm_ioctl(fd, KSM_UNREGISTER_REGION, &r));
	ASSERT_EQ(0, ksm_unregister(fd, p, n * self->ps));
	/* Registered: no range beside it, no second one. */
	ASSERT_EQ(0, ksm_ioctl(fd, KSM_REGISTER_REGION, &r));
	EXPECT_EQ(-EEXIST, ksm_register(fd, p, n * self->ps, 0));
	EXPECT_EQ(-EEXIST, ksm_ioctl(fd, KSM_REGISTER_REGION, &r));
	r.flags |= KSM_REGION_SCOPE_MM;
	EXPECT_EQ(-EEXIST, ksm_ioctl(fd, KSM_REGISTER_REGION, &r));
	/* Unregister flags: SCOPE_MM is none of them. */
	EXPECT_EQ(-EINVAL, ksm_ioctl(fd, KSM_UNREGISTER_REGION, &r));
	r.flags = KSM_REGION_ALL;
	/* Nor does another context of this mm register anything. */
	{
		int fd2 = ksm_open();

		ASSERT_LE(0, fd2);
		EXPECT_EQ(-EEXIST, ksm_register(fd2, p, self->ps, 0));
		EXPECT_EQ(-EEXIST, ksm_ioctl(fd2, KSM_REGISTER_REGION, &r));
		close(fd2);
	}
	/* A range cuts it: EINVAL, whatever the range. */
	EXPECT_EQ(-EINVAL, ksm_unregister(fd, p, n * self->ps));
	EXPECT_EQ(-EINVAL, ksm_region_ioctl(fd, KSM_UNREGISTER_REGION,
					    NULL, 1ULL << 46, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_LE(n, ms.registered_pages);
	EXPECT_EQ(0, ksm_ioctl(fd, KSM_UNREGISTER_REGION, &r));
	EXPECT_EQ(-ENOENT, ksm_ioctl(fd, KSM_UNREGISTER_REGION, &r));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(0, ms.regions);
	EXPECT_EQ(0, ms.registered_pages);
	close(fd);
	munmap(p, n * self->ps);
	expect_baseline(_metadata, self->fd, &self->base);
}

/* Wait for @n more full scans than now. */
static int wait_scans(int fd, uint64_t n)
{
	return ksm_wait_full_scans(fd, n, WAIT_S);
}

/*
 * KSM_REGION_ALL follows the address space: memory mapped later merges,
 * unsuitable memory is skipped (never merged, never counted),
 * registered_pages follows the suitable VMAs at each pass, and unregister
 * unmerges.
 */
TEST_F_TIMEOUT(attach, region_all_follows, TEST_S)
{
	const size_t n = 64, big = 4096;
	struct target *t = &self->t[0];
	uint64_t *pfns = calloc(n, sizeof(*pfns)), pfn, rp0;
	char *late, *shared, *unmapped;
	struct ksm_mm_stats ms;
	size_t i;
	int fd = ksm_open();

	ASSERT_LE(0, fd);
	ASSERT_NE(NULL, pfns);
	/* Shared memory present before registration: not refused. */
	shared = mmap(NULL, n * self->ps, PROT_READ | PROT_WRITE,
		      MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, shared);
	for (i = 0; i < n; i++)
		ksm_fill_val(shared, i, 0xfeed + getpid());
	unmapped = ksm_mmap_anon(big * self->ps);
	ASSERT_NE(NULL, unmapped);
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	ASSERT_EQ(0, wait_scans(self->fd, 2));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	rp0 = ms.registered_pages;
	EXPECT_LE(big, rp0);

	/* Mapped later: merges. */
	late = ksm_mmap_anon(n * self->ps);
	ASSERT_NE(NULL, late);
	ksm_fill_vals(late, 0, n, 0xfeed + getpid());
	t->pid = getpid();
	t->addr = late;
	t->npages = n;
	ASSERT_EQ(0, wait_all_one_pfn(t, 1, &pfn));
	t->pid = -1;
	/* Shared: never merged. */
	ASSERT_EQ(0, ksm_pfns(shared, n, pfns));
	EXPECT_EQ(n, ksm_count_distinct(pfns, n));
	EXPECT_EQ(0, ksm_count_eq(pfns, n, pfn));

	/* registered_pages follows: big pages fewer, and no shared page. */
	ASSERT_EQ(0, munmap(unmapped, big * self->ps));
	ASSERT_EQ(0, wait_scans(self->fd, 2));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_GE(rp0 - big + n + 16, ms.registered_pages)
		TH_LOG("registered_pages %llu, was %llu before %zu pages went and %zu came",
		       (unsigned long long)ms.registered_pages,
		       (unsigned long long)rp0, big, n);
	EXPECT_LE(rp0 - big + n - 16, ms.registered_pages);
	EXPECT_LE(n, ms.merging_pages);
	/* Shared memory mapped later is not counted either. */
	rp0 = ms.registered_pages;
	unmapped = mmap(NULL, big * self->ps, PROT_READ | PROT_WRITE,
			MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	ASSERT_NE(MAP_FAILED, unmapped);
	memset(unmapped, 1, big * self->ps);
	ASSERT_EQ(0, wait_scans(self->fd, 2));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_GE(rp0 + 16, ms.registered_pages)
		TH_LOG("registered_pages %llu, was %llu before %zu shared pages came",
		       (unsigned long long)ms.registered_pages,
		       (unsigned long long)rp0, big);
	ASSERT_EQ(0, munmap(unmapped, big * self->ps));

	/* Unregister: unmerged, contents intact. */
	ASSERT_EQ(0, ksm_region_all(fd, KSM_UNREGISTER_REGION));
	ASSERT_EQ(0, ksm_pfns(late, n, pfns));
	EXPECT_EQ(n, ksm_count_distinct(pfns, n));
	EXPECT_EQ(0, ksm_count_eq(pfns, n, pfn));
	EXPECT_EQ(0, ksm_count_bad_vals(late, 0, n, 0xfeed + getpid()));
	EXPECT_EQ(0, ksm_count_bad_vals(shared, 0, n, 0xfeed + getpid()));
	close(fd);
	munmap(late, n * self->ps);
	munmap(shared, n * self->ps);
	free(pfns);
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * The whole address space of a process (128 TiB, or 64 PiB with 5-level
 * page tables, as QEMU's -cpu max has) with a few MiB present costs in
 * proportion to those MiB: the per-page state is sparse at every level.
 * The bound: 512 KiB for 4 MiB of distinct pages (chunks, tables and an
 * unstable-tree node per page); a directory of 1 GiB leaves over the whole
 * space, allocated up front, would be 1 MiB by itself (512 MiB with 5
 * levels).
 */
#define SPARSE_PAGES		1024
#define SPARSE_BOUND		(512 << 10)

TEST_F_TIMEOUT(attach, region_all_sparse, TEST_S)
{
	struct target *t = &self->t[0];
	struct ksm_mm_stats ms;
	struct ksm_stats s0, s;
	int fd = ksm_open(), pidfd;

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, target_start(t, SPARSE_PAGES, 0x5a5a0000, true));
	pidfd = pidfd_open(t->pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, 0));
	close(pidfd);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	/* Three passes: every present page has its slot and its node. */
	ASSERT_EQ(0, wait_scans(self->fd, 3));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	TH_LOG("KSM_REGION_ALL over %llu registered pages: metadata_bytes +%llu, pages_scanned +%llu",
	       (unsigned long long)ms.registered_pages,
	       (unsigned long long)(s.metadata_bytes - s0.metadata_bytes),
	       (unsigned long long)(s.pages_scanned - s0.pages_scanned));
	EXPECT_LE(SPARSE_PAGES, ms.registered_pages);
	EXPECT_LE(s0.pages_scanned + SPARSE_PAGES, s.pages_scanned);
	EXPECT_LE(s0.pages_unshared + SPARSE_PAGES / 2, s.pages_unshared);
	EXPECT_GT(s0.metadata_bytes + SPARSE_BOUND, s.metadata_bytes);
	/* The context's own share: its radix tree and nodes, nothing more. */
	EXPECT_LT(SPARSE_PAGES * sizeof(uint64_t), ms.metadata_bytes);
	EXPECT_GT(SPARSE_BOUND, ms.metadata_bytes);
	close(fd);
	EXPECT_EQ(0, target_stop(t));
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * Unloading the module while a persistent context (no handle open) holds
 * a target's merged pages: the unload succeeds, drops the context (what
 * kmemleak on the debug kernel checks), and the target's pages keep their
 * contents. Last, since it reloads the module with its defaults.
 */
TEST_F_TIMEOUT(attach, unload_with_persistent, TEST_S)
{
	struct target *t = &self->t[0];
	int fd = ksm_open(), pidfd;
	uint64_t pfn;

	ASSERT_LE(0, fd);
	ASSERT_EQ(0, target_start(t, 64, 0x0dd + getpid(), false));
	pidfd = pidfd_open(t->pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	close(pidfd);
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	ASSERT_EQ(0, wait_all_one_pfn(t, 1, &pfn));
	close(fd);
	/* The fixture's file too: nothing holds the module any more. */
	close(self->fd);
	self->fd = -1;
	ASSERT_EQ(0, ksm_unload_module());
	ASSERT_EQ(0, ksm_load_module(""));
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd);
	/* Unmerged by nobody: still the one page, written by nobody. */
	EXPECT_EQ(64, target_count_pfn(t, pfn));
	EXPECT_EQ(0, target_stop(t));
}

/*
 * The exec'd image of a ctl target (command 'x'): tell the parent it runs,
 * then wait for the command pipe to close. Runs before the harness's main.
 */
__attribute__((constructor)) static void attach_sleeper(void)
{
	const char *env = getenv("KSMDEV_ATTACH_SLEEP_FDS");
	int cmd, rdy;
	char c = 'X';

	if (!env || sscanf(env, "%d,%d", &cmd, &rdy) != 2)
		return;
	if (write(rdy, &c, 1) != 1)
		_exit(1);
	while (read(cmd, &c, 1) > 0)
		;
	_exit(0);
}

/* A target that takes commands: 'x' exec, 'f' fork, 'l' leader exits. */
struct ctl {
	struct target t;
	int rdy;
};

static int ctl_cmd_fd;

static void *ctl_thread(void *arg)
{
	int rdy = (int)(intptr_t)arg;
	pid_t tid = gettid();
	char c;

	if (write(rdy, &tid, sizeof(tid)) != sizeof(tid))
		_exit(1);
	while (read(ctl_cmd_fd, &c, 1) > 0)
		;
	exit(0);	/* the whole group */
}

static int ctl_start(struct ctl *c, size_t npages, uint64_t val)
{
	int cmd[2], rdy[2], fd;
	pid_t parent = getpid();
	size_t i;
	char *p;
	char x;

	if (pipe(cmd) || pipe(rdy))
		return -errno;
	fflush(NULL);
	c->t.pid = fork();
	if (c->t.pid < 0)
		return -errno;
	if (c->t.pid) {
		close(cmd[0]);
		close(rdy[1]);
		c->t.cmd = cmd[1];
		c->t.npages = npages;
		c->rdy = rdy[0];
		if (ksm_pipe_io(c->rdy, &c->t.addr, sizeof(c->t.addr), false,
				WAIT_S))
			return -EIO;
		return 0;
	}
	for (fd = 3; fd < 1024; fd++)
		if (fd != cmd[0] && fd != rdy[1])
			close(fd);
	if (prctl(PR_SET_PDEATHSIG, SIGKILL) || getppid() != parent)
		_exit(1);
	p = ksm_mmap_anon(npages * ksm_page_size());
	if (!p)
		_exit(1);
	for (i = 0; i < npages; i++)
		ksm_fill_val(p, i, val + i);
	if (write(rdy[1], &p, sizeof(p)) != sizeof(p))
		_exit(1);
	ctl_cmd_fd = cmd[0];
	while (read(cmd[0], &x, 1) > 0) {
		char env[64];
		pthread_t th;
		pid_t pid;

		switch (x) {
		case 'x':
			snprintf(env, sizeof(env), "%d,%d", cmd[0], rdy[1]);
			setenv("KSMDEV_ATTACH_SLEEP_FDS", env, 1);
			execl("/proc/self/exe", "attach-sleeper", (char *)NULL);
			_exit(4);
		case 'f':
			pid = fork();
			if (pid < 0)
				_exit(5);
			if (!pid) {
				pid = getpid();
				if (write(rdy[1], &pid, sizeof(pid)) != sizeof(pid))
					_exit(1);
				while (read(cmd[0], &x, 1) > 0)
					;
				_exit(0);
			}
			break;
		case 'l':
			if (pthread_create(&th, NULL, ctl_thread,
					   (void *)(intptr_t)rdy[1]))
				_exit(6);
			/* The leader alone: the thread keeps the process. */
			syscall(SYS_exit, 0);
			break;
		}
	}
	_exit(0);
}

static int ctl_stop(struct ctl *c)
{
	int ret = target_stop(&c->t);

	close(c->rdy);
	return ret;
}

/* Any line of debugfs mms for @pid. */
static bool mms_has_pid(pid_t pid)
{
	char buf[65536], want[32], *line;

	if (ksm_read_text(KSM_DEBUGFS_DIR "/mms", buf, sizeof(buf)) < 0)
		return false;
	snprintf(want, sizeof(want), "%d ", (int)pid);
	for (line = strtok(buf, "\n"); line; line = strtok(NULL, "\n"))
		if (!strncmp(line, want, strlen(want)))
			return true;
	return false;
}

/*
 * Start a ctl target in self->t[0] (@n distinct pages from @val), and
 * attach a new file to it with KSM_ATTACH_PERSIST: the file, or -1; its
 * pidfd in *@pidfd.
 */
static int ctl_attach(FIXTURE_DATA(attach) *self, struct ctl *c, size_t n,
		      uint64_t val, int *pidfd)
{
	int fd;

	*pidfd = -1;
	if (ctl_start(c, n, val))
		return -1;
	self->t[0] = c->t;
	*pidfd = pidfd_open(c->t.pid);
	fd = ksm_open();
	if (*pidfd < 0 || fd < 0 ||
	    ksm_attach(fd, *pidfd, KSM_ATTACH_PERSIST)) {
		if (fd >= 0)
			close(fd);
		return -1;
	}
	return fd;
}

/*
 * exec of an attached target: the context ends with the old mm (handle
 * calls ESRCH, the list is left), does not follow the new mm, and a new
 * attach makes a new context on the new mm. Then without a handle: the
 * scanner drops it.
 */
TEST_F_TIMEOUT(attach, exec_ends_context, TEST_S)
{
	const size_t n = 16;
	struct ksm_stats s;
	int fd, fd2, pidfd;
	struct ctl c;
	char x;

	fd = ctl_attach(self, &c, n, 0xe8ec, &pidfd);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_register(fd, c.t.addr, n * self->ps, 0));
	ASSERT_EQ(1, write(c.t.cmd, "x", 1));
	ASSERT_EQ(0, ksm_pipe_io(c.rdy, &x, 1, false, WAIT_S));
	ASSERT_EQ('X', x);

	EXPECT_EQ(-ESRCH, ksm_register(fd, c.t.addr, self->ps, 0));
	EXPECT_EQ(-ESRCH, ksm_region_all(fd, KSM_REGISTER_REGION));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms, s.mms);
	EXPECT_EQ(self->base.regions, s.regions);
	EXPECT_FALSE(mms_has_pid(c.t.pid));

	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	EXPECT_EQ(0, ksm_attach(fd2, pidfd, KSM_ATTACH_PERSIST));
	EXPECT_EQ(0, ksm_region_all(fd2, KSM_REGISTER_REGION));
	EXPECT_TRUE(mms_line(c.t.pid, 1, -1));
	close(fd);
	close(fd2);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(self->base.mms + 1, s.mms);
	EXPECT_EQ(self->base.regions + 1, s.regions);

	/* The target exits: the scanner drops the new one too. */
	EXPECT_EQ(0, ctl_stop(&c));
	self->t[0].pid = -1;
	expect_baseline(_metadata, self->fd, &self->base);

	/* exec with no handle open: the scanner drops the old mm's. */
	close(pidfd);
	fd = ctl_attach(self, &c, n, 0xe8ed, &pidfd);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_register(fd, c.t.addr, n * self->ps, 0));
	close(fd);
	ASSERT_EQ(1, write(c.t.cmd, "x", 1));
	ASSERT_EQ(0, ksm_pipe_io(c.rdy, &x, 1, false, WAIT_S));
	expect_baseline(_metadata, self->fd, &self->base);
	close(pidfd);
	EXPECT_EQ(0, ctl_stop(&c));
	self->t[0].pid = -1;
}

/*
 * fork of a target attached with KSM_REGION_ALL: the child is not
 * registered (no line in debugfs mms, mms unchanged across full scans),
 * and attaching to the child makes a context of its own.
 */
TEST_F_TIMEOUT(attach, fork_child_not_registered, TEST_S)
{
	const size_t n = 16;
	struct ksm_stats s, s0;
	int fd, fd3, pidfd, cpidfd;
	struct ctl c;
	pid_t child;

	fd = ctl_attach(self, &c, n, 0xf0f0, &pidfd);
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(1, write(c.t.cmd, "f", 1));
	ASSERT_EQ(0, ksm_pipe_io(c.rdy, &child, sizeof(child), false, WAIT_S));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 2, WAIT_S));
	EXPECT_TRUE(mms_line(c.t.pid, 1, -1));
	EXPECT_FALSE(mms_has_pid(child));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(s0.mms, s.mms);
	EXPECT_EQ(s0.regions, s.regions);

	cpidfd = pidfd_open(child);
	ASSERT_LE(0, cpidfd);
	fd3 = ksm_open();
	ASSERT_LE(0, fd3);
	EXPECT_EQ(0, ksm_attach(fd3, cpidfd, KSM_ATTACH_PERSIST));
	EXPECT_EQ(0, ksm_region_all(fd3, KSM_REGISTER_REGION));
	EXPECT_TRUE(mms_line(child, 1, -1));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(s0.mms + 1, s.mms);
	close(fd3);
	close(cpidfd);
	close(fd);
	close(pidfd);
	EXPECT_EQ(0, ctl_stop(&c));	/* the child sees EOF too */
	self->t[0].pid = -1;
	expect_baseline(_metadata, self->fd, &self->base);
}

/*
 * A process whose thread-group leader called exit(2) (SYS_exit) while
 * another thread runs has not exited (ABI: ESRCH is for "the process has
 * exited or has no mm"). Also reported: a PIDFD_THREAD pidfd of that
 * thread.
 */
TEST_F_TIMEOUT(attach, leader_exited_threads_alive, TEST_S)
{
	uint64_t end = ksm_now_ms() + WAIT_S * 1000ULL;
	char path[64], buf[4096], *st;
	int fd, pidfd, tfd, ret;
	struct ctl c;
	pid_t tid;

	ASSERT_EQ(0, ctl_start(&c, 4, 0x1ead));
	self->t[0] = c.t;
	pidfd = pidfd_open(c.t.pid);
	ASSERT_LE(0, pidfd);
	ASSERT_EQ(1, write(c.t.cmd, "l", 1));
	ASSERT_EQ(0, ksm_pipe_io(c.rdy, &tid, sizeof(tid), false, WAIT_S));
	/* Wait until the leader is a zombie (the group lives on). */
	snprintf(path, sizeof(path), "/proc/%d/status", (int)c.t.pid);
	for (;;) {
		ASSERT_LT(0, ksm_read_text(path, buf, sizeof(buf)));
		st = strstr(buf, "State:");
		ASSERT_NE(NULL, st);
		if (st[7] == 'Z')
			break;
		ASSERT_LT(ksm_now_ms(), end);
		ksm_sleep_ms(20);
	}
	ASSERT_EQ(0, kill(c.t.pid, 0));
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ret = ksm_attach(fd, pidfd, 0);
	EXPECT_EQ(0, ret) TH_LOG("attach to a live process whose leader exited: %s",
				 strerror(-ret));
	close(fd);
	/* PIDFD_THREAD (O_EXCL, 6.9+): informational only. */
	tfd = syscall(__NR_pidfd_open, tid, O_EXCL);
	if (tfd >= 0) {
		fd = ksm_open();
		ASSERT_LE(0, fd);
		ret = ksm_attach(fd, tfd, 0);
		TH_LOG("attach through a PIDFD_THREAD pidfd of a non-leader thread: %d (%s)",
		       ret, ret ? strerror(-ret) : "ok");
		close(fd);
		close(tfd);
	}
	close(pidfd);
	EXPECT_EQ(0, ctl_stop(&c));
	self->t[0].pid = -1;
}

/* The PFN that page @i of @t maps (0: absent or unreadable). */
static uint64_t target_pfn(const struct target *t, size_t i)
{
	size_t ps = ksm_page_size();
	uint64_t e = 0;
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", (int)t->pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return 0;
	if (pread(fd, &e, sizeof(e),
		  ((uintptr_t)t->addr / ps + i) * sizeof(e)) != sizeof(e))
		e = 0;
	close(fd);
	return e & KSM_PM_PRESENT ? e & KSM_PM_PFN_MASK : 0;
}

static long tainted(void)
{
	uint64_t v = 0;

	return ksm_read_u64_file("/proc/sys/kernel/tainted", &v, false) ?
	       -1 : (long)v;
}

/*
 * rmmod while run=2 (written to the module parameter, which holds no
 * reference to the module) unmerges a persistent context: delete_module()
 * calls ksmdev_exit() while the store still runs (kernel/module/main.c:
 * mod->exit() before free_module() -> mod_sysfs_teardown()), so
 * ksmdev_registry_exit() finds the context's lock held. Nothing may WARN
 * (TAINT_WARN), and nothing may be touched after the trees are gone
 * (dmesg is checked by the harness: KASAN on the debug kernel).
 */
TEST_F_TIMEOUT(attach, rmmod_during_run2_unmerge, 600)
{
	struct target *t = &self->t[0];
	const size_t n = 4096;
	uint64_t end, pfn0, pfn;
	struct ksm_mm_stats ms;
	long taint0 = tainted();
	int fd, pidfd, ret = 0, st;
	bool hit = false;
	pid_t writer;

	ASSERT_LE(0, taint0);
	ASSERT_EQ(0, target_start(t, n, 0x2a2a, false));
	pidfd = pidfd_open(t->pid);
	ASSERT_LE(0, pidfd);
	fd = ksm_open();
	ASSERT_LE(0, fd);
	ASSERT_EQ(0, ksm_attach(fd, pidfd, KSM_ATTACH_PERSIST));
	close(pidfd);
	ASSERT_EQ(0, ksm_region_all(fd, KSM_REGISTER_REGION));
	ASSERT_EQ(0, ksm_wait_mm_merging(fd, n, &ms, 300))
		TH_LOG("merging_pages %llu", (unsigned long long)ms.merging_pages);
	pfn0 = target_pfn(t, 0);
	ASSERT_NE(0, pfn0);
	ASSERT_EQ(pfn0, target_pfn(t, n - 1));
	close(fd);
	close(self->fd);
	self->fd = -1;

	fflush(NULL);
	writer = fork();
	ASSERT_LE(0, writer);
	if (!writer)
		_exit(ksm_write_param("run", 2) ? 1 : 0);
	/* The unmerge has begun (page 0 copied) and not ended (last merged). */
	end = ksm_now_ms() + 60000;
	while (ksm_now_ms() < end) {
		pfn = target_pfn(t, 0);
		if (pfn && pfn != pfn0) {
			hit = target_pfn(t, n - 1) == pfn0;
			break;
		}
	}
	if (hit)
		ret = ksm_delete_module(KSM_MODULE_NAME, O_NONBLOCK);
	ASSERT_EQ(0, ksm_waitpid_timeout(writer, &st, 300));
	TH_LOG("run=2 writer exit %d; rmmod %s during the unmerge (%d)",
	       ksm_exit_code(st), hit ? "tried" : "NOT tried (window missed)",
	       hit ? ret : 0);
	if (!hit)
		SKIP(return, "the unmerge window was missed");
	if (ret)
		ASSERT_EQ(0, ksm_unload_module());
	EXPECT_EQ(0, (tainted() & ~taint0) & 512)
		TH_LOG("TAINT_WARN newly set: tainted %ld -> %ld", taint0, tainted());
	ASSERT_EQ(0, ksm_load_module(""));
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd);
	EXPECT_EQ(0, target_stop(t));
}

TEST_HARNESS_MAIN
