// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdevctl (tools/ksmdevctl.c), as a script would use it: exit status 0,
 * 1 (the kernel refused) or 2 (bad usage); --json that says what the ioctls say;
 * set and unmerge-all that do what KSM_SET_CONFIG does; mms and watch.
 *
 * Runs as root in a QEMU guest with ksmdev loaded, /tests/ksmdevctl beside
 * it; never on a host.
 */
#define _GNU_SOURCE
#include <sys/wait.h>

#include "ksmdev_test.h"

#define KSMDEVCTL	"/tests/ksmdevctl"

FIXTURE(cli) {
	int fd;
	size_t ps;
	struct ksm_config saved;
	char out[16384];
};

FIXTURE_SETUP(cli)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
	ASSERT_EQ(0, access(KSMDEVCTL, X_OK)) TH_LOG(KSMDEVCTL ": %s", strerror(errno));
}

FIXTURE_TEARDOWN(cli)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Run ksmdevctl with @args (a shell word list): its exit status, output in @out. */
static int ksmdevctl(char *out, size_t size, const char *args)
{
	char cmd[512];
	size_t n = 0;
	FILE *f;
	int st;

	snprintf(cmd, sizeof(cmd), KSMDEVCTL " %s 2>&1", args);
	f = popen(cmd, "r");
	if (!f)
		return -1;
	while (n + 1 < size && fgets(out + n, size - n, f))
		n += strlen(out + n);
	out[n] = 0;
	st = pclose(f);
	return WIFEXITED(st) ? WEXITSTATUS(st) : -1;
}

/* The number after "key": in a JSON text; -1 if absent. */
static long long json_num(const char *json, const char *key)
{
	char pat[80];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(json, pat);
	return p ? strtoll(p + strlen(pat), NULL, 10) : -1;
}

TEST_F(cli, help_and_usage_errors)
{
	static const char *const bad[] = {
		"", "bogus", "status extra", "set", "set foo=1", "set run=x",
		"set run=-1", "'set' 'run= 1'", "set =1", "watch 0", "watch 1 2", "--frobnicate status",
	};
	static const char *const words[] = {
		"status", "watch", "mms", "set", "unmerge-all", "--json",
		"pages_to_scan", "sleep_millisecs", "max_kernel_pages",
		"use_zero_pages", "scan_all_pages", "Exit status",
	};
	struct ksm_config c;
	size_t i;

	EXPECT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "--help"));
	for (i = 0; i < ARRAY_SIZE(words); i++) {
		EXPECT_NE(NULL, strstr(self->out, words[i]))
			TH_LOG("--help does not mention %s", words[i]);
	}
	for (i = 0; i < ARRAY_SIZE(bad); i++) {
		EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), bad[i]))
			TH_LOG("ksmdevctl %s: %s", bad[i], self->out);
		EXPECT_NE(NULL, strstr(self->out, "ksmdevctl: "));
	}
	/* A bad word anywhere: nothing changes. */
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out),
			       "set pages_to_scan=777 bogus=1"));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_NE(777, c.pages_to_scan);
}

TEST_F(cli, status_json_tells_the_ioctls)
{
	const size_t npages = 64;
	struct ksm_stats s;
	char want[64];
	char *p;

	p = ksm_mmap_anon(npages * self->ps);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, 0x4242);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 60));

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "--json status"));
	EXPECT_EQ(npages, json_num(self->out, "registered_pages"));
	EXPECT_EQ(1, json_num(self->out, "pages_shared"));
	EXPECT_EQ(npages - 1, json_num(self->out, "pages_sharing"));
	EXPECT_EQ(KSM_FAST_PAGES_TO_SCAN, json_num(self->out, "pages_to_scan"));
	EXPECT_EQ((long long)((npages - 1) * self->ps),
		  json_num(self->out, "saved_bytes"));
	/* ksmdevctl's own open made a context: its metadata_bytes, not ours. */
	EXPECT_LT(0, json_num(self->out, "metadata_bytes"));
	EXPECT_EQ((long long)((npages - 1) * self->ps) -
		  json_num(self->out, "metadata_bytes"),
		  json_num(self->out, "general_profit"));

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "status"));
	EXPECT_NE(NULL, strstr(self->out, "general_profit"));
	EXPECT_NE(NULL, strstr(self->out, "settings: run=1"));

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "--json mms"));
	snprintf(want, sizeof(want), "{\"pid\":%d,\"regions\":1,", getpid());
	EXPECT_NE(NULL, strstr(self->out, want)) TH_LOG("%s", self->out);
	EXPECT_EQ(npages, json_num(self->out, "merging_pages"));
	munmap(p, npages * self->ps);
}

TEST_F(cli, set_and_unmerge_all)
{
	const size_t npages = 32;
	struct ksm_config c;
	struct ksm_stats s;
	char *p;

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out),
			       "set pages_to_scan=1234 sleep_millisecs=0x7 scan_all_pages=1"))
		TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(1234, c.pages_to_scan);
	EXPECT_EQ(7, c.sleep_millisecs);
	EXPECT_EQ(1, c.scan_all_pages);
	/* Out of range: the kernel's EINVAL, exit 1, nothing changed. */
	EXPECT_EQ(1, ksmdevctl(self->out, sizeof(self->out),
			       "set pages_to_scan=99 use_zero_pages=2"));
	EXPECT_NE(NULL, strstr(self->out, "Invalid argument")) TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(1234, c.pages_to_scan);

	p = ksm_mmap_anon(npages * self->ps);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, 0x5151);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 60));
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "unmerge-all"))
		TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
	EXPECT_EQ(0, s.pages_shared);
	EXPECT_EQ(0, s.pages_sharing);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(KSM_RUN_UNMERGE, c.run);
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, npages, 0x5151));
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "set run=1"));
	EXPECT_EQ(0, ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 60));
	munmap(p, npages * self->ps);
}

/*
 * Start ksmdevctl with @arg1 @arg2, as @uid unless 0, its stdout and stderr
 * into a pipe whose read end goes to *@rd. Returns its pid, or -errno.
 */
static pid_t spawn_ksmdevctl(const char *arg1, const char *arg2, uid_t uid,
			     int *rd)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds))
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		close(fds[0]);
		if (uid && (setgid(uid) || setuid(uid)))
			_exit(99);
		execl(KSMDEVCTL, "ksmdevctl", arg1, arg2, (char *)NULL);
		_exit(98);
	}
	close(fds[1]);
	*rd = fds[0];
	return pid;
}

/* Not root: /dev/ksm is 0600, so the kernel says no, and ksmdevctl exits 1. */
TEST_F(cli, unprivileged_exit_1)
{
	char buf[512] = "";
	int status, rd;
	ssize_t n;
	pid_t pid;

	pid = spawn_ksmdevctl("set", "run=0", 65534, &rd);
	ASSERT_LT(0, pid);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	n = read(rd, buf, sizeof(buf) - 1);
	close(rd);
	EXPECT_LT(0, n);
	EXPECT_EQ(1, ksm_exit_code(status)) TH_LOG("%s", buf);
	EXPECT_NE(NULL, strstr(buf, "Permission denied")) TH_LOG("%s", buf);
}

/* watch refreshes until Ctrl-C (SIGINT), then exits 0. */
TEST_F(cli, watch_until_sigint)
{
	int status, rd;
	char buf[8192];
	size_t len = 0;
	ssize_t n;
	pid_t pid;

	pid = spawn_ksmdevctl("watch", "1", 0, &rd);
	ASSERT_LT(0, pid);
	/* Two refreshes, bounded. */
	while (len < sizeof(buf) - 1) {
		struct pollfd pfd = { .fd = rd, .events = POLLIN };

		if (poll(&pfd, 1, 10000) != 1)
			break;
		n = read(rd, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)
			break;
		len += n;
		buf[len] = 0;
		if (strstr(buf, "per second") &&
		    strstr(strstr(buf, "per second") + 1, "per second"))
			break;
	}
	buf[len] = 0;
	kill(pid, SIGINT);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	close(rd);
	EXPECT_EQ(0, ksm_exit_code(status));
	EXPECT_NE(NULL, strstr(buf, "pages_scanned"));
	EXPECT_NE(NULL, strstr(buf, "per second")) TH_LOG("%s", buf);
}

TEST_HARNESS_MAIN
