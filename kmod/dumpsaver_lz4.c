// SPDX-License-Identifier: GPL-2.0
/* The lz4 codec for dumpsaver.ko: one lz4 block per page. */
#include <linux/lz4.h>
#include <linux/module.h>
#include "codec.h"

static size_t ds_lz4_workspace_size(int level)
{
	return LZ4_MEM_COMPRESS;
}

static void *ds_lz4_init(void *workspace, size_t size, int level)
{
	return size >= LZ4_MEM_COMPRESS ? workspace : NULL;
}

static unsigned int ds_lz4_compress(void *ctx, const void *page,
				    unsigned int page_size, void *dst,
				    unsigned int room)
{
	return max(LZ4_compress_default(page, dst, page_size, room, ctx), 0);
}

const struct ds_codec_ops ds_lz4_ops = {
	.workspace_size = ds_lz4_workspace_size,
	.init = ds_lz4_init,
	.compress = ds_lz4_compress,
};
EXPORT_SYMBOL_GPL(ds_lz4_ops);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("lz4 page codec for the dumpsaver module");
MODULE_AUTHOR("dumpsaver developers");
