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
#include "lb.h"

#ifndef IPPROTO_MPTCP
#define IPPROTO_MPTCP 262
#endif

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

	__u64 netns = bpf_get_netns_cookie(ctx);

	be = pick_backend(netns, mix64(netns), fe, &backend_id);
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
