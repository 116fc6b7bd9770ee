// SPDX-License-Identifier: GPL-2.0
/*
 * Per-page compression with the kernel's zlib.  The workspace is allocated
 * at load; compressing a page only resets the stream (no allocation).  The
 * output is a zlib stream as compress2() writes it, which dumpsaver and
 * makedumpfile's kdump-compressed format store as they are.
 */
#include <linux/vmalloc.h>
#include <linux/zlib.h>
#include "dumpsaver.h"

#define DS_ZLIB_MEM_LEVEL	8

int ds_zlib_init(struct ds_zlib *z, int level)
{
	int ret;

	z->workspace = vzalloc(zlib_deflate_workspacesize(MAX_WBITS,
							  DS_ZLIB_MEM_LEVEL));
	if (!z->workspace)
		return -ENOMEM;
	z->s.workspace = z->workspace;
	ret = zlib_deflateInit2(&z->s, level, Z_DEFLATED, MAX_WBITS,
				DS_ZLIB_MEM_LEVEL, Z_DEFAULT_STRATEGY);
	if (ret != Z_OK) {
		vfree(z->workspace);
		z->workspace = NULL;
		return -EINVAL;
	}
	return 0;
}

void ds_zlib_free(struct ds_zlib *z)
{
	if (!z->workspace)
		return;
	zlib_deflateEnd(&z->s);
	vfree(z->workspace);
	z->workspace = NULL;
}

unsigned int ds_zlib_page(void *ctx, const void *page, unsigned int page_size,
			  void *dst, unsigned int room)
{
	struct z_stream_s *s = &((struct ds_zlib *)ctx)->s;

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
