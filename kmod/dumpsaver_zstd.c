// SPDX-License-Identifier: GPL-2.0
/* The zstd codec for dumpsaver.ko: one frame per page, with its content size. */
#include <linux/module.h>
#include <linux/zstd.h>
#include "codec.h"

struct ds_zstd {
	zstd_cctx *cctx;
	zstd_parameters params;
};

static size_t ds_zstd_workspace_size(int level)
{
	zstd_parameters p = zstd_get_params(level, PAGE_SIZE);

	return sizeof(struct ds_zstd) + zstd_cctx_workspace_bound(&p.cParams);
}

static void *ds_zstd_init(void *workspace, size_t size, int level)
{
	struct ds_zstd *z = workspace;

	if (size < sizeof(*z))
		return NULL;
	z->params = zstd_get_params(level, PAGE_SIZE);
	z->params.fParams.contentSizeFlag = 1;
	z->cctx = zstd_init_cctx(z + 1, size - sizeof(*z));
	return z->cctx ? z : NULL;
}

static unsigned int ds_zstd_compress(void *ctx, const void *page,
				     unsigned int page_size, void *dst,
				     unsigned int room)
{
	struct ds_zstd *z = ctx;
	size_t n = zstd_compress_cctx(z->cctx, dst, room, page, page_size,
				      &z->params);

	return zstd_is_error(n) ? 0 : n;
}

const struct ds_codec_ops ds_zstd_ops = {
	.workspace_size = ds_zstd_workspace_size,
	.init = ds_zstd_init,
	.compress = ds_zstd_compress,
};
EXPORT_SYMBOL_GPL(ds_zstd_ops);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("zstd page codec for the dumpsaver module");
MODULE_AUTHOR("dumpsaver developers");
