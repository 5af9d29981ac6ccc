/* SPDX-License-Identifier: (GPL-2.0-only OR BSD-2-Clause) */
/*
 * What both BPF objects share: every map (each object declares all of them, and the loader
 * pins them by name in one folder, so the socket-level and the packet-level programs read the
 * same maps), the counters, and the choice of a backend for a frontend.
 */
#ifndef SWITCHYARD_LB_H
#define SWITCHYARD_LB_H

#include <linux/bpf.h>
#include <bpf/bpf_helpers.h>

#include "switchyard.h"

#define NSEC_PER_SEC 1000000000ULL

/*
 * Default sizes; the loader overrides every one of them. Hash maps that are mostly empty are
 * not preallocated (BPF_F_NO_PREALLOC); LRU maps must be.
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
	__uint(max_entries, 65536);
	__type(key, struct sy_maglev_key);
	__type(value, struct sy_maglev_chunk);
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
	__uint(type, BPF_MAP_TYPE_LPM_TRIE);
	__uint(max_entries, 65536);
	__type(key, struct sy_srcrange_key);
	__type(value, __u8);
	__uint(map_flags, BPF_F_NO_PREALLOC);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_srcranges SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_flow);
	__type(value, struct sy_ct);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_ct SEC(".maps");

struct {
	__uint(type, BPF_MAP_TYPE_LRU_HASH);
	__uint(max_entries, 262144);
	__type(key, struct sy_flow);
	__type(value, struct sy_ct_rev);
	__uint(pinning, LIBBPF_PIN_BY_NAME);
} sy_ct_rev SEC(".maps");

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

/* A 64-bit finalizer (splitmix64): spreads small or similar numbers over 64 bits. */
static __always_inline __u64 mix64(__u64 x)
{
	x ^= x >> 30;
	x *= 0xbf58476d1ce4e5b9ULL;
	x ^= x >> 27;
	x *= 0x94d049bb133111ebULL;
	x ^= x >> 31;
	return x;
}

/* The backend id at entry `hash % maglev_size` of the frontend's Maglev table. */
static __always_inline int maglev_lookup(const struct sy_frontend *fe, __u64 hash, __u32 *backend_id)
{
	__u32 size = fe->maglev_size;
	__u32 index, offset;
	struct sy_maglev_key key = { .service_id = fe->service_id };
	const struct sy_maglev_chunk *chunk;

	if (size == 0)
		return 0;
	index = (__u32)(hash % size);
	key.chunk = index / SY_MAGLEV_CHUNK;
	offset = index % SY_MAGLEV_CHUNK;
	chunk = bpf_map_lookup_elem(&sy_maglev, &key);
	if (!chunk || offset >= SY_MAGLEV_CHUNK)
		return 0;
	*backend_id = chunk->backend_id[offset];
	return 1;
}

/*
 * Chooses a backend of `fe` for a new connection or flow: the client's last backend with
 * session affinity (`client` identifies it), else its Maglev entry for `hash`, else a random
 * slot. NULL when a slot or table entry points at nothing (a write in progress).
 */
static __always_inline const struct sy_backend *
pick_backend(__u64 client, __u64 hash, const struct sy_frontend *fe, __u32 *backend_id)
{
	struct sy_affinity_key akey = {};
	const struct sy_backend *be;
	__u64 now = 0;

	if (fe->flags & SY_F_AFFINITY) {
		struct sy_affinity *aff;

		akey.client_cookie = client;
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
		if (!maglev_lookup(fe, hash, backend_id))
			return NULL;
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

#endif
