// SPDX-License-Identifier: GPL-2.0
/*
 * Per-page compression.  zlib is built into the kernel and into this
 * module; lz4 and zstd come from dumpsaver_lz4.ko / dumpsaver_zstd.ko
 * (codec.h), taken with symbol_get() at load when asked for, so that they
 * are no hard dependency.  Workspaces are allocated at load; compressing a
 * page allocates nothing.  The output is what docs/format.md stores: a zlib
 * stream as compress2() writes it, an lz4 block, a zstd frame.
 */
#include <linux/module.h>
#include <linux/string.h>
#include <linux/vmalloc.h>
#include <linux/zlib.h>
#include "dumpsaver.h"

#define DS_ZLIB_MEM_LEVEL	8

static size_t ds_zlib_workspace_size(int level)
{
	return sizeof(struct z_stream_s) +
	       zlib_deflate_workspacesize(MAX_WBITS, DS_ZLIB_MEM_LEVEL);
}

static void *ds_zlib_init(void *workspace, size_t size, int level)
{
	struct z_stream_s *s = workspace;

	s->workspace = s + 1;
	if (zlib_deflateInit2(s, level, Z_DEFLATED, MAX_WBITS,
			      DS_ZLIB_MEM_LEVEL, Z_DEFAULT_STRATEGY) != Z_OK)
		return NULL;
	return s;
}

static unsigned int ds_zlib_compress(void *ctx, const void *page,
				     unsigned int page_size, void *dst,
				     unsigned int room)
{
	struct z_stream_s *s = ctx;

	if (zlib_deflateReset(s) != Z_OK)
		return 0;
	s->next_in = page;
	s->avail_in = page_size;
	s->next_out = dst;
	s->avail_out = room;
	if (zlib_deflate(s, Z_FINISH) != Z_STREAM_END)
		return 0;
	return s->total_out;
}

static const struct ds_codec_ops ds_zlib_ops = {
	.workspace_size = ds_zlib_workspace_size,
	.init = ds_zlib_init,
	.compress = ds_zlib_compress,
};

static const char *const ds_codec_names[] = {
	[DS_CODEC_ZLIB] = "zlib",
	[DS_CODEC_ZSTD] = "zstd",
	[DS_CODEC_LZ4] = "lz4",
};

static const struct ds_codec_ops *ds_ops;
static u32 ds_ops_codec;

const char *ds_codec_name(u32 codec)
{
	return codec < ARRAY_SIZE(ds_codec_names) && ds_codec_names[codec] ?
	       ds_codec_names[codec] : "?";
}

int ds_codec_parse(const char *name)
{
	int i;

	for (i = 0; i < ARRAY_SIZE(ds_codec_names); i++)
		if (ds_codec_names[i] && sysfs_streq(name, ds_codec_names[i]))
			return i;
	return -EINVAL;
}

/* Take the codec's ops: -ENOENT when its module is not loaded. */
int ds_codec_get(u32 codec)
{
	if (codec == DS_CODEC_LZ4)
		ds_ops = symbol_get(ds_lz4_ops);
	else if (codec == DS_CODEC_ZSTD)
		ds_ops = symbol_get(ds_zstd_ops);
	else
		ds_ops = &ds_zlib_ops;
	ds_ops_codec = ds_ops ? codec : 0;
	return ds_ops ? 0 : -ENOENT;
}

/* Never a reference to the ops themselves: that would be a hard dependency. */
void ds_codec_put(void)
{
	if (ds_ops_codec == DS_CODEC_LZ4)
		symbol_put(ds_lz4_ops);
	else if (ds_ops_codec == DS_CODEC_ZSTD)
		symbol_put(ds_zstd_ops);
	ds_ops = NULL;
	ds_ops_codec = 0;
}

int ds_compressor_init(struct ds_compressor *c, int level)
{
	size_t size = ds_ops->workspace_size(level);

	c->workspace = vzalloc(size);
	if (!c->workspace)
		return -ENOMEM;
	c->ctx = ds_ops->init(c->workspace, size, level);
	if (!c->ctx) {
		vfree(c->workspace);
		c->workspace = NULL;
		return -EINVAL;
	}
	return 0;
}

void ds_compressor_free(struct ds_compressor *c)
{
	vfree(c->workspace);
	c->workspace = NULL;
	c->ctx = NULL;
}

/* ds_compress_fn for encode.c, with a struct ds_compressor as @ctx. */
unsigned int ds_compress_page(void *ctx, const void *page,
			      unsigned int page_size, void *dst,
			      unsigned int room)
{
	return ds_ops->compress(((struct ds_compressor *)ctx)->ctx, page,
				page_size, dst, room);
}
