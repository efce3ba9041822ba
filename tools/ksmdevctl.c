// SPDX-License-Identifier: GPL-2.0
/*
 * ksmdevctl: look at and steer ksmdev from the command line.
 *
 *   ksmdevctl [--json] status       counters, settings, the memory saved
 *   ksmdevctl watch [SECONDS]       refreshing view, rates per second
 *   ksmdevctl [--json] mms          one line per context (debugfs "mms")
 *   ksmdevctl set KEY=VALUE...      change settings (needs CAP_SYS_ADMIN)
 *   ksmdevctl unmerge-all           run=2: unmerge everything and stop
 *
 * Exit status: 0 done; 1 the kernel said no (the message names the errno);
 * 2 bad usage. Plain C, libc only.
 */
#include <ctype.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <time.h>
#include <unistd.h>

#include <linux/ksmdev.h>

#define DEV_PATH	"/dev/ksm"
#define MMS_PATH	"/sys/kernel/debug/ksm/mms"

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
	STAT(pages_orphaned),
};

#undef STAT

#define CONF(f)	{ #f, offsetof(struct ksm_config, f) }
static const struct field config_fields[] = {
	CONF(run), CONF(pages_to_scan), CONF(sleep_millisecs),
	CONF(max_kernel_pages), CONF(use_zero_pages), CONF(scan_all_pages),
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
		"usage: %s [--json] status\n"
		"       %s watch [SECONDS]\n"
		"       %s [--json] mms\n"
		"       %s set KEY=VALUE...\n"
		"       %s unmerge-all\n"
		"\n"
		"status       every counter of ksmdev, its settings, and what merging saves:\n"
		"             saved = (pages_sharing + ksm_zero_pages) pages, less\n"
		"             metadata_bytes (the in-kernel KSM's general_profit); ksmdevctl's\n"
		"             own open of the device counts as one of the mms\n"
		"watch        status every SECONDS (default 1) with rates per second;\n"
		"             Ctrl-C ends it\n"
		"mms          one line per open /dev/ksm context: pid, regions,\n"
		"             registered_pages, merging_pages (needs debugfs)\n"
		"set          KEY is one of run (0 stop, 1 merge, 2 unmerge all and stop),\n"
		"             pages_to_scan, sleep_millisecs, max_kernel_pages (0: no limit),\n"
		"             use_zero_pages (0/1), scan_all_pages (0/1); all are applied\n"
		"             together or none is; needs CAP_SYS_ADMIN\n"
		"unmerge-all  the same as set run=2: every merged page gets a private\n"
		"             copy again, and the scanner stops (set run=1 resumes)\n"
		"--json       one JSON object on one line, for scripts\n"
		"\n"
		"Exit status: 0 done, 1 the kernel refused (the message says why),\n"
		"2 bad usage. The device is " DEV_PATH "; ksmdevctl(8) tells more.\n",
		prog, prog, prog, prog, prog);
}

static int usage_error(const char *fmt, const char *arg)
{
	fprintf(stderr, "%s: ", prog);
	fprintf(stderr, fmt, arg);
	fprintf(stderr, "\n(%s --help tells more)\n", prog);
	return EXIT_USAGE;
}

static int kernel_error(const char *what)
{
	int err = errno;

	fprintf(stderr, "%s: %s: %s\n", prog, what, strerror(err));
	if (err == ENOENT && !strcmp(what, DEV_PATH))
		fprintf(stderr, "%s: is the module loaded? (modprobe ksmdev)\n",
			prog);
	return EXIT_KERNEL;
}

static int open_dev(void)
{
	return open(DEV_PATH, O_RDONLY | O_CLOEXEC);
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

/* Bytes saved by merging. */
static unsigned long long saved_bytes(const struct ksm_stats *s)
{
	return (s->pages_sharing + s->ksm_zero_pages) * sysconf(_SC_PAGESIZE);
}

/* ... less what ksmdev spends to do it (the in-kernel general_profit). */
static long long profit(const struct ksm_stats *s)
{
	return (long long)saved_bytes(s) - (long long)s->metadata_bytes;
}

static void print_status(const struct ksm_stats *s, const struct ksm_config *c)
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
	};
	size_t i;

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
		printf("},\"page_size\":%ld,\"saved_bytes\":%llu,\"general_profit\":%lld}\n",
		       sysconf(_SC_PAGESIZE), saved_bytes(s), profit(s));
		return;
	}
	for (i = 0; i < NFIELDS(stat_fields); i++)
		printf("%-24s %14llu %s\n", stat_fields[i].name,
		       field(s, &stat_fields[i]), what[i]);
	printf("%-24s %14.1f MiB    registered_pages\n", "registered",
	       mib(s->registered_pages * sysconf(_SC_PAGESIZE)));
	printf("%-24s %14.1f MiB    (pages_sharing + ksm_zero_pages)\n",
	       "saved", mib(saved_bytes(s)));
	printf("%-24s %14.1f MiB    (saved - metadata_bytes)\n",
	       "general_profit", profit(s) / 1048576.0);
	printf("settings:");
	for (i = 0; i < NFIELDS(config_fields); i++)
		printf(" %s=%llu", config_fields[i].name,
		       field(c, &config_fields[i]));
	printf("\n");
}

static int cmd_status(void)
{
	struct ksm_config c;
	struct ksm_stats s;
	int fd = open_dev(), ret;

	if (fd < 0)
		return kernel_error(DEV_PATH);
	ret = get_all(fd, &s, &c);
	close(fd);
	if (!ret)
		print_status(&s, &c);
	return ret;
}

/* Set by SIGINT/SIGTERM: the C standard's type for a handler's flag. */
static volatile sig_atomic_t stop;

static void on_sigint(int sig)
{
	(void)sig;
	stop = 1;
}

static int cmd_watch(int argc, char **argv)
{
	struct ksm_stats s, prev;
	struct ksm_config c;
	struct timespec t;
	unsigned long secs = 1;
	char *end;
	int fd, ret;

	if (argc > 1)
		return usage_error("watch takes at most one argument", "");
	if (argc == 1) {
		secs = strtoul(argv[0], &end, 10);
		if (*end || !secs || secs > 3600)
			return usage_error("watch: '%s' is not 1..3600 seconds",
					   argv[0]);
	}
	fd = open_dev();
	if (fd < 0)
		return kernel_error(DEV_PATH);
	signal(SIGINT, on_sigint);
	signal(SIGTERM, on_sigint);
	ret = get_all(fd, &prev, &c);
	while (!ret && !stop) {
		t.tv_sec = secs;
		t.tv_nsec = 0;
		nanosleep(&t, NULL);
		if (stop)
			break;
		ret = get_all(fd, &s, &c);
		if (ret)
			break;
		if (!json)
			printf("\033[H\033[2J");
		print_status(&s, &c);
		if (json) {
			fflush(stdout);
		} else {
			printf("per second: %.0f pages scanned, %.2f full scans, ",
			       (double)(s.pages_scanned - prev.pages_scanned) / secs,
			       (double)(s.full_scans - prev.full_scans) / secs);
			printf("%+.0f pages saved\n",
			       ((double)s.pages_sharing + s.ksm_zero_pages -
				prev.pages_sharing - prev.ksm_zero_pages) / secs);
			fflush(stdout);
		}
		prev = s;
	}
	close(fd);
	return ret;
}

static int cmd_mms(void)
{
	unsigned long long pid, regions, registered, merging;
	FILE *f = fopen(MMS_PATH, "r");
	char line[256];
	int n = 0;

	if (!f) {
		kernel_error(MMS_PATH);
		fprintf(stderr, "%s: is debugfs mounted? %s\n", prog,
			"(mount -t debugfs none /sys/kernel/debug)");
		return EXIT_KERNEL;
	}
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

/*
 * Read KEY=VALUE pairs into @want, and which fields they set into @mask;
 * a usage error names the bad one.
 */
static int parse_settings(struct ksm_config *want, unsigned int *mask,
			  int argc, const char *const *argv)
{
	unsigned long long v;
	size_t i, klen;
	const char *eq;
	char *end;
	int a;

	if (!argc)
		return usage_error("set needs KEY=VALUE%s", "");
	for (a = 0; a < argc; a++) {
		eq = strchr(argv[a], '=');
		if (!eq || eq == argv[a] || !eq[1])
			return usage_error("'%s' is not KEY=VALUE", argv[a]);
		klen = eq - argv[a];
		for (i = 0; i < NFIELDS(config_fields); i++)
			if (strlen(config_fields[i].name) == klen &&
			    !strncmp(config_fields[i].name, argv[a], klen))
				break;
		if (i == NFIELDS(config_fields))
			return usage_error("unknown setting in '%s'", argv[a]);
		errno = 0;
		v = strtoull(eq + 1, &end, 0);
		if (errno || *end || !isdigit((unsigned char)eq[1]))
			return usage_error("'%s': the value is not a number",
					   argv[a]);
		*(__u64 *)((char *)want + config_fields[i].off) = v;
		*mask |= 1U << i;
	}
	return 0;
}

static int set_config(int argc, const char *const *argv)
{
	struct ksm_config c, want;
	unsigned int mask = 0;
	size_t i;
	int fd, ret;

	ret = parse_settings(&want, &mask, argc, argv);
	if (ret)
		return ret;
	fd = open_dev();
	if (fd < 0)
		return kernel_error(DEV_PATH);
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

int main(int argc, char **argv)
{
	static const char *const unmerge_all[] = { "run=2" };
	const char *cmd;
	int i = 1;

	if (argc > 0 && argv[0][0])
		prog = strrchr(argv[0], '/') ? strrchr(argv[0], '/') + 1 : argv[0];
	for (; i < argc && argv[i][0] == '-'; i++) {
		if (!strcmp(argv[i], "--json")) {
			json = 1;
		} else if (!strcmp(argv[i], "-h") || !strcmp(argv[i], "--help")) {
			print_help(stdout);
			return 0;
		} else {
			return usage_error("unknown option '%s'", argv[i]);
		}
	}
	if (i == argc)
		return usage_error("a command is needed%s", "");
	cmd = argv[i++];
	if (!strcmp(cmd, "status") && i == argc)
		return cmd_status();
	if (!strcmp(cmd, "watch"))
		return cmd_watch(argc - i, argv + i);
	if (!strcmp(cmd, "mms") && i == argc)
		return cmd_mms();
	if (!strcmp(cmd, "set"))
		return set_config(argc - i, (const char *const *)argv + i);
	if (!strcmp(cmd, "unmerge-all") && i == argc)
		return set_config(1, unmerge_all);
	if (!strcmp(cmd, "help"))
		return print_help(stdout), 0;
	return usage_error("unknown command or extra arguments: '%s'", cmd);
}
