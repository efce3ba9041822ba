// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev ABI: one assertion per rule of ABI.md, errors first.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include <sys/mount.h>
#include <sys/statfs.h>
#include <sys/sysinfo.h>

#include "ksmdev_test.h"

#define PAT		0xaaaaaaaaaaaaaaaaULL
#define DEBUGFS_MAGIC	0x64626720

FIXTURE(abi) {
	int fd;
	size_t ps;
	struct ksm_config saved;
};

FIXTURE_SETUP(abi)
{
	self->ps = ksm_page_size();
	self->fd = ksm_open();
	ASSERT_LE(0, self->fd) TH_LOG("open " KSM_DEV_PATH ": %s", strerror(errno));
	ASSERT_EQ(0, ksm_get_config(self->fd, &self->saved));
}

FIXTURE_TEARDOWN(abi)
{
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

static uint64_t mm_regions(struct __test_metadata *_metadata, int fd)
{
	struct ksm_mm_stats ms;

	EXPECT_EQ(0, ksm_get_mm_stats(fd, &ms));
	return ms.regions;
}

static uint64_t total_ram_pages(void)
{
	struct sysinfo si;

	if (sysinfo(&si))
		return 0;
	return (uint64_t)si.totalram * si.mem_unit / ksm_page_size();
}

/* ---- register: argument checks ---- */

TEST_F(abi, register_bad_ranges)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(4 * ps);

	ASSERT_NE(NULL, p);
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p + 1, ps, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p + ps / 2, ps, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, 0, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, ps + 1, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, ps - 1, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, (void *)0xfffffffffffff000ULL,
					0x2000, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, (void *)0xffff800000000000ULL,
					ps, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, UINT64_MAX & ~(ps - 1), 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	/* The same memory, well described, is accepted. */
	EXPECT_EQ(0, ksm_register(self->fd, p, 4 * ps, 0));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	munmap(p, 4 * ps);
}

TEST_F(abi, register_unmapped)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(3 * ps);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, munmap(p + ps, ps));
	EXPECT_EQ(-ENOMEM, ksm_register(self->fd, p, 3 * ps, 0));
	EXPECT_EQ(-ENOMEM, ksm_register(self->fd, p + ps, ps, 0));
	EXPECT_EQ(-ENOMEM, ksm_register(self->fd, p, 2 * ps, 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, 3 * ps);
	EXPECT_EQ(-ENOMEM, ksm_register(self->fd, p, 3 * ps, 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
}

TEST_F(abi, register_shared_anon)
{
	size_t ps = self->ps;
	char *p = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE,
		       MAP_SHARED | MAP_ANONYMOUS, -1, 0);

	ASSERT_NE(MAP_FAILED, p);
	p[0] = 1;
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, 2 * ps, 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, 2 * ps);
}

TEST_F(abi, register_private_file)
{
	size_t ps = self->ps;
	int mfd = memfd_create("ksmdev-abi", 0);
	char *p;

	ASSERT_LE(0, mfd);
	ASSERT_EQ(0, ftruncate(mfd, 2 * ps));
	p = mmap(NULL, 2 * ps, PROT_READ | PROT_WRITE, MAP_PRIVATE, mfd, 0);
	ASSERT_NE(MAP_FAILED, p);
	/* A written page of a private file mapping is anonymous: still no. */
	p[0] = 1;
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, 2 * ps, 0));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, ps, 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, 2 * ps);
	close(mfd);
}

TEST_F(abi, register_hugetlb)
{
	const char *nr = "/proc/sys/vm/nr_hugepages";
	size_t len = 2UL << 20;
	uint64_t old = 0;
	bool restore;
	char *p;

	restore = !ksm_read_u64_file(nr, &old, false) && old < 8 &&
		  !ksm_write_u64_file(nr, 8);
	p = mmap(NULL, len, PROT_READ | PROT_WRITE,
		 MAP_PRIVATE | MAP_ANONYMOUS | MAP_HUGETLB, -1, 0);
	if (p == MAP_FAILED) {
		if (restore)
			ksm_write_u64_file(nr, old);
		SKIP(return, "no hugetlb pages: %s", strerror(errno));
	}
	p[0] = 1;
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, len, 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, len);
	if (restore) {
		EXPECT_EQ(0, ksm_write_u64_file(nr, old));
	}
}

TEST_F(abi, register_span_anon_and_shared)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(2 * ps), *q;

	ASSERT_NE(NULL, p);
	q = mmap(p + ps, ps, PROT_READ | PROT_WRITE,
		 MAP_SHARED | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
	ASSERT_EQ(p + ps, q);
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, 2 * ps, 0));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	/* The anonymous half alone is fine. */
	EXPECT_EQ(0, ksm_register(self->fd, p, ps, 0));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	munmap(p, 2 * ps);
}

/* A range over two private anonymous VMAs (different protections) is fine. */
TEST_F(abi, register_two_anon_vmas)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(4 * ps);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, mprotect(p + 2 * ps, 2 * ps, PROT_READ));
	EXPECT_EQ(0, ksm_register(self->fd, p, 4 * ps, 0));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	munmap(p, 4 * ps);
}

TEST_F(abi, register_flags)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(2 * ps);

	ASSERT_NE(NULL, p);
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, ps, 1ULL << 1));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, ps, 1ULL << 63));
	EXPECT_EQ(-EINVAL, ksm_register(self->fd, p, ps,
					KSM_REGION_SCOPE_MM | (1ULL << 2)));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	EXPECT_EQ(0, ksm_register(self->fd, p, ps, KSM_REGION_SCOPE_MM));
	EXPECT_EQ(0, ksm_register(self->fd, p + ps, ps, 0));
	EXPECT_EQ(2, mm_regions(_metadata, self->fd));
	/* Unregister takes no flags. */
	EXPECT_EQ(-EINVAL, ksm_region_ioctl(self->fd, KSM_UNREGISTER_REGION, p, ps,
					    KSM_REGION_SCOPE_MM));
	EXPECT_EQ(-EINVAL, ksm_region_ioctl(self->fd, KSM_UNREGISTER_REGION, p, ps,
					    1ULL << 63));
	EXPECT_EQ(2, mm_regions(_metadata, self->fd));
	EXPECT_EQ(0, ksm_unregister(self->fd, p, ps));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	munmap(p, 2 * ps);
}

/* ---- register: overlap and limits ---- */

TEST_F(abi, register_overlap)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(8 * ps);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p + 2 * ps, 4 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p + 2 * ps, 4 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p, 3 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p + 5 * ps, 3 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p + 3 * ps, ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p, 8 * ps, 0));
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p + 2 * ps, 4 * ps,
					KSM_REGION_SCOPE_MM));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	/* Adjacent on both sides. */
	EXPECT_EQ(0, ksm_register(self->fd, p, 2 * ps, 0));
	EXPECT_EQ(0, ksm_register(self->fd, p + 6 * ps, 2 * ps, 0));
	EXPECT_EQ(3, mm_regions(_metadata, self->fd));
	munmap(p, 8 * ps);
}

TEST_F_TIMEOUT(abi, register_max_regions, 120)
{
	size_t ps = self->ps;
	struct ksm_mm_stats ms;
	uint64_t max, i;
	int fd2;
	char *p;

	ASSERT_EQ(0, ksm_read_param("max_regions", &max));
	ASSERT_LT(0, max);
	ASSERT_GE(1ULL << 20, max);
	p = ksm_mmap_anon((max + 1) * ps);
	ASSERT_NE(NULL, p);
	for (i = 0; i < max; i++) {
		ASSERT_EQ(0, ksm_register(self->fd, p + i * ps, ps, 0))
			TH_LOG("region %llu of %llu", (unsigned long long)i,
			       (unsigned long long)max);
	}
	EXPECT_EQ(-ENOSPC, ksm_register(self->fd, p + max * ps, ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(max, ms.regions);
	EXPECT_EQ(max, ms.registered_pages);
	/* A freed slot can be used again. */
	EXPECT_EQ(0, ksm_unregister(self->fd, p, ps));
	EXPECT_EQ(0, ksm_register(self->fd, p + max * ps, ps, 0));
	EXPECT_EQ(-ENOSPC, ksm_register(self->fd, p, ps, 0));
	EXPECT_EQ(max, mm_regions(_metadata, self->fd));
	/* The limit is per context: another one starts empty. */
	fd2 = ksm_open();
	ASSERT_LE(0, fd2);
	EXPECT_EQ(0, ksm_register(fd2, p, ps, 0));
	close(fd2);
	munmap(p, (max + 1) * ps);
}

/* ---- unregister ---- */

TEST_F(abi, unregister_must_cover_whole_regions)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(8 * ps);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p + 2 * ps, 4 * ps, 0));
	EXPECT_EQ(-EINVAL, ksm_unregister(self->fd, p + 2 * ps, 2 * ps));
	EXPECT_EQ(-EINVAL, ksm_unregister(self->fd, p + 3 * ps, 5 * ps));
	EXPECT_EQ(-EINVAL, ksm_unregister(self->fd, p, 3 * ps));
	EXPECT_EQ(-EINVAL, ksm_unregister(self->fd, p + 3 * ps, ps));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	/* No region in the range. */
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p, 2 * ps));
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p + 6 * ps, 2 * ps));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	/* Exactly, then again: gone. */
	EXPECT_EQ(0, ksm_unregister(self->fd, p + 2 * ps, 4 * ps));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p + 2 * ps, 4 * ps));
	munmap(p, 8 * ps);
}

TEST_F(abi, unregister_no_region)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(4 * ps), *q = ksm_mmap_anon(4 * ps);

	ASSERT_NE(NULL, p);
	ASSERT_NE(NULL, q);
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p, 4 * ps));
	ASSERT_EQ(0, ksm_register(self->fd, p, 4 * ps, 0));
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, q, 4 * ps));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	munmap(p, 4 * ps);
	munmap(q, 4 * ps);
}

TEST_F(abi, unregister_two_regions_and_gaps)
{
	size_t ps = self->ps;
	struct ksm_mm_stats ms;
	char *p = ksm_mmap_anon(8 * ps);

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p + 1 * ps, 2 * ps, 0));
	ASSERT_EQ(0, ksm_register(self->fd, p + 5 * ps, 2 * ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(2, ms.regions);
	EXPECT_EQ(4, ms.registered_pages);
	EXPECT_EQ(0, ksm_unregister(self->fd, p, 8 * ps));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.regions);
	EXPECT_EQ(0, ms.registered_pages);
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p + 1 * ps, 2 * ps));
	EXPECT_EQ(-ENOENT, ksm_unregister(self->fd, p + 5 * ps, 2 * ps));
	munmap(p, 8 * ps);
}

/* ---- ioctl numbers and structure sizes ---- */

TEST_F(abi, api_version)
{
	EXPECT_EQ(KSMDEV_API_VERSION, ioctl(self->fd, KSM_GET_API_VERSION));
	EXPECT_EQ(2, ioctl(self->fd, KSM_GET_API_VERSION));
}

TEST_F(abi, unknown_ioctl)
{
	const unsigned long cmds[] = {
		_IO(KSMDEV_IOCTL_MAGIC, 0x7f),
		_IOR(KSMDEV_IOCTL_MAGIC, 0x7f, struct ksm_stats),
		/* Foreign magics, with our numbers and sizes. */
		_IO(KSMDEV_IOCTL_MAGIC + 1, 0x00),
		_IOR(KSMDEV_IOCTL_MAGIC + 1, 0x03, struct ksm_stats),
		_IOR('k', 0x03, struct ksm_stats),
	};
	struct ksm_stats s;
	size_t i;

	for (i = 0; i < ARRAY_SIZE(cmds); i++) {
		EXPECT_EQ(-ENOTTY, ksm_ioctl(self->fd, cmds[i], &s))
			TH_LOG("cmd %#lx", cmds[i]);
	}
}

TEST_F(abi, register_larger_struct)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(ps);
	/* addr, len, flags, domain, and a word this version does not know. */
	uint64_t arg[5] = { (uintptr_t)p, ps, 0, 0, 1 };

	ASSERT_NE(NULL, p);
	EXPECT_EQ(-E2BIG, ksm_ioctl_sized(self->fd, KSM_REGISTER_REGION, sizeof(arg), arg));
	arg[4] = 1ULL << 63;
	EXPECT_EQ(-E2BIG, ksm_ioctl_sized(self->fd, KSM_REGISTER_REGION, sizeof(arg), arg));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	arg[4] = 0;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_REGISTER_REGION, sizeof(arg), arg));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	/* Unregister takes the same sizes. */
	arg[4] = 1;
	EXPECT_EQ(-E2BIG, ksm_ioctl_sized(self->fd, KSM_UNREGISTER_REGION, sizeof(arg), arg));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	arg[4] = 0;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_UNREGISTER_REGION, sizeof(arg), arg));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, ps);
}

/*
 * A version-1 caller: its structures end before domain and metadata_bytes,
 * and its ioctl numbers carry their sizes. Whatever lies after them in its
 * memory is never read (a domain there would keep these pages apart from
 * the global domain's) nor written.
 */
struct ksm_region_v1 {
	__u64 addr;
	__u64 len;
	__u64 flags;
};

struct ksm_mm_stats_v1 {
	__u64 regions;
	__u64 registered_pages;
	__u64 merging_pages;
	__u64 ksm_zero_pages;
};

#define KSM_REGISTER_REGION_V1	_IOW(KSMDEV_IOCTL_MAGIC, 0x01, struct ksm_region_v1)
#define KSM_UNREGISTER_REGION_V1 _IOW(KSMDEV_IOCTL_MAGIC, 0x02, struct ksm_region_v1)
#define KSM_GET_MM_STATS_V1	_IOR(KSMDEV_IOCTL_MAGIC, 0x04, struct ksm_mm_stats_v1)

TEST_F_TIMEOUT(abi, version_1_caller, 300)
{
	size_t ps = self->ps, n = 8;
	char *p = ksm_mmap_anon(2 * n * ps);
	struct {
		struct ksm_region_v1 r;
		uint64_t after[2];
	} v1 = { .after = { 9, PAT } };
	struct {
		struct ksm_mm_stats_v1 ms;
		uint64_t after[2];
	} st = { .after = { PAT, PAT } };
	struct ksm_mm_stats ms;

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ksm_fill_vals(p, 0, 2 * n, PAT);
	v1.r.addr = (uintptr_t)p;
	v1.r.len = n * ps;
	EXPECT_EQ(24, _IOC_SIZE(KSM_REGISTER_REGION_V1));
	EXPECT_EQ(0, ksm_ioctl(self->fd, KSM_REGISTER_REGION_V1, &v1));
	/* The second half in the global domain, through version 2. */
	EXPECT_EQ(0, ksm_register(self->fd, p + n * ps, n * ps, 0));
	/* All in one domain: one page for all of them. */
	ASSERT_EQ(0, ksm_wait_mm_merging(self->fd, 2 * n, &ms, KSM_MERGE_WAIT_S));
	EXPECT_EQ(ksm_pfn(p), ksm_pfn(p + (2 * n - 1) * ps));
	EXPECT_EQ(32, _IOC_SIZE(KSM_GET_MM_STATS_V1));
	EXPECT_EQ(0, ksm_ioctl(self->fd, KSM_GET_MM_STATS_V1, &st));
	EXPECT_EQ(2, st.ms.regions);
	EXPECT_EQ(2 * n, st.ms.registered_pages);
	EXPECT_EQ(2 * n, st.ms.merging_pages);
	EXPECT_EQ(0, st.ms.ksm_zero_pages);
	EXPECT_EQ(PAT, st.after[0]);
	EXPECT_EQ(PAT, st.after[1]);
	/* Unregister the version-1 way: unmerged, gone. */
	EXPECT_EQ(0, ksm_ioctl(self->fd, KSM_UNREGISTER_REGION_V1, &v1));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(n, ms.merging_pages);
	EXPECT_NE(ksm_pfn(p), ksm_pfn(p + (2 * n - 1) * ps));
	EXPECT_EQ(0, ksm_count_bad_vals(p, 0, 2 * n, PAT));
	/* Version 1's rules hold: the range must cover whole regions. */
	v1.r.addr = (uintptr_t)p + n * ps;
	v1.r.len = ps;
	EXPECT_EQ(-EINVAL, ksm_ioctl(self->fd, KSM_UNREGISTER_REGION_V1, &v1));
	v1.r.len = n * ps;
	EXPECT_EQ(0, ksm_ioctl(self->fd, KSM_UNREGISTER_REGION_V1, &v1));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, 2 * n * ps);
}

/*
 * ksm_mm_stats.metadata_bytes: the context's regions and their per-page
 * state, which grows with the pages present, and its unstable nodes; with
 * the scanner stopped, exactly what the global metadata_bytes gained; 0
 * again once nothing is registered.
 */
TEST_F_TIMEOUT(abi, mm_metadata_bytes, 300)
{
	size_t ps = self->ps, n = 2048, i;
	char *p = ksm_mmap_anon(n * ps);
	struct ksm_mm_stats ms, ms2;
	struct ksm_stats s0, s1, s2;
	uint64_t empty;

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.metadata_bytes);
	/* Earlier tests' orphans, reaped meanwhile, would blur the sums. */
	ksm_wait_orphans_reaped(self->fd, 10);
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s0));
	ASSERT_EQ(0, ksm_register(self->fd, p, n * ps, 0));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	/* The region and its directory, nothing per page yet. */
	empty = ms.metadata_bytes;
	EXPECT_LT(0, empty);
	EXPECT_GT(4096, empty);
	EXPECT_EQ(s1.metadata_bytes - s0.metadata_bytes, empty);
	/* Unique pages: a slot each, and an unstable node each. */
	ksm_fill_pages(p, n, 77);
	ASSERT_EQ(0, ksm_set_fast_config(self->fd));
	ASSERT_EQ(0, ksm_wait_full_scans(self->fd, 3, KSM_MERGE_WAIT_S));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	/* A batch may be finishing: two snapshots alike. */
	for (i = 0; i < 100; i++) {
		ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
		ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms2));
		ASSERT_EQ(0, ksm_get_stats(self->fd, &s2));
		if (ms.metadata_bytes == ms2.metadata_bytes &&
		    s1.metadata_bytes == s2.metadata_bytes)
			break;
		ksm_sleep_ms(20);
	}
	/*
	 * n / 512 chunks of 4 KiB (8 MiB: the region's top table points to
	 * them, no table between), and at most an unstable node per page
	 * (< 256 B; fewer where the sample falls just after a pass ended).
	 */
	EXPECT_LE(empty + (n / 512) * 4096, ms.metadata_bytes);
	EXPECT_GE(empty + (n / 512) * 4096 + n * 256, ms.metadata_bytes);
	EXPECT_EQ(s2.metadata_bytes - s0.metadata_bytes, ms.metadata_bytes);
	ASSERT_EQ(0, ksm_unregister(self->fd, p, n * ps));
	ASSERT_EQ(0, ksm_get_mm_stats(self->fd, &ms));
	EXPECT_EQ(0, ms.metadata_bytes);
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	EXPECT_EQ(s0.metadata_bytes, s1.metadata_bytes);
	munmap(p, n * ps);
}

TEST_F(abi, register_smaller_struct)
{
	size_t ps = self->ps;
	char *p = ksm_mmap_anon(2 * ps);
	/* flags, beyond the size passed, must not be read. */
	uint64_t arg[3] = { (uintptr_t)p, ps, 1ULL << 62 };

	ASSERT_NE(NULL, p);
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_REGISTER_REGION, 16, arg));
	EXPECT_EQ(1, mm_regions(_metadata, self->fd));
	/* Overlap is still detected: the range was read correctly. */
	EXPECT_EQ(-EEXIST, ksm_register(self->fd, p, ps, 0));
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_UNREGISTER_REGION, 16, arg));
	EXPECT_EQ(0, mm_regions(_metadata, self->fd));
	munmap(p, 2 * ps);
}

TEST_F(abi, get_smaller_struct)
{
	uint64_t buf[16];
	struct ksm_config c;
	int i;

	for (i = 0; i < 16; i++)
		buf[i] = PAT;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_GET_STATS, 8, buf));
	EXPECT_NE(PAT, buf[0]);
	for (i = 1; i < 16; i++) {
		EXPECT_EQ(PAT, buf[i]) TH_LOG("GET_STATS wrote u64 #%d", i);
	}

	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	for (i = 0; i < 16; i++)
		buf[i] = PAT;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_GET_CONFIG, 16, buf));
	EXPECT_EQ(c.run, buf[0]);
	EXPECT_EQ(c.pages_to_scan, buf[1]);
	for (i = 2; i < 16; i++) {
		EXPECT_EQ(PAT, buf[i]) TH_LOG("GET_CONFIG wrote u64 #%d", i);
	}
}

TEST_F(abi, get_larger_struct)
{
	size_t ps = self->ps;
	size_t n = sizeof(struct ksm_stats) / 8;
	char *p = ksm_mmap_anon(3 * ps);
	struct ksm_config c;
	uint64_t buf[32];
	size_t i;

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, 3 * ps, 0));
	for (i = 0; i < 32; i++)
		buf[i] = PAT;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_GET_STATS, (n + 2) * 8, buf));
	EXPECT_EQ(0, buf[n]);
	EXPECT_EQ(0, buf[n + 1]);
	EXPECT_EQ(PAT, buf[n + 2]);
	/* The known part is real: regions, mms, registered_pages. */
	EXPECT_LE(1, buf[offsetof(struct ksm_stats, regions) / 8]);
	EXPECT_LE(1, buf[offsetof(struct ksm_stats, mms) / 8]);
	EXPECT_LE(3, buf[offsetof(struct ksm_stats, registered_pages) / 8]);

	for (i = 0; i < 32; i++)
		buf[i] = PAT;
	n = sizeof(struct ksm_mm_stats) / 8;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_GET_MM_STATS, (n + 3) * 8, buf));
	EXPECT_EQ(1, buf[0]);
	EXPECT_EQ(3, buf[1]);
	for (i = n; i < n + 3; i++) {
		EXPECT_EQ(0, buf[i]);
	}

	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	for (i = 0; i < 32; i++)
		buf[i] = PAT;
	n = sizeof(struct ksm_config) / 8;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_GET_CONFIG, (n + 1) * 8, buf));
	EXPECT_EQ(0, memcmp(&c, buf, sizeof(c)));
	EXPECT_EQ(0, buf[n]);
	munmap(p, 3 * ps);
}

TEST_F(abi, set_config_sizes)
{
	const size_t v1 = offsetof(struct ksm_config, merge_across_nodes);
	const size_t n = sizeof(struct ksm_config) / 8;
	uint64_t buf[24] = { 0 };
	struct ksm_config c;

	memcpy(buf, &self->saved, sizeof(self->saved));
	buf[1] = self->saved.pages_to_scan + 1;
	buf[n] = 1;
	EXPECT_EQ(-E2BIG, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG, sizeof(buf), buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(0, memcmp(&c, &self->saved, sizeof(c)));
	buf[n] = 0;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG, sizeof(buf), buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(self->saved.pages_to_scan + 1, c.pages_to_scan);

	/* A caller from before scan_all_pages: its missing tail reads as 0. */
	buf[offsetof(struct ksm_config, scan_all_pages) / 8] = 1;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG, v1, buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(1, c.scan_all_pages);
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG,
				     offsetof(struct ksm_config, scan_all_pages), buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(0, c.scan_all_pages);

	/*
	 * Version-2 settings past the caller's structure keep their values
	 * (uapi header): 0 would be invalid (advisor_max_cpu_percent) or a
	 * change of behaviour (merge_across_nodes), not a default.
	 */
	buf[offsetof(struct ksm_config, advisor_target_scan_ms) / 8] = 5000;
	buf[offsetof(struct ksm_config, advisor_max_cpu_percent) / 8] = 40;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG, sizeof(c), buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(5000, c.advisor_target_scan_ms);
	EXPECT_EQ(40, c.advisor_max_cpu_percent);
	EXPECT_EQ(1, c.merge_across_nodes);
	buf[1] = self->saved.pages_to_scan + 2;
	buf[offsetof(struct ksm_config, advisor_target_scan_ms) / 8] = 0;
	buf[offsetof(struct ksm_config, advisor_max_cpu_percent) / 8] = 0;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG, v1, buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(self->saved.pages_to_scan + 2, c.pages_to_scan);
	EXPECT_EQ(5000, c.advisor_target_scan_ms);
	EXPECT_EQ(40, c.advisor_max_cpu_percent);
	EXPECT_EQ(1, c.merge_across_nodes);
	/* One that ends inside them: what it holds is taken, the rest kept. */
	buf[offsetof(struct ksm_config, advisor_target_scan_ms) / 8] = 200;
	EXPECT_EQ(0, ksm_ioctl_sized(self->fd, KSM_SET_CONFIG,
				     offsetof(struct ksm_config, advisor_max_cpu_percent), buf));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(200, c.advisor_target_scan_ms);
	EXPECT_EQ(40, c.advisor_max_cpu_percent);
}

/* ---- permissions ---- */

/*
 * In a forked child holding the inherited fd: register and unregister belong
 * to the opener's mm (EPERM); the other ioctls work; SET_CONFIG needs
 * CAP_SYS_ADMIN. Exit code: 0, or the number of the first failed check.
 */
static int child_checks(int fd, void *p, size_t ps, bool drop_root)
{
	struct ksm_mm_stats ms;
	struct ksm_config c;
	struct ksm_stats s;

	if (drop_root && (setgid(65534) || setuid(65534)))
		return 1;
	/* A free range, so that only the mm check can refuse it. */
	if (ksm_register(fd, (char *)p + ps, ps, 0) != -EPERM)
		return 2;
	if (ksm_unregister(fd, p, ps) != -EPERM)
		return 3;
	if (ksm_get_stats(fd, &s) || s.mms < 1)
		return 4;
	if (ksm_get_mm_stats(fd, &ms) || ms.regions != 1)
		return 5;
	if (ksm_get_config(fd, &c))
		return 6;
	if (ioctl(fd, KSM_GET_API_VERSION) != KSMDEV_API_VERSION)
		return 7;
	c.pages_to_scan++;
	if (ksm_set_config(fd, &c) != (drop_root ? -EPERM : 0))
		return 8;
	return 0;
}

static void run_child_checks(struct __test_metadata *_metadata, int fd,
			     bool drop_root, const struct ksm_config *saved)
{
	size_t ps = ksm_page_size();
	struct ksm_mm_stats ms;
	struct ksm_config c;
	char *p = ksm_mmap_anon(2 * ps);
	int status;
	pid_t pid;

	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(fd, p, ps, 0));
	pid = fork();
	ASSERT_LE(0, pid);
	if (pid == 0)
		_exit(child_checks(fd, p, ps, drop_root));
	ASSERT_EQ(0, ksm_waitpid_timeout(pid, &status, 30));
	EXPECT_EQ(0, ksm_exit_code(status))
		TH_LOG("check %d of child_checks() failed", ksm_exit_code(status));
	/* Nothing the child tried changed this context. */
	ASSERT_EQ(0, ksm_get_mm_stats(fd, &ms));
	EXPECT_EQ(1, ms.regions);
	EXPECT_EQ(1, ms.registered_pages);
	ASSERT_EQ(0, ksm_get_config(fd, &c));
	EXPECT_EQ(saved->pages_to_scan + !drop_root, c.pages_to_scan);
	EXPECT_EQ(0, ksm_unregister(fd, p, ps));
	munmap(p, 2 * ps);
}

TEST_F(abi, other_mm_root)
{
	run_child_checks(_metadata, self->fd, false, &self->saved);
}

TEST_F(abi, other_mm_unprivileged)
{
	run_child_checks(_metadata, self->fd, true, &self->saved);
}

/* ---- configuration ---- */

TEST_F(abi, config_bad_values)
{
	const struct {
		const char *name;
		size_t off;
		uint64_t val;
	} bad_values[] = {
#define BAD(field, v) { #field "=" #v, offsetof(struct ksm_config, field), v }
		BAD(run, 3),
		BAD(run, UINT64_MAX),
		BAD(pages_to_scan, 0),
		BAD(pages_to_scan, KSM_PAGES_TO_SCAN_MAX + 1),
		BAD(sleep_millisecs, KSM_SLEEP_MSECS_MAX + 1),
		BAD(use_zero_pages, 2),
		BAD(scan_all_pages, 2),
		BAD(max_kernel_pages, total_ram_pages() + 1),
		BAD(max_kernel_pages, UINT64_MAX),
		BAD(merge_across_nodes, 2),
		BAD(advisor_target_scan_ms, KSM_ADVISOR_TARGET_MIN - 1),
		BAD(advisor_target_scan_ms, KSM_ADVISOR_TARGET_MAX + 1),
		BAD(advisor_target_scan_ms, UINT64_MAX),
		BAD(advisor_max_cpu_percent, 0),
		BAD(advisor_max_cpu_percent, 101),
#undef BAD
	};
	struct ksm_config base, bad, c;
	size_t i;

	ASSERT_LT(1, total_ram_pages());
	ASSERT_EQ(0, ksm_get_config(self->fd, &base));
	for (i = 0; i < ARRAY_SIZE(bad_values); i++) {
		/* Valid changes alongside the bad one must not be applied. */
		bad = base;
		bad.pages_to_scan = base.pages_to_scan == 100 ? 101 : 100;
		bad.sleep_millisecs = base.sleep_millisecs == 20 ? 21 : 20;
		*(uint64_t *)((char *)&bad + bad_values[i].off) = bad_values[i].val;
		EXPECT_EQ(-EINVAL, ksm_set_config(self->fd, &bad))
			TH_LOG("%s", bad_values[i].name);
		ASSERT_EQ(0, ksm_get_config(self->fd, &c));
		EXPECT_EQ(0, memcmp(&c, &base, sizeof(c)))
			TH_LOG("%s changed the config", bad_values[i].name);
	}
}

static void expect_params(struct __test_metadata *_metadata,
			  const struct ksm_config *c)
{
	uint64_t v;

	EXPECT_EQ(0, ksm_read_param("run", &v));
	EXPECT_EQ(c->run, v);
	EXPECT_EQ(0, ksm_read_param("pages_to_scan", &v));
	EXPECT_EQ(c->pages_to_scan, v);
	EXPECT_EQ(0, ksm_read_param("sleep_millisecs", &v));
	EXPECT_EQ(c->sleep_millisecs, v);
	EXPECT_EQ(0, ksm_read_param("max_kernel_pages", &v));
	EXPECT_EQ(c->max_kernel_pages, v);
	EXPECT_EQ(0, ksm_read_param("use_zero_pages", &v));
	EXPECT_EQ(c->use_zero_pages, v);
	EXPECT_EQ(0, ksm_read_param("scan_all_pages", &v));
	EXPECT_EQ(c->scan_all_pages, v);
	EXPECT_EQ(0, ksm_read_param("merge_across_nodes", &v));
	EXPECT_EQ(c->merge_across_nodes, v);
	EXPECT_EQ(0, ksm_read_param("advisor_target_scan_ms", &v));
	EXPECT_EQ(c->advisor_target_scan_ms, v);
	EXPECT_EQ(0, ksm_read_param("advisor_max_cpu_percent", &v));
	EXPECT_EQ(c->advisor_max_cpu_percent, v);
}

static void set_and_check(struct __test_metadata *_metadata, int fd,
			  const struct ksm_config *want)
{
	struct ksm_config c;

	ASSERT_EQ(0, ksm_set_config(fd, want));
	ASSERT_EQ(0, ksm_get_config(fd, &c));
	EXPECT_EQ(0, memcmp(&c, want, sizeof(c)));
	expect_params(_metadata, want);
}

TEST_F(abi, config_round_trip)
{
	uint64_t total = total_ram_pages();
	struct ksm_config c, want;

	/* The defaults of ABI.md (a fresh module). */
	EXPECT_EQ(KSM_RUN_MERGE, self->saved.run);
	EXPECT_EQ(100, self->saved.pages_to_scan);
	EXPECT_EQ(20, self->saved.sleep_millisecs);
	EXPECT_EQ(0, self->saved.use_zero_pages);
	EXPECT_EQ(0, self->saved.scan_all_pages);
	EXPECT_EQ(1, self->saved.merge_across_nodes);
	EXPECT_EQ(0, self->saved.advisor_target_scan_ms);
	EXPECT_EQ(25, self->saved.advisor_max_cpu_percent);
	EXPECT_GE(total, self->saved.max_kernel_pages);
	expect_params(_metadata, &self->saved);

	want = (struct ksm_config) {
		.run = KSM_RUN_STOP, .pages_to_scan = 1234,
		.sleep_millisecs = 7, .max_kernel_pages = total / 8 + 3,
		.use_zero_pages = 1, .scan_all_pages = 1,
		.merge_across_nodes = 1, .advisor_target_scan_ms = 1234,
		.advisor_max_cpu_percent = 33,
	};
	set_and_check(_metadata, self->fd, &want);
	/* Limits are inclusive. */
	want.pages_to_scan = KSM_PAGES_TO_SCAN_MAX;
	want.sleep_millisecs = KSM_SLEEP_MSECS_MAX;
	want.max_kernel_pages = total;
	want.advisor_target_scan_ms = KSM_ADVISOR_TARGET_MAX;
	want.advisor_max_cpu_percent = 100;
	set_and_check(_metadata, self->fd, &want);
	want.pages_to_scan = 1;
	want.sleep_millisecs = 0;
	want.max_kernel_pages = 0;
	want.use_zero_pages = 0;
	want.scan_all_pages = 0;
	want.advisor_target_scan_ms = KSM_ADVISOR_TARGET_MIN;
	want.advisor_max_cpu_percent = 1;
	set_and_check(_metadata, self->fd, &want);
	want.advisor_target_scan_ms = 0;
	set_and_check(_metadata, self->fd, &want);
	/* Nothing merged: unmerge-all succeeds and reads back 2. */
	want.run = KSM_RUN_UNMERGE;
	set_and_check(_metadata, self->fd, &want);

	/* A module parameter written by root shows in GET_CONFIG. */
	ASSERT_EQ(0, ksm_write_param("pages_to_scan", 555));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(555, c.pages_to_scan);

	set_and_check(_metadata, self->fd, &self->saved);
}

/* ---- debugfs ---- */

static const char *const stat_names[] = {
	"pages_shared", "pages_sharing", "pages_unshared", "pages_volatile",
	"full_scans", "pages_scanned", "ksm_zero_pages", "regions", "mms",
	"registered_pages", "stable_nodes_limit_hits", "metadata_bytes",
	"pages_orphaned", "advisor_pages_to_scan",
};

static bool debugfs_ready(void)
{
	struct statfs sf;

	if (!statfs("/sys/kernel/debug", &sf) && sf.f_type == DEBUGFS_MAGIC)
		return true;
	return !mount("debugfs", "/sys/kernel/debug", "debugfs", 0, NULL);
}

/* Lines in a debugfs file, or -1. */
static long debugfs_lines(const char *name)
{
	char path[256], line[256];
	long n = 0;
	FILE *f;

	snprintf(path, sizeof(path), KSM_DEBUGFS_DIR "/%s", name);
	f = fopen(path, "r");
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f))
		n++;
	fclose(f);
	return n;
}

/*
 * Every counter has its file, except "mms" and "regions": those names are
 * the tables of contexts and of regions (ABI.md), whose line counts are
 * the counters.
 */
TEST_F(abi, debugfs_counters)
{
	size_t n = ARRAY_SIZE(stat_names);
	size_t ps = self->ps;
	struct ksm_stats s1, s2;
	uint64_t v[ARRAY_SIZE(stat_names)];
	char path[256];
	struct stat st;
	char *p;
	size_t i;

	ASSERT_EQ(sizeof(struct ksm_stats) / 8, n);
	if (!debugfs_ready())
		SKIP(return, "debugfs not available");
	p = ksm_mmap_anon(3 * ps);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, 3 * ps, 0));

	ASSERT_EQ(0, ksm_get_stats(self->fd, &s1));
	for (i = 0; i < n; i++) {
		snprintf(path, sizeof(path), KSM_DEBUGFS_DIR "/%s", stat_names[i]);
		ASSERT_EQ(0, stat(path, &st)) TH_LOG("%s missing", path);
		EXPECT_EQ(0, st.st_mode & 0222) TH_LOG("%s is writable", path);
		if (!strcmp(stat_names[i], "mms") ||
		    !strcmp(stat_names[i], "regions")) {
			v[i] = debugfs_lines(stat_names[i]);
			continue;
		}
		EXPECT_EQ(0, ksm_read_debugfs(stat_names[i], &v[i]))
			TH_LOG("%s: not a decimal value and newline", path);
	}
	ASSERT_EQ(0, ksm_get_stats(self->fd, &s2));
	/* The slow-moving ones, stable between the two ioctls. */
	ASSERT_EQ(s1.regions, s2.regions);
	ASSERT_EQ(s1.mms, s2.mms);
	ASSERT_EQ(s1.registered_pages, s2.registered_pages);
	EXPECT_EQ(s1.regions, v[7]);
	EXPECT_EQ(s1.mms, v[8]);
	EXPECT_EQ(s1.registered_pages, v[9]);
	EXPECT_LE(1, v[7]);
	EXPECT_LE(1, v[8]);
	EXPECT_LE(3, v[9]);
	/* Monotonic ones lie between the two ioctl snapshots. */
	EXPECT_LE(s1.full_scans, v[4]);
	EXPECT_GE(s2.full_scans, v[4]);
	EXPECT_LE(s1.pages_scanned, v[5]);
	EXPECT_GE(s2.pages_scanned, v[5]);
	munmap(p, 3 * ps);
}

TEST_F(abi, debugfs_mms)
{
	size_t ps = self->ps;
	unsigned long long pid, r, rp, mp;
	char line[256];
	int found = 0;
	FILE *f;
	char *p;

	if (!debugfs_ready())
		SKIP(return, "debugfs not available");
	p = ksm_mmap_anon(8 * ps);
	ASSERT_NE(NULL, p);
	ASSERT_EQ(0, ksm_register(self->fd, p, 3 * ps, 0));
	ASSERT_EQ(0, ksm_register(self->fd, p + 4 * ps, 2 * ps, 0));

	f = fopen(KSM_DEBUGFS_DIR "/mms", "r");
	ASSERT_NE(NULL, f) TH_LOG(KSM_DEBUGFS_DIR "/mms: %s", strerror(errno));
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llu %llu %llu %llu", &pid, &r, &rp, &mp) != 4)
			continue;
		if (pid != (unsigned long long)getpid())
			continue;
		found++;
		EXPECT_EQ(2, r);
		EXPECT_EQ(5, rp);
		EXPECT_EQ(0, mp);
	}
	fclose(f);
	EXPECT_EQ(1, found) TH_LOG("lines for pid %d in mms", getpid());
	munmap(p, 8 * ps);
}

TEST_HARNESS_MAIN
