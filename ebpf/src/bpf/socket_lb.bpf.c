// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Socket-level load balancing: cgroup/sock_addr programs that rewrite a Service address (VIP)
 * to a backend when a socket connects or sends, and the backend back to the VIP when the
 * application asks who its peer is (getpeername) or where a datagram came from (recvmsg).
 *
 * No packet is ever rewritten: the socket talks to the backend from the start, so there is
 * no per-packet NAT and no conntrack entry. What is a Service, which backends it has and how
 * they are chosen is decided in userspace; these programs only follow the maps in
 * switchyard.h.
 *
 * IPv4-mapped IPv6 destinations (::ffff:a.b.c.d) on connect6/sendmsg6 are dual-stack sockets
 * talking IPv4: they are looked up as IPv4 frontends and rewritten to the IPv4-mapped backend.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/errno.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "switchyard.h"

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

#define NSEC_PER_SEC 1000000000ULL

/*
 * Default sizes; the loader overrides every one of them (SocketLbConfig). Hash maps that are
 * mostly empty are not preallocated (BPF_F_NO_PREALLOC); LRU maps must be.
 */
struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sy_frontend_key);
	__type(value, struct sy_frontend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_frontends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct sy_slot_key);
	__type(value, struct sy_slot);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_slots SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 262144);
	__type(key, __u32);
	__type(value, struct sy_backend);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_backends SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_HASH);
	__uint(max_entries, 1048576);
	__type(key, struct sy_maglev_key);
	__type(value, __u32);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_maglev SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 65536);
	__type(key, struct sy_affinity_key);
	__type(value, struct sy_affinity);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_affinity SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_revnat_key);
	__type(value, struct sy_revnat);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_revnat SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_PERCPU_ARRAY);
	__uint(max_entries, SY_STAT_MAX);
	__type(key, __u32);
	__type(value, __u64);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_stats SEC(".maps");

static __always_inline void count(__u32 stat)
{
	__u64 *value = bpf_map_lookup_elem(&sy_stats, &stat);

	if (value)
		*value += 1;
}

/* The frontend protocol of a socket, or 0 for sockets that are never balanced. */
static __always_inline __u8 sock_proto(const struct bpf_sock_addr *ctx)
{
	switch (ctx->protocol) {
	case IPPROTO_TCP:
	case IPPROTO_MPTCP:
		return IPPROTO_TCP;
	case IPPROTO_UDP:
		return IPPROTO_UDP;
	default:
		return 0;
	}
}

/* A 64-bit finalizer (splitmix64): spreads netns cookies, which are small sequential numbers. */
static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* An address as the maps hold it: family and 16 bytes, IPv4 in the first four. */
struct sy_addr {
	__u8 addr[16];
	__u16 port; /* network byte order */
	__u8 family;
};

enum verdict {
	V_PASS,	   /* not a frontend, or nothing to do: leave the call alone */
	V_REWRITE, /* *addr now holds the backend */
	V_REFUSE,  /* fail the call with ECONNREFUSED */
	V_DROP,	   /* fail the call with EPERM */
};

static __always_inline const struct sy_backend *
pick_backend(__u64 netns_cookie, const struct sy_frontend *fe, __u32 *backend_id)
{
	struct sy_affinity_key akey = {};
	const struct sy_backend *be;
	__u64 now = 0;

	if (fe->flags & SY_F_AFFINITY) {
		struct sy_affinity *aff;

		akey.client_cookie = netns_cookie;
		akey.service_id = fe->service_id;
		now = bpf_ktime_get_ns();
		aff = bpf_map_lookup_elem(&sy_affinity, &akey);
		/* signed: another CPU may have refreshed it a moment after `now` */
		if (aff && (__s64)(now - aff->last_used_ns) <=
			       (__s64)((__u64)fe->affinity_timeout * NSEC_PER_SEC)) {
			__u32 id = aff->backend_id;

			be = bpf_map_lookup_elem(&sy_backends, &id);
			if (be) {
				aff->last_used_ns = now;
				*backend_id = id;
				return be;
			}
		}
	}

	if (fe->flags & SY_F_MAGLEV) {
		struct sy_maglev_key mkey = {
			.service_id = fe->service_id,
			.index = (__u32)(mix64(netns_cookie) % SY_MAGLEV_SIZE),
		};
		__u32 *id = bpf_map_lookup_elem(&sy_maglev, &mkey);

		if (!id)
			return NULL;
		*backend_id = *id;
	} else {
		struct sy_slot_key skey = {
			.service_id = fe->service_id,
			.slot = bpf_get_prandom_u32() % fe->count + 1,
		};
		struct sy_slot *slot = bpf_map_lookup_elem(&sy_slots, &skey);

		if (!slot)
			return NULL;
		*backend_id = slot->backend_id;
	}

	be = bpf_map_lookup_elem(&sy_backends, backend_id);
	if (!be)
		return NULL;

	if (fe->flags & SY_F_AFFINITY) {
		struct sy_affinity aff = {
			.last_used_ns = now,
			.backend_id = *backend_id,
		};

		bpf_map_update_elem(&sy_affinity, &akey, &aff, BPF_ANY);
	}
	return be;
}

/*
 * Translates *addr (the destination a socket asked for) to a backend if it is a frontend,
 * and remembers the VIP for reverse translation.
 */
static __always_inline enum verdict translate(struct bpf_sock_addr *ctx, struct sy_addr *addr)
{
	struct sy_frontend_key fkey = {};
	const struct sy_frontend *fe;
	const struct sy_backend *be;
	__u32 backend_id = 0;
	__u8 proto = sock_proto(ctx);

	if (!proto)
		return V_PASS;
	__builtin_memcpy(fkey.addr, addr->addr, 16);
	fkey.port = addr->port;
	fkey.proto = proto;
	fkey.family = addr->family;
	fe = bpf_map_lookup_elem(&sy_frontends, &fkey);
	if (!fe)
		return V_PASS;

	if (fe->count == 0) {
		count(SY_STAT_NO_BACKEND);
		return (fe->flags & SY_F_DROP) ? V_DROP : V_REFUSE;
	}

	be = pick_backend(bpf_get_netns_cookie(ctx), fe, &backend_id);
	if (!be || be->family != addr->family) {
		count(SY_STAT_BACKEND_MISSING);
		return V_REFUSE;
	}

	struct sy_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = be->port,
		.family = be->family,
	};
	struct sy_revnat rval = {
		.port = addr->port,
		.family = addr->family,
	};

	__builtin_memcpy(rkey.addr, be->addr, 16);
	__builtin_memcpy(rval.addr, addr->addr, 16);
	bpf_map_update_elem(&sy_revnat, &rkey, &rval, BPF_ANY);

	__builtin_memcpy(addr->addr, be->addr, 16);
	addr->port = be->port;
	count(SY_STAT_TRANSLATED);
	return V_REWRITE;
}

/* Looks up the VIP a socket's peer *addr stands for; rewrites *addr to it if found. */
static __always_inline int reverse(struct bpf_sock_addr *ctx, struct sy_addr *addr)
{
	struct sy_revnat_key rkey = {
		.cookie = bpf_get_socket_cookie(ctx),
		.port = addr->port,
		.family = addr->family,
	};
	const struct sy_revnat *rval;

	__builtin_memcpy(rkey.addr, addr->addr, 16);
	rval = bpf_map_lookup_elem(&sy_revnat, &rkey);
	if (!rval)
		return 0;
	__builtin_memcpy(addr->addr, rval->addr, 16);
	addr->port = rval->port;
	count(SY_STAT_REVNAT);
	return 1;
}

static __always_inline int verdict_ret(enum verdict v)
{
	switch (v) {
	case V_REFUSE:
		bpf_set_retval(-ECONNREFUSED);
		return 0;
	case V_DROP:
		return 0; /* EPERM */
	default:
		return 1;
	}
}

/* --- IPv4 --- */

static __always_inline void load4(const struct bpf_sock_addr *ctx, struct sy_addr *addr)
{
	__u32 ip = ctx->user_ip4;

	__builtin_memcpy(addr->addr, &ip, 4);
	addr->port = (__u16)ctx->user_port;
	addr->family = SY_FAMILY_V4;
}

static __always_inline void store4(struct bpf_sock_addr *ctx, const struct sy_addr *addr)
{
	__u32 ip;

	__builtin_memcpy(&ip, addr->addr, 4);
	ctx->user_ip4 = ip;
	ctx->user_port = addr->port;
}

static __always_inline int forward4(struct bpf_sock_addr *ctx)
{
	struct sy_addr addr = {};
	enum verdict v;

	load4(ctx, &addr);
	v = translate(ctx, &addr);
	if (v == V_REWRITE)
		store4(ctx, &addr);
	return verdict_ret(v);
}

static __always_inline int reverse4(struct bpf_sock_addr *ctx)
{
	struct sy_addr addr = {};

	load4(ctx, &addr);
	if (reverse(ctx, &addr))
		store4(ctx, &addr);
	return 1;
}

SEC("cgroup/connect4")
int sy_connect4(struct bpf_sock_addr *ctx)
{
	return forward4(ctx);
}

SEC("cgroup/sendmsg4")
int sy_sendmsg4(struct bpf_sock_addr *ctx)
{
	return forward4(ctx);
}

SEC("cgroup/recvmsg4")
int sy_recvmsg4(struct bpf_sock_addr *ctx)
{
	return reverse4(ctx);
}

SEC("cgroup/getpeername4")
int sy_getpeername4(struct bpf_sock_addr *ctx)
{
	return reverse4(ctx);
}

/* --- IPv6, and IPv4-mapped IPv6 --- */

/* Reads the destination; an IPv4-mapped address is loaded as IPv4. Returns whether it was. */
static __always_inline int load6(const struct bpf_sock_addr *ctx, struct sy_addr *addr)
{
	__u32 w0 = ctx->user_ip6[0], w1 = ctx->user_ip6[1];
	__u32 w2 = ctx->user_ip6[2], w3 = ctx->user_ip6[3];

	addr->port = (__u16)ctx->user_port;
	if (w0 == 0 && w1 == 0 && w2 == bpf_htonl(0x0000ffff)) {
		__builtin_memcpy(addr->addr, &w3, 4);
		addr->family = SY_FAMILY_V4;
		return 1;
	}
	__builtin_memcpy(addr->addr + 0, &w0, 4);
	__builtin_memcpy(addr->addr + 4, &w1, 4);
	__builtin_memcpy(addr->addr + 8, &w2, 4);
	__builtin_memcpy(addr->addr + 12, &w3, 4);
	addr->family = SY_FAMILY_V6;
	return 0;
}

static __always_inline void store6(struct bpf_sock_addr *ctx, const struct sy_addr *addr)
{
	__u32 w[4];

	if (addr->family == SY_FAMILY_V4) {
		w[0] = 0;
		w[1] = 0;
		w[2] = bpf_htonl(0x0000ffff);
		__builtin_memcpy(&w[3], addr->addr, 4);
	} else {
		__builtin_memcpy(w, addr->addr, 16);
	}
	ctx->user_ip6[0] = w[0];
	ctx->user_ip6[1] = w[1];
	ctx->user_ip6[2] = w[2];
	ctx->user_ip6[3] = w[3];
	ctx->user_port = addr->port;
}

static __always_inline int forward6(struct bpf_sock_addr *ctx)
{
	struct sy_addr addr = {};
	enum verdict v;

	load6(ctx, &addr);
	v = translate(ctx, &addr);
	if (v == V_REWRITE)
		store6(ctx, &addr);
	return verdict_ret(v);
}

static __always_inline int reverse6(struct bpf_sock_addr *ctx)
{
	struct sy_addr addr = {};

	load6(ctx, &addr);
	if (reverse(ctx, &addr))
		store6(ctx, &addr);
	return 1;
}

SEC("cgroup/connect6")
int sy_connect6(struct bpf_sock_addr *ctx)
{
	return forward6(ctx);
}

SEC("cgroup/sendmsg6")
int sy_sendmsg6(struct bpf_sock_addr *ctx)
{
	return forward6(ctx);
}

SEC("cgroup/recvmsg6")
int sy_recvmsg6(struct bpf_sock_addr *ctx)
{
	return reverse6(ctx);
}

SEC("cgroup/getpeername6")
int sy_getpeername6(struct bpf_sock_addr *ctx)
{
	return reverse6(ctx);
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
