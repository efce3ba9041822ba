// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdevctl: look at and steer ksmdev from the command line.
 *
 *   ksmdevctl status                    counters, settings, the memory saved
 *   ksmdevctl watch [SECONDS [COUNT]]   refreshing view, rates per second
 *   ksmdevctl ps                        one line per context
 *   ksmdevctl mms                       debugfs "mms" as it is
 *   ksmdevctl set KEY=VALUE... | --file FILE
 *   ksmdevctl unmerge-all               run=2: unmerge everything and stop
 *   ksmdevctl merge --pid PID... [--domain N]
 *   ksmdevctl merge --cgroup PATH [--domain N] [--follow SECONDS]
 *   ksmdevctl unmerge --pid PID...
 *
 * Options go anywhere on the line (--json, --version, --help). Numbers are
 * decimal only. Exit status: 0 done; 1 the kernel (or the system) said no,
 * the message names the errno and what to do; 2 bad usage. Plain C, libc
 * only.
 */
#define _GNU_SOURCE
#include <ctype.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/vfs.h>
#include <time.h>
#include <unistd.h>

#include <linux/ksmdev.h>

/* The Makefile passes dkms.conf's PACKAGE_VERSION, as Kbuild does. */
#ifndef KSMDEV_VERSION
#define KSMDEV_VERSION	"unknown"
#endif

#ifndef SYS_pidfd_open
#define SYS_pidfd_open	434
#endif
#define CGROUP2_MAGIC	0x63677270	/* <linux/magic.h> CGROUP2_SUPER_MAGIC */

#define DEV_PATH	"/dev/ksm"
#define DEBUGFS_DIR	"/sys/kernel/debug/ksm"
#define MODULE_DIR	"/sys/module/ksmdev"
#define UDEV_RULE	"60-ksmdev.rules"

enum { EXIT_KERNEL = 1, EXIT_USAGE = 2 };

static const char *prog = "ksmdevctl";
static int json;

#define STAT(f)	{ #f, offsetof(struct ksm_stats, f) }
static const struct field {
	const char *name;
	size_t off;
} stat_fields[] = {
	STAT(pages_shared), STAT(pages_sharing), STAT(pages_unshared),
	STAT(pages_volatile), STAT(full_scans), STAT(pages_scanned),
	STAT(ksm_zero_pages), STAT(regions), STAT(mms), STAT(registered_pages),
	STAT(stable_nodes_limit_hits), STAT(metadata_bytes),
	STAT(pages_orphaned), STAT(advisor_pages_to_scan),
};

#undef STAT

#define CONF(f)	{ #f, offsetof(struct ksm_config, f) }
static const struct field config_fields[] = {
	CONF(run), CONF(pages_to_scan), CONF(sleep_millisecs),
	CONF(max_kernel_pages), CONF(use_zero_pages), CONF(scan_all_pages),
	CONF(merge_across_nodes), CONF(advisor_target_scan_ms),
	CONF(advisor_max_cpu_percent),
};

#undef CONF

#define NFIELDS(a)	(sizeof(a) / sizeof((a)[0]))

static unsigned long long field(const void *s, const struct field *f)
{
	return *(const __u64 *)((const char *)s + f->off);
}

static void print_help(FILE *out)
{
	fprintf(out,
		"usage: %s status\n"
		"       %s watch [SECONDS [COUNT]]\n"
		"       %s ps\n"
		"       %s mms\n"
		"       %s set KEY=VALUE... | set --file FILE\n"
		"       %s unmerge-all\n"
		"       %s merge --pid PID... [--domain N]\n"
		"       %s merge --cgroup PATH [--domain N] [--follow SECONDS]\n"
		"       %s unmerge --pid PID...\n"
		"       %s --version\n"
		"\n"
		"status       every counter of ksmdev, its settings, and what merging saves:\n"
		"             saved = (pages_sharing + ksm_zero_pages) pages, less\n"
		"             metadata_bytes (the in-kernel KSM's general_profit); with\n"
		"             debugfs mounted, its diagnostics too (merge_events, cow_breaks,\n"
		"             unmerge_events, pages_skipped, stable_unused); ksmdevctl's\n"
		"             own open of the device counts as one of the mms\n"
		"watch        status at once, then every SECONDS (default 1), COUNT times\n"
		"             (default: until Ctrl-C), with rates per second over the time\n"
		"             measured between two refreshes; clears the screen only on a\n"
		"             terminal\n"
		"ps           one line per context (debugfs mms): pid, command, domain,\n"
		"             registered, merging, saved MiB, metadata, profit\n"
		"mms          debugfs mms as it is: pid, regions, registered_pages,\n"
		"             merging_pages\n"
		"set          KEY is one of run (0 stop, 1 merge, 2 unmerge all and stop),\n"
		"             pages_to_scan, sleep_millisecs, max_kernel_pages (0: no limit),\n"
		"             use_zero_pages (0/1), scan_all_pages (0/1),\n"
		"             merge_across_nodes (0/1), advisor_target_scan_ms (0 off, or\n"
		"             100..3600000), advisor_max_cpu_percent (1..100); all are applied\n"
		"             together or none is; needs CAP_SYS_ADMIN. --file FILE reads\n"
		"             KEY=VALUE lines from FILE (# starts a comment line), as\n"
		"             ksmdev.service does with /etc/ksmdev/ksmdev.conf\n"
		"unmerge-all  the same as set run=2: every merged page gets a private\n"
		"             copy again, and the scanner stops (set run=1 resumes)\n"
		"merge        enrol running processes: all their private anonymous memory,\n"
		"             now and later, in a context that stays when ksmdevctl exits\n"
		"             and ends with the process (module API version 2). --pid: the\n"
		"             processes named; --cgroup: every process of a cgroup v2\n"
		"             directory and its children, and with --follow, every SECONDS\n"
		"             the ones that appear, until SIGINT or SIGTERM. --domain N: a\n"
		"             merge domain, pages merge only within it (0, the default, is\n"
		"             the global one; others need CAP_SYS_ADMIN)\n"
		"unmerge      the reverse for each PID: unregister, and unmerge its pages\n"
		"--json       status, watch, ps and mms print JSON, one line per result\n"
		"--version    ksmdevctl's version and the loaded module's API version\n"
		"\n"
		"Numbers are decimal (010 is ten). Exit status: 0 done, 1 the kernel\n"
		"refused (the message says why), 2 bad usage. The device is " DEV_PATH ";\n"
		"ksmdevctl(8) tells more.\n",
		prog, prog, prog, prog, prog, prog, prog, prog, prog, prog);
}

static int __attribute__((format(printf, 1, 2))) usage_error(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "%s: ", prog);
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n(%s --help tells more)\n", prog);
	return EXIT_USAGE;
}

/*
 * parse_dec - @s as a decimal number in [@min, @max] into *@out; a usage
 * error that names @what otherwise. Decimal only: strtoull()'s base 0 read
 * "010" as eight and "0x10" as sixteen, and its base 10 skips blanks and
 * takes a sign ("-1" is ULLONG_MAX).
 */
static int parse_dec(const char *what, const char *s, unsigned long long min,
		     unsigned long long max, unsigned long long *out)
{
	unsigned long long v = 0;
	const char *p;

	if (s[0] == '-' && isdigit((unsigned char)s[1]))
		return usage_error("%s: '%s' is negative; a number from %llu to %llu is needed",
				   what, s, min, max);
	if (!*s)
		return usage_error("%s: a number is needed", what);
	for (p = s; *p; p++) {
		if (!isdigit((unsigned char)*p))
			return usage_error("%s: '%s' is not a decimal number (digits 0-9 only)",
					   what, s);
		if (v > (ULLONG_MAX - (*p - '0')) / 10)
			return usage_error("%s: '%s' is too large (at most %llu)",
					   what, s, max);
		v = v * 10 + (*p - '0');
	}
	if (v < min || v > max)
		return usage_error("%s: '%s' is out of range (%llu to %llu)",
				   what, s, min, max);
	*out = v;
	return 0;
}

/* errno's message, and what to do about the usual ones. */
static int kernel_error(const char *what)
{
	int err = errno;

	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(err));
	if (err == EPERM && strstr(what, "SET_CONFIG"))
		fprintf(stderr, "%s: changing settings needs CAP_SYS_ADMIN: run it as root\n",
			prog);
	return EXIT_KERNEL;
}

/* The device could not be opened: why, and what to do. */
static int dev_error(void)
{
	int err = errno;

	fprintf(stderr, "%s: %s: %s\n", prog, DEV_PATH, strerror(err));
	if (err == ENOENT && access(MODULE_DIR, F_OK))
		fprintf(stderr, "%s: the ksmdev module is not loaded: modprobe ksmdev (as root)\n",
			prog);
	else if (err == ENOENT)
		fprintf(stderr, "%s: ksmdev is loaded but there is no %s: is /dev a devtmpfs, is udev running?\n",
			prog, DEV_PATH);
	else if (err == EACCES || err == EPERM)
		fprintf(stderr,
			"%s: %s belongs to root unless the udev rule " UDEV_RULE " (packaging/" UDEV_RULE
			", installed in /usr/lib/udev/rules.d/) gives it to the kvm group: run as root, or\n"
			"%s: add the user to kvm (adduser USER kvm) and log in again\n",
			prog, DEV_PATH, prog);
	return EXIT_KERNEL;
}

static int open_dev(void)
{
	return open(DEV_PATH, O_RDWR | O_CLOEXEC);
}

static int get_all(int fd, struct ksm_stats *s, struct ksm_config *c)
{
	if (ioctl(fd, KSM_GET_STATS, s))
		return kernel_error("KSM_GET_STATS");
	if (ioctl(fd, KSM_GET_CONFIG, c))
		return kernel_error("KSM_GET_CONFIG");
	return 0;
}

static double mib(unsigned long long bytes)
{
	return bytes / 1048576.0;
}

static unsigned long long page_size(void)
{
	return sysconf(_SC_PAGESIZE);
}

/* Bytes saved by merging. */
static unsigned long long saved_bytes(const struct ksm_stats *s)
{
	return (s->pages_sharing + s->ksm_zero_pages) * page_size();
}

/* ... less what ksmdev spends to do it (the in-kernel general_profit). */
static long long profit(const struct ksm_stats *s)
{
	return (long long)saved_bytes(s) - (long long)s->metadata_bytes;
}

/*
 * read_u64_file - the decimal number that is all of @path (a newline
 * allowed): 0, or -1 if it cannot be read or holds anything else.
 */
static int read_u64_file(const char *path, unsigned long long *v)
{
	char buf[64], *end;
	ssize_t n;
	int fd = open(path, O_RDONLY | O_CLOEXEC);

	if (fd < 0)
		return -1;
	n = read(fd, buf, sizeof(buf) - 1);
	close(fd);
	if (n <= 0 || !isdigit((unsigned char)buf[0]))
		return -1;
	buf[n] = 0;
	errno = 0;
	*v = strtoull(buf, &end, 10);
	return errno || (*end && strcmp(end, "\n")) ? -1 : 0;
}

/*
 * The debugfs diagnostics: every file of /sys/kernel/debug/ksm/ that holds
 * one number and is not a struct ksm_stats field (merge_events, cow_breaks,
 * unmerge_events, pages_skipped, stable_unused today), sorted by name.
 * n < 0: none readable, errno says why.
 */
#define MAX_DIAG	16
struct diag {
	int n;
	int err;
	char name[MAX_DIAG][40];
	unsigned long long val[MAX_DIAG];
};

static int cmp_name(const void *a, const void *b)
{
	return strcmp(*(char *const *)a, *(char *const *)b);
}

static void read_diag(struct diag *d)
{
	char path[sizeof(DEBUGFS_DIR) + 300], *names[MAX_DIAG];
	char tmp[MAX_DIAG][40];
	unsigned long long v;
	struct dirent *e;
	size_t i;
	int k, n = 0;
	DIR *dir;

	d->n = -1;
	dir = opendir(DEBUGFS_DIR);
	if (!dir) {
		d->err = errno;
		return;
	}
	while ((e = readdir(dir)) && n < MAX_DIAG) {
		if (e->d_name[0] == '.' || strlen(e->d_name) >= sizeof(tmp[0]))
			continue;
		for (i = 0; i < NFIELDS(stat_fields); i++)
			if (!strcmp(e->d_name, stat_fields[i].name))
				break;
		if (i < NFIELDS(stat_fields))
			continue;
		snprintf(path, sizeof(path), "%s/%s", DEBUGFS_DIR, e->d_name);
		if (read_u64_file(path, &v))
			continue;
		strcpy(tmp[n], e->d_name);
		names[n] = tmp[n];
		n++;
	}
	closedir(dir);
	qsort(names, n, sizeof(names[0]), cmp_name);
	for (k = 0; k < n; k++) {
		strcpy(d->name[k], names[k]);
		snprintf(path, sizeof(path), "%s/%s", DEBUGFS_DIR, names[k]);
		if (read_u64_file(path, &d->val[k]))
			d->val[k] = 0;
	}
	d->n = n;
}

static unsigned long long diag_val(const struct diag *d, const char *name, int *found)
{
	int i;

	for (i = 0; i < d->n; i++)
		if (!strcmp(d->name[i], name)) {
			*found = 1;
			return d->val[i];
		}
	*found = 0;
	return 0;
}

static const char *diag_what(const char *name)
{
	static const char *const known[][2] = {
		{ "merge_events", "pages merged (PTEs replaced)" },
		{ "cow_breaks", "merged pages found written (copied on write)" },
		{ "unmerge_events", "merged pages given a private copy by unmerging" },
		{ "pages_skipped", "visits smart scan saved" },
		{ "stable_unused", "merged pages made for a merge that failed" },
	};
	size_t i;

	for (i = 0; i < NFIELDS(known); i++)
		if (!strcmp(known[i][0], name))
			return known[i][1];
	return "";
}

/* @extra: more JSON members (",\"k\":v..."), or NULL. */
static void print_status(const struct ksm_stats *s, const struct ksm_config *c,
			 const struct diag *d, const char *extra)
{
	static const char *const what[] = {
		"pages  merged pages in use",
		"pages  further mappings of them (saved)",
		"pages  unique, checked repeatedly",
		"pages  changing too fast to merge",
		"",
		"pages",
		"pages  mapped to the zero page",
		"",
		"contexts",
		"pages",
		"merges refused at max_kernel_pages",
		"bytes",
		"pages  merged, mapped by no registered page",
		"pages  per batch, as the advisor sets it",
	};
	size_t i;
	int k;

	_Static_assert(NFIELDS(what) == NFIELDS(stat_fields),
		       "a description for every counter");
	if (json) {
		printf("{");
		for (i = 0; i < NFIELDS(stat_fields); i++)
			printf("\"%s\":%llu,", stat_fields[i].name,
			       field(s, &stat_fields[i]));
		printf("\"config\":{");
		for (i = 0; i < NFIELDS(config_fields); i++)
			printf("%s\"%s\":%llu", i ? "," : "",
			       config_fields[i].name, field(c, &config_fields[i]));
		printf("},\"page_size\":%llu,\"saved_bytes\":%llu,\"general_profit\":%lld",
		       page_size(), saved_bytes(s), profit(s));
		if (d->n >= 0) {
			printf(",\"debugfs\":{");
			for (k = 0; k < d->n; k++)
				printf("%s\"%s\":%llu", k ? "," : "", d->name[k], d->val[k]);
			printf("}");
		}
		printf("%s}\n", extra ? extra : "");
		return;
	}
	for (i = 0; i < NFIELDS(stat_fields); i++)
		printf("%-24s %14llu %s\n", stat_fields[i].name,
		       field(s, &stat_fields[i]), what[i]);
	printf("%-24s %14.1f MiB    registered_pages\n", "registered",
	       mib(s->registered_pages * page_size()));
	printf("%-24s %14.1f MiB    (pages_sharing + ksm_zero_pages)\n",
	       "saved", mib(saved_bytes(s)));
	printf("%-24s %14.1f MiB    (saved - metadata_bytes)\n",
	       "general_profit", profit(s) / 1048576.0);
	printf("settings:");
	for (i = 0; i < NFIELDS(config_fields); i++)
		printf(" %s=%llu", config_fields[i].name,
		       field(c, &config_fields[i]));
	printf("\n");
	if (d->n < 0) {
		printf("diagnostics: %s: %s%s\n", DEBUGFS_DIR, strerror(d->err),
		       d->err == ENOENT ? " (mount -t debugfs none /sys/kernel/debug)" :
		       d->err == EACCES ? " (debugfs is root's)" : "");
		return;
	}
	printf("diagnostics (debugfs, since the module was loaded):\n");
	for (k = 0; k < d->n; k++)
		printf("%-24s %14llu %s\n", d->name[k], d->val[k],
		       diag_what(d->name[k]));
}

static int cmd_status(void)
{
	struct ksm_config c;
	struct ksm_stats s;
	struct diag d;
	int fd = open_dev(), ret;

	if (fd < 0)
		return dev_error();
	ret = get_all(fd, &s, &c);
	close(fd);
	read_diag(&d);
	if (!ret)
		print_status(&s, &c, &d, NULL);
	return ret;
}

/* Set by SIGINT/SIGTERM: the C standard's type for a handler's flag. */
static volatile sig_atomic_t stop;

static void on_signal(int sig)
{
	(void)sig;
	stop = 1;
}

/* SIGINT and SIGTERM end the loops; no SA_RESTART, so that a sleep ends too. */
static void catch_signals(void)
{
	struct sigaction sa = { .sa_handler = on_signal };

	sigemptyset(&sa.sa_mask);
	sigaction(SIGINT, &sa, NULL);
	sigaction(SIGTERM, &sa, NULL);
}

static double ts_sec(const struct timespec *t)
{
	return t->tv_sec + t->tv_nsec / 1e9;
}

/* Sleep until @t (CLOCK_MONOTONIC) or a signal that sets stop. */
static void sleep_until(const struct timespec *t)
{
	while (!stop && clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, t, NULL) == EINTR)
		;
}

static int cmd_watch(int argc, char **argv)
{
	unsigned long long secs = 1, count = 0, n;
	struct timespec now, prev_t = { 0 }, next;
	struct ksm_stats s, prev = { 0 };
	struct diag d, prev_d = { .n = -1 };
	double dt, scanned, scans, saved;
	char extra[512], when[32];
	int fd, ret, tty = isatty(STDOUT_FILENO), f1, f2;
	struct ksm_config c;
	time_t wall;

	if (argc > 2)
		return usage_error("watch takes at most SECONDS and COUNT");
	if (argc >= 1 && parse_dec("watch: SECONDS", argv[0], 1, 3600, &secs))
		return EXIT_USAGE;
	if (argc == 2 && parse_dec("watch: COUNT", argv[1], 1, 1000000000, &count))
		return EXIT_USAGE;
	fd = open_dev();
	if (fd < 0)
		return dev_error();
	catch_signals();
	clock_gettime(CLOCK_MONOTONIC, &next);
	for (n = 1; !stop; n++) {
		ret = get_all(fd, &s, &c);
		clock_gettime(CLOCK_MONOTONIC, &now);
		if (ret)
			break;
		read_diag(&d);
		/* The time that really passed: a late wakeup is no faster scanner. */
		dt = ts_sec(&now) - ts_sec(&prev_t);
		if (dt <= 0)
			dt = 1e-9;
		scanned = (s.pages_scanned - prev.pages_scanned) / dt;
		scans = (s.full_scans - prev.full_scans) / dt;
		saved = ((double)s.pages_sharing + s.ksm_zero_pages -
			 prev.pages_sharing - prev.ksm_zero_pages) / dt;
		extra[0] = 0;
		if (n > 1) {
			snprintf(extra, sizeof(extra),
				 ",\"interval_seconds\":%.3f,\"per_second\":{\"pages_scanned\":%.1f,"
				 "\"full_scans\":%.3f,\"pages_saved\":%.1f",
				 dt, scanned, scans, saved);
			diag_val(&d, "merge_events", &f1);
			diag_val(&prev_d, "merge_events", &f2);
			if (f1 && f2)
				snprintf(extra + strlen(extra), sizeof(extra) - strlen(extra),
					 ",\"merge_events\":%.1f,\"cow_breaks\":%.1f",
					 (diag_val(&d, "merge_events", &f1) -
					  diag_val(&prev_d, "merge_events", &f2)) / dt,
					 (diag_val(&d, "cow_breaks", &f1) -
					  diag_val(&prev_d, "cow_breaks", &f2)) / dt);
			strcat(extra, "}");
		}
		if (!json) {
			/* Escape codes only for a terminal: a pipe or a file gets text. */
			if (tty)
				printf("\033[H\033[2J");
			wall = time(NULL);
			strftime(when, sizeof(when), "%H:%M:%S", localtime(&wall));
			printf("--- %s, refresh %llu", when, n);
			if (count)
				printf(" of %llu", count);
			printf(", every %llu s\n", secs);
		}
		print_status(&s, &c, &d, json ? extra : NULL);
		if (!json && n > 1)
			printf("per second (over %.2f s): %.0f pages scanned, %.2f full scans, %+.0f pages saved\n",
			       dt, scanned, scans, saved);
		if (!tty && !json)
			printf("\n");
		fflush(stdout);
		prev = s;
		prev_d = d;
		prev_t = now;
		if (count && n == count)
			break;
		next.tv_sec += secs;
		/* Fell behind (stopped, or a slow read): the next one a full interval on. */
		if (ts_sec(&next) < ts_sec(&now)) {
			next = now;
			next.tv_sec += secs;
		}
		sleep_until(&next);
	}
	close(fd);
	return ret;
}

static void json_string(const char *s)
{
	putchar('"');
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			printf("\\%c", *s);
		else if ((unsigned char)*s < 0x20)
			printf("\\u%04x", *s);
		else
			putchar(*s);
	}
	putchar('"');
}

static FILE *open_debugfs(const char *name)
{
	char path[sizeof(DEBUGFS_DIR) + 32];
	FILE *f;

	snprintf(path, sizeof(path), "%s/%s", DEBUGFS_DIR, name);
	f = fopen(path, "re");
	if (!f) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		if (errno == ENOENT && access(MODULE_DIR, F_OK))
			fprintf(stderr, "%s: the ksmdev module is not loaded: modprobe ksmdev (as root)\n",
				prog);
		else if (errno == ENOENT)
			fprintf(stderr, "%s: is debugfs mounted? (mount -t debugfs none /sys/kernel/debug)\n",
				prog);
		else if (errno == EACCES)
			fprintf(stderr, "%s: debugfs is readable by root only\n", prog);
	}
	return f;
}

static int cmd_mms(void)
{
	unsigned long long pid, regions, registered, merging;
	FILE *f = open_debugfs("mms");
	char line[256];
	int n = 0;

	if (!f)
		return EXIT_KERNEL;
	if (json)
		printf("[");
	else
		printf("%8s %8s %16s %16s\n", "pid", "regions",
		       "registered_pages", "merging_pages");
	while (fgets(line, sizeof(line), f)) {
		if (sscanf(line, "%llu %llu %llu %llu", &pid, &regions,
			   &registered, &merging) != 4)
			continue;
		if (json)
			printf("%s{\"pid\":%llu,\"regions\":%llu,%s%llu,%s%llu}",
			       n ? "," : "", pid, regions,
			       "\"registered_pages\":", registered,
			       "\"merging_pages\":", merging);
		else
			printf("%8llu %8llu %16llu %16llu\n", pid, regions,
			       registered, merging);
		n++;
	}
	if (json)
		printf("]\n");
	fclose(f);
	return 0;
}

/* The command name of @pid (/proc/PID/comm), "?" if it is gone. */
static void comm_of(long long pid, char *buf, size_t size)
{
	char path[64];
	ssize_t n;
	int fd;

	snprintf(path, sizeof(path), "/proc/%lld/comm", pid);
	fd = open(path, O_RDONLY | O_CLOEXEC);
	n = fd < 0 ? -1 : read(fd, buf, size - 1);
	if (fd >= 0)
		close(fd);
	if (n <= 0) {
		snprintf(buf, size, "?");
		return;
	}
	buf[n] = 0;
	buf[strcspn(buf, "\n")] = 0;
}

/*
 * The domains of @pid's regions, from debugfs "regions" (version 2: "pid
 * start end domain flags merging_pages"), as "7" or "0,7"; "-" if the
 * module has no such table, or @pid no region in it.
 */
static void domains_of(FILE *regions, long long pid, char *buf, size_t size)
{
	unsigned long long p, dom, seen[8];
	int nseen = 0, i;
	char line[256];
	size_t len = 0;

	snprintf(buf, size, "-");
	if (!regions)
		return;
	rewind(regions);
	while (fgets(line, sizeof(line), regions)) {
		if (sscanf(line, "%llu %*s %*s %llu", &p, &dom) != 2 || (long long)p != pid)
			continue;
		for (i = 0; i < nseen && seen[i] != dom; i++)
			;
		if (i < nseen || nseen == (int)NFIELDS(seen))
			continue;
		seen[nseen++] = dom;
		len += snprintf(buf + len, len < size ? size - len : 0, "%s%llu",
				nseen > 1 ? "," : "", dom);
	}
}

/*
 * ps: a line per context of debugfs "mms". Its lines are "pid regions
 * registered_pages merging_pages", and a fifth number, if a module adds
 * one, is taken as the context's metadata_bytes; without it the metadata
 * and the profit are "-" (null in JSON).
 */
static int cmd_ps(void)
{
	unsigned long long pid, regions, registered, merging, meta;
	char line[256], comm[64], doms[128];
	FILE *f = open_debugfs("mms"), *rf;
	long long saved;
	int n = 0, have_meta;

	if (!f)
		return EXIT_KERNEL;
	rf = fopen(DEBUGFS_DIR "/regions", "re");
	if (json)
		printf("[");
	else
		printf("%8s %-16s %-8s %12s %12s %10s %10s %10s\n", "pid", "command",
		       "domain", "registered", "merging", "saved_MiB", "metadata",
		       "profit_MiB");
	while (fgets(line, sizeof(line), f)) {
		int k = sscanf(line, "%llu %llu %llu %llu %llu", &pid, &regions,
			       &registered, &merging, &meta);

		if (k < 4)
			continue;
		have_meta = k == 5;
		comm_of(pid, comm, sizeof(comm));
		domains_of(rf, pid, doms, sizeof(doms));
		saved = merging * page_size();
		if (json) {
			printf("%s{\"pid\":%llu,\"command\":", n ? "," : "", pid);
			json_string(comm);
			printf(",\"domain\":%s%s%s,\"regions\":%llu,\"registered_pages\":%llu,"
			       "\"merging_pages\":%llu,\"saved_bytes\":%lld,",
			       doms[0] == '-' ? "null" : "[", doms[0] == '-' ? "" : doms,
			       doms[0] == '-' ? "" : "]", regions, registered, merging, saved);
			if (have_meta)
				printf("\"metadata_bytes\":%llu,\"profit_bytes\":%lld}",
				       meta, saved - (long long)meta);
			else
				printf("\"metadata_bytes\":null,\"profit_bytes\":null}");
		} else {
			printf("%8llu %-16s %-8s %12llu %12llu %10.1f ", pid, comm, doms,
			       registered, merging, mib(saved));
			if (have_meta)
				printf("%10llu %10.1f\n", meta,
				       (saved - (long long)meta) / 1048576.0);
			else
				printf("%10s %10s\n", "-", "-");
		}
		n++;
	}
	if (json)
		printf("]\n");
	fclose(f);
	if (rf)
		fclose(rf);
	return 0;
}

/* One KEY=VALUE into @want and @mask; @where names it in a usage error. */
static int parse_setting(struct ksm_config *want, unsigned int *mask,
			 const char *kv, const char *where)
{
	unsigned long long v;
	const char *eq = strchr(kv, '=');
	char what[160];
	size_t i, klen;

	if (!eq || eq == kv || !eq[1])
		return usage_error("%s'%s' is not KEY=VALUE", where, kv);
	klen = eq - kv;
	for (i = 0; i < NFIELDS(config_fields); i++)
		if (strlen(config_fields[i].name) == klen &&
		    !strncmp(config_fields[i].name, kv, klen))
			break;
	if (i == NFIELDS(config_fields))
		return usage_error("%sunknown setting in '%s'", where, kv);
	snprintf(what, sizeof(what), "%s%s", where, config_fields[i].name);
	if (parse_dec(what, eq + 1, 0, ULLONG_MAX, &v))
		return EXIT_USAGE;
	*(__u64 *)((char *)want + config_fields[i].off) = v;
	*mask |= 1U << i;
	return 0;
}

/* KEY=VALUE lines of @path; blank lines and lines starting with # are left out. */
static int parse_settings_file(struct ksm_config *want, unsigned int *mask,
			       const char *path)
{
	char line[512], where[PATH_MAX + 32], *p, *e;
	FILE *f = fopen(path, "re");
	int ret = 0, lineno = 0;

	if (!f) {
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		return EXIT_KERNEL;
	}
	while (!ret && fgets(line, sizeof(line), f)) {
		lineno++;
		for (p = line; isspace((unsigned char)*p); p++)
			;
		for (e = p + strlen(p); e > p && isspace((unsigned char)e[-1]); e--)
			;
		*e = 0;
		if (!*p || *p == '#')
			continue;
		snprintf(where, sizeof(where), "%s:%d: ", path, lineno);
		ret = parse_setting(want, mask, p, where);
	}
	fclose(f);
	return ret;
}

static int set_config(int argc, char **argv, const char *file)
{
	struct ksm_config c, want;
	unsigned int mask = 0;
	size_t i;
	int a, fd, ret = 0;

	if (!argc && !file)
		return usage_error("set needs KEY=VALUE, or --file FILE");
	if (file)
		ret = parse_settings_file(&want, &mask, file);
	for (a = 0; !ret && a < argc; a++)
		ret = parse_setting(&want, &mask, argv[a], "");
	if (ret)
		return ret;
	if (!mask) {
		printf("%s: nothing to set in %s\n", prog, file);
		return 0;
	}
	fd = open_dev();
	if (fd < 0)
		return dev_error();
	if (ioctl(fd, KSM_GET_CONFIG, &c)) {
		ret = kernel_error("KSM_GET_CONFIG");
		goto out;
	}
	for (i = 0; i < NFIELDS(config_fields); i++)
		if (mask & (1U << i))
			*(__u64 *)((char *)&c + config_fields[i].off) =
				field(&want, &config_fields[i]);
	if (ioctl(fd, KSM_SET_CONFIG, &c)) {
		if (errno == EINVAL)
			fprintf(stderr, "%s: a value is out of range; nothing was changed\n",
				prog);
		/* A module older than this ksmdevctl: a setting it does not know. */
		if (errno == E2BIG)
			fprintf(stderr, "%s: the loaded ksmdev is older than ksmdevctl and lacks a setting given; nothing was changed\n",
				prog);
		ret = kernel_error("KSM_SET_CONFIG");
	}
out:
	close(fd);
	return ret;
}

/* --version: this tool's, and the loaded module's API version. */
static int cmd_version(void)
{
	char mver[64] = "";
	int fd, api;
	ssize_t n;

	printf("%s %s (built for ksmdev API version %d)\n", prog, KSMDEV_VERSION,
	       KSMDEV_API_VERSION);
	fd = open(MODULE_DIR "/version", O_RDONLY | O_CLOEXEC);
	if (fd >= 0) {
		n = read(fd, mver, sizeof(mver) - 1);
		mver[n > 0 ? n : 0] = 0;
		mver[strcspn(mver, "\n")] = 0;
		close(fd);
	}
	fd = open_dev();
	if (fd >= 0) {
		api = ioctl(fd, KSM_GET_API_VERSION);
		close(fd);
		if (api >= 0)
			printf("module API version %d (ksmdev %s)\n", api,
			       mver[0] ? mver : "?");
		else
			printf("module API version unknown: KSM_GET_API_VERSION: %s\n",
			       strerror(errno));
	} else if (access(MODULE_DIR, F_OK)) {
		printf("module not loaded (modprobe ksmdev)\n");
	} else {
		printf("module API version unknown (ksmdev %s loaded): %s: %s\n",
		       mver[0] ? mver : "?", DEV_PATH, strerror(errno));
	}
	return 0;
}

/* ------------------------------------------------------------------ */
/* Enrolment (ABI version 2): merge and unmerge. */

enum enrol_result { ENROL_DONE, ENROL_NOTHING, ENROL_GONE, ENROL_FAILED };

/* Whether the loaded module knows KSM_ATTACH_PROCESS; says why not. */
static int need_v2(void)
{
	int fd = open_dev(), api;

	if (fd < 0)
		return dev_error();
	api = ioctl(fd, KSM_GET_API_VERSION);
	close(fd);
	if (api >= 2)
		return 0;
	if (api < 0)
		return kernel_error("KSM_GET_API_VERSION");
	fprintf(stderr, "%s: the loaded ksmdev has API version %d; merge and unmerge need version 2 (KSM_ATTACH_PROCESS): update the module\n",
		prog, api);
	return EXIT_KERNEL;
}

static void pid_error(long long pid, const char *comm, const char *what, int err)
{
	fprintf(stderr, "%s: pid %lld (%s): %s: %s\n", prog, pid, comm, what, strerror(err));
	if (err == EPERM && !strcmp(what, "KSM_ATTACH_PROCESS"))
		fprintf(stderr, "%s: attaching needs the right to ptrace the process (root, or its owner when kernel.yama.ptrace_scope allows)\n",
			prog);
	else if (err == EPERM && strstr(what, "domain"))
		fprintf(stderr, "%s: a non-zero --domain needs CAP_SYS_ADMIN: run as root\n",
			prog);
	else if (err == ESRCH)
		fprintf(stderr, "%s: the process has exited, or is a kernel thread\n", prog);
}

/*
 * A handle to @pid's persistent context in *@fdp (a new open of the device,
 * attached with KSM_ATTACH_PERSIST: the first such attach makes it).
 */
static enum enrol_result attach_persist(long long pid, const char *comm, int *fdp,
					int quiet_gone)
{
	struct ksm_attach at = { .flags = KSM_ATTACH_PERSIST };
	int pidfd, fd, err;

	pidfd = syscall(SYS_pidfd_open, (pid_t)pid, 0);
	if (pidfd < 0) {
		if (errno == ESRCH && quiet_gone)
			return ENROL_GONE;
		pid_error(pid, comm, "pidfd_open", errno);
		return ENROL_FAILED;
	}
	fd = open_dev();
	if (fd < 0) {
		err = errno;
		close(pidfd);
		errno = err;
		dev_error();
		return ENROL_FAILED;
	}
	at.pidfd = pidfd;
	if (ioctl(fd, KSM_ATTACH_PROCESS, &at)) {
		err = errno;
		close(fd);
		close(pidfd);
		if (err == ESRCH && quiet_gone)
			return ENROL_GONE;
		pid_error(pid, comm, "KSM_ATTACH_PROCESS", err);
		return ENROL_FAILED;
	}
	close(pidfd);
	*fdp = fd;
	return ENROL_DONE;
}

/* merge one process: its persistent context, the whole address space. */
static enum enrol_result enrol(long long pid, unsigned long long domain, int quiet_gone)
{
	struct ksm_region r = { .flags = KSM_REGION_ALL, .domain = domain };
	enum enrol_result res;
	char comm[64];
	int fd, err;

	comm_of(pid, comm, sizeof(comm));
	res = attach_persist(pid, comm, &fd, quiet_gone);
	if (res != ENROL_DONE)
		return res;
	if (!ioctl(fd, KSM_REGISTER_REGION, &r)) {
		printf("pid %lld (%s): merging its whole address space, domain %llu\n",
		       pid, comm, domain);
		res = ENROL_DONE;
	} else if ((err = errno) == EEXIST) {
		printf("pid %lld (%s): already registered with ksmdev (by an earlier merge, or by itself); left as it is\n",
		       pid, comm);
		res = ENROL_NOTHING;
	} else if (err == ESRCH && quiet_gone) {
		res = ENROL_GONE;
	} else {
		pid_error(pid, comm, domain ? "KSM_REGISTER_REGION (domain)" :
			  "KSM_REGISTER_REGION", err);
		res = ENROL_FAILED;
	}
	close(fd);
	return res;
}

static enum enrol_result disenrol(long long pid)
{
	struct ksm_region r = { .flags = KSM_REGION_ALL };
	enum enrol_result res;
	char comm[64];
	int fd;

	comm_of(pid, comm, sizeof(comm));
	res = attach_persist(pid, comm, &fd, 0);
	if (res != ENROL_DONE)
		return res;
	if (!ioctl(fd, KSM_UNREGISTER_REGION, &r)) {
		printf("pid %lld (%s): unmerged and unregistered\n", pid, comm);
	} else if (errno == ENOENT) {
		printf("pid %lld (%s): not enrolled by merge; nothing to unmerge\n",
		       pid, comm);
		res = ENROL_NOTHING;
	} else {
		pid_error(pid, comm, "KSM_UNREGISTER_REGION", errno);
		res = ENROL_FAILED;
	}
	close(fd);
	return res;
}

/* A growing array of pids. */
struct pids {
	long long *v;
	size_t n, cap;
};

static int pids_add(struct pids *p, long long pid)
{
	long long *v;

	if (p->n == p->cap) {
		v = realloc(p->v, (p->cap ? p->cap * 2 : 64) * sizeof(*v));
		if (!v)
			return -1;
		p->v = v;
		p->cap = p->cap ? p->cap * 2 : 64;
	}
	p->v[p->n++] = pid;
	return 0;
}

static int cmp_ll(const void *a, const void *b)
{
	long long x = *(const long long *)a, y = *(const long long *)b;

	return (x > y) - (x < y);
}

static int pids_has(const struct pids *p, long long pid)
{
	return p->n && bsearch(&pid, p->v, p->n, sizeof(pid), cmp_ll);
}

/* Every pid of @dir/cgroup.procs and of its child cgroups, into @p. */
static int cgroup_pids(const char *dir, struct pids *p)
{
	char path[PATH_MAX];
	unsigned long long pid;
	struct dirent *e;
	struct stat st;
	FILE *f;
	DIR *d;
	int ret = 0;

	snprintf(path, sizeof(path), "%s/cgroup.procs", dir);
	f = fopen(path, "re");
	if (!f) {
		/* A child cgroup removed while we walk: nothing in it. */
		if (errno == ENOENT)
			return 0;
		fprintf(stderr, "%s: %s: %s\n", prog, path, strerror(errno));
		return -1;
	}
	while (fscanf(f, "%llu", &pid) == 1)
		if (pids_add(p, pid))
			ret = -1;
	fclose(f);
	d = opendir(dir);
	if (!d)
		return errno == ENOENT ? ret : -1;
	while ((e = readdir(d))) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(path, sizeof(path), "%s/%s", dir, e->d_name);
		if (e->d_type == DT_DIR ||
		    (e->d_type == DT_UNKNOWN && !stat(path, &st) && S_ISDIR(st.st_mode)))
			if (cgroup_pids(path, p))
				ret = -1;
	}
	closedir(d);
	return ret;
}

static int cmd_merge_pids(struct pids *pids, unsigned long long domain, int merge)
{
	int failed = 0, ret = need_v2();
	size_t i;

	if (ret)
		return ret;
	for (i = 0; i < pids->n; i++)
		if ((merge ? enrol(pids->v[i], domain, 0) : disenrol(pids->v[i])) ==
		    ENROL_FAILED)
			failed++;
	if (failed && pids->n > 1)
		fprintf(stderr, "%s: %d of %zu processes failed\n", prog, failed, pids->n);
	return failed ? EXIT_KERNEL : 0;
}

static int cmd_merge_cgroup(const char *arg, unsigned long long domain,
			    unsigned long long follow)
{
	struct pids done = { 0 }, now;
	char dir[PATH_MAX];
	struct timespec next;
	struct statfs sfs;
	int failed = 0, gone = 0, nothing = 0, enrolled = 0, ret;
	long long self = getpid();
	size_t i;

	/* A path relative to the cgroup v2 mount, or an absolute one. */
	if (arg[0] == '/')
		snprintf(dir, sizeof(dir), "%s", arg);
	else
		snprintf(dir, sizeof(dir), "/sys/fs/cgroup/%s", arg);
	if (statfs(dir, &sfs)) {
		fprintf(stderr, "%s: %s: %s\n", prog, dir, strerror(errno));
		return EXIT_KERNEL;
	}
	if (sfs.f_type != CGROUP2_MAGIC) {
		fprintf(stderr, "%s: %s is not a cgroup v2 directory (mount -t cgroup2 none /sys/fs/cgroup)\n",
			prog, dir);
		return EXIT_KERNEL;
	}
	ret = need_v2();
	if (ret)
		return ret;
	catch_signals();
	clock_gettime(CLOCK_MONOTONIC, &next);
	while (!stop) {
		now = (struct pids){ 0 };
		if (cgroup_pids(dir, &now))
			failed++;
		qsort(now.v, now.n, sizeof(*now.v), cmp_ll);
		for (i = 0; i < now.n && !stop; i++) {
			if ((i && now.v[i] == now.v[i - 1]) || now.v[i] == self ||
			    pids_has(&done, now.v[i]))
				continue;
			switch (enrol(now.v[i], domain, 1)) {
			case ENROL_DONE: enrolled++; break;
			case ENROL_NOTHING: nothing++; break;
			case ENROL_GONE: gone++; break;
			case ENROL_FAILED: failed++; break;
			}
		}
		fflush(stdout);
		/*
		 * Remember the pids of this pass only: one that left and came
		 * back (a reused pid) is a new process, tried again.
		 */
		free(done.v);
		done = now;
		if (!follow)
			break;
		next.tv_sec += follow;
		sleep_until(&next);
	}
	free(done.v);
	printf("cgroup %s: %d enrolled, %d already registered, %d exited meanwhile, %d failed\n",
	       dir, enrolled, nothing, gone, failed);
	return failed ? EXIT_KERNEL : 0;
}

/* ------------------------------------------------------------------ */

/* What the command line says; options may come anywhere. */
struct cmdline {
	const char *cmd;
	char *words[64];
	int nwords;
	struct pids pids;
	int have_pid, have_domain, have_follow, version;
	const char *cgroup, *file;
	unsigned long long domain, follow;
};

/* The value of option @opt at argv[*i] ("--opt=V" or "--opt V"). */
static const char *opt_value(int argc, char **argv, int *i, const char *opt)
{
	size_t len = strlen(opt);

	if (argv[*i][len] == '=')
		return argv[*i] + len + 1;
	if (*i + 1 < argc)
		return argv[++*i];
	usage_error("%s needs a value", opt);
	return NULL;
}

static int is_opt(const char *arg, const char *opt)
{
	size_t len = strlen(opt);

	return !strncmp(arg, opt, len) && (!arg[len] || arg[len] == '=');
}

static int parse_cmdline(int argc, char **argv, struct cmdline *cl)
{
	unsigned long long v;
	int i, pid_words = 0, ended = 0;
	const char *val;

	for (i = 1; i < argc; i++) {
		const char *a = argv[i];

		/* Options, but not a negative number (parse_dec names those). */
		if (!ended && a[0] == '-' && a[1] && !isdigit((unsigned char)a[1])) {
			pid_words = 0;
			if (!strcmp(a, "--")) {
				ended = 1;
			} else if (!strcmp(a, "--json")) {
				json = 1;
			} else if (!strcmp(a, "-h") || !strcmp(a, "--help")) {
				print_help(stdout);
				exit(0);
			} else if (!strcmp(a, "--version") || !strcmp(a, "-V")) {
				cl->version = 1;
			} else if (is_opt(a, "--pid")) {
				cl->have_pid = 1;
				pid_words = 1;
				if (a[5] == '=') {
					if (parse_dec("--pid", a + 6, 1, INT_MAX, &v) ||
					    pids_add(&cl->pids, v))
						return EXIT_USAGE;
				}
			} else if (is_opt(a, "--domain")) {
				val = opt_value(argc, argv, &i, "--domain");
				if (!val || parse_dec("--domain", val, 0, ULLONG_MAX, &cl->domain))
					return EXIT_USAGE;
				cl->have_domain = 1;
			} else if (is_opt(a, "--follow")) {
				val = opt_value(argc, argv, &i, "--follow");
				if (!val || parse_dec("--follow: SECONDS", val, 1, 86400, &cl->follow))
					return EXIT_USAGE;
				cl->have_follow = 1;
			} else if (is_opt(a, "--cgroup")) {
				cl->cgroup = opt_value(argc, argv, &i, "--cgroup");
				if (!cl->cgroup)
					return EXIT_USAGE;
			} else if (is_opt(a, "--file")) {
				cl->file = opt_value(argc, argv, &i, "--file");
				if (!cl->file)
					return EXIT_USAGE;
			} else {
				return usage_error("unknown option '%s'", a);
			}
			continue;
		}
		if (!cl->cmd) {
			cl->cmd = a;
		} else if (pid_words) {
			if (parse_dec("--pid", a, 1, INT_MAX, &v) || pids_add(&cl->pids, v))
				return EXIT_USAGE;
		} else if (cl->nwords < (int)NFIELDS(cl->words)) {
			cl->words[cl->nwords++] = argv[i];
		} else {
			return usage_error("too many arguments");
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	static char run2[] = "run=2";
	static char *unmerge_all[] = { run2 };
	struct cmdline cl = { 0 };
	const char *cmd;
	int merge, ret;

	if (argc > 0 && argv[0][0])
		prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	ret = parse_cmdline(argc, argv, &cl);
	if (ret)
		return ret;
	if (cl.version && !cl.cmd)
		return cmd_version();
	cmd = cl.cmd;
	if (!cmd)
		return usage_error("a command is needed");
	if (cl.version)
		return usage_error("--version takes no command");
	merge = !strcmp(cmd, "merge");
	if (!merge && strcmp(cmd, "unmerge") && (cl.have_pid || cl.cgroup))
		return usage_error("--pid and --cgroup go with merge and unmerge, not %s", cmd);
	if (!merge && (cl.have_domain || cl.have_follow))
		return usage_error("--domain and --follow go with merge, not %s", cmd);
	if (cl.file && strcmp(cmd, "set"))
		return usage_error("--file goes with set, not %s", cmd);
	if (!strcmp(cmd, "watch"))
		return cmd_watch(cl.nwords, cl.words);
	if (!strcmp(cmd, "set"))
		return set_config(cl.nwords, cl.words, cl.file);
	if (cl.nwords)
		return usage_error("%s: extra argument '%s'", cmd, cl.words[0]);
	if (!strcmp(cmd, "status"))
		return cmd_status();
	if (!strcmp(cmd, "ps"))
		return cmd_ps();
	if (!strcmp(cmd, "mms"))
		return cmd_mms();
	if (!strcmp(cmd, "unmerge-all"))
		return set_config(1, unmerge_all, NULL);
	if (!strcmp(cmd, "help"))
		return print_help(stdout), 0;
	if (merge || !strcmp(cmd, "unmerge")) {
		if (cl.have_pid == !!cl.cgroup)
			return usage_error("%s needs either --pid PID... or --cgroup PATH", cmd);
		if (cl.have_pid && !cl.pids.n)
			return usage_error("--pid needs at least one PID");
		if (cl.have_follow && !cl.cgroup)
			return usage_error("--follow goes with --cgroup");
		if (!merge && cl.cgroup)
			return usage_error("unmerge takes --pid PID...");
		if (cl.cgroup)
			return cmd_merge_cgroup(cl.cgroup, cl.domain, cl.follow);
		return cmd_merge_pids(&cl.pids, cl.domain, merge);
	}
	return usage_error("unknown command '%s'", cmd);
}
