// SPDX-License-Identifier: GPL-2.0
/* Not a program: an object for the ABI test only. clang puts an enum into BTF
 * only where some type uses it, so this one uses every enum of abi.h, and the
 * test reads their values from here as it reads the structs from lb.o. */
#include "abi.h"

struct abi_constants {
	enum svc_flags svc_flags;
	enum ct_rewrite ct_rewrite;
	enum ct_seen ct_seen;
	enum endpoint_flags endpoint_flags;
	enum policy_direction policy_direction;
	enum policy_bits policy_bits;
	enum policy_reason policy_reason;
	enum counter counter;
	enum map_capacity map_capacity;
	enum pod_netns pod_netns;
} abi_constants;
