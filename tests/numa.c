// SPDX-License-Identifier: GPL-2.0
/*
 * merge_across_nodes (ABI.md, "Counters and settings added"), in a guest
 * with two NUMA nodes (tests/qemu/lib.sh, guest_topology_args): two processes,
 * each bound to one node by set_mempolicy(MPOL_BIND), hold the same pages.
 * With merge_across_nodes=1 all of them map one merged page; with 0 each
 * node's pages map a merged page of their own, allocated on that node
 * (move_pages(2) tells). Changing the setting while any merged page
 * exists is EBUSY.
 *
 * Runs as root in a QEMU guest with ksmdev loaded; never on a host.
 */
#define _GNU_SOURCE
#include "ksmdev_test.h"

#ifndef MPOL_BIND
#define MPOL_BIND 2
#endif

#define NPAGES	32
#define VAL	0x6e756d61ULL

FIXTURE(numa) {
	int fd;
	struct ksm_config saved;
	struct ksm_stats base;
	struct ksm_child ch[2];
};

static int bind_to_node(void *arg)
{
	unsigned long mask = 1UL << (uintptr_t)arg;

	return syscall(SYS_set_mempolicy, MPOL_BIND, &mask,
		       8 * sizeof(mask)) ? -1 : 0;
}

/* No merged page anywhere, so that the setting may change. */
static int wait_nothing_merged(int fd)
{
	uint64_t end = ksm_now_ms() + 30000;
	struct ksm_stats s;

	while (!ksm_get_stats(fd, &s)) {
		if (!s.pages_shared && !s.ksm_zero_pages && !s.pages_orphaned)
			return 0;
		if (ksm_now_ms() > end)
			return -ETIMEDOUT;
		ksm_sleep_ms(20);
	}
	return -EIO;
}

FIXTURE_SETUP(numa)
{
	uintptr_t node;

	self->ch[0].pid = self->ch[1].pid = -1;
	ASSERT_LE(2, ksm_nodes_online())
		TH_LOG("the test guests have two NUMA nodes (lib.sh)");
	self->fd = ksm_open_fast(&self->saved, &self->base);
	ASSERT_LE(0, self->fd);
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	ASSERT_EQ(0, wait_nothing_merged(self->fd));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &self->base));
	for (node = 0; node < 2; node++)
		ASSERT_EQ(0, ksm_child_start_hook(&self->ch[node], NPAGES, VAL,
						  0, bind_to_node,
						  (void *)node));
}

FIXTURE_TEARDOWN(numa)
{
	int i;

	for (i = 0; i < 2; i++)
		if (self->ch[i].pid > 0)
			EXPECT_EQ(0, ksm_child_stop(&self->ch[i]));
	EXPECT_EQ(0, wait_nothing_merged(self->fd));
	EXPECT_EQ(0, ksm_set_config(self->fd, &self->saved));
	close(self->fd);
}

static int set_across(int fd, uint64_t v)
{
	return ksm_set_config_field(fd, offsetof(struct ksm_config,
						 merge_across_nodes), v);
}

/* Each child's pages: all on @node's own node, and their PFNs. */
static void child_pages(struct __test_metadata *_metadata,
			struct ksm_child *ch, uint64_t *nodes, uint64_t *pfns)
{
	ASSERT_EQ(0, ksm_child_call(ch, KSM_CHILD_NODES, 0, 0, nodes,
				    NPAGES * sizeof(*nodes)));
	ASSERT_EQ(0, ksm_child_pfns(ch, pfns));
}

/* The children's pages sit on their own nodes before anything merges. */
TEST_F(numa, bound_children)
{
	uint64_t nodes[NPAGES], pfns[NPAGES];
	int i;

	for (i = 0; i < 2; i++) {
		child_pages(_metadata, &self->ch[i], nodes, pfns);
		EXPECT_EQ(NPAGES, ksm_count_eq(nodes, NPAGES, i));
		EXPECT_TRUE(ksm_pfns_distinct(pfns, NPAGES));
	}
}

/* 0: two merged pages, one on each node, by the scanner. */
TEST_F(numa, within_nodes_scanner)
{
	uint64_t nodes[2][NPAGES], pfns[2][NPAGES];
	struct ksm_config c;
	struct ksm_stats st;
	int i;

	ASSERT_EQ(0, set_across(self->fd, 0));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_MERGE));
	ASSERT_EQ(0, ksm_wait_merged(self->fd, self->base.pages_shared + 2,
				     self->base.pages_sharing + 2 * NPAGES - 2,
				     self->base.ksm_zero_pages, &st, 120));
	for (i = 0; i < 2; i++) {
		child_pages(_metadata, &self->ch[i], nodes[i], pfns[i]);
		EXPECT_TRUE(ksm_pfns_merged(pfns[i], NPAGES));
		EXPECT_EQ(NPAGES, ksm_count_eq(nodes[i], NPAGES, i))
			TH_LOG("child %d's merged page is on node %lld", i,
			       (long long)nodes[i][0]);
	}
	EXPECT_NE(pfns[0][0], pfns[1][0]);
	for (i = 0; i < 2; i++)
		EXPECT_EQ(0, ksm_child_check(&self->ch[i]));

	/* Merged pages exist: the setting stays (EBUSY), both ways. */
	EXPECT_EQ(-EBUSY, set_across(self->fd, 1));
	ASSERT_EQ(0, ksm_set_run(self->fd, KSM_RUN_STOP));
	EXPECT_EQ(-EBUSY, set_across(self->fd, 1));
	ASSERT_EQ(0, ksm_get_config(self->fd, &c));
	EXPECT_EQ(0, c.merge_across_nodes);
	/* Setting it to what it is changes nothing, and is no error. */
	EXPECT_EQ(0, set_across(self->fd, 0));
}

/* 0, merged now (KSM_MERGE_REGION): the same, by the callers. */
TEST_F(numa, within_nodes_merge_now)
{
	uint64_t nodes[2][NPAGES], pfns[2][NPAGES];
	struct ksm_stats st;
	int i;

	ASSERT_EQ(0, set_across(self->fd, 0));
	for (i = 0; i < 2; i++)
		EXPECT_EQ(NPAGES, ksm_child_call(&self->ch[i], KSM_CHILD_MERGE,
						 0, 0, NULL, 0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_EQ(self->base.pages_shared + 2, st.pages_shared);
	EXPECT_EQ(self->base.pages_sharing + 2 * NPAGES - 2, st.pages_sharing);
	for (i = 0; i < 2; i++) {
		child_pages(_metadata, &self->ch[i], nodes[i], pfns[i]);
		EXPECT_TRUE(ksm_pfns_merged(pfns[i], NPAGES));
		EXPECT_EQ(NPAGES, ksm_count_eq(nodes[i], NPAGES, i));
	}
	EXPECT_NE(pfns[0][0], pfns[1][0]);
}

/* 1 (the default): one merged page for both nodes' pages. */
TEST_F(numa, across_nodes)
{
	uint64_t nodes[NPAGES], pfns[2][NPAGES];
	struct ksm_stats st;
	int i;

	ASSERT_EQ(0, set_across(self->fd, 1));
	for (i = 0; i < 2; i++)
		EXPECT_EQ(NPAGES, ksm_child_call(&self->ch[i], KSM_CHILD_MERGE,
						 0, 0, NULL, 0));
	ASSERT_EQ(0, ksm_get_stats(self->fd, &st));
	EXPECT_EQ(self->base.pages_shared + 1, st.pages_shared);
	EXPECT_EQ(self->base.pages_sharing + 2 * NPAGES - 1, st.pages_sharing);
	for (i = 0; i < 2; i++)
		child_pages(_metadata, &self->ch[i], nodes, pfns[i]);
	EXPECT_TRUE(ksm_pfns_merged(pfns[0], NPAGES));
	EXPECT_EQ(NPAGES, ksm_count_eq(pfns[1], NPAGES, pfns[0][0]));
	/* On the node of the page it first replaced: child 0's. */
	EXPECT_EQ(NPAGES, ksm_count_eq(nodes, NPAGES, 0));

	/* And 1 -> 0 is refused while it exists. */
	EXPECT_EQ(-EBUSY, set_across(self->fd, 0));
	for (i = 0; i < 2; i++)
		EXPECT_EQ(0, ksm_child_call(&self->ch[i], KSM_CHILD_UNREGISTER,
					    0, 0, NULL, 0));
	ASSERT_EQ(0, wait_nothing_merged(self->fd));
	EXPECT_EQ(0, set_across(self->fd, 0));
	EXPECT_EQ(0, set_across(self->fd, 1));
}

TEST_HARNESS_MAIN
