// SPDX-License-Identifier: GPL-2.0
/*
 * A real hypervisor in the loop: Debian's own qemu-system-x86_64, run twice
 * inside the test guest under libksmdev-preload.so, each booting the same
 * small kernel and initramfs (tinyconfig from linux-source-6.12, busybox;
 * tests/qemu/inner-*). QEMU asks for KSM on guest RAM (mem-merge, on by
 * default: madvise(MADV_MERGEABLE)); the library hands that to /dev/ksm,
 * and what the two guests hold alike merges.
 *
 * What is checked, once both guests have printed their /init's line on
 * their serial consoles: the distinct physical pages, not of zeroes, that
 * both guests' RAM maps (PFNs from pagemap; two unrelated processes share
 * an anonymous page only through KSM, and a page merged many times within
 * one guest counts once) come to at least the size of the kernel image
 * both loaded, and pages_sharing grows by at least as much.
 *
 * Two variants: "preload", as above; "merge_pid", the same two QEMUs
 * started plainly (no library), then enrolled once both guests are up by
 * `ksmdevctl merge --pid` (KSM_ATTACH_PROCESS and KSM_REGION_ALL, ABI
 * version 2: SKIP before), with the same bar.
 *
 * Runs as root in a QEMU guest with ksmdev loaded, QEMU and its libraries
 * and firmware copied into the image with the inner kernel and initramfs
 * (the harness does it for this test); never on a host.
 */
#define _GNU_SOURCE
#include <sys/stat.h>
#include <sys/wait.h>

#include "ksmdev_test.h"

#define QEMU		"/usr/bin/qemu-system-x86_64"
#define PRELOAD		"/tests/libksmdev-preload.so"
#define KSMDEVCTL	"/tests/ksmdevctl"
#define KERNEL		"/boot/inner-kernel"
#define INITRD		"/boot/inner-initrd"
#define UP_LINE		"ksmdev inner guest: up"
#define NR_VMS		2
#define RAM_MB		128
#define RAM		"128M"	/* -m RAM_MB */
#define PAGE_INDEX_BITS	16	/* > log2(RAM_MB MiB / 4 KiB) */
/*
 * Measured: both guests print their line ~11 s after QEMU starts (~15 s on
 * the debug kernel): the inner kernel is tinyconfig, and TCG runs in TCG.
 * Both waits together stay below the test's timeout, itself below the
 * guest's per-program TEST_TIMEOUT (600 s), so that the harness, which kills
 * the QEMUs with the test, is what ends a test that hangs.
 */
#define BOOT_WAIT_S	180
#define MERGE_WAIT_S	120
#define TIMEOUT_S	(BOOT_WAIT_S + MERGE_WAIT_S + 180)

struct vm {
	pid_t pid;
	bool exited;
	char log[64];		/* its serial console */
	uintptr_t ram;		/* its guest RAM, in QEMU's address space */
};

FIXTURE(hypervisor) {
	int fd;
	struct ksm_config saved;
	struct ksm_stats base;
	struct vm vms[NR_VMS];
};

/* How the QEMUs come to ksmdev. */
FIXTURE_VARIANT(hypervisor) {
	bool preload;	/* else ksmdevctl merge --pid, once they run */
};

FIXTURE_VARIANT_ADD(hypervisor, preload) {
	.preload = true,
};

FIXTURE_VARIANT_ADD(hypervisor, merge_pid) {
	.preload = false,
};

FIXTURE_SETUP(hypervisor)
{
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd) TH_LOG(KSM_DEV_PATH ": %s", strerror(-self->fd));
}

FIXTURE_TEARDOWN(hypervisor)
{
	int i, status;

	for (i = 0; i < NR_VMS; i++) {
		if (self->vms[i].pid <= 0 || self->vms[i].exited)
			continue;
		kill(self->vms[i].pid, SIGKILL);
		ksm_waitpid_timeout(self->vms[i].pid, &status, 60);
	}
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

/* Boot one QEMU on KERNEL and INITRD; its stderr goes to @err. */
static pid_t start_qemu(const struct vm *vm, int err, bool preload)
{
	char serial[80];
	pid_t pid = fork();

	if (pid)
		return pid;
	dup2(err, 2);
	snprintf(serial, sizeof(serial), "file:%s", vm->log);
	if (preload)
		setenv("LD_PRELOAD", PRELOAD, 1);
	execl(QEMU, "qemu-system-x86_64", "-accel", "tcg", "-m", RAM,
	      "-nodefaults", "-display", "none", "-monitor", "none",
	      "-no-reboot", "-machine", "mem-merge=on",
	      "-kernel", KERNEL, "-initrd", INITRD,
	      "-append", "console=ttyS0 nokaslr", "-serial", serial,
	      (char *)NULL);
	_exit(127);
}

/* Whether file @path holds @needle; the tail of the file into @tail. */
static bool file_has(const char *path, const char *needle, char *tail,
		     size_t size)
{
	static char buf[65536];
	ssize_t n = ksm_read_text(path, buf, sizeof(buf));
	size_t len = n > 0 ? n : 0;

	if (len >= size)
		len = size - 1;
	memcpy(tail, buf + (n > 0 ? n : 0) - len, len);
	tail[len] = 0;
	return n > 0 && strstr(buf, needle);
}

/*
 * The guest RAM of QEMU @pid: its one private anonymous read-write mapping
 * of RAM_MB ("pc.ram"; the firmware's blocks are far smaller). 0 if none.
 */
static uintptr_t guest_ram(pid_t pid)
{
	unsigned long start, end, inode;
	uintptr_t found = 0;
	char path[64], line[512], perms[8];
	FILE *f;

	snprintf(path, sizeof(path), "/proc/%d/maps", pid);
	f = fopen(path, "r");
	if (!f)
		return 0;
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%lx-%lx %7s %*s %*s %lu", &start, &end, perms,
			   &inode) != 4)
			continue;
		if (end - start == (unsigned long)RAM_MB << 20 &&
		    !strcmp(perms, "rw-p") && !inode) {
			found = start;
			break;
		}
	}
	fclose(f);
	return found;
}

/* The PFNs of QEMU @pid's guest RAM at @ram (0: absent). 0 or -errno. */
static int ram_pfns(pid_t pid, uintptr_t ram, uint64_t *pfns, size_t n)
{
	size_t ps = ksm_page_size(), i;
	ssize_t len = n * sizeof(uint64_t), got;
	char path[64];
	int fd;

	snprintf(path, sizeof(path), "/proc/%d/pagemap", pid);
	fd = open(path, O_RDONLY);
	if (fd < 0)
		return -errno;
	got = pread(fd, pfns, len, ram / ps * sizeof(uint64_t));
	close(fd);
	if (got != len)
		return got < 0 ? -errno : -EIO;
	for (i = 0; i < n; i++)
		pfns[i] = pfns[i] & KSM_PM_PRESENT ? pfns[i] & KSM_PM_PFN_MASK : 0;
	return 0;
}

static bool all_zero(const char *p, size_t n)
{
	return !p[0] && !memcmp(p, p + 1, n - 1);
}

/*
 * How many distinct physical pages, not of zeroes, both guests' RAM maps:
 * contents merged across the two QEMUs (a page merged within one guest and
 * mapped many times there counts once). -errno on error.
 */
static long shared_nonzero(const struct vm *a, const struct vm *b)
{
	size_t ps = ksm_page_size(), n = ((size_t)RAM_MB << 20) / ps, i;
	uint64_t *pa = calloc(n, sizeof(*pa)), *pb = calloc(n, sizeof(*pb));
	char path[64], *page = malloc(ps);
	long count = 0;
	int mem = -1;

	snprintf(path, sizeof(path), "/proc/%d/mem", a->pid);
	if (!pa || !pb || !page) {
		count = -ENOMEM;
		goto out;
	}
	count = ram_pfns(a->pid, a->ram, pa, n);
	if (!count)
		count = ram_pfns(b->pid, b->ram, pb, n);
	if (count)
		goto out;
	mem = open(path, O_RDONLY);
	if (mem < 0) {
		count = -errno;
		goto out;
	}
	/* @a's PFNs with the page index in the low bits, in PFN order. */
	for (i = 0; i < n; i++)
		pa[i] = pa[i] << PAGE_INDEX_BITS | i;
	qsort(pa, n, sizeof(*pa), ksm_cmp_u64);
	qsort(pb, n, sizeof(*pb), ksm_cmp_u64);
	for (i = 0; i < n; i++) {
		uint64_t pfn = pa[i] >> PAGE_INDEX_BITS;
		size_t index = pa[i] & ((1ULL << PAGE_INDEX_BITS) - 1);

		if (!pfn || (i && pfn == pa[i - 1] >> PAGE_INDEX_BITS) ||
		    !bsearch(&pfn, pb, n, sizeof(*pb), ksm_cmp_u64))
			continue;
		if (pread(mem, page, ps, a->ram + index * ps) != (ssize_t)ps) {
			count = -EIO;
			break;
		}
		count += !all_zero(page, ps);
	}
out:
	if (mem >= 0)
		close(mem);
	free(page);
	free(pb);
	free(pa);
	return count;
}

TEST_F_TIMEOUT(hypervisor, two_qemus_boot_and_share_their_kernel, TIMEOUT_S)
{
	uint64_t want, t0 = ksm_now_ms(), boot_ms = 0, merge_ms = 0, end;
	struct ksm_stats s;
	char errbuf[2048] = "", tail[NR_VMS][1024];
	struct stat st, kernel;
	int i, up, gone, status, err[2];
	long shared = 0;
	ssize_t n;

	if (!variant->preload && ioctl(self->fd, KSM_GET_API_VERSION) < 2)
		SKIP(return, "module has no KSM_ATTACH_PROCESS (API version < 2)");
	ASSERT_EQ(0, access(QEMU, X_OK)) TH_LOG(QEMU ": %s", strerror(errno));
	ASSERT_EQ(0, stat(INITRD, &st)) TH_LOG(INITRD ": %s", strerror(errno));
	ASSERT_EQ(0, stat(KERNEL, &kernel)) TH_LOG(KERNEL ": %s", strerror(errno));
	/* QEMU keeps only its stderr: not the device, not the pipe's ends. */
	ASSERT_EQ(0, fcntl(self->fd, F_SETFD, FD_CLOEXEC));
	ASSERT_EQ(0, pipe2(err, O_CLOEXEC));
	ASSERT_EQ(0, fcntl(err[0], F_SETFL, O_NONBLOCK));
	for (i = 0; i < NR_VMS; i++) {
		snprintf(self->vms[i].log, sizeof(self->vms[i].log),
			 "/tmp/inner-guest-%d.log", i);
		unlink(self->vms[i].log);
		self->vms[i].pid = start_qemu(&self->vms[i], err[1], variant->preload);
		ASSERT_LT(0, self->vms[i].pid);
	}
	close(err[1]);

	/* Both guests up (their /init has printed its line), or one gone. */
	end = t0 + BOOT_WAIT_S * 1000ULL;
	do {
		ksm_sleep_ms(200);
		for (i = 0, up = 0, gone = 0; i < NR_VMS; i++) {
			up += file_has(self->vms[i].log, UP_LINE, tail[i],
				       sizeof(tail[i]));
			if (!self->vms[i].exited &&
			    waitpid(self->vms[i].pid, &status, WNOHANG) > 0)
				self->vms[i].exited = true;
			gone += self->vms[i].exited;
		}
	} while (up < NR_VMS && !gone && ksm_now_ms() < end);
	boot_ms = ksm_now_ms() - t0;
	if (up < NR_VMS || gone) {
		n = read(err[0], errbuf, sizeof(errbuf) - 1);
		errbuf[n > 0 ? n : 0] = 0;
	}
	for (i = 0; i < NR_VMS; i++) {
		ASSERT_FALSE(self->vms[i].exited)
			TH_LOG("QEMU %d exited; stderr:\n%s", i, errbuf);
		ASSERT_TRUE(file_has(self->vms[i].log, UP_LINE, tail[i],
				     sizeof(tail[i])))
			TH_LOG("guest %d not up after %llu ms; its console ends:\n%s",
			       i, (unsigned long long)boot_ms, tail[i]);
	}

	for (i = 0; i < NR_VMS; i++) {
		self->vms[i].ram = guest_ram(self->vms[i].pid);
		ASSERT_NE(0, self->vms[i].ram)
			TH_LOG("no %d MiB mapping in QEMU %d", RAM_MB, i);
	}

	/* Plain QEMUs, running: enrolled from outside, as an operator would. */
	if (!variant->preload) {
		char cmd[160], out[1024] = "";

		snprintf(cmd, sizeof(cmd), KSMDEVCTL " merge --pid %d %d > /tmp/merge.out 2>&1",
			 self->vms[0].pid, self->vms[1].pid);
		status = system(cmd);
		ksm_read_text("/tmp/merge.out", out, sizeof(out));
		ASSERT_TRUE(WIFEXITED(status) && WEXITSTATUS(status) == 0)
			TH_LOG("%s: %s", cmd, out);
		t0 = ksm_now_ms() - boot_ms;	/* merge_ms from here */
	}

	/* The kernel image's size, in pages: both loaded it. */
	want = kernel.st_size / ksm_page_size();
	end = ksm_now_ms() + MERGE_WAIT_S * 1000ULL;
	for (;;) {
		shared = shared_nonzero(&self->vms[0], &self->vms[1]);
		ASSERT_LE(0, shared) TH_LOG("pagemap: %s", strerror(-shared));
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s));
		if ((uint64_t)shared >= want &&
		    s.pages_sharing >= self->base.pages_sharing + want)
			break;
		if (ksm_now_ms() > end)
			break;
		ksm_sleep_ms(500);
	}
	merge_ms = ksm_now_ms() - t0 - boot_ms;
	EXPECT_LE(want, (uint64_t)shared)
		TH_LOG("%ld distinct non-zero pages shared by the guests, want %llu",
		       shared, (unsigned long long)want);
	EXPECT_LE(self->base.pages_sharing + want, s.pages_sharing);
	TH_LOG("%d QEMUs (%s) booted a %lld KiB kernel in %llu ms: %llu contexts, %llu regions, %llu MiB registered; %ld distinct non-zero pages in both guests' RAM (the kernel: %llu pages); pages_shared %llu, pages_sharing %llu (%llu MiB saved) %llu ms later",
	       NR_VMS, variant->preload ? "preload library" : "ksmdevctl merge --pid",
	       (long long)kernel.st_size >> 10, (unsigned long long)boot_ms,
	       (unsigned long long)(s.mms - self->base.mms),
	       (unsigned long long)(s.regions - self->base.regions),
	       (unsigned long long)((s.registered_pages - self->base.registered_pages) *
				    ksm_page_size() >> 20),
	       shared, (unsigned long long)want,
	       (unsigned long long)s.pages_shared,
	       (unsigned long long)s.pages_sharing,
	       (unsigned long long)(s.pages_sharing * ksm_page_size() >> 20),
	       (unsigned long long)merge_ms);
	EXPECT_EQ(self->base.mms + NR_VMS, s.mms);

	for (i = 0; i < NR_VMS; i++) {
		kill(self->vms[i].pid, SIGTERM);
		/* Reaped either way: after 60 s it is SIGKILLed and waited for. */
		EXPECT_EQ(0, ksm_waitpid_timeout(self->vms[i].pid, &status, 60));
		self->vms[i].exited = true;
	}
	n = read(err[0], errbuf, sizeof(errbuf) - 1);
	errbuf[n > 0 ? n : 0] = 0;
	close(err[0]);
	/* No "ksmdev-preload: ...": the library used /dev/ksm. */
	EXPECT_EQ(NULL, strstr(errbuf, "ksmdev-preload")) TH_LOG("%s", errbuf);
	EXPECT_EQ(0, ksm_wait_bookkeeping(self->fd, &self->base, &s, 30))
		TH_LOG("after the QEMUs: mms %llu regions %llu registered_pages %llu metadata_bytes %llu pages_orphaned %llu (before: %llu %llu %llu %llu %llu)",
		       (unsigned long long)s.mms, (unsigned long long)s.regions,
		       (unsigned long long)s.registered_pages,
		       (unsigned long long)s.metadata_bytes,
		       (unsigned long long)s.pages_orphaned,
		       (unsigned long long)self->base.mms,
		       (unsigned long long)self->base.regions,
		       (unsigned long long)self->base.registered_pages,
		       (unsigned long long)self->base.metadata_bytes,
		       (unsigned long long)self->base.pages_orphaned);
}

TEST_HARNESS_MAIN
