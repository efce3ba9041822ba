// SPDX-License-Identifier: GPL-2.0
/*
 * fakevm: a program that treats its memory as QEMU treats guest RAM, for
 * tests/preload.c to run under libksmdev-preload.so. Not a test itself;
 * linked dynamically (LD_PRELOAD needs the dynamic loader).
 *
 *   fakevm BLOCKS MIB
 *
 * Maps BLOCKS "RAM blocks" of MIB MiB each; two "vCPU" threads fill them
 * (the first half of every block holds the same pages in every block, the
 * rest is unique) and each advises its blocks MADV_MERGEABLE, as QEMU's
 * mem-merge does. Prints "ready", then answers commands on stdin, a line
 * each:
 *   check        every byte as written: "ok", or "bad N" (pages)
 *   addr B       block B's address now: "addr 0x..."
 *   munmap B [FIRST N]   unmap block B (as a RAM block's removal), or
 *                its pages FIRST .. FIRST + N - 1: "done R"
 *   unmerge B [FIRST N]  madvise(MADV_UNMERGEABLE) on block B, or on
 *                those pages of it: "done R"
 *   mremap B PAGES FLAGS mremap() block B to PAGES pages (at most twice
 *                its size), FLAGS a word of m (MREMAP_MAYMOVE), f
 *                (MREMAP_FIXED, to a fresh place), d (MREMAP_DONTUNMAP)
 *                or "-": "done R". A grown tail is written with the
 *                values of the shared half, page after page.
 *   dontneed B   madvise(MADV_DONTNEED) on block B's first page, which
 *                then reads as zeros: "done R" (R: 0 if both held)
 *   exit         exit 0
 * R is 0 or the errno of the call.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define MAX_BLOCKS	16

#ifndef MREMAP_DONTUNMAP
#define MREMAP_DONTUNMAP	4
#endif

static size_t ps, npages, nblocks;
static char *block[MAX_BLOCKS];
static int unmapped[MAX_BLOCKS];
static size_t len[MAX_BLOCKS];		/* pages, npages until a mremap */
static char *gone[MAX_BLOCKS];		/* per page: unmapped by a munmap */

/* The first half shared by every block, the rest unique; a grown tail shared. */
static uint64_t page_value(size_t b, size_t i)
{
	if (i >= npages)
		return 0x1000 + (i - npages) % (npages / 2);
	return i < npages / 2 ? 0x1000 + i : ((uint64_t)(b + 1) << 32) + i;
}

static void fill_pages(size_t b, size_t first, size_t end)
{
	size_t i, k;

	for (i = first; i < end; i++) {
		uint64_t *w = (uint64_t *)(block[b] + i * ps);

		for (k = 0; k < ps / 8; k++)
			w[k] = page_value(b, i) * 0x9e3779b97f4a7c15ULL + k;
	}
}

static void fill(size_t b)
{
	fill_pages(b, 0, npages);
}

static size_t bad_pages(size_t b)
{
	size_t i, k, bad = 0;

	for (i = 0; i < len[b]; i++) {
		const uint64_t *w = (const uint64_t *)(block[b] + i * ps);

		if (gone[b][i])
			continue;
		for (k = 0; k < ps / 8; k++)
			if (w[k] != page_value(b, i) * 0x9e3779b97f4a7c15ULL + k &&
			    !(i == 0 && w[k] == 0))
				break;
		bad += k < ps / 8;
	}
	return bad;
}

/* mremap B PAGES FLAGS: 0 or the errno. */
static int do_mremap(size_t b, size_t pages, const char *how)
{
	int flags = 0;
	void *to = NULL, *p;

	if (!pages || pages > 2 * npages)
		return EINVAL;
	flags |= strchr(how, 'm') ? MREMAP_MAYMOVE : 0;
	flags |= strchr(how, 'd') ? MREMAP_DONTUNMAP : 0;
	if (strchr(how, 'f')) {
		flags |= MREMAP_FIXED;
		to = mmap(NULL, pages * ps, PROT_NONE,
			  MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (to == MAP_FAILED)
			return errno;
	}
	p = mremap(block[b], len[b] * ps, pages * ps, flags, to);
	if (p == MAP_FAILED)
		return errno;
	block[b] = p;
	if (pages > len[b]) {
		memset(gone[b] + len[b], 0, pages - len[b]);
		fill_pages(b, len[b], pages);
	}
	len[b] = pages;
	return 0;
}

/* A vCPU thread: fills and advises every other block. */
static void *vcpu(void *arg)
{
	size_t b;

	for (b = (uintptr_t)arg; b < nblocks; b += 2) {
		fill(b);
		if (madvise(block[b], npages * ps, MADV_MERGEABLE))
			return (void *)(uintptr_t)errno;
	}
	return NULL;
}

int main(int argc, char **argv)
{
	pthread_t t[2];
	char line[64];
	void *ret;
	size_t b, bad;
	int i, r;

	ps = sysconf(_SC_PAGESIZE);
	if (argc != 3 || atoi(argv[1]) < 1 || atoi(argv[1]) > MAX_BLOCKS ||
	    atoi(argv[2]) < 1) {
		fprintf(stderr, "usage: fakevm BLOCKS MIB\n");
		return 2;
	}
	nblocks = atoi(argv[1]);
	npages = ((size_t)atoi(argv[2]) << 20) / ps;
	for (b = 0; b < nblocks; b++) {
		block[b] = mmap(NULL, npages * ps, PROT_READ | PROT_WRITE,
				MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		gone[b] = calloc(2 * npages, 1);
		if (block[b] == MAP_FAILED || !gone[b])
			return 3;
		len[b] = npages;
		/* QEMU asks for THP on guest RAM: the merge splits them. */
		madvise(block[b], npages * ps, MADV_HUGEPAGE);
	}
	for (i = 0; i < 2; i++)
		if (pthread_create(&t[i], NULL, vcpu, (void *)(uintptr_t)i))
			return 4;
	for (i = 0; i < 2; i++) {
		pthread_join(t[i], &ret);
		if (ret) {
			fprintf(stderr, "madvise(MADV_MERGEABLE): %s\n",
				strerror((int)(uintptr_t)ret));
			return 5;
		}
	}
	setvbuf(stdout, NULL, _IOLBF, 0);
	printf("ready\n");

	while (fgets(line, sizeof(line), stdin)) {
		size_t first = 0, n = 0, pages = 0;
		char how[8] = "";
		int args;

		b = 0;
		if (!strncmp(line, "check", 5)) {
			for (bad = 0, b = 0; b < nblocks; b++)
				if (!unmapped[b])
					bad += bad_pages(b);
			if (bad)
				printf("bad %zu\n", bad);
			else
				printf("ok\n");
			continue;
		}
		if (!strncmp(line, "exit", 4))
			return 0;
		args = sscanf(line, "%*s %zu %zu %zu", &b, &first, &n);
		if (args < 1 || b >= nblocks || unmapped[b]) {
			printf("error\n");
			continue;
		}
		if (args < 3) {
			first = 0;
			n = len[b];
		} else if (first >= len[b] || n > len[b] - first) {
			printf("error\n");
			continue;
		}
		if (!strncmp(line, "addr", 4)) {
			printf("addr %p\n", (void *)block[b]);
			continue;
		} else if (!strncmp(line, "munmap", 6)) {
			r = munmap(block[b] + first * ps, n * ps) ? errno : 0;
			if (!r)
				memset(gone[b] + first, 1, n);
			unmapped[b] = !r && n == len[b];
		} else if (!strncmp(line, "unmerge", 7)) {
			r = madvise(block[b] + first * ps, n * ps,
				    MADV_UNMERGEABLE) ? errno : 0;
		} else if (!strncmp(line, "mremap", 6)) {
			if (sscanf(line, "%*s %*u %zu %7s", &pages, how) != 2) {
				printf("error\n");
				continue;
			}
			r = do_mremap(b, pages, how);
		} else if (!strncmp(line, "dontneed", 8)) {
			r = madvise(block[b], ps, MADV_DONTNEED) ? errno : 0;
			if (!r && block[b][0] != 0)
				r = EIO;
		} else {
			printf("error\n");
			continue;
		}
		printf("done %d\n", r);
	}
	return 0;
}
