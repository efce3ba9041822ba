// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdevctl (tools/ksmdevctl.c), as a script would use it: exit status 0,
 * 1 (the kernel refused) or 2 (bad usage); --json that says what the ioctls say;
 * set and unmerge-all that do what KSM_SET_CONFIG does; mms, ps and watch;
 * options after the command, decimal-only numbers, --version, the hints of
 * its errors; merge and unmerge (ABI version 2: skipped, with the reason,
 * on a module without KSM_ATTACH_PROCESS).
 *
 * Runs as root in a QEMU guest with ksmdev loaded, /tests/ksmdevctl beside
 * it; never on a host.
 */
#define _GNU_SOURCE
#include <sched.h>
#include <sys/mount.h>
#include <sys/wait.h>
#include <termios.h>

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

	snprintf(cmd, sizeof(cmd), KSMDEVCTL " %s 2>&1", args);
	return ksm_run_capture(cmd, out, size);
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

/* The number after "key": at or after @from in a JSON text, as a double; -1 if absent. */
static double json_dbl(const char *json, const char *key)
{
	char pat[80];
	const char *p;

	snprintf(pat, sizeof(pat), "\"%s\":", key);
	p = strstr(json, pat);
	return p ? strtod(p + strlen(pat), NULL) : -1;
}

/* The module's API version, from the ioctl. */
static int api_version(int fd)
{
	return ioctl(fd, KSM_GET_API_VERSION);
}

/* The module under test is version 2: a smaller one fails, never skips. */
#define NEED_V2(self) ASSERT_LE(2, api_version((self)->fd))

TEST_F_TIMEOUT(cli, help_and_usage_errors, 180)
{
	static const char *const bad[] = {
		"", "bogus", "status extra", "set", "set foo=1", "set run=x",
		"set run=-1", "'set' 'run= 1'", "set =1", "watch 0", "watch 1 2 3", "--frobnicate status",
		"set run=0x1", "set run=+1", "set run=1e3", "set 'run=1 '",
		"set pages_to_scan=18446744073709551616", "watch -1", "watch 1 0",
		"watch 1 x", "watch 3601", "status --frobnicate", "merge", "merge --pid",
		"merge --pid abc", "merge --pid 0", "merge --pid -5", "merge --pid 1 --cgroup /x",
		"merge --pid 1 --follow 2", "merge --cgroup /x --follow 0",
		"merge --pid 1 --domain -1", "merge --pid 1 --domain 0x7", "unmerge --cgroup /x",
		"unmerge --pid 1 --domain 1", "status --domain 1", "ps --pid 1", "set --file",
		"status --file /dev/null", "--version status",
	};
	static const char *const words[] = {
		"status", "watch", "mms", "set", "unmerge-all", "--json",
		"pages_to_scan", "sleep_millisecs", "max_kernel_pages",
		"use_zero_pages", "scan_all_pages", "Exit status", "ps", "merge",
		"unmerge", "--pid", "--cgroup", "--domain", "--follow", "--version",
		"--file", "decimal", "COUNT",
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
	/* Each says what is wrong with the number. */
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), "set run=-1"));
	EXPECT_NE(NULL, strstr(self->out, "negative")) TH_LOG("%s", self->out);
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), "watch 1 -3"));
	EXPECT_NE(NULL, strstr(self->out, "negative")) TH_LOG("%s", self->out);
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out),
			       "set max_kernel_pages=99999999999999999999"));
	EXPECT_NE(NULL, strstr(self->out, "too large")) TH_LOG("%s", self->out);
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), "set run=0x1"));
	EXPECT_NE(NULL, strstr(self->out, "not a decimal number")) TH_LOG("%s", self->out);
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), "watch 5000"));
	EXPECT_NE(NULL, strstr(self->out, "out of range")) TH_LOG("%s", self->out);
	/* A bad word anywhere: nothing changes. */
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out),
			       "set pages_to_scan=777 bogus=1"));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_NE(777, c.pages_to_scan);
}

TEST_F_TIMEOUT(cli, status_json_tells_the_ioctls, 180)
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

TEST_F_TIMEOUT(cli, set_and_unmerge_all, 180)
{
	const size_t npages = 32;
	struct ksm_config c;
	struct ksm_stats s;
	char *p;

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out),
			       "set pages_to_scan=1234 sleep_millisecs=7 scan_all_pages=1"))
		TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(1234, c.pages_to_scan);
	EXPECT_EQ(7, c.sleep_millisecs);
	EXPECT_EQ(1, c.scan_all_pages);
	/* Decimal, whatever the leading zeros: 010 is ten, not eight. */
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out),
			       "set pages_to_scan=0100 sleep_millisecs=010"))
		TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(100, c.pages_to_scan);
	EXPECT_EQ(10, c.sleep_millisecs);
	/* Hexadecimal is refused, before anything changes. */
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), "set pages_to_scan=0x100"));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(100, c.pages_to_scan);
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "set pages_to_scan=1234"));
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
 * Start `sh -c @cmd` (exec it, so the pid is the program's), as @uid unless
 * 0, stdin /dev/null, stdout and stderr into a pipe whose read end goes to
 * *@rd; with @fd1 >= 0, stdout goes there instead (a terminal). Returns its
 * pid, or -errno.
 */
static pid_t spawn_sh(const char *cmd, uid_t uid, int fd1, int *rd)
{
	int fds[2], null;
	pid_t pid;

	if (pipe(fds))
		return -errno;
	pid = fork();
	if (pid < 0)
		return -errno;
	if (pid == 0) {
		null = open("/dev/null", O_RDONLY);
		dup2(null, 0);
		dup2(fd1 >= 0 ? fd1 : fds[1], 1);
		dup2(fds[1], 2);
		close(fds[0]);
		if (uid && (setgid(uid) || setuid(uid)))
			_exit(99);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(98);
	}
	close(fds[1]);
	*rd = fds[0];
	return pid;
}

/*
 * Read @fd into @buf until EOF, until @stop_at appears (if not NULL), or
 * @secs without a byte; returns the length read.
 */
static size_t read_bounded(int fd, char *buf, size_t size, int secs, const char *stop_at)
{
	size_t len = 0;
	ssize_t n;

	buf[0] = 0;
	while (len < size - 1) {
		struct pollfd pfd = { .fd = fd, .events = POLLIN };

		if (poll(&pfd, 1, secs * 1000) != 1)
			break;
		n = read(fd, buf + len, size - 1 - len);
		if (n <= 0)
			break;
		len += n;
		buf[len] = 0;
		if (stop_at && strstr(buf, stop_at))
			break;
	}
	return len;
}

/* Run `sh -c @cmd` to its end (bounded): its exit code, its output in @out. */
static int run_sh(const char *cmd, uid_t uid, char *out, size_t size)
{
	int status, rd;
	pid_t pid = spawn_sh(cmd, uid, -1, &rd);

	if (pid < 0)
		return -1;
	read_bounded(rd, out, size, 60, NULL);
	close(rd);
	if (ksm_waitpid_timeout(pid, &status, 30))
		return -1;
	return ksm_exit_code(status);
}

static size_t count_str(const char *s, const char *what)
{
	size_t n = 0;

	for (; (s = strstr(s, what)); s++)
		n++;
	return n;
}

/* Not root: /dev/ksm is 0600, so the kernel says no, ksmdevctl exits 1 and says what to do. */
TEST_F_TIMEOUT(cli, unprivileged_exit_1, 120)
{
	EXPECT_EQ(1, run_sh("exec " KSMDEVCTL " set run=0", 65534, self->out, sizeof(self->out)))
		TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "Permission denied")) TH_LOG("%s", self->out);
	/* The hint: the udev rule that gives the device to the kvm group. */
	EXPECT_NE(NULL, strstr(self->out, "60-ksmdev.rules")) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "kvm group")) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "adduser")) TH_LOG("%s", self->out);
	EXPECT_EQ(1, run_sh("exec " KSMDEVCTL " status", 65534, self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "60-ksmdev.rules")) TH_LOG("%s", self->out);
}

/*
 * Run @cmd in a private mount namespace where each of @hide (NULL-ended) is
 * covered by an empty tmpfs: the device gone, the module "not loaded",
 * debugfs unmounted, as far as the program can tell.
 */
static int run_hidden(const char *const *hide, const char *cmd, char *out, size_t size)
{
	int status, fds[2];
	pid_t pid;

	if (pipe(fds))
		return -1;
	pid = fork();
	if (pid < 0)
		return -1;
	if (pid == 0) {
		close(fds[0]);
		dup2(fds[1], 1);
		dup2(fds[1], 2);
		if (unshare(CLONE_NEWNS) || mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
			_exit(97);
		for (; *hide; hide++)
			if (mount("tmpfs", *hide, "tmpfs", 0, "size=64k"))
				_exit(96);
		execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
		_exit(98);
	}
	close(fds[1]);
	read_bounded(fds[0], out, size, 60, NULL);
	close(fds[0]);
	if (ksm_waitpid_timeout(pid, &status, 30))
		return -1;
	return ksm_exit_code(status);
}

/* ENOENT: the message says the module is not loaded, and how to load it. */
TEST_F_TIMEOUT(cli, module_not_loaded_hint, 120)
{
	static const char *const no_module[] = { "/dev", "/sys/module", NULL };
	static const char *const no_dev[] = { "/dev", NULL };

	EXPECT_EQ(1, run_hidden(no_module, KSMDEVCTL " status", self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "No such file or directory")) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "not loaded")) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "modprobe ksmdev")) TH_LOG("%s", self->out);
	EXPECT_EQ(0, run_hidden(no_module, KSMDEVCTL " --version", self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "module not loaded")) TH_LOG("%s", self->out);
	/* Loaded, but no device node: not the same advice. */
	EXPECT_EQ(1, run_hidden(no_dev, KSMDEVCTL " status", self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "ksmdev is loaded but")) TH_LOG("%s", self->out);
	EXPECT_EQ(NULL, strstr(self->out, "modprobe")) TH_LOG("%s", self->out);
}

/* --version: the tool's version (dkms.conf's, as the module's) and the module's API version. */
TEST_F_TIMEOUT(cli, version, 120)
{
	char mver[64], want[128];
	int api = api_version(self->fd);

	ASSERT_LT(0, api);
	ASSERT_LT(0, ksm_read_text("/sys/module/ksmdev/version", mver, sizeof(mver)));
	mver[strcspn(mver, "\n")] = 0;
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "--version"));
	snprintf(want, sizeof(want), "ksmdevctl %s (built for ksmdev API version %d)\n",
		 mver, KSMDEV_API_VERSION);
	EXPECT_EQ(0, strncmp(self->out, want, strlen(want))) TH_LOG("%s", self->out);
	snprintf(want, sizeof(want), "module API version %d (ksmdev %s)\n", api, mver);
	EXPECT_NE(NULL, strstr(self->out, want)) TH_LOG("%s", self->out);
	/* Not root: the tool's version still, and why the module's is unknown. */
	EXPECT_EQ(0, run_sh("exec " KSMDEVCTL " --version", 65534, self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "module API version unknown")) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "Permission denied")) TH_LOG("%s", self->out);
}

/* Options go anywhere: after the command as before it. */
TEST_F_TIMEOUT(cli, options_after_the_command, 120)
{
	char before[4096];

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "status --json"));
	EXPECT_EQ('{', self->out[0]) TH_LOG("%s", self->out);
	EXPECT_LT(0, json_num(self->out, "pages_to_scan"));
	ASSERT_EQ(0, ksmdevctl(before, sizeof(before), "--json status"));
	EXPECT_EQ('{', before[0]);
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "mms --json"));
	EXPECT_EQ('[', self->out[0]) TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "ps --json"));
	EXPECT_EQ('[', self->out[0]) TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "status --help"));
	EXPECT_NE(NULL, strstr(self->out, "usage:"));
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "set pages_to_scan=321 --json"));
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "status --json"));
	EXPECT_EQ(321, json_num(self->out, "pages_to_scan"));
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "watch --json 1 1"));
	EXPECT_EQ('{', self->out[0]) TH_LOG("%s", self->out);
}

/* set --file: KEY=VALUE lines, comments and blank lines; a bad line changes nothing. */
TEST_F_TIMEOUT(cli, set_from_a_file, 120)
{
	const char *path = "/tmp/ksmdev-cli.conf";
	struct ksm_config c;
	FILE *f;

	f = fopen(path, "w");
	ASSERT_NE(NULL, f);
	fprintf(f, "# the scanner\n\n  pages_to_scan=0345  \nsleep_millisecs=9\n# end\n");
	fclose(f);
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "set --file /tmp/ksmdev-cli.conf"))
		TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(345, c.pages_to_scan);
	EXPECT_EQ(9, c.sleep_millisecs);

	f = fopen(path, "w");
	ASSERT_NE(NULL, f);
	fprintf(f, "pages_to_scan=500\nsleep_millisecs=0x9\n");
	fclose(f);
	EXPECT_EQ(2, ksmdevctl(self->out, sizeof(self->out), "set --file=/tmp/ksmdev-cli.conf"));
	EXPECT_NE(NULL, strstr(self->out, "ksmdev-cli.conf:2: sleep_millisecs")) TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(345, c.pages_to_scan);

	f = fopen(path, "w");
	ASSERT_NE(NULL, f);
	fprintf(f, "# nothing\n");
	fclose(f);
	EXPECT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "set --file /tmp/ksmdev-cli.conf"));
	EXPECT_NE(NULL, strstr(self->out, "nothing to set")) TH_LOG("%s", self->out);
	EXPECT_EQ(1, ksmdevctl(self->out, sizeof(self->out), "set --file /tmp/no-such.conf"));
	unlink(path);
}

/* status shows the debugfs diagnostics, and goes without them when debugfs is not there. */
TEST_F_TIMEOUT(cli, status_debugfs_diagnostics, 180)
{
	static const char *const no_debugfs[] = { "/sys/kernel/debug", NULL };
	static const char *const names[] = {
		"merge_events", "cow_breaks", "unmerge_events", "pages_skipped",
		"stable_unused",
	};
	const size_t npages = 32;
	struct ksm_stats s;
	uint64_t v;
	char line[128];
	size_t i;
	char *p;

	p = ksm_mmap_anon(npages * self->ps);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, 0x6161);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 60));
	p[0] = 1;	/* a COW break for the scanner to find */
	ASSERT_EQ(0, ksm_wait_stat_advance(self->fd, offsetof(struct ksm_stats, full_scans), 2, 60));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s));

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "status --json"));
	for (i = 0; i < ARRAY_SIZE(names); i++) {
		ASSERT_EQ(0, ksm_read_debugfs(names[i], &v));
		EXPECT_EQ((long long)v, json_num(self->out, names[i]))
			TH_LOG("%s: %s", names[i], self->out);
	}
	ASSERT_EQ(0, ksm_read_debugfs("merge_events", &v));
	EXPECT_LE(npages, v);
	EXPECT_NE(NULL, strstr(self->out, "\"debugfs\":{")) TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "status"));
	EXPECT_NE(NULL, strstr(self->out, "diagnostics (debugfs")) TH_LOG("%s", self->out);
	ASSERT_EQ(0, ksm_read_debugfs("cow_breaks", &v));
	snprintf(line, sizeof(line), "%-24s %14llu ", "cow_breaks", (unsigned long long)v);
	EXPECT_NE(NULL, strstr(self->out, line)) TH_LOG("%s", self->out);

	EXPECT_EQ(0, run_hidden(no_debugfs, KSMDEVCTL " status", self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "mount -t debugfs")) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "pages_sharing")) TH_LOG("%s", self->out);
	EXPECT_EQ(0, run_hidden(no_debugfs, KSMDEVCTL " status --json", self->out, sizeof(self->out)));
	EXPECT_EQ(NULL, strstr(self->out, "debugfs")) TH_LOG("%s", self->out);
	EXPECT_EQ((long long)s.pages_sharing, json_num(self->out, "pages_sharing"));
	munmap(p, npages * self->ps);
}

/* watch refreshes until Ctrl-C (SIGINT), then exits 0. */
TEST_F_TIMEOUT(cli, watch_until_sigint, 120)
{
	int status, rd;
	char buf[8192];
	pid_t pid;

	pid = spawn_sh("exec " KSMDEVCTL " watch 1", 0, -1, &rd);
	ASSERT_LT(0, pid);
	/* Three refreshes: the first at once, two with rates. */
	read_bounded(rd, buf, sizeof(buf), 10, "refresh 3");
	kill(pid, SIGINT);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	close(rd);
	EXPECT_EQ(0, ksm_exit_code(status));
	EXPECT_NE(NULL, strstr(buf, "pages_scanned"));
	EXPECT_NE(NULL, strstr(buf, "refresh 3, every 1 s")) TH_LOG("%s", buf);
	EXPECT_EQ(2, count_str(buf, "per second")) TH_LOG("%s", buf);
}

/* The first refresh comes at once, not after the first interval. */
TEST_F_TIMEOUT(cli, watch_prints_at_once, 120)
{
	uint64_t t0 = ksm_now_ms();
	int status, rd;
	char buf[8192];
	pid_t pid;

	pid = spawn_sh("exec " KSMDEVCTL " watch 3600", 0, -1, &rd);
	ASSERT_LT(0, pid);
	read_bounded(rd, buf, sizeof(buf), 60, "settings:");
	kill(pid, SIGTERM);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	close(rd);
	EXPECT_EQ(0, ksm_exit_code(status));
	EXPECT_NE(NULL, strstr(buf, "settings:")) TH_LOG("%s", buf);
	EXPECT_NE(NULL, strstr(buf, "refresh 1, every 3600 s")) TH_LOG("%s", buf);
	/* SIGTERM ended the hour's sleep: well under a minute in all. */
	EXPECT_GT(60000, ksm_now_ms() - t0);
}

/* watch SECONDS COUNT: COUNT refreshes and exit 0; on a pipe, no escape codes. */
TEST_F_TIMEOUT(cli, watch_count_no_escapes_on_a_pipe, 120)
{
	int status, rd;
	char buf[16384];
	pid_t pid;

	pid = spawn_sh("exec " KSMDEVCTL " watch 1 3", 0, -1, &rd);
	ASSERT_LT(0, pid);
	read_bounded(rd, buf, sizeof(buf), 30, NULL);
	close(rd);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status)) TH_LOG("%s", buf);
	EXPECT_EQ(3, count_str(buf, "--- ")) TH_LOG("%s", buf);
	EXPECT_NE(NULL, strstr(buf, "refresh 3 of 3, every 1 s")) TH_LOG("%s", buf);
	EXPECT_EQ(2, count_str(buf, "per second")) TH_LOG("%s", buf);
	EXPECT_EQ(NULL, strchr(buf, '\033')) TH_LOG("%s", buf);
	/* --json: one object a line, COUNT lines. */
	pid = spawn_sh("exec " KSMDEVCTL " watch 1 2 --json", 0, -1, &rd);
	ASSERT_LT(0, pid);
	read_bounded(rd, buf, sizeof(buf), 30, NULL);
	close(rd);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status));
	EXPECT_EQ(2, count_str(buf, "\n")) TH_LOG("%s", buf);
	EXPECT_EQ(1, count_str(buf, "\"interval_seconds\":")) TH_LOG("%s", buf);
	EXPECT_EQ(NULL, strchr(buf, '\033'));
}

/* On a terminal, watch clears the screen before each refresh. */
TEST_F_TIMEOUT(cli, watch_clears_a_terminal, 120)
{
	int status, rd, master, slave;
	char buf[16384];
	size_t len = 0;
	pid_t pid;

	/* A devpts instance of our own: the guest's /dev has none mounted. */
	mkdir("/tmp/pts", 0755);
	ASSERT_EQ(0, mount("devpts", "/tmp/pts", "devpts", 0, "newinstance,ptmxmode=0666"))
		TH_LOG("mount devpts: %s", strerror(errno));
	master = open("/tmp/pts/ptmx", O_RDWR | O_NOCTTY);
	ASSERT_LE(0, master) TH_LOG("ptmx: %s", strerror(errno));
	ASSERT_EQ(0, unlockpt(master));
	slave = ioctl(master, TIOCGPTPEER, O_RDWR | O_NOCTTY);
	ASSERT_LE(0, slave) TH_LOG("TIOCGPTPEER: %s", strerror(errno));
	pid = spawn_sh("exec " KSMDEVCTL " watch 1 2", 0, slave, &rd);
	ASSERT_LT(0, pid);
	close(slave);
	while (len < sizeof(buf) - 1) {
		struct pollfd pfd = { .fd = master, .events = POLLIN };
		ssize_t n;

		if (poll(&pfd, 1, 30000) != 1)
			break;
		n = read(master, buf + len, sizeof(buf) - 1 - len);
		if (n <= 0)	/* EIO: the program closed the terminal */
			break;
		len += n;
	}
	buf[len] = 0;
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	close(rd);
	close(master);
	umount("/tmp/pts");
	EXPECT_EQ(0, ksm_exit_code(status));
	EXPECT_EQ(2, count_str(buf, "\033[H\033[2J")) TH_LOG("%s", buf);
	EXPECT_NE(NULL, strstr(buf, "refresh 2 of 2")) TH_LOG("%s", buf);
}

/*
 * Rates are over the time measured between two refreshes: stopped (SIGSTOP)
 * for 2.5 s in a 1 s interval, watch divides by about 2.5 s, not by 1.
 */
TEST_F_TIMEOUT(cli, watch_rates_use_the_measured_interval, 180)
{
	const size_t npages = 4096;
	double interval, rate, first, second;
	int status, rd;
	char buf[16384], *nl;
	pid_t pid;
	char *p;

	/* Something to scan, all the time. */
	p = ksm_mmap_anon(npages * self->ps);
	ASSERT_NE(NULL, p);
	ksm_fill_pages(p, npages, 0x7171);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_pages_scanned(self->fd, npages, 60));

	pid = spawn_sh("exec " KSMDEVCTL " watch --json 1 2", 0, -1, &rd);
	ASSERT_LT(0, pid);
	read_bounded(rd, buf, sizeof(buf), 30, "}\n");
	kill(pid, SIGSTOP);
	usleep(2500 * 1000);	/* the interval this test makes, not a wait */
	kill(pid, SIGCONT);
	read_bounded(rd, buf + strlen(buf), sizeof(buf) - strlen(buf), 30, NULL);
	close(rd);
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status));
	nl = strchr(buf, '\n');
	ASSERT_NE(NULL, nl) TH_LOG("%s", buf);
	first = json_dbl(buf, "pages_scanned");
	second = json_dbl(nl + 1, "pages_scanned");
	interval = json_dbl(nl + 1, "interval_seconds");
	rate = json_dbl(strstr(nl + 1, "per_second") ?: nl + 1, "pages_scanned");
	EXPECT_LE(2.4, interval) TH_LOG("%s", buf);
	EXPECT_GT(60, interval);
	ASSERT_LT(first, second) TH_LOG("the scanner did not scan: %s", buf);
	/* The rate is the counter's growth over the interval measured. */
	EXPECT_GT(0.01 * rate + 1, rate > (second - first) / interval ?
		  rate - (second - first) / interval : (second - first) / interval - rate)
		TH_LOG("rate %.1f, growth %.0f over %.3f s", rate, second - first, interval);
	munmap(p, npages * self->ps);
}

/* ps: a line per context, the pid, the command, what is registered and merging. */
TEST_F_TIMEOUT(cli, ps_one_line_per_context, 180)
{
	const size_t npages = 48;
	struct ksm_stats s;
	char want[160], *line;
	char *p;

	p = ksm_mmap_anon(npages * self->ps);
	ASSERT_NE(NULL, p);
	ksm_fill_vals(p, 0, npages, 0x8181);
	ASSERT_EQ(0, ksm_register(self->fd, p, npages * self->ps, 0));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_merged(self->fd, 1, npages - 1, 0, &s, 60));

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "ps"));
	EXPECT_NE(NULL, strstr(self->out, "command")) TH_LOG("%s", self->out);
	snprintf(want, sizeof(want), "%8d %-16s ", getpid(), "cli");
	line = strstr(self->out, want);
	ASSERT_NE(NULL, line) TH_LOG("%s", self->out);
	snprintf(want, sizeof(want), " %12zu %12zu %10.1f ", npages, npages,
		 npages * self->ps / 1048576.0);
	EXPECT_NE(NULL, strstr(line, want)) TH_LOG("%s", self->out);

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "--json ps"));
	snprintf(want, sizeof(want), "{\"pid\":%d,\"command\":\"cli\",", getpid());
	line = strstr(self->out, want);
	ASSERT_NE(NULL, line) TH_LOG("%s", self->out);
	EXPECT_EQ(npages, json_num(line, "registered_pages"));
	EXPECT_EQ(npages, json_num(line, "merging_pages"));
	EXPECT_EQ((long long)(npages * self->ps), json_num(line, "saved_bytes"));
	/* The domain: from the debugfs table "regions". */
	EXPECT_NE(NULL, strstr(line, "\"domain\":[0],")) TH_LOG("%s", line);
	munmap(p, npages * self->ps);
}

/*
 * A child that fills @npages of anonymous memory with one value (all alike,
 * so that they merge) and waits, never opening /dev/ksm itself.
 */
static pid_t start_filler(size_t npages, uint64_t val, int *ready)
{
	int fds[2];
	pid_t pid;

	if (pipe(fds))
		return -1;
	pid = fork();
	if (pid == 0) {
		char *p = ksm_mmap_anon(npages * ksm_page_size());

		close(fds[0]);
		if (!p)
			_exit(1);
		ksm_fill_vals(p, 0, npages, val);
		if (write(fds[1], "r", 1) != 1)
			_exit(1);
		for (;;)
			pause();
	}
	close(fds[1]);
	*ready = fds[0];
	return pid;
}

static int wait_ready(int fd)
{
	char c;

	return read_bounded(fd, &c, 2, 60, NULL) == 1 ? 0 : -1;
}

/* Bounded: until @pid's context merges at least @n pages. */
static int wait_mms_merging(pid_t pid, unsigned long long n, int secs)
{
	unsigned long long r, m;
	uint64_t end = ksm_now_ms() + secs * 1000ULL;

	do {
		if (!ksm_mms_of(pid, &r, &m) && m >= n)
			return 0;
		ksm_sleep_ms(50);
	} while (ksm_now_ms() < end);
	return -1;
}

/* merge --pid: a running process's whole address space, in a context that outlives ksmdevctl. */
TEST_F_TIMEOUT(cli, merge_and_unmerge_pids, 600)
{
	const size_t npages = 64;
	unsigned long long r, m;
	pid_t a, b;
	int ra, rb, status;
	char cmd[128];

	NEED_V2(self);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	a = start_filler(npages, 0x9191, &ra);
	b = start_filler(npages, 0x9191, &rb);
	ASSERT_LT(0, a);
	ASSERT_LT(0, b);
	ASSERT_EQ(0, wait_ready(ra));
	ASSERT_EQ(0, wait_ready(rb));
	EXPECT_EQ(-1, ksm_mms_of(a, &r, &m));

	snprintf(cmd, sizeof(cmd), "merge --pid %d %d --domain 7", a, b);
	EXPECT_EQ(0, ksmdevctl(self->out, sizeof(self->out), cmd)) TH_LOG("%s", self->out);
	snprintf(cmd, sizeof(cmd), "pid %d (cli): merging its whole address space, domain 7", a);
	EXPECT_NE(NULL, strstr(self->out, cmd)) TH_LOG("%s", self->out);
	/* ksmdevctl has exited: the contexts stay, and merge across the two. */
	EXPECT_EQ(0, wait_mms_merging(a, npages, KSM_MERGE_WAIT_S));
	EXPECT_EQ(0, wait_mms_merging(b, npages, KSM_MERGE_WAIT_S));
	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "ps --json"));
	snprintf(cmd, sizeof(cmd), "{\"pid\":%d,\"command\":\"cli\",\"domain\":[7],", a);
	EXPECT_NE(NULL, strstr(self->out, cmd)) TH_LOG("%s", self->out);
	/* Again: already registered, left as it is, exit 0. */
	snprintf(cmd, sizeof(cmd), "merge --pid %d", a);
	EXPECT_EQ(0, ksmdevctl(self->out, sizeof(self->out), cmd)) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "already registered")) TH_LOG("%s", self->out);

	snprintf(cmd, sizeof(cmd), "unmerge --pid %d", a);
	EXPECT_EQ(0, ksmdevctl(self->out, sizeof(self->out), cmd)) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "unmerged and unregistered")) TH_LOG("%s", self->out);
	EXPECT_TRUE(ksm_mms_of(a, &r, &m) || (r == 0 && m == 0)) TH_LOG("%llu %llu", r, m);
	EXPECT_EQ(0, ksmdevctl(self->out, sizeof(self->out), cmd)) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "nothing to unmerge")) TH_LOG("%s", self->out);

	/* A pid that is not there, and one that is: one failure, exit 1. */
	kill(b, SIGKILL);
	ASSERT_EQ(0, ksm_waitpid_timeout(b, &status, 30));
	snprintf(cmd, sizeof(cmd), "merge --pid %d %d", b, a);
	EXPECT_EQ(1, ksmdevctl(self->out, sizeof(self->out), cmd)) TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "No such process")) TH_LOG("%s", self->out);
	snprintf(cmd, sizeof(cmd), "pid %d (cli): merging", a);
	EXPECT_NE(NULL, strstr(self->out, cmd)) TH_LOG("%s", self->out);
	kill(a, SIGKILL);
	ASSERT_EQ(0, ksm_waitpid_timeout(a, &status, 30));
	close(ra);
	close(rb);
}

/* merge --cgroup: every process of a cgroup and its children; --follow, the ones that come later. */
TEST_F_TIMEOUT(cli, merge_cgroup_follow, 600)
{
	const char *top = "/sys/fs/cgroup/ksmdev-cli", *sub = "/sys/fs/cgroup/ksmdev-cli/sub";
	const size_t npages = 32;
	pid_t a, b, c, f;
	int ra, rb, rc, rd, status;
	char buf[4096], pidstr[32];

	NEED_V2(self);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	rmdir(sub);
	rmdir(top);
	ASSERT_EQ(0, mkdir(top, 0755)) TH_LOG("%s: %s", top, strerror(errno));
	ASSERT_EQ(0, mkdir(sub, 0755));
	a = start_filler(npages, 0xa1a1, &ra);
	b = start_filler(npages, 0xa1a1, &rb);
	ASSERT_EQ(0, wait_ready(ra));
	ASSERT_EQ(0, wait_ready(rb));
	snprintf(pidstr, sizeof(pidstr), "%d", a);
	ASSERT_EQ(0, ksm_cg_write(top, "cgroup.procs", pidstr));
	snprintf(pidstr, sizeof(pidstr), "%d", b);
	ASSERT_EQ(0, ksm_cg_write(sub, "cgroup.procs", pidstr));

	ASSERT_EQ(0, ksmdevctl(self->out, sizeof(self->out), "merge --cgroup ksmdev-cli"))
		TH_LOG("%s", self->out);
	EXPECT_NE(NULL, strstr(self->out, "2 enrolled")) TH_LOG("%s", self->out);
	EXPECT_EQ(0, wait_mms_merging(a, npages, KSM_MERGE_WAIT_S));
	EXPECT_EQ(0, wait_mms_merging(b, npages, KSM_MERGE_WAIT_S));

	f = spawn_sh("exec " KSMDEVCTL " merge --cgroup /sys/fs/cgroup/ksmdev-cli --follow 1",
		     0, -1, &rd);
	ASSERT_LT(0, f);
	c = start_filler(npages, 0xa1a1, &rc);
	ASSERT_EQ(0, wait_ready(rc));
	snprintf(pidstr, sizeof(pidstr), "%d", c);
	ASSERT_EQ(0, ksm_cg_write(sub, "cgroup.procs", pidstr));
	EXPECT_EQ(0, wait_mms_merging(c, npages, KSM_MERGE_WAIT_S));
	kill(f, SIGTERM);
	read_bounded(rd, buf, sizeof(buf), 30, NULL);
	ASSERT_EQ(0, ksm_waitpid_timeout(f, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status)) TH_LOG("%s", buf);
	snprintf(pidstr, sizeof(pidstr), "pid %d (cli): merging", c);
	EXPECT_NE(NULL, strstr(buf, pidstr)) TH_LOG("%s", buf);

	EXPECT_EQ(1, ksmdevctl(self->out, sizeof(self->out), "merge --cgroup /tmp"));
	EXPECT_NE(NULL, strstr(self->out, "not a cgroup v2")) TH_LOG("%s", self->out);
	kill(a, SIGKILL);
	kill(b, SIGKILL);
	kill(c, SIGKILL);
	ksm_waitpid_timeout(a, &status, 30);
	ksm_waitpid_timeout(b, &status, 30);
	ksm_waitpid_timeout(c, &status, 30);
	close(ra);
	close(rb);
	close(rc);
	close(rd);
	rmdir(sub);
	rmdir(top);
}

TEST_HARNESS_MAIN
