/* SPDX-License-Identifier: GPL-2.0 */
/*
 * A per-page codec.  zlib is built into dumpsaver.ko; lz4 and zstd live in
 * dumpsaver_lz4.ko and dumpsaver_zstd.ko (they depend on the kernel's
 * lz4_compress and zstd_compress modules, which export their functions to
 * any module; symbol_get() of those is refused to modules on Debian's 6.1,
 * so dumpsaver.ko takes these GPL ops instead and has no hard dependency).
 */
#ifndef DUMPSAVER_CODEC_H
#define DUMPSAVER_CODEC_H

#include <linux/types.h>

struct ds_codec_ops {
	/* Bytes of workspace for @level, allocated by the caller at load. */
	size_t (*workspace_size)(int level);
	/* Prepare @workspace; returns the context for compress(), or NULL. */
	void *(*init)(void *workspace, size_t size, int level);
	/* One page into @dst: its length, or 0 when not below @room bytes. */
	unsigned int (*compress)(void *ctx, const void *page,
				 unsigned int page_size, void *dst,
				 unsigned int room);
};

extern const struct ds_codec_ops ds_lz4_ops;
extern const struct ds_codec_ops ds_zstd_ops;

#endif /* DUMPSAVER_CODEC_H */
