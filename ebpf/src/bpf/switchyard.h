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
#define SY_F_AFFINITY 0x1 /* sessionAffinity: ClientIP; the client is its netns cookie (socket
			   * level) or its source address (packet level) */
#define SY_F_MAGLEV 0x2   /* choose through the service's Maglev table (sy_maglev) */
#define SY_F_DROP 0x4     /* with no backends: drop (EPERM) instead of refusing (ECONNREFUSED) */
#define SY_F_SRC_RANGES 0x8 /* packet level: only sources in sy_srcranges may open a flow */
#define SY_F_DSR 0x10       /* packet level, TCP: a backend on another node answers the client
			     * itself (direct server return) instead of through SNAT */

/* DSR: the IPv4 option the frontend's node adds to a flow's SYN, naming the frontend, so that
 * the backend's node can make the replies come from it: type, length 8, port, address. */
#define SY_DSR_OPT_TYPE 0x9a
#define SY_DSR_OPT_LEN 8

/* sy_frontend.kind: which Service address it is. The packet-level programs (nodeport.bpf.c)
 * serve every kind but ClusterIP; the socket-level ones serve all. */
#define SY_KIND_CLUSTER_IP 0
#define SY_KIND_NODE_PORT 1
#define SY_KIND_EXTERNAL_IP 2
#define SY_KIND_LOAD_BALANCER 3

/* sy_backend.state bits */
#define SY_B_TERMINATING 0x1 /* informational: userspace picks the slots */
#define SY_B_LOCAL 0x2       /* on this node: packet-level traffic reaches it without SNAT */

/* A Maglev table is stored in chunks of this many entries (sy_maglev). */
#define SY_MAGLEV_CHUNK 1024

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
	__u32 maglev_size;      /* entries of the Maglev table (a prime), with SY_F_MAGLEV */
	__u8 snat_addr[16];     /* packet level: the node address traffic to a backend on another
				 * node is sent from (externalTrafficPolicy: Cluster); all zero:
				 * no SNAT */
	__u8 kind;              /* SY_KIND_* */
	__u8 pad[3];
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
	__u8 state;  /* SY_B_* bits */
};

/*
 * sy_maglev (HASH): a service's Maglev lookup table of sy_frontend.maglev_size entries, in
 * chunks: entry i is backend_id[i % SY_MAGLEV_CHUNK] of chunk i / SY_MAGLEV_CHUNK.
 */
struct sy_maglev_key {
	__u32 service_id;
	__u32 chunk;
};

struct sy_maglev_chunk {
	__u32 backend_id[SY_MAGLEV_CHUNK];
};

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
 * sy_srcranges (LPM_TRIE): loadBalancerSourceRanges of frontends with SY_F_SRC_RANGES.
 * prefixlen counts the 32 bits of service_id (which always match whole) plus the range's.
 */
struct sy_srcrange_key {
	__u32 prefixlen;
	__u32 service_id;
	__u8 addr[16];
};

/* value: __u8, 1 */

/*
 * A packet's flow as it arrives, the key of the connection-tracking maps.
 */
struct sy_flow {
	__u8 saddr[16];
	__u8 daddr[16];
	__u16 sport; /* network byte order */
	__u16 dport; /* network byte order */
	__u8 proto;
	__u8 family;
	__u8 pad[2];
};

/* sy_ct.flags and sy_ct_rev.flags */
#define SY_CT_SNAT 0x1    /* the flow goes to its backend from snat_addr:snat_port */
#define SY_CT_CLOSING 0x2 /* a FIN or RST was seen in this direction */
#define SY_CT_DSR 0x4     /* the flow's backend answers the client directly (its SYN carries the
			   * DSR option) */

/*
 * sy_ct (LRU_HASH): packet level, a flow from a client to a frontend (key: client -> frontend)
 * and the backend it was given, so that it stays there.
 */
struct sy_ct {
	__u64 last_seen_ns;
	__u8 backend[16];
	__u8 snat_addr[16];
	__u16 backend_port; /* network byte order */
	__u16 snat_port;    /* network byte order, with SY_CT_SNAT */
	__u32 backend_id;   /* to check the backend is still the one chosen */
	__u8 family;
	__u8 flags;         /* SY_CT_* */
	__u8 pad[6];
};

/*
 * sy_ct_rev (LRU_HASH): packet level, the replies of a flow as they arrive: from the backend
 * to the client (no SNAT; seen leaving the node) or to snat_addr:snat_port (SNAT; seen
 * arriving), and the frontend and client they are translated back to.
 */
struct sy_ct_rev {
	__u64 last_seen_ns;
	__u8 client[16];
	__u8 frontend[16];
	__u16 client_port;   /* network byte order */
	__u16 frontend_port; /* network byte order */
	__u8 family;
	__u8 flags;          /* SY_CT_* */
	__u8 pad[2];
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
	SY_STAT_NS_FLOWS = 4,   /* packet level: new flows sent to a backend */
	SY_STAT_NS_DENIED = 5,  /* packet level: dropped, source outside loadBalancerSourceRanges */
	SY_STAT_NS_SNAT_FAILED = 6, /* packet level: dropped, no free SNAT port */
	SY_STAT_NS_PACKETS = 7, /* packet level: packets translated, both directions */
	SY_STAT_XDP_TX = 8,     /* of those, sent back out by the XDP program (XDP_TX) */
	SY_STAT_DSR = 9,        /* DSR flows: SYNs sent with the option, or received and recorded */
	SY_STAT_MAX = 10,
};

#endif
