/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The encoding core: lays out one dump (docs/format.md) in a mapped area.
 *
 * encode.c uses nothing but memory, CRC32 and sort(), so the same file
 * builds in the module and in user space (user/, for the conformance test
 * against dumpsaver's Python encoder).  Nothing here sleeps, allocates or
 * takes a lock: it runs in the panic notifier.
 */
#ifndef DUMPSAVER_ENCODE_H
#define DUMPSAVER_ENCODE_H

#ifdef __KERNEL__
#include <linux/types.h>
#include <linux/kernel.h>
#include <linux/string.h>
#include <linux/sort.h>
#include <linux/crc32.h>
#include <linux/build_bug.h>
#include <asm/byteorder.h>
#include <asm/barrier.h>
#else
#include "compat.h"
#endif
#include "dumpsaver_format.h"

/*
 * Compress one page into @dst.  Returns the stored length, or 0 when the
 * result would not be shorter than @room bytes (the caller then stores the
 * page raw, or stops).
 */
typedef unsigned int (*ds_compress_fn)(void *ctx, const void *page,
				       unsigned int page_size, void *dst,
				       unsigned int room);

struct ds_enc {
	/* Set by the caller before ds_enc_begin(). */
	u8 *area;		/* the dump area, mapped */
	u64 size;		/* its length in bytes, whole pages */
	u64 paddr;		/* its physical address: the dump's one extent */
	u32 page_size;
	ds_compress_fn compress;
	void *compress_ctx;

	/* Progress, read by the caller for its statistics. */
	u64 meta_offset;
	u64 data_offset;
	u64 pos;		/* next byte of meta or page data */
	u64 nr_entries;
	u64 nr_zero;
	bool full;		/* a page did not fit: the dump is truncated */
	bool meta_done;
};

/* What the header says beyond the layout. */
struct ds_dump_info {
	u64 mem_pages;
	u64 crash_time_ns;
	u64 selected;		/* pages the caller meant to save */
	u32 codec;
	u32 excluded;
	u32 nr_cpus;
	u8 dump_id[16];
	u8 boot_id[16];
	u64 class_pages[DS_NR_CLASSES];
};

int ds_enc_begin(struct ds_enc *e);
void *ds_enc_meta_open(struct ds_enc *e, u64 *room);
void ds_enc_meta_close(struct ds_enc *e, u16 type, u32 len);
void ds_enc_meta(struct ds_enc *e, u16 type, const void *data, u64 len);
void ds_enc_meta_uts(struct ds_enc *e, const char *const fields[DS_UTS_FIELDS]);
int ds_enc_meta_end(struct ds_enc *e);
int ds_enc_page(struct ds_enc *e, u64 pfn, const void *page);
void ds_enc_finish(struct ds_enc *e, const struct ds_dump_info *info);
u32 ds_crc32(const void *data, u64 len);
bool ds_header_valid(const u8 *area, u64 size);

#endif /* DUMPSAVER_ENCODE_H */
