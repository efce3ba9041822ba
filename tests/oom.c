// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev and memory limits, after the in-kernel KSM's history:
 *  - seed 001: unmerging needs memory; under a memory cgroup limit it
 *    fails with ENOMEM, promptly, leaving everything registered and
 *    intact, and succeeds once the limit is raised (unregister and run=2);
 *  - seed 003: a process OOM-killed while the scanner works on it has its
 *    memory freed promptly: the scanner never holds it back.
 *
 * These tests make the kernel print OOM reports (with call traces): they
 * mark the stretch of kernel log where that is expected, and the harness
 * forgives call traces there, and nothing else.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#define CGROUP		"/sys/fs/cgroup/ksmdev-test"

FIXTURE(oom) {
	int fd;
	struct ksm_config saved;
	struct ksm_child ch;
	bool child;
};

/* Tell the harness that OOM reports are expected (or no longer). */
static int oom_expected(bool on)
{
	const char *msg = on ? "ksmdev-test: oom reports expected\n" :
			       "ksmdev-test: oom reports no longer expected\n";
	int fd = open("/dev/kmsg", O_WRONLY), ret = 0;

	if (fd < 0)
		return -errno;
	if (write(fd, msg, strlen(msg)) != (ssize_t)strlen(msg))
		ret = -errno;
	close(fd);
	return ret;
}

FIXTURE_SETUP(oom)
{
	self->child = false;
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
	if (access("/sys/fs/cgroup/cgroup.controllers", F_OK))
		SKIP(return, "no cgroup2 at /sys/fs/cgroup");
	rmdir(CGROUP);
	ASSERT_EQ(0, mkdir(CGROUP, 0755)) TH_LOG("mkdir " CGROUP ": %s", strerror(errno));
	if (access(CGROUP "/memory.max", F_OK))
		SKIP(return, "no memory controller in " CGROUP);
}

FIXTURE_TEARDOWN(oom)
{
	if (self->child)
		ksm_child_stop(&self->ch);
	oom_expected(false);
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
	rmdir(CGROUP);
}

/* In the child, before it maps anything: join the group, unkillable. */
static int join_group_unkillable(void *arg)
{
	char pid[32];

	(void)arg;
	snprintf(pid, sizeof(pid), "%d", getpid());
	if (ksm_cg_write(CGROUP, "cgroup.procs", pid))
		return -1;
	/* No victim for the memcg OOM killer: charges fail with ENOMEM. */
	return ksm_write_str_file("/proc/self/oom_score_adj", "-1000");
}

/* Set memory.max just above what the group uses now. */
static int limit_to_current(struct __test_metadata *_metadata, long slack)
{
	long cur = ksm_cg_read(CGROUP, "memory.current");
	char value[32];

	EXPECT_LT(0, cur);
	snprintf(value, sizeof(value), "%ld", cur + slack);
	return ksm_cg_write(CGROUP, "memory.max", value);
}

/*
 * seed 001: under a memory cgroup limit, unregister and run=2 fail with
 * ENOMEM at once and leave the merged pages registered and intact; with
 * the limit raised, both succeed.
 */
TEST_F_TIMEOUT(oom, unmerge_under_memcg_limit, 600)
{
	const size_t npages = 4096;	/* 16 MiB */
	const uint64_t val = 'k';
	struct ksm_mm_stats ms;
	struct ksm_config cfg;
	struct ksm_stats s;
	uint64_t t0, *pfns;
	int64_t ret;

	pfns = calloc(npages, sizeof(*pfns));
	ASSERT_NE(NULL, pfns);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ret = ksm_child_start_hook(&self->ch, npages, val, 0,
				   join_group_unkillable, NULL);
	ASSERT_EQ(0, ret) TH_LOG("child: %lld", (long long)ret);
	self->child = true;

	for (int round = 0; round < 2; round++) {
		const char *what = round ? "run=2" : "unregister";

		ASSERT_EQ(0, ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 120))
			TH_LOG("%s: not merged", what);
		ASSERT_EQ(0, limit_to_current(_metadata, 1 << 20));

		ASSERT_EQ(0, oom_expected(true));
		t0 = ksm_now_ms();
		if (round == 0) {
			ret = ksm_child_call(&self->ch, KSM_CHILD_UNREGISTER, 0, 0,
					     NULL, 0);
		} else {
			ret = ksm_set_run(self->fd, KSM_RUN_UNMERGE);
		}
		TH_LOG("%s under the limit: %s after %llu ms", what,
		       strerror((int)-ret), (unsigned long long)(ksm_now_ms() - t0));
		oom_expected(false);
		EXPECT_EQ(-ENOMEM, ret);

		/* Still registered, every byte intact. */
		ASSERT_EQ(0, ksm_child_mm_stats(&self->ch, &ms));
		EXPECT_EQ(1, ms.regions);
		EXPECT_EQ(0, ksm_child_check(&self->ch));
		if (round == 1) {
			ASSERT_EQ(0, ksm_get_config(self->fd, &cfg));
			EXPECT_EQ(KSM_RUN_STOP, cfg.run);
		}

		ASSERT_EQ(0, ksm_cg_write(CGROUP, "memory.max", "max"));
		if (round == 0) {
			ret = ksm_child_call(&self->ch, KSM_CHILD_UNREGISTER, 0, 0,
					     NULL, 0);
		} else {
			ret = ksm_set_run(self->fd, KSM_RUN_UNMERGE);
		}
		EXPECT_EQ(0, ret) TH_LOG("%s with the limit raised", what);
		ASSERT_EQ(0, ksm_child_pfns(&self->ch, pfns));
		EXPECT_EQ(npages, ksm_count_distinct(pfns, npages));
		EXPECT_EQ(0, ksm_child_check(&self->ch));

		/* Set up the second round: registered again, merging. */
		if (round == 0) {
			ASSERT_EQ(0, ksm_child_call(&self->ch, KSM_CHILD_REGISTER,
						    0, 0, NULL, 0));
		}
	}
	free(pfns);
}

/*
 * seed 003: a process with a large registered region is OOM-killed by its
 * memory cgroup while the scanner works on it; its memory is freed within
 * a bound, measured from its death to the group's memory.current dropping.
 */
TEST_F_TIMEOUT(oom, oom_kill_while_scanning, 300)
{
	const size_t npages = 8192;	/* 32 MiB of unique pages */
	uint64_t t_dead, t_freed;
	int status, ready[2];
	char pid_str[32], c;
	struct ksm_config cfg;
	long cur = -1;
	pid_t pid;

	ASSERT_EQ(0, ksm_cg_write(CGROUP, "memory.max", "48M"));
	ASSERT_EQ(0, ksm_get_config(self->fd, &cfg));
	cfg.run = KSM_RUN_MERGE;
	cfg.sleep_millisecs = 0;
	cfg.pages_to_scan = 1000;	/* the scanner never stops visiting */
	ASSERT_EQ(0, ksm_set_config(self->fd, &cfg));
	ASSERT_EQ(0, pipe(ready));

	ASSERT_EQ(0, oom_expected(true));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0) {
		size_t ps = ksm_page_size(), i;
		int fd;
		char *p, *more;

		snprintf(pid_str, sizeof(pid_str), "%d", getpid());
		if (ksm_cg_write(CGROUP, "cgroup.procs", pid_str))
			_exit(1);
		fd = ksm_open();
		p = ksm_mmap_anon(npages * ps);
		if (fd < 0 || !p)
			_exit(2);
		ksm_fill_pages(p, npages, getpid());
		if (ksm_register(fd, p, npages * ps, 0) ||
		    ksm_wait_pages_scanned(fd, 2 * npages, 120))
			_exit(3);
		if (write(ready[1], "r", 1) != 1)
			_exit(4);
		/* Now grow past the limit: the memcg OOM killer takes us. */
		more = ksm_mmap_anon(64 << 20);
		for (i = 0; more && i < (64 << 20) / ps; i++)
			more[i * ps] = 1;
		_exit(5);
	}
	close(ready[1]);
	ASSERT_EQ(1, read(ready[0], &c, 1)) TH_LOG("the child did not get scanned");
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 60))
		TH_LOG("the child was not OOM-killed within 60 s");
	t_dead = ksm_now_ms();
	EXPECT_TRUE(WIFSIGNALED(status) && WTERMSIG(status) == SIGKILL)
		TH_LOG("status %#x", status);
	while ((cur = ksm_cg_read(CGROUP, "memory.current")) > (4 << 20) &&
	       ksm_now_ms() - t_dead < 10000)
		ksm_sleep_ms(5);
	t_freed = ksm_now_ms();
	oom_expected(false);
	TH_LOG("memory.current %ld bytes %llu ms after the OOM-killed process was reaped",
	       cur, (unsigned long long)(t_freed - t_dead));
	EXPECT_GE(4 << 20, cur) TH_LOG("the victim's memory was not freed within 10 s");
}

TEST_HARNESS_MAIN
