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
 *   munmap B     unmap block B (as a RAM block's removal): "done R"
 *   unmerge B    madvise(MADV_UNMERGEABLE) on block B: "done R"
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

static size_t ps, npages, nblocks;
static char *block[MAX_BLOCKS];
static int unmapped[MAX_BLOCKS];

static uint64_t page_value(size_t b, size_t i)
{
	return i < npages / 2 ? 0x1000 + i : ((uint64_t)(b + 1) << 32) + i;
}

static void fill(size_t b)
{
	size_t i, k;

	for (i = 0; i < npages; i++) {
		uint64_t *w = (uint64_t *)(block[b] + i * ps);

		for (k = 0; k < ps / 8; k++)
			w[k] = page_value(b, i) * 0x9e3779b97f4a7c15ULL + k;
	}
}

static size_t bad_pages(size_t b)
{
	size_t i, k, bad = 0;

	for (i = 0; i < npages; i++) {
		const uint64_t *w = (const uint64_t *)(block[b] + i * ps);

		for (k = 0; k < ps / 8; k++)
			if (w[k] != page_value(b, i) * 0x9e3779b97f4a7c15ULL + k &&
			    !(i == 0 && w[k] == 0))
				break;
		bad += k < ps / 8;
	}
	return bad;
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
		if (block[b] == MAP_FAILED)
			return 3;
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
		if (sscanf(line, "%*s %zu", &b) != 1 || b >= nblocks || unmapped[b]) {
			printf("error\n");
			continue;
		}
		if (!strncmp(line, "munmap", 6)) {
			r = munmap(block[b], npages * ps) ? errno : 0;
			unmapped[b] = !r;
		} else if (!strncmp(line, "unmerge", 7)) {
			r = madvise(block[b], npages * ps, MADV_UNMERGEABLE) ? errno : 0;
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
