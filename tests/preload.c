// SPDX-License-Identifier: GPL-2.0
/*
 * libksmdev-preload.so under a program that behaves like QEMU (fakevm.c:
 * threads, several RAM blocks, MADV_MERGEABLE, then munmap): its memory is
 * registered, merges across blocks, comes back on MADV_UNMERGEABLE and
 * munmap with every byte intact; other advice passes through; without
 * access to /dev/ksm it says so in one line and leaves the work to the
 * kernel's madvise().
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

/* Start fakevm under the library, as @uid (0: root). */
static int vm_start(struct vm *vm, uid_t uid)
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
