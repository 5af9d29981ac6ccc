/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * switchyard's BPF maps: every key and value shared by the programs and the Rust loader.
 * The Rust types in src/maps/raw.rs mirror these layouts; a test checks sizes and field offsets
 * against this header (src/bpf/layout.c prints them at build time), so the two cannot drift apart. Change both together.
 *
 * Byte order: addresses and ports are in network byte order, as the kernel hands them to
 * cgroup/sock_addr programs. An IPv4 address occupies addr[0..4]; the other 12 bytes are zero.
 *
 * A Service frontend is updated make-before-break by userspace: backends are written first,
 * then the slots, then the frontend's count; removal goes the other way. A lookup therefore
 * sees either the old or the new backend set, or a mix of valid backends, never a slot that
 * points at nothing.
 */
#ifndef SWITCHYARD_H
#define SWITCHYARD_H

#include <linux/types.h>

#define SY_FAMILY_V4 4
#define SY_FAMILY_V6 6

/* sy_frontend.flags */
#define SY_F_AFFINITY 0x1 /* sessionAffinity: ClientIP; client identity is the netns cookie */
#define SY_F_MAGLEV 0x2   /* choose through the service's Maglev table (sy_maglev) */
#define SY_F_DROP 0x4     /* with no backends: drop (EPERM) instead of refusing (ECONNREFUSED) */

/* Entries of one service's Maglev table (a prime). */
#define SY_MAGLEV_SIZE 1021

/*
 * sy_frontends (HASH): a Service address: VIP, port and protocol.
 */
struct sy_frontend_key {
	__u8 addr[16];
	__u16 port;  /* network byte order */
	__u8 proto;  /* IPPROTO_TCP or IPPROTO_UDP */
	__u8 family; /* SY_FAMILY_V4 or SY_FAMILY_V6 */
};

struct sy_frontend {
	__u32 service_id;       /* key into sy_slots, sy_maglev and sy_affinity; never 0 */
	__u16 count;            /* backends in slots 1..count; 0: refuse (or drop, SY_F_DROP) */
	__u16 flags;            /* SY_F_* */
	__u32 affinity_timeout; /* seconds, with SY_F_AFFINITY */
};

/*
 * sy_slots (HASH): the backends of a service, slot 1..count.
 */
struct sy_slot_key {
	__u32 service_id;
	__u32 slot;
};

struct sy_slot {
	__u32 backend_id;
};

/*
 * sy_backends (HASH): a backend address, shared by every service that uses it.
 */
struct sy_backend {
	__u8 addr[16];
	__u16 port;  /* network byte order */
	__u8 family; /* SY_FAMILY_V4 or SY_FAMILY_V6 */
	__u8 state;  /* 0 active, 1 terminating (informational: userspace picks the slots) */
};

/*
 * sy_maglev (HASH): entry index 0..SY_MAGLEV_SIZE-1 of a service's Maglev lookup table.
 */
struct sy_maglev_key {
	__u32 service_id;
	__u32 index;
};

/* value: __u32 backend_id */

/*
 * sy_affinity (LRU_HASH): the backend a client (netns cookie) last used for a service.
 */
struct sy_affinity_key {
	__u64 client_cookie; /* bpf_get_netns_cookie() of the client's socket */
	__u32 service_id;
	__u32 pad;
};

struct sy_affinity {
	__u64 last_used_ns; /* bpf_ktime_get_ns() */
	__u32 backend_id;
	__u32 pad;
};

/*
 * sy_revnat (LRU_HASH): for a socket that was sent to a backend, the VIP it asked for, so
 * that recvmsg (UDP replies) and getpeername show the Service address.
 */
struct sy_revnat_key {
	__u64 cookie; /* bpf_get_socket_cookie() */
	__u8 addr[16]; /* the backend */
	__u16 port;    /* network byte order */
	__u8 family;
	__u8 pad[5];
};

struct sy_revnat {
	__u8 addr[16]; /* the VIP */
	__u16 port;    /* network byte order */
	__u8 family;
	__u8 pad;
};

/*
 * sy_stats (PERCPU_ARRAY): counters, indexed by SY_STAT_*.
 */
enum sy_stat {
	SY_STAT_TRANSLATED = 0, /* connects and sendmsgs rewritten to a backend */
	SY_STAT_NO_BACKEND = 1, /* refused or dropped: frontend without backends */
	SY_STAT_BACKEND_MISSING = 2, /* a slot or Maglev entry pointed at no backend, or at one of
				      * the other family: refused (should stay 0) */
	SY_STAT_REVNAT = 3,     /* replies and getpeername rewritten back to the VIP */
	SY_STAT_MAX = 4,
};

#endif
