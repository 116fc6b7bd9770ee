// SPDX-License-Identifier: GPL-2.0
/*
 * dsenc: the module's encoding core (../encode.c) in user space.
 *
 *   dsenc AREA_SIZE AREA_PADDR PAGE_SIZE CODEC LEVEL OUT < records
 *
 * CODEC is zlib, lz4 or zstd: the user-space libraries with the settings the
 * module's codecs use (zlib window 15, memLevel 8; an lz4 block; a zstd frame
 * with its content size).
 * Reads little-endian records (u32 kind, u32 length, body) from stdin:
 * meta records (kinds 1-6, as docs/format.md numbers them; UTS is six
 * NUL-terminated strings), INFO (0x100, struct ds_dump_info's fields),
 * PAGE (0x200: u64 pfn, then one page) and END (0x300).  Writes the
 * area to OUT and one JSON line of figures to stdout: the time spent in
 * ds_enc_page() is the panic path's cost without the page walk.
 */
#include <stdio.h>
#include <time.h>
#include <lz4.h>
#include <zlib.h>
#include <zstd.h>

#include "../encode.h"

enum { REC_INFO = 0x100, REC_PAGE = 0x200, REC_END = 0x300 };

struct zctx {
	z_stream s;
	ZSTD_CCtx *zstd;
	int level;
};

static unsigned int zlib_page(void *ctx, const void *page,
			      unsigned int page_size, void *dst,
			      unsigned int room)
{
	z_stream *s = &((struct zctx *)ctx)->s;

	if (deflateReset(s) != Z_OK)
		return 0;
	s->next_in = (Bytef *)page;
	s->avail_in = page_size;
	s->next_out = dst;
	s->avail_out = room;
	if (deflate(s, Z_FINISH) != Z_STREAM_END)
		return 0;
	return (unsigned int)s->total_out;
}

static unsigned int lz4_page(void *ctx, const void *page,
			     unsigned int page_size, void *dst,
			     unsigned int room)
{
	int n = LZ4_compress_default(page, dst, page_size, room);

	return n > 0 ? n : 0;
}

static unsigned int zstd_page(void *ctx, const void *page,
			      unsigned int page_size, void *dst,
			      unsigned int room)
{
	struct zctx *z = ctx;
	size_t n = ZSTD_compressCCtx(z->zstd, dst, room, page, page_size,
				     z->level);

	return ZSTD_isError(n) ? 0 : n;
}

u32 crc32_le(u32 seed, const void *data, size_t len)
{
	return ~(u32)crc32(~seed & 0xffffffffU, data, len);
}

static int (*sort_cmp)(const void *, const void *);

static int qsort_cmp(const void *a, const void *b)
{
	return sort_cmp(a, b);
}

void sort(void *base, size_t num, size_t size,
	  int (*cmp)(const void *, const void *),
	  void (*swap)(void *, void *, int))
{
	(void)swap;
	sort_cmp = cmp;
	qsort(base, num, size, qsort_cmp);
}

static void die(const char *what)
{
	fprintf(stderr, "dsenc: %s\n", what);
	exit(1);
}

static void need(void *buf, size_t n)
{
	if (n && fread(buf, 1, n, stdin) != n)
		die("short input");
}

static u64 get64(const u8 *p)
{
	u64 v;

	memcpy(&v, p, 8);
	return le64toh(v);
}

static u32 get32(const u8 *p)
{
	u32 v;

	memcpy(&v, p, 4);
	return le32toh(v);
}

static double clock_s(clockid_t id)
{
	struct timespec ts;

	clock_gettime(id, &ts);
	return ts.tv_sec + ts.tv_nsec / 1e9;
}

/* Wall time, and this process's CPU time (the figure to compare on a busy machine). */
static double now(void)
{
	return clock_s(CLOCK_MONOTONIC);
}

static double cpu_now(void)
{
	return clock_s(CLOCK_PROCESS_CPUTIME_ID);
}

int main(int argc, char **argv)
{
	struct ds_dump_info info = { 0 };
	struct ds_enc e = { 0 };
	struct zctx z = { 0 };
	double spent = 0, t, cpu = 0, c;
	u64 pages = 0;
	u8 *buf;
	FILE *out;
	int i;

	if (argc != 7)
		die("usage: dsenc AREA_SIZE AREA_PADDR PAGE_SIZE CODEC LEVEL OUT");
	e.size = strtoull(argv[1], NULL, 0);
	e.paddr = strtoull(argv[2], NULL, 0);
	e.page_size = strtoul(argv[3], NULL, 0);
	z.level = atoi(argv[5]);
	if (!strcmp(argv[4], "lz4")) {
		e.compress = lz4_page;
	} else if (!strcmp(argv[4], "zstd")) {
		z.zstd = ZSTD_createCCtx();
		e.compress = zstd_page;
	} else {
		if (deflateInit2(&z.s, z.level, Z_DEFLATED, 15, 8,
				 Z_DEFAULT_STRATEGY) != Z_OK)
			die("deflateInit2 failed");
		e.compress = zlib_page;
	}
	e.area = calloc(1, e.size);
	buf = aligned_alloc(8, DS_MAX_DMESG + 64);
	if (!e.area || !buf)
		die("out of memory");
	e.compress_ctx = &z;
	if (ds_enc_begin(&e))
		die("area too small");

	for (;;) {
		u8 hdr[8];
		u32 kind, len;

		need(hdr, 8);
		kind = get32(hdr);
		len = get32(hdr + 4);
		if (len > DS_MAX_DMESG)
			die("record too long");
		need(buf, len);
		if (kind == REC_END)
			break;
		if (kind == REC_INFO) {
			if (len != 136)
				die("bad INFO record");
			info.mem_pages = get64(buf);
			info.crash_time_ns = get64(buf + 8);
			info.selected = get64(buf + 16);
			info.codec = get32(buf + 24);
			info.excluded = get32(buf + 28);
			info.nr_cpus = get32(buf + 32);
			memcpy(info.dump_id, buf + 40, 16);
			memcpy(info.boot_id, buf + 56, 16);
			for (i = 0; i < DS_NR_CLASSES; i++)
				info.class_pages[i] = get64(buf + 72 + 8 * i);
		} else if (kind == REC_PAGE) {
			if (len != 8 + e.page_size)
				die("bad PAGE record");
			if (!e.meta_done)
				ds_enc_meta_end(&e);
			if (e.full)
				continue;
			t = now();
			c = cpu_now();
			ds_enc_page(&e, get64(buf), buf + 8);
			spent += now() - t;
			cpu += cpu_now() - c;
			pages++;
		} else if (kind == DS_META_UTS) {
			const char *f[DS_UTS_FIELDS];
			u32 off = 0;

			buf[len] = 0;
			for (i = 0; i < DS_UTS_FIELDS; i++) {
				f[i] = (const char *)buf + (off < len ? off : len);
				off += strlen(f[i]) + 1;
			}
			ds_enc_meta_uts(&e, f);
		} else if (kind >= 1 && kind <= 6) {
			ds_enc_meta(&e, kind, buf, len);
		} else {
			die("unknown record");
		}
	}
	t = now();
	c = cpu_now();
	ds_enc_finish(&e, &info);
	spent += now() - t;
	cpu += cpu_now() - c;

	out = fopen(argv[6], "wb");
	if (!out || fwrite(e.area, 1, e.size, out) != e.size || fclose(out))
		die("cannot write the area");
	printf("{\"pages\": %llu, \"entries\": %llu, \"seconds\": %.6f, \"cpu_seconds\": %.6f, \"stored_bytes\": %llu, \"truncated\": %s}\n",
	       (unsigned long long)pages, (unsigned long long)e.nr_entries,
	       spent, cpu, (unsigned long long)e.pos,
	       e.full ? "true" : "false");
	return 0;
}
