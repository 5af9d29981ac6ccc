/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * Host program run by build.rs: prints the size of every struct in switchyard.h and the
 * offset and size of every field, as a Rust table that src/maps/tests.rs compares with the
 * #[repr(C)] mirrors. A field added on one side only fails that test.
 */
#include <stddef.h>
#include <stdio.h>

#include "switchyard.h"

#define STRUCT(s) printf("    (\"%s\", \"\", 0, %zu),\n", #s, sizeof(struct s))
#define FIELD(s, f) \
	printf("    (\"%s\", \"%s\", %zu, %zu),\n", #s, #f, offsetof(struct s, f), \
	       sizeof(((struct s *)0)->f))

int main(void)
{
	printf("/// `(struct, field, offset, size)` from switchyard.h; field \"\" is the whole struct.\n");
	printf("pub const C_LAYOUT: &[(&str, &str, usize, usize)] = &[\n");
	STRUCT(sy_frontend_key);
	FIELD(sy_frontend_key, addr);
	FIELD(sy_frontend_key, port);
	FIELD(sy_frontend_key, proto);
	FIELD(sy_frontend_key, family);
	STRUCT(sy_frontend);
	FIELD(sy_frontend, service_id);
	FIELD(sy_frontend, count);
	FIELD(sy_frontend, flags);
	FIELD(sy_frontend, affinity_timeout);
	FIELD(sy_frontend, maglev_size);
	FIELD(sy_frontend, snat_addr);
	FIELD(sy_frontend, kind);
	FIELD(sy_frontend, pad);
	STRUCT(sy_slot_key);
	FIELD(sy_slot_key, service_id);
	FIELD(sy_slot_key, slot);
	STRUCT(sy_slot);
	FIELD(sy_slot, backend_id);
	STRUCT(sy_backend);
	FIELD(sy_backend, addr);
	FIELD(sy_backend, port);
	FIELD(sy_backend, family);
	FIELD(sy_backend, state);
	STRUCT(sy_maglev_key);
	FIELD(sy_maglev_key, service_id);
	FIELD(sy_maglev_key, chunk);
	STRUCT(sy_maglev_chunk);
	FIELD(sy_maglev_chunk, backend_id);
	STRUCT(sy_srcrange_key);
	FIELD(sy_srcrange_key, prefixlen);
	FIELD(sy_srcrange_key, service_id);
	FIELD(sy_srcrange_key, addr);
	STRUCT(sy_flow);
	FIELD(sy_flow, saddr);
	FIELD(sy_flow, daddr);
	FIELD(sy_flow, sport);
	FIELD(sy_flow, dport);
	FIELD(sy_flow, proto);
	FIELD(sy_flow, family);
	FIELD(sy_flow, pad);
	STRUCT(sy_ct);
	FIELD(sy_ct, last_seen_ns);
	FIELD(sy_ct, backend);
	FIELD(sy_ct, snat_addr);
	FIELD(sy_ct, backend_port);
	FIELD(sy_ct, snat_port);
	FIELD(sy_ct, backend_id);
	FIELD(sy_ct, family);
	FIELD(sy_ct, flags);
	FIELD(sy_ct, pad);
	STRUCT(sy_ct_rev);
	FIELD(sy_ct_rev, last_seen_ns);
	FIELD(sy_ct_rev, client);
	FIELD(sy_ct_rev, frontend);
	FIELD(sy_ct_rev, client_port);
	FIELD(sy_ct_rev, frontend_port);
	FIELD(sy_ct_rev, family);
	FIELD(sy_ct_rev, flags);
	FIELD(sy_ct_rev, pad);
	STRUCT(sy_affinity_key);
	FIELD(sy_affinity_key, client_cookie);
	FIELD(sy_affinity_key, service_id);
	FIELD(sy_affinity_key, pad);
	STRUCT(sy_affinity);
	FIELD(sy_affinity, last_used_ns);
	FIELD(sy_affinity, backend_id);
	FIELD(sy_affinity, pad);
	STRUCT(sy_revnat_key);
	FIELD(sy_revnat_key, cookie);
	FIELD(sy_revnat_key, addr);
	FIELD(sy_revnat_key, port);
	FIELD(sy_revnat_key, family);
	FIELD(sy_revnat_key, pad);
	STRUCT(sy_revnat);
	FIELD(sy_revnat, addr);
	FIELD(sy_revnat, port);
	FIELD(sy_revnat, family);
	FIELD(sy_revnat, pad);
	printf("];\n");
	printf("/// Constants from switchyard.h.\n");
	printf("pub const C_CONSTANTS: &[(&str, u64)] = &[\n");
#define CONST(c) printf("    (\"%s\", %llu),\n", #c, (unsigned long long)(c))
	CONST(SY_FAMILY_V4);
	CONST(SY_FAMILY_V6);
	CONST(SY_F_AFFINITY);
	CONST(SY_F_MAGLEV);
	CONST(SY_F_DROP);
	CONST(SY_F_SRC_RANGES);
	CONST(SY_KIND_CLUSTER_IP);
	CONST(SY_KIND_NODE_PORT);
	CONST(SY_KIND_EXTERNAL_IP);
	CONST(SY_KIND_LOAD_BALANCER);
	CONST(SY_B_TERMINATING);
	CONST(SY_B_LOCAL);
	CONST(SY_MAGLEV_CHUNK);
	CONST(SY_CT_SNAT);
	CONST(SY_CT_CLOSING);
	CONST(SY_STAT_TRANSLATED);
	CONST(SY_STAT_NO_BACKEND);
	CONST(SY_STAT_BACKEND_MISSING);
	CONST(SY_STAT_REVNAT);
	CONST(SY_STAT_NS_FLOWS);
	CONST(SY_STAT_NS_DENIED);
	CONST(SY_STAT_NS_SNAT_FAILED);
	CONST(SY_STAT_NS_PACKETS);
	CONST(SY_STAT_XDP_TX);
	CONST(SY_STAT_DSR);
	CONST(SY_F_DSR);
	CONST(SY_DSR_OPT_TYPE);
	CONST(SY_DSR_OPT_LEN);
	CONST(SY_CT_DSR);
	CONST(SY_STAT_MAX);
	printf("];\n");
	return 0;
}
