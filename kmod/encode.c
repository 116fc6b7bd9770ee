// SPDX-License-Identifier: GPL-2.0
/*
 * The encoding core of the dumpsaver module: one dump, laid out as
 * docs/format.md says, into an area that is already mapped.
 *
 * Order of the logical stream: header block, meta records, page data,
 * directory.  While pages are written the directory entries grow down from
 * the end of the area; ds_enc_finish() sorts them by pfn and moves them
 * right after the data.  A page that does not fit (its bytes plus every
 * entry so far) ends the dump: it is marked TRUNCATED, as dumpsaver's
 * Python encoder does.  The header goes last, its magic after everything.
 */
#include "encode.h"

#define DS_ENTRY_SIZE	((u64)sizeof(struct ds_entry))
#define DS_ALIGN8(x)	(((x) + 7) & ~(u64)7)

static_assert(sizeof(struct ds_header) == DS_FIXED_SIZE);
static_assert(sizeof(struct ds_extent) == 16);
static_assert(sizeof(struct ds_entry) == 32);
static_assert(sizeof(struct ds_meta_rec) == 8);

/* CRC32 as zlib computes it (pre- and post-inverted). */
u32 ds_crc32(const void *data, u64 len)
{
	return crc32_le(~0U, data, len) ^ ~0U;
}

static u64 ds_header_bytes(u32 n_extents)
{
	return DS_FIXED_SIZE + (u64)n_extents * sizeof(struct ds_extent) + 4;
}

/* True when @area starts with a dump header that passes its own checks. */
bool ds_header_valid(const u8 *area, u64 size)
{
	const struct ds_header *h = (const struct ds_header *)area;
	u32 n, hsize, crc;

	if (size < DS_FIXED_SIZE || memcmp(h->magic, DS_MAGIC, DS_MAGIC_LEN))
		return false;
	n = le32_to_cpu(h->n_extents);
	hsize = le32_to_cpu(h->header_size);
	if (le32_to_cpu(h->version) != DS_VERSION || n < 1 ||
	    n > DS_MAX_EXTENTS || hsize != ds_header_bytes(n) || hsize > size)
		return false;
	memcpy(&crc, area + hsize - 4, 4);
	return le32_to_cpu((__force __le32)crc) == ds_crc32(area, hsize - 4);
}

int ds_enc_begin(struct ds_enc *e)
{
	e->meta_offset = DS_ALIGN8(ds_header_bytes(1));
	e->pos = e->meta_offset;
	e->data_offset = 0;
	e->nr_entries = 0;
	e->nr_zero = 0;
	e->full = false;
	e->meta_done = false;
	if (e->size < e->meta_offset + DS_ENTRY_SIZE)
		return -ENOSPC;
	/* Whatever was here before is no dump while this one is written. */
	memset(e->area, 0, DS_MAGIC_LEN);
	return 0;
}

/*
 * Open a meta record: its body goes at the returned address, at most *@room
 * bytes (room is kept for at least one directory entry after the meta).
 */
void *ds_enc_meta_open(struct ds_enc *e, u64 *room)
{
	u64 body = e->pos + sizeof(struct ds_meta_rec);
	u64 end = e->size - DS_ENTRY_SIZE;

	*room = body + 8 <= end ? (end - body) & ~(u64)7 : 0;
	return e->area + body;
}

void ds_enc_meta_close(struct ds_enc *e, u16 type, u32 len)
{
	struct ds_meta_rec rec = {
		.type = cpu_to_le16(type),
		.length = cpu_to_le32(len),
	};
	u64 body = e->pos + sizeof(rec);
	u64 end = DS_ALIGN8(body + len);

	memcpy(e->area + e->pos, &rec, sizeof(rec));
	memset(e->area + body + len, 0, end - body - len);
	e->pos = end;
}

void ds_enc_meta(struct ds_enc *e, u16 type, const void *data, u64 len)
{
	u64 room;
	void *dst = ds_enc_meta_open(e, &room);

	if (!room)
		return;
	len = min(len, room);
	if (len)
		memcpy(dst, data, len);
	ds_enc_meta_close(e, type, len);
}

/* struct new_utsname's six fields, each cut to 64 bytes and NUL padded. */
void ds_enc_meta_uts(struct ds_enc *e, const char *const fields[DS_UTS_FIELDS])
{
	char uts[DS_UTS_FIELDS * DS_UTS_LEN];
	int i;

	memset(uts, 0, sizeof(uts));
	for (i = 0; i < DS_UTS_FIELDS; i++)
		memcpy(uts + i * DS_UTS_LEN, fields[i],
		       strnlen(fields[i], DS_UTS_LEN - 1));
	ds_enc_meta(e, DS_META_UTS, uts, sizeof(uts));
}

int ds_enc_meta_end(struct ds_enc *e)
{
	e->data_offset = DS_ALIGN8(e->pos);
	e->pos = e->data_offset;
	e->meta_done = true;
	if (e->data_offset + DS_ENTRY_SIZE > e->size) {
		e->full = true;
		return -ENOSPC;
	}
	return 0;
}

static bool ds_page_is_zero(const void *page, u32 page_size)
{
	const u64 *w = page;
	u32 i;

	for (i = 0; i < page_size / 8; i++)
		if (w[i])
			return false;
	return true;
}

/*
 * Add one page (8-byte aligned, page_size bytes).  Returns -ENOSPC, and
 * refuses every later page, once a page does not fit.
 */
int ds_enc_page(struct ds_enc *e, u64 pfn, const void *page)
{
	u64 used = e->pos + (e->nr_entries + 1) * DS_ENTRY_SIZE;
	struct ds_entry ent = { .pfn = cpu_to_le64(pfn) };
	u32 ps = e->page_size, len = 0, flags = 0;
	u64 room;

	if (e->full || !e->meta_done || used > e->size) {
		e->full = true;
		return -ENOSPC;
	}
	room = e->size - used;
	if (ds_page_is_zero(page, ps)) {
		flags = DS_ENTRY_ZERO;
	} else {
		if (room)
			len = e->compress(e->compress_ctx, page, ps,
					  e->area + e->pos,
					  (unsigned int)min_t(u64, room, ps - 1));
		if (!len) {
			if (room < ps) {
				e->full = true;
				return -ENOSPC;
			}
			memcpy(e->area + e->pos, page, ps);
			len = ps;
			flags = DS_ENTRY_RAW;
		}
		ent.offset = cpu_to_le64(e->pos);
		ent.length = cpu_to_le32(len);
		ent.crc = cpu_to_le32(ds_crc32(e->area + e->pos, len));
		e->pos += len;
	}
	if (flags & DS_ENTRY_ZERO)
		e->nr_zero++;
	ent.flags = cpu_to_le32(flags);
	ent.entry_crc = cpu_to_le32(ds_crc32(&ent, DS_ENTRY_CRC_BYTES));
	e->nr_entries++;
	memcpy(e->area + e->size - e->nr_entries * DS_ENTRY_SIZE, &ent,
	       sizeof(ent));
	return 0;
}

static int ds_entry_cmp(const void *a, const void *b)
{
	u64 pa = le64_to_cpu(((const struct ds_entry *)a)->pfn);
	u64 pb = le64_to_cpu(((const struct ds_entry *)b)->pfn);

	return pa < pb ? -1 : pa > pb;
}

/* Sort and place the directory, then write the header: the dump exists. */
void ds_enc_finish(struct ds_enc *e, const struct ds_dump_info *info)
{
	u8 block[DS_FIXED_SIZE + sizeof(struct ds_extent) + 4];
	struct ds_header *h = (struct ds_header *)block;
	struct ds_extent *x = (struct ds_extent *)(block + DS_FIXED_SIZE);
	u64 n = e->nr_entries, dir = e->pos, used, dropped, seen = n;
	u8 *tail = e->area + e->size - n * DS_ENTRY_SIZE;
	u32 crc;
	int i;

	if (!e->meta_done)
		ds_enc_meta_end(e);
	dir = e->pos;
	sort(tail, n, DS_ENTRY_SIZE, ds_entry_cmp, NULL);
	memmove(e->area + dir, tail, n * DS_ENTRY_SIZE);

	used = dir + n * DS_ENTRY_SIZE;
	used = (used + e->page_size - 1) / e->page_size * e->page_size;
	dropped = info->selected > seen ? info->selected - seen : 0;
	if (e->full && !dropped)
		dropped = 1;

	memset(block, 0, sizeof(block));
	memcpy(h->magic, DS_MAGIC, DS_MAGIC_LEN);
	h->version = cpu_to_le32(DS_VERSION);
	h->header_size = cpu_to_le32(ds_header_bytes(1));
	h->flags = cpu_to_le32(e->full ? DS_HEADER_TRUNCATED : 0);
	h->page_size = cpu_to_le32(e->page_size);
	h->codec = cpu_to_le32(info->codec);
	h->excluded = cpu_to_le32(info->excluded);
	h->nr_cpus = cpu_to_le32(info->nr_cpus);
	h->n_extents = cpu_to_le32(1);
	h->mem_pages = cpu_to_le64(info->mem_pages);
	h->crash_time_ns = cpu_to_le64(info->crash_time_ns);
	memcpy(h->dump_id, info->dump_id, 16);
	memcpy(h->boot_id, info->boot_id, 16);
	h->nr_entries = cpu_to_le64(n);
	h->nr_zero = cpu_to_le64(e->nr_zero);
	h->nr_dropped = cpu_to_le64(dropped);
	h->meta_offset = cpu_to_le64(e->meta_offset);
	h->meta_bytes = cpu_to_le64(e->data_offset - e->meta_offset);
	h->data_offset = cpu_to_le64(e->data_offset);
	h->data_bytes = cpu_to_le64(dir - e->data_offset);
	h->dir_offset = cpu_to_le64(dir);
	h->meta_crc = cpu_to_le32(ds_crc32(e->area + e->meta_offset,
					   e->data_offset - e->meta_offset));
	for (i = 0; i < DS_NR_CLASSES; i++)
		h->class_pages[i] = cpu_to_le64(info->class_pages[i]);
	x->paddr = cpu_to_le64(e->paddr);
	x->length = cpu_to_le64(min(used, e->size));
	crc = cpu_to_le32(ds_crc32(block, sizeof(block) - 4));
	memcpy(block + sizeof(block) - 4, &crc, 4);

	/* Everything but the magic, then the magic: the dump now exists. */
	memcpy(e->area + DS_MAGIC_LEN, block + DS_MAGIC_LEN,
	       sizeof(block) - DS_MAGIC_LEN);
	/* The pages, the directory and the header before the magic. */
	wmb();
	memcpy(e->area, block, DS_MAGIC_LEN);
	/* The magic before whatever reboots the machine. */
	wmb();
}
