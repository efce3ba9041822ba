// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdev demo (make demo), not a test: two processes register 32 MiB each of
 * mostly duplicate pages, and the counters are printed once a second.
 *
 * Runs as root in a QEMU guest with ksmdev loaded.
 */
#define _GNU_SOURCE
#define KSMDEV_NO_HARNESS
#include "ksmdev_test.h"

#define NR_CHILDREN	2
#define AREA_SIZE	(32UL << 20)
#define SECONDS		15

/* Seven pages in eight repeat one of four patterns; the eighth is unique. */
static void fill_area(char *p, size_t npages)
{
	size_t ps = ksm_page_size(), i;

	for (i = 0; i < npages; i++) {
		if (i % 8 == 7)
			ksm_fill_page(p, i, getpid());
		else
			memset(p + i * ps, 'a' + i % 4, ps);
	}
}

static void child_main(int ready, int go)
{
	size_t npages = AREA_SIZE / ksm_page_size();
	char c = 0, *p;
	int fd;

	fd = ksm_open();
	p = ksm_mmap_anon(AREA_SIZE);
	if (fd < 0 || !p) {
		perror("demo child");
		_exit(1);
	}
	fill_area(p, npages);
	if (ksm_register(fd, p, AREA_SIZE, 0)) {
		fprintf(stderr, "demo child: register failed\n");
		_exit(1);
	}
	if (write(ready, &c, 1) != 1)
		_exit(1);
	while (read(go, &c, 1) > 0)
		;
	_exit(0);
}

int main(void)
{
	int ready[2], go[2], fd, i, status, ret = 0;
	struct ksm_config saved, cfg;
	struct ksm_stats s;
	pid_t pid[NR_CHILDREN];
	char c;

	fd = ksm_open();
	if (fd < 0) {
		perror("open " KSM_DEV_PATH);
		return 1;
	}
	if (ksm_get_config(fd, &saved) || pipe(ready) || pipe(go)) {
		perror("demo setup");
		return 1;
	}
	for (i = 0; i < NR_CHILDREN; i++) {
		pid[i] = fork();
		if (pid[i] < 0) {
			perror("fork");
			return 1;
		}
		if (pid[i] == 0) {
			close(ready[0]);
			close(go[1]);
			child_main(ready[1], go[0]);
		}
	}
	close(ready[1]);
	close(go[0]);
	for (i = 0; i < NR_CHILDREN; i++) {
		if (read(ready[0], &c, 1) != 1) {
			fprintf(stderr, "demo: a child failed to register\n");
			ret = 1;
			goto out;
		}
	}
	printf("%d processes registered %lu MiB each (7/8 duplicate pages)\n",
	       NR_CHILDREN, AREA_SIZE >> 20);
	/* A moderate pace, so that the saving is seen to rise. */
	cfg = saved;
	cfg.run = KSM_RUN_MERGE;
	cfg.pages_to_scan = 256;
	cfg.sleep_millisecs = 20;
	printf("scanning %llu pages every %llu ms\n",
	       (unsigned long long)cfg.pages_to_scan,
	       (unsigned long long)cfg.sleep_millisecs);
	if (ksm_set_config(fd, &cfg))
		fprintf(stderr, "demo: cannot set the scan pace\n");
	for (i = 1; i <= SECONDS; i++) {
		ksm_sleep_ms(1000);
		if (ksm_get_stats(fd, &s)) {
			perror("KSM_GET_STATS");
			ret = 1;
			break;
		}
		printf("%3ds full_scans %llu pages_scanned %llu ", i,
		       (unsigned long long)s.full_scans,
		       (unsigned long long)s.pages_scanned);
		printf("pages_shared %llu pages_sharing %llu saved %.1f MiB\n",
		       (unsigned long long)s.pages_shared,
		       (unsigned long long)s.pages_sharing,
		       s.pages_sharing * 4096.0 / (1 << 20));
		fflush(stdout);
	}
out:
	ksm_set_config(fd, &saved);
	close(go[1]);
	for (i = 0; i < NR_CHILDREN; i++) {
		if (ksm_waitpid_timeout(pid[i], &status, 30) ||
		    ksm_exit_code(status))
			ret = 1;
	}
	close(fd);
	return ret;
}
