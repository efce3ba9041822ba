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

TEST_HARNESS_MAIN
