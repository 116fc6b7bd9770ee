/* SPDX-License-Identifier: GPL-2.0 */
/*
 * The in-memory dump format, version 1: the C mirror of docs/format.md.
 *
 * docs/format.md is the contract; dumpsaver/format.py is the Python side.
 * tests/test_kmod_layout.py compiles this header and compares every size
 * and offset with format.py.  All integers are little endian.
 */
#ifndef DUMPSAVER_FORMAT_H
#define DUMPSAVER_FORMAT_H

#include <linux/types.h>

#define DS_MAGIC		"MCOREDMP"
#define DS_SAVED_MAGIC		"MCORESVD"
#define DS_MAGIC_LEN		8
#define DS_VERSION		1
#define DS_FIXED_SIZE		256
#define DS_MAX_EXTENTS		65536
#define DS_MAX_META_BYTES	(64U << 20)
#define DS_MAX_STRING		(1U << 20)
#define DS_MAX_DMESG		(DS_MAX_META_BYTES / 2)
#define DS_UTS_LEN		65
#define DS_UTS_FIELDS		6

/* Page classes: the bit numbers of ds_header.excluded. */
enum ds_class {
	DS_CLASS_KERNEL_TEXT = 0,	/* kernel text and rodata */
	DS_CLASS_KERNEL_DATA = 1,	/* slab, stacks, anything not identified */
	DS_CLASS_PAGE_TABLE = 2,
	DS_CLASS_FREE = 3,
	DS_CLASS_USER_ANON = 4,
	DS_CLASS_USER_SHARED = 5,
	DS_CLASS_FILE_CACHE = 6,
	DS_CLASS_LOCKED = 7,
	DS_NR_CLASSES = 8,
};

/* The seed's rule: free, user anonymous, user shared, file cache. */
#define DS_DEFAULT_EXCLUDED	((1U << DS_CLASS_FREE) | \
				 (1U << DS_CLASS_USER_ANON) | \
				 (1U << DS_CLASS_USER_SHARED) | \
				 (1U << DS_CLASS_FILE_CACHE))

enum ds_codec {
	DS_CODEC_ZLIB = 1,
	DS_CODEC_ZSTD = 2,
	DS_CODEC_LZ4 = 3,
};

#define DS_HEADER_TRUNCATED	0x1
#define DS_ENTRY_ZERO		0x1
#define DS_ENTRY_RAW		0x2

enum ds_meta_type {
	DS_META_PANIC = 1,
	DS_META_UTS = 2,
	DS_META_PRSTATUS = 3,
	DS_META_VMCOREINFO = 4,
	DS_META_DMESG = 5,
	DS_META_MACHINE = 6,
};

/* The fixed part of the header block (256 bytes). */
struct ds_header {
	char magic[DS_MAGIC_LEN];
	__le32 version;
	__le32 header_size;
	__le32 flags;
	__le32 page_size;
	__le32 codec;
	__le32 excluded;
	__le32 nr_cpus;
	__le32 n_extents;
	__le64 mem_pages;
	__le64 crash_time_ns;
	__u8 dump_id[16];
	__u8 boot_id[16];
	__le64 nr_entries;
	__le64 nr_zero;
	__le64 nr_dropped;
	__le64 meta_offset;
	__le64 meta_bytes;
	__le64 data_offset;
	__le64 data_bytes;
	__le64 dir_offset;
	__le64 reserved0;
	__le32 meta_crc;
	__le32 reserved1;
	__le64 class_pages[DS_NR_CLASSES];
	__u8 padding[24];
};

/* Follows the fixed part, n_extents times; then a __le32 CRC of all before. */
struct ds_extent {
	__le64 paddr;
	__le64 length;
};

/* One directory entry per saved page, ascending pfn. */
struct ds_entry {
	__le64 pfn;
	__le64 offset;
	__le32 length;
	__le32 crc;
	__le32 flags;
	__le32 entry_crc;	/* CRC32 of the 28 bytes before it */
};

/* Meta record header; the body follows, padded to 8 bytes. */
struct ds_meta_rec {
	__le16 type;
	__le16 reserved;
	__le32 length;
};

#define DS_ENTRY_CRC_BYTES	offsetof(struct ds_entry, entry_crc)

#endif /* DUMPSAVER_FORMAT_H */
