/* Bumping the per-CPU counters of np_counters. */
#ifndef NODEPLANE_COUNTERS_H
#define NODEPLANE_COUNTERS_H

#include "maps.h"

static __always_inline void count(enum counter counter)
{
	__u64 *value = bpf_map_lookup_elem(&np_counters, &counter);
	if (value)
		*value += 1;
}

#endif
