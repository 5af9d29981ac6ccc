// SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause)
/*
 * Packet-level load balancing for traffic that arrives from outside the node: NodePorts,
 * external IPs and load-balancer IPs (the frontends whose kind is not ClusterIP in
 * sy_frontends). tc programs on the node's external interfaces:
 *
 * - sy_nodeport_ingress: a packet to a north-south frontend opens a flow: the backend is
 *   chosen (Maglev on the flow's hash, so every node picks the same one), remembered in sy_ct,
 *   and the packet rewritten to it. A backend on another node is reached from the node's
 *   address (SNAT, port allocated here) so that its replies come back through this node; those
 *   replies (found in sy_ct_rev) are rewritten back to frontend -> client. Rewritten packets
 *   are forwarded with a FIB lookup and a redirect, not through the stack (their source may
 *   be the node's own address, which the stack's input path refuses).
 * - sy_nodeport_egress: replies of a local backend to a client (no SNAT) get the frontend as
 *   their source again as they leave the node.
 * - sy_nodeport_xdp (with --xdp): the same decision as sy_nodeport_ingress, earlier; a packet
 *   whose translation leaves through the interface it came in on (a backend on another node,
 *   a reply going back to its client) is rewritten and sent back out at once (XDP_TX). Every
 *   other packet is passed untouched and sy_nodeport_ingress translates it with the flow
 *   state the XDP program already recorded.
 *
 * The decision (which flow, which backend, which SNAT port; the maps' updates) is one
 * function, decide_ingress(); the tc and XDP programs differ only in how they rewrite and
 * send the packet.
 *
 * IPv4 only: IPv6 north-south frontends are served by the socket-level programs for clients
 * on the node only. Fragments other than the first are passed untouched.
 */
#include <linux/bpf.h>
#include <linux/in.h>
#include <linux/if_ether.h>
#include <linux/ip.h>
#include <linux/pkt_cls.h>
#include <bpf/bpf_helpers.h>
#include <bpf/bpf_endian.h>

#include "switchyard.h"
#include "lb.h"

#ifndef AF_INET
#define AF_INET 2
#endif

#define TCP_FLAG_FIN 0x01
#define TCP_FLAG_SYN 0x02
#define TCP_FLAG_RST 0x04
#define TCP_FLAG_ACK 0x10

/* SNAT ports tried after the client's own: 61000-65535, outside Linux's default ephemeral
 * range (32768-60999), so that the node's own connections rarely meet them. */
#define SNAT_PORT_MIN 61000
#define SNAT_PORT_COUNT 4536
#define SNAT_TRIES 6

/* A flow whose SNAT port may be given to another flow: closed for a second, or idle. */
#define CLOSED_REUSE_NS (1ULL * NSEC_PER_SEC)
#define TCP_IDLE_REUSE_NS (600ULL * NSEC_PER_SEC)
#define UDP_IDLE_REUSE_NS (60ULL * NSEC_PER_SEC)

struct pkt4 {
	__u32 saddr; /* network byte order */
	__u32 daddr;
	__u16 sport; /* network byte order */
	__u16 dport;
	__u8 proto;
	__u8 tcp_flags;
	__u32 l3; /* offset of the IP header */
	__u32 l4; /* offset of the TCP or UDP header */
};

/* Reads an IPv4 TCP or UDP packet's addresses and ports from its linear data. 0: not one to
 * look at (not IPv4 TCP or UDP, a later fragment, or headers beyond the linear part). */
static __always_inline int parse4(void *data, void *end, struct pkt4 *p)
{
	struct ethhdr *eth = data;
	struct iphdr *ip;
	__u8 *l4;

	if ((void *)(eth + 1) > end || eth->h_proto != bpf_htons(ETH_P_IP))
		return 0;
	ip = (void *)(eth + 1);
	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return 0;
	/* later fragments carry no ports */
	if (ip->frag_off & bpf_htons(0x1fff))
		return 0;
	if (ip->protocol != IPPROTO_TCP && ip->protocol != IPPROTO_UDP)
		return 0;
	l4 = (__u8 *)ip + ip->ihl * 4;
	if (ip->protocol == IPPROTO_TCP) {
		if ((void *)(l4 + 14) > end)
			return 0;
		p->tcp_flags = l4[13];
	} else {
		if ((void *)(l4 + 8) > end)
			return 0;
		p->tcp_flags = 0;
	}
	p->saddr = ip->saddr;
	p->daddr = ip->daddr;
	p->proto = ip->protocol;
	p->l3 = sizeof(*eth);
	p->l4 = sizeof(*eth) + ip->ihl * 4;
	p->sport = *(__u16 *)l4;
	p->dport = *(__u16 *)(l4 + 2);
	return 1;
}

static __always_inline void flow_of(const struct pkt4 *p, struct sy_flow *flow)
{
	__builtin_memcpy(flow->saddr, &p->saddr, 4);
	__builtin_memcpy(flow->daddr, &p->daddr, 4);
	flow->sport = p->sport;
	flow->dport = p->dport;
	flow->proto = p->proto;
	flow->family = SY_FAMILY_V4;
}

static __always_inline __u32 addr4(const __u8 *addr)
{
	__u32 a;

	__builtin_memcpy(&a, addr, 4);
	return a;
}

static __always_inline __u32 l4_csum_off(const struct pkt4 *p)
{
	return p->l4 + (p->proto == IPPROTO_TCP ? 16 : 6);
}

static __always_inline __u64 l4_csum_flags(const struct pkt4 *p)
{
	/* a UDP checksum of 0 means none: leave it so */
	return p->proto == IPPROTO_UDP ? BPF_F_MARK_MANGLED_0 : 0;
}

/*
 * What a packet becomes: its new addresses and ports (network byte order), and what to do.
 */
enum action {
	ACT_PASS,    /* not ours: leave it */
	ACT_DROP,    /* drop it (no backend, a source outside the ranges, no SNAT port) */
	ACT_FORWARD, /* rewrite, then route it to its new destination */
	ACT_OUT,     /* rewrite the source, and let it leave as it was going to (egress) */
};

struct xlate {
	__u32 saddr;
	__u32 daddr;
	__u16 sport;
	__u16 dport;
	__u8 dsr_opt;  /* add the DSR option naming the frontend (a DSR flow's SYN) */
	__u32 fe_addr; /* the frontend, with dsr_opt */
	__u16 fe_port;
};

static __always_inline __u8 closing(const struct pkt4 *p)
{
	return (p->tcp_flags & (TCP_FLAG_FIN | TCP_FLAG_RST)) ? SY_CT_CLOSING : 0;
}

static __always_inline int is_syn(const struct pkt4 *p)
{
	return p->proto == IPPROTO_TCP &&
	       (p->tcp_flags & (TCP_FLAG_SYN | TCP_FLAG_ACK)) == TCP_FLAG_SYN;
}

/* A client -> frontend packet of a known flow: to its backend (from the SNAT address). */
static __always_inline int to_backend(const struct pkt4 *p, struct sy_ct *ct, __u64 now,
				      struct xlate *x)
{
	ct->last_seen_ns = now;
	ct->flags |= closing(p);
	x->saddr = p->saddr;
	x->sport = p->sport;
	if (ct->flags & SY_CT_SNAT) {
		x->saddr = addr4(ct->snat_addr);
		x->sport = ct->snat_port;
	}
	x->daddr = addr4(ct->backend);
	x->dport = ct->backend_port;
	if ((ct->flags & SY_CT_DSR) && is_syn(p)) {
		x->dsr_opt = 1;
		x->fe_addr = p->daddr;
		x->fe_port = p->dport;
	}
	return ACT_FORWARD;
}

/* A reply: back to the client (routed, after SNAT) or on its way out (no SNAT), from the
 * frontend. */
static __always_inline int to_client(const struct pkt4 *p, struct sy_ct_rev *rev, __u64 now,
				     struct xlate *x, int route)
{
	rev->last_seen_ns = now;
	rev->flags |= closing(p);
	x->saddr = addr4(rev->frontend);
	x->sport = rev->frontend_port;
	x->daddr = p->daddr;
	x->dport = p->dport;
	if (route) {
		x->daddr = addr4(rev->client);
		x->dport = rev->client_port;
		return ACT_FORWARD;
	}
	return ACT_OUT;
}

static __always_inline __u64 flow_hash(const struct pkt4 *p)
{
	__u64 addrs = ((__u64)p->saddr << 32) | p->daddr;
	__u64 rest = ((__u64)p->sport << 24) | ((__u64)p->dport << 8) | p->proto;

	return mix64(addrs ^ mix64(rest));
}

/* Whether the flow that holds a SNAT port may give it up. */
static __always_inline int reusable(const struct sy_ct_rev *rev, __u8 proto, __u64 now)
{
	__u64 idle = now - rev->last_seen_ns;

	if ((__s64)idle < 0)
		return 0;
	if (rev->flags & SY_CT_CLOSING)
		return idle > CLOSED_REUSE_NS;
	return idle > (proto == IPPROTO_TCP ? TCP_IDLE_REUSE_NS : UDP_IDLE_REUSE_NS);
}

/* Records the reply direction under a free SNAT port; returns it, or 0 if none was free. */
static __always_inline __u16 snat_port(const struct pkt4 *p, struct sy_flow *rkey,
				       const struct sy_ct_rev *rval, __u64 hash, __u64 now)
{
	for (int i = 0; i < SNAT_TRIES; i++) {
		__u16 port = p->sport;
		struct sy_ct_rev *held;

		if (i > 0)
			port = bpf_htons(SNAT_PORT_MIN +
					 (__u16)(((hash >> 16) + (__u64)i * 7919) % SNAT_PORT_COUNT));
		rkey->dport = port;
		if (bpf_map_update_elem(&sy_ct_rev, rkey, rval, BPF_NOEXIST) == 0)
			return port;
		held = bpf_map_lookup_elem(&sy_ct_rev, rkey);
		if (!held)
			continue;
		if ((addr4(held->client) == p->saddr && held->client_port == p->sport &&
		     addr4(held->frontend) == p->daddr && held->frontend_port == p->dport) ||
		    reusable(held, p->proto, now)) {
			if (bpf_map_update_elem(&sy_ct_rev, rkey, rval, BPF_ANY) == 0)
				return port;
		}
	}
	return 0;
}

/* A packet of no known flow: a new flow if it is for a north-south frontend. */
static __always_inline int new_flow(const struct pkt4 *p, const struct sy_flow *flow, __u64 now,
				    struct xlate *x)
{
	struct sy_frontend_key fkey = {};
	const struct sy_frontend *fe;
	const struct sy_backend *be;
	__u32 backend_id = 0;
	__u64 hash;

	__builtin_memcpy(fkey.addr, &p->daddr, 4);
	fkey.port = p->dport;
	fkey.proto = p->proto;
	fkey.family = SY_FAMILY_V4;
	fe = bpf_map_lookup_elem(&sy_frontends, &fkey);
	if (!fe || fe->kind == SY_KIND_CLUSTER_IP)
		return ACT_PASS;

	if (fe->flags & SY_F_SRC_RANGES) {
		struct sy_srcrange_key rkey = {
			.prefixlen = 64,
			.service_id = fe->service_id,
		};

		__builtin_memcpy(rkey.addr, &p->saddr, 4);
		if (!bpf_map_lookup_elem(&sy_srcranges, &rkey)) {
			count(SY_STAT_NS_DENIED);
			return ACT_DROP;
		}
	}
	if (fe->count == 0) {
		count(SY_STAT_NO_BACKEND);
		return ACT_DROP;
	}

	hash = flow_hash(p);
	be = pick_backend((1ULL << 63) | p->saddr, hash, fe, &backend_id);
	if (!be || be->family != SY_FAMILY_V4) {
		count(SY_STAT_BACKEND_MISSING);
		return ACT_DROP;
	}

	struct sy_ct ct = {
		.last_seen_ns = now,
		.backend_port = be->port,
		.backend_id = backend_id,
		.family = SY_FAMILY_V4,
	};
	struct sy_flow rkey = {
		.sport = be->port,
		.dport = p->sport,
		.proto = p->proto,
		.family = SY_FAMILY_V4,
	};
	struct sy_ct_rev rval = {
		.last_seen_ns = now,
		.client_port = p->sport,
		.frontend_port = p->dport,
		.family = SY_FAMILY_V4,
	};
	__u32 snat = addr4(fe->snat_addr);

	__builtin_memcpy(ct.backend, be->addr, 16);
	__builtin_memcpy(rkey.saddr, be->addr, 16);
	__builtin_memcpy(rval.client, &p->saddr, 4);
	__builtin_memcpy(rval.frontend, &p->daddr, 4);
	if ((fe->flags & SY_F_DSR) && p->proto == IPPROTO_TCP && !(be->state & SY_B_LOCAL)) {
		/* The backend's node answers the client itself: nothing comes back here. */
		ct.flags = SY_CT_DSR;
	} else if (snat && !(be->state & SY_B_LOCAL)) {
		__u16 port;

		rval.flags = SY_CT_SNAT;
		__builtin_memcpy(rkey.daddr, &snat, 4);
		port = snat_port(p, &rkey, &rval, hash, now);
		if (!port) {
			count(SY_STAT_NS_SNAT_FAILED);
			return ACT_DROP;
		}
		ct.flags = SY_CT_SNAT;
		ct.snat_port = port;
		__builtin_memcpy(ct.snat_addr, &snat, 4);
	} else {
		__builtin_memcpy(rkey.daddr, &p->saddr, 4);
		bpf_map_update_elem(&sy_ct_rev, &rkey, &rval, BPF_ANY);
	}
	bpf_map_update_elem(&sy_ct, flow, &ct, BPF_ANY);
	count(SY_STAT_NS_FLOWS);
	return to_backend(p, &ct, now, x);
}

/* Whether the backend a flow was given still is that backend. */
static __always_inline int backend_alive(const struct sy_ct *ct)
{
	__u32 id = ct->backend_id;
	const struct sy_backend *be = bpf_map_lookup_elem(&sy_backends, &id);

	return be && addr4(be->addr) == addr4(ct->backend) && be->port == ct->backend_port;
}

/* What an arriving packet becomes: a flow's next packet, a reply to a SNATed flow, a new
 * flow, or none of ours. */
static __always_inline int decide_ingress(const struct pkt4 *p, struct xlate *x)
{
	struct sy_flow flow = {};
	struct sy_ct *ct;
	struct sy_ct_rev *rev;
	__u64 now = bpf_ktime_get_ns();

	flow_of(p, &flow);
	ct = bpf_map_lookup_elem(&sy_ct, &flow);
	if (ct) {
		/* A new connection on a closed flow's ports, or a backend that left: choose again. */
		if (!((is_syn(p) && (ct->flags & SY_CT_CLOSING)) || !backend_alive(ct)))
			return to_backend(p, ct, now, x);
	} else {
		rev = bpf_map_lookup_elem(&sy_ct_rev, &flow);
		if (rev && (rev->flags & SY_CT_SNAT))
			return to_client(p, rev, now, x, 1);
	}
	return new_flow(p, &flow, now, x);
}

/* --- tc: rewriting with the skb helpers --- */

/* Rewrites the source (dst = 0) or destination address, with both checksums. */
static __always_inline int set_addr(struct __sk_buff *skb, const struct pkt4 *p, int dst,
				    __u32 old, __u32 addr)
{
	__u32 off = p->l3 + (dst ? offsetof(struct iphdr, daddr) : offsetof(struct iphdr, saddr));

	if (old == addr)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off(p), old, addr,
				BPF_F_PSEUDO_HDR | sizeof(addr) | l4_csum_flags(p)))
		return -1;
	if (bpf_l3_csum_replace(skb, p->l3 + offsetof(struct iphdr, check), old, addr, sizeof(addr)))
		return -1;
	return bpf_skb_store_bytes(skb, off, &addr, sizeof(addr), 0);
}

/* Rewrites the source (dst = 0) or destination port, with the L4 checksum. */
static __always_inline int set_port(struct __sk_buff *skb, const struct pkt4 *p, int dst,
				    __u16 old, __u16 port)
{
	if (old == port)
		return 0;
	if (bpf_l4_csum_replace(skb, l4_csum_off(p), old, port, sizeof(port) | l4_csum_flags(p)))
		return -1;
	return bpf_skb_store_bytes(skb, p->l4 + (dst ? 2 : 0), &port, sizeof(port), 0);
}

static __always_inline int rewrite_skb(struct __sk_buff *skb, const struct pkt4 *p,
				       const struct xlate *x)
{
	if (set_addr(skb, p, 0, p->saddr, x->saddr) || set_port(skb, p, 0, p->sport, x->sport) ||
	    set_addr(skb, p, 1, p->daddr, x->daddr) || set_port(skb, p, 1, p->dport, x->dport))
		return -1;
	count(SY_STAT_NS_PACKETS);
	return 0;
}

/*
 * Sends a rewritten packet on its way: the FIB says where its new destination is; the TTL is
 * decremented as a router would, the MACs set, and the packet redirected out of that
 * interface. Without a neighbour entry yet, the kernel resolves it (bpf_redirect_neigh).
 * Anything else (no route, a local destination) goes up the stack.
 */
static __always_inline int forward_skb(struct __sk_buff *skb, const struct xlate *x, __u8 proto)
{
	struct bpf_fib_lookup fib = {};
	struct iphdr *ip;
	void *data, *end;
	int rc;

	fib.family = AF_INET;
	fib.l4_protocol = proto;
	fib.sport = x->sport;
	fib.dport = x->dport;
	fib.ipv4_src = x->saddr;
	fib.ipv4_dst = x->daddr;
	fib.ifindex = skb->ingress_ifindex;
	rc = bpf_fib_lookup(skb, &fib, sizeof(fib), 0);
	if (rc != BPF_FIB_LKUP_RET_SUCCESS && rc != BPF_FIB_LKUP_RET_NO_NEIGH)
		return TC_ACT_OK;

	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	ip = data + sizeof(struct ethhdr);
	if ((void *)(ip + 1) > end)
		return TC_ACT_OK;
	if (ip->ttl <= 1)
		return TC_ACT_OK; /* the stack answers with ICMP time exceeded */
	{
		__u16 *word = (__u16 *)&ip->ttl; /* ttl and protocol */
		__u16 old = *word;

		ip->ttl -= 1;
		bpf_l3_csum_replace(skb, sizeof(struct ethhdr) + offsetof(struct iphdr, check), old,
				    *word, sizeof(old));
	}
	if (rc == BPF_FIB_LKUP_RET_NO_NEIGH)
		return bpf_redirect_neigh(fib.ifindex, NULL, 0, 0);

	data = (void *)(long)skb->data;
	end = (void *)(long)skb->data_end;
	if (data + sizeof(struct ethhdr) > end)
		return TC_ACT_OK;
	__builtin_memcpy(((struct ethhdr *)data)->h_dest, fib.dmac, ETH_ALEN);
	__builtin_memcpy(((struct ethhdr *)data)->h_source, fib.smac, ETH_ALEN);
	return bpf_redirect(fib.ifindex, 0);
}

/* Recomputes the checksum of the IPv4 header at `l3`, `len` bytes (20 or 28). */
static __always_inline int ip_csum_fix(struct __sk_buff *skb, __u32 l3, __u32 len)
{
	__u16 words[14] = {};
	__u32 sum = 0;

	if (len != 20 && len != 28)
		return -1;
	if (bpf_skb_load_bytes(skb, l3, words, len))
		return -1;
	words[5] = 0;
	for (int i = 0; i < 14; i++) {
		if (i * 2 < len)
			sum += words[i];
	}
	sum = (sum & 0xffff) + (sum >> 16);
	sum = (sum & 0xffff) + (sum >> 16);
	words[5] = (__u16)~sum;
	return bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, check), &words[5], 2, 0);
}

/* Sets the IPv4 header's length fields after it grew or shrank by the DSR option. */
static __always_inline int set_ip_lengths(struct __sk_buff *skb, __u32 l3, __u8 ihl, int delta)
{
	__u8 vihl = 0x40 | ihl;
	__u16 tot;

	if (bpf_skb_load_bytes(skb, l3 + offsetof(struct iphdr, tot_len), &tot, 2))
		return -1;
	tot = bpf_htons(bpf_ntohs(tot) + delta);
	if (bpf_skb_store_bytes(skb, l3, &vihl, 1, 0) ||
	    bpf_skb_store_bytes(skb, l3 + offsetof(struct iphdr, tot_len), &tot, 2, 0))
		return -1;
	return ip_csum_fix(skb, l3, ihl * 4);
}

/* Adds the DSR option naming the frontend after a 20-byte IPv4 header. */
static __always_inline int add_dsr_opt(struct __sk_buff *skb, const struct pkt4 *p,
				       const struct xlate *x)
{
	__u8 opt[SY_DSR_OPT_LEN] = { SY_DSR_OPT_TYPE, SY_DSR_OPT_LEN };

	if (p->l4 - p->l3 != 20)
		return -1; /* a header with options of its own: no room for ours */
	__builtin_memcpy(&opt[2], &x->fe_port, 2);
	__builtin_memcpy(&opt[4], &x->fe_addr, 4);
	if (bpf_skb_adjust_room(skb, SY_DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0))
		return -1;
	if (bpf_skb_store_bytes(skb, p->l3 + 20, opt, sizeof(opt), 0))
		return -1;
	if (set_ip_lengths(skb, p->l3, 7, SY_DSR_OPT_LEN))
		return -1;
	count(SY_STAT_DSR);
	return 0;
}

/*
 * On the backend's node: a SYN carrying the DSR option. Its replies are recorded to come from
 * the frontend it names (rewritten on the way out, sy_nodeport_egress) and the option removed.
 * 1 if it was one.
 */
static __always_inline int take_dsr_opt(struct __sk_buff *skb, const struct pkt4 *p)
{
	__u8 opt[SY_DSR_OPT_LEN];

	if (p->proto != IPPROTO_TCP || p->l4 - p->l3 != 28)
		return 0;
	if (bpf_skb_load_bytes(skb, p->l3 + 20, opt, sizeof(opt)) || opt[0] != SY_DSR_OPT_TYPE ||
	    opt[1] != SY_DSR_OPT_LEN)
		return 0;

	struct sy_flow rkey = {
		.sport = p->dport,
		.dport = p->sport,
		.proto = p->proto,
		.family = SY_FAMILY_V4,
	};
	struct sy_ct_rev rval = {
		.last_seen_ns = bpf_ktime_get_ns(),
		.client_port = p->sport,
		.family = SY_FAMILY_V4,
	};

	__builtin_memcpy(rkey.saddr, &p->daddr, 4);
	__builtin_memcpy(rkey.daddr, &p->saddr, 4);
	__builtin_memcpy(rval.client, &p->saddr, 4);
	__builtin_memcpy(&rval.frontend_port, &opt[2], 2);
	__builtin_memcpy(rval.frontend, &opt[4], 4);
	bpf_map_update_elem(&sy_ct_rev, &rkey, &rval, BPF_ANY);
	if (bpf_skb_adjust_room(skb, -SY_DSR_OPT_LEN, BPF_ADJ_ROOM_NET, 0) ||
	    set_ip_lengths(skb, p->l3, 5, -SY_DSR_OPT_LEN))
		return -1;
	count(SY_STAT_DSR);
	return 1;
}

SEC("classifier")
int sy_nodeport_ingress(struct __sk_buff *skb)
{
	struct xlate x = {};
	struct pkt4 p;
	int taken;

	if (!parse4((void *)(long)skb->data, (void *)(long)skb->data_end, &p))
		return TC_ACT_OK;
	taken = take_dsr_opt(skb, &p);
	if (taken)
		return taken < 0 ? TC_ACT_SHOT : TC_ACT_OK;
	switch (decide_ingress(&p, &x)) {
	case ACT_DROP:
		return TC_ACT_SHOT;
	case ACT_FORWARD:
		if (rewrite_skb(skb, &p, &x))
			return TC_ACT_SHOT;
		if (x.dsr_opt && add_dsr_opt(skb, &p, &x))
			return TC_ACT_SHOT;
		return forward_skb(skb, &x, p.proto);
	default:
		return TC_ACT_OK;
	}
}

SEC("classifier")
int sy_nodeport_egress(struct __sk_buff *skb)
{
	struct sy_flow flow = {};
	struct sy_ct_rev *rev;
	struct xlate x = {};
	struct pkt4 p;

	if (!parse4((void *)(long)skb->data, (void *)(long)skb->data_end, &p))
		return TC_ACT_OK;
	flow_of(&p, &flow);
	rev = bpf_map_lookup_elem(&sy_ct_rev, &flow);
	if (!rev || (rev->flags & SY_CT_SNAT))
		return TC_ACT_OK;
	to_client(&p, rev, bpf_ktime_get_ns(), &x, 0);
	if (rewrite_skb(skb, &p, &x))
		return TC_ACT_SHOT;
	return TC_ACT_OK;
}

/* --- XDP: rewriting in place, checksums by RFC 1624 --- */

static __always_inline __u16 csum_add16(__u16 a, __u16 b)
{
	__u32 sum = (__u32)a + b;

	return (__u16)(sum + (sum >> 16));
}

/* HC' = ~(~HC + ~m + m'), one 16-bit word at a time. Byte order does not matter as long as
 * the words are read as the checksum is: straight from the packet. */
static __always_inline void csum_update16(__u16 *sum, __u16 old, __u16 new)
{
	*sum = ~csum_add16(csum_add16(~*sum, ~old), new);
}

static __always_inline void csum_update32(__u16 *sum, __u32 old, __u32 new)
{
	csum_update16(sum, (__u16)old, (__u16)new);
	csum_update16(sum, (__u16)(old >> 16), (__u16)(new >> 16));
}

/* Rewrites addresses, ports and checksums, decrements the TTL, sets the MACs. 0 on success. */
static __always_inline int rewrite_xdp(struct xdp_md *ctx, const struct pkt4 *p,
				       const struct xlate *x, const struct bpf_fib_lookup *fib)
{
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct ethhdr *eth = data;
	struct iphdr *ip = data + sizeof(struct ethhdr);
	__u16 *l4sum;
	__u16 *ports;
	__u8 *l4;

	if ((void *)(ip + 1) > end || ip->ihl < 5)
		return -1;
	l4 = (__u8 *)ip + ip->ihl * 4;
	if ((void *)(l4 + 8) > end)
		return -1;
	ports = (__u16 *)l4;
	l4sum = p->proto == IPPROTO_TCP ? (__u16 *)(l4 + 16) : (__u16 *)(l4 + 6);
	if (p->proto == IPPROTO_TCP && (void *)(l4 + 18) > end)
		return -1;

	/* L4: the pseudo-header's addresses and the ports (a UDP checksum of 0 stays 0). */
	if (p->proto == IPPROTO_TCP || *l4sum != 0) {
		csum_update32(l4sum, ip->saddr, x->saddr);
		csum_update32(l4sum, ip->daddr, x->daddr);
		csum_update16(l4sum, ports[0], x->sport);
		csum_update16(l4sum, ports[1], x->dport);
		if (p->proto == IPPROTO_UDP && *l4sum == 0)
			*l4sum = 0xffff;
	}
	ports[0] = x->sport;
	ports[1] = x->dport;

	/* L3: addresses and the TTL. */
	{
		__u16 *word = (__u16 *)&ip->ttl; /* ttl and protocol */
		__u16 old = *word;

		ip->ttl -= 1;
		csum_update16(&ip->check, old, *word);
	}
	csum_update32(&ip->check, ip->saddr, x->saddr);
	csum_update32(&ip->check, ip->daddr, x->daddr);
	ip->saddr = x->saddr;
	ip->daddr = x->daddr;

	__builtin_memcpy(eth->h_dest, fib->dmac, ETH_ALEN);
	__builtin_memcpy(eth->h_source, fib->smac, ETH_ALEN);
	count(SY_STAT_NS_PACKETS);
	return 0;
}

SEC("xdp")
int sy_nodeport_xdp(struct xdp_md *ctx)
{
	struct bpf_fib_lookup fib = {};
	struct xlate x = {};
	struct pkt4 p;
	void *data = (void *)(long)ctx->data;
	void *end = (void *)(long)ctx->data_end;
	struct iphdr *ip = data + sizeof(struct ethhdr);

	if (!parse4(data, end, &p))
		return XDP_PASS;
	if (p.l4 - p.l3 != 20)
		return XDP_PASS; /* IP options (the DSR option among them) are tc's */
	switch (decide_ingress(&p, &x)) {
	case ACT_DROP:
		return XDP_DROP;
	case ACT_FORWARD:
		if (x.dsr_opt)
			return XDP_PASS; /* the DSR option is added by tc */
		break;
	default:
		return XDP_PASS;
	}
	if ((void *)(ip + 1) > end || ip->ttl <= 1)
		return XDP_PASS;
	fib.family = AF_INET;
	fib.l4_protocol = p.proto;
	fib.sport = x.sport;
	fib.dport = x.dport;
	fib.ipv4_src = x.saddr;
	fib.ipv4_dst = x.daddr;
	fib.ifindex = ctx->ingress_ifindex;
	/* Only what goes back out of this interface is sent from here; the rest (a local pod,
	 * another interface, no neighbour yet) is left untouched to the tc program, which finds
	 * the flow this decision recorded. */
	if (bpf_fib_lookup(ctx, &fib, sizeof(fib), 0) != BPF_FIB_LKUP_RET_SUCCESS ||
	    fib.ifindex != ctx->ingress_ifindex)
		return XDP_PASS;
	if (rewrite_xdp(ctx, &p, &x, &fib))
		return XDP_PASS;
	count(SY_STAT_XDP_TX);
	return XDP_TX;
}

char LICENSE[] SEC("license") = "Dual BSD/GPL";
