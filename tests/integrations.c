// SPDX-License-Identifier: GPL-2.0
/*
 * The integrations of packaging/: the libvirt hook (libvirt-hook-qemu),
 * called as libvirt calls /etc/libvirt/hooks/qemu ("NAME started begin -",
 * the domain XML on stdin, QEMU's pid in /run/libvirt/qemu/NAME.pid):
 *  - what it makes of the XML and the pid file, with a stand-in ksmdevctl
 *    (KSMDEVCTL) that records its arguments: any module;
 *  - for a QEMU started here, that it enrols it, in the domain of the
 *    metadata: needs KSM_ATTACH_PROCESS (API version 2), else SKIP.
 * (ksmdev.service is checked on the host: systemd-analyze verify, in
 * check.sh's package checks.)
 *
 * Runs as root in a QEMU guest with ksmdev loaded, /tests/ksmdevctl,
 * /tests/libvirt-hook-qemu and Debian's qemu-system-x86_64 in it.
 */
#define _GNU_SOURCE
#include <sys/wait.h>

#include "ksmdev_test.h"

#define HOOK		"/tests/libvirt-hook-qemu"
#define QEMU		"/usr/bin/qemu-system-x86_64"
#define RUN_DIR		"/run/libvirt/qemu"
#define STUB		"/tmp/ksmdevctl-stub"
#define STUB_ARGS	"/tmp/ksmdevctl-stub.args"

#define META(dom) "<metadata>\n    <ksmdev:domain xmlns:ksmdev=\"https://ksmdev.invalid/1\">" \
	dom "</ksmdev:domain>\n  </metadata>\n"
#define XML(name, meta) "<domain type='kvm' id='1'>\n  <name>" name "</name>\n  " \
	meta "  <memory unit='KiB'>65536</memory>\n</domain>\n"

FIXTURE(hook) {
	int fd;
	struct ksm_config saved;
	pid_t sleeper;
	char out[8192];
};

FIXTURE_SETUP(hook)
{
	FILE *f;

	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
	ASSERT_EQ(0, access(HOOK, X_OK)) TH_LOG(HOOK ": %s", strerror(errno));
	mkdir("/run/libvirt", 0755);
	mkdir(RUN_DIR, 0755);
	f = fopen(STUB, "w");
	ASSERT_NE(NULL, f);
	fprintf(f, "#!/bin/sh\necho \"$@\" > " STUB_ARGS "\n");
	fclose(f);
	ASSERT_EQ(0, chmod(STUB, 0755));
	self->sleeper = fork();
	if (self->sleeper == 0) {
		for (;;)
			pause();
	}
	ASSERT_LT(0, self->sleeper);
}

FIXTURE_TEARDOWN(hook)
{
	int status;

	kill(self->sleeper, SIGKILL);
	ksm_waitpid_timeout(self->sleeper, &status, 30);
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/*
 * Call the hook as libvirt does: "NAME OP SUBOP -", @xml on stdin, @env
 * ("VAR=value ..." or "") in its environment. Its exit code; its stderr
 * and stdout in @out.
 */
static int run_hook(const char *env, const char *name, const char *op,
		    const char *xml, char *out, size_t size)
{
	char cmd[512], path[] = "/tmp/hook-xml-XXXXXX";
	int st, fd = mkstemp(path);

	if (fd < 0 || write(fd, xml, strlen(xml)) != (ssize_t)strlen(xml))
		return -1;
	close(fd);
	snprintf(cmd, sizeof(cmd), "env PATH=/tests:/bin:/sbin:/usr/bin:/usr/sbin %s "
		 HOOK " %s %s begin - < %s 2>&1", env, name, op, path);
	st = ksm_run_capture(cmd, out, size);
	unlink(path);
	return st;
}

static void write_pidfile(const char *name, const char *content)
{
	char path[128];
	FILE *f;

	snprintf(path, sizeof(path), RUN_DIR "/%s.pid", name);
	f = fopen(path, "w");
	if (f) {
		fputs(content, f);
		fclose(f);
	}
}

/* What the stand-in was called with ("" if it was not). */
static const char *stub_args(char *buf, size_t size)
{
	if (ksm_read_text(STUB_ARGS, buf, size) <= 0)
		buf[0] = 0;
	buf[strcspn(buf, "\n")] = 0;
	return buf;
}

#define STUB_ENV "KSMDEVCTL=" STUB

/* The XML and the pid file, read as the hook should; no module call needed. */
TEST_F_TIMEOUT(hook, reads_the_xml_and_the_pid_file, 120)
{
	char pid[32], want[128], args[256];

	/* libvirt's pid files have no newline. */
	snprintf(pid, sizeof(pid), "%d", self->sleeper);
	write_pidfile("vm1", pid);

	unlink(STUB_ARGS);
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm1", "started", XML("vm1", META("7")),
			      self->out, sizeof(self->out))) TH_LOG("%s", self->out);
	snprintf(want, sizeof(want), "merge --pid %d --domain 7", self->sleeper);
	EXPECT_STREQ(want, stub_args(args, sizeof(args)));

	/* Any prefix bound to the namespace, blanks around the number, over lines. */
	unlink(STUB_ARGS);
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm1", "started",
			      XML("vm1", "<metadata><other:domain xmlns:other=\"https://other.invalid/\">9</other:domain>"
				  "<k:domain\n xmlns:k='https://ksmdev.invalid/1'>\n 12 </k:domain></metadata>"),
			      self->out, sizeof(self->out))) TH_LOG("%s", self->out);
	snprintf(want, sizeof(want), "merge --pid %d --domain 12", self->sleeper);
	EXPECT_STREQ(want, stub_args(args, sizeof(args)));

	/* No ksmdev metadata (another namespace's "domain" is not ours): domain 0. */
	unlink(STUB_ARGS);
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm1", "started",
			      XML("vm1", "<metadata><other:domain xmlns:other=\"https://other.invalid/\">9</other:domain></metadata>"),
			      self->out, sizeof(self->out)));
	snprintf(want, sizeof(want), "merge --pid %d", self->sleeper);
	EXPECT_STREQ(want, stub_args(args, sizeof(args)));

	/* Other operations: nothing, exit 0. */
	unlink(STUB_ARGS);
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm1", "prepare", XML("vm1", META("7")),
			      self->out, sizeof(self->out)));
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm1", "stopped", XML("vm1", META("7")),
			      self->out, sizeof(self->out)));
	EXPECT_STREQ("", stub_args(args, sizeof(args)));

	/* A domain that is no number: not enrolled, said, and still exit 0 (libvirt would stop the VM). */
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm1", "started", XML("vm1", META("0x7")),
			      self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "not a decimal number")) TH_LOG("%s", self->out);
	EXPECT_STREQ("", stub_args(args, sizeof(args)));

	/* No pid file: the same. */
	EXPECT_EQ(0, run_hook(STUB_ENV, "vm2", "started", XML("vm2", META("7")),
			      self->out, sizeof(self->out)));
	EXPECT_NE(NULL, strstr(self->out, "no pid in " RUN_DIR "/vm2.pid")) TH_LOG("%s", self->out);
	EXPECT_STREQ("", stub_args(args, sizeof(args)));

	/* ksmdevctl fails: its message, exit 0. */
	EXPECT_EQ(0, run_hook("KSMDEVCTL=/bin/false", "vm1", "started", XML("vm1", META("7")),
			      self->out, sizeof(self->out)));
	unlink(RUN_DIR "/vm1.pid");
}

/*
 * A QEMU started here, with its pid file where libvirt keeps it, and the
 * hook called as libvirt calls it once QEMU runs: QEMU's memory is
 * registered (its whole address space, in a context that outlives
 * ksmdevctl), in the domain of the metadata, and the context ends with QEMU.
 */
TEST_F_TIMEOUT(hook, enrols_a_qemu, 600)
{
	char pidbuf[32], want[128];
	unsigned long long registered = 0, merging;
	uint64_t end;
	pid_t qemu, pid = 0;
	int status, ok;

	if (ioctl(self->fd, KSM_GET_API_VERSION) < 2)
		SKIP(return, "module has no KSM_ATTACH_PROCESS (API version < 2)");
	ASSERT_EQ(0, access(QEMU, X_OK)) TH_LOG(QEMU ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	unlink(RUN_DIR "/vm7.pid");
	qemu = fork();
	if (qemu == 0) {
		execl(QEMU, "qemu-system-x86_64", "-accel", "tcg", "-m", "64",
		      "-nodefaults", "-display", "none", "-monitor", "none", "-S",
		      "-pidfile", RUN_DIR "/vm7.pid", (char *)NULL);
		_exit(127);
	}
	ASSERT_LT(0, qemu);
	/* QEMU writes its pid file once it runs (bounded). */
	end = ksm_now_ms() + 120000;
	do {
		if (ksm_read_text(RUN_DIR "/vm7.pid", pidbuf, sizeof(pidbuf)) > 0)
			pid = atoi(pidbuf);
		if (pid)
			break;
		ksm_sleep_ms(100);
	} while (ksm_now_ms() < end && waitpid(qemu, &status, WNOHANG) == 0);
	ASSERT_EQ(qemu, pid) TH_LOG("no pid file from QEMU");

	EXPECT_EQ(0, run_hook("", "vm7", "started", XML("vm7", META("7")),
			      self->out, sizeof(self->out))) TH_LOG("%s", self->out);
	EXPECT_EQ(NULL, strstr(self->out, "ksmdev hook:")) TH_LOG("%s", self->out);
	/* The scanner's next pass counts the pages of QEMU's VMAs (bounded). */
	end = ksm_now_ms() + KSM_MERGE_WAIT_S * 1000ULL;
	while ((ksm_mms_of(qemu, &registered, &merging) || !registered) &&
	       ksm_now_ms() < end)
		ksm_sleep_ms(100);
	EXPECT_LT(0, registered);
	/* Its domain, from debugfs regions, through ksmdevctl ps. */
	ASSERT_EQ(0, system("/tests/ksmdevctl ps --json > /tmp/ps.json"));
	ASSERT_LT(0, ksm_read_text("/tmp/ps.json", self->out, sizeof(self->out)));
	snprintf(want, sizeof(want), "{\"pid\":%d,\"command\":\"qemu-system-x86\",\"domain\":[7],",
		 qemu);
	EXPECT_NE(NULL, strstr(self->out, want)) TH_LOG("%s", self->out);

	kill(qemu, SIGKILL);
	ASSERT_EQ(0, ksm_waitpid_timeout(qemu, &status, 60));
	/* Its exit ends the context (bounded). */
	end = ksm_now_ms() + 60000;
	while (!(ok = ksm_mms_of(qemu, &registered, &merging) || !registered) &&
	       ksm_now_ms() < end)
		ksm_sleep_ms(100);
	EXPECT_NE(0, ok);
	unlink(RUN_DIR "/vm7.pid");
}

TEST_HARNESS_MAIN
