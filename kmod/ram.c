// SPDX-License-Identifier: GPL-2.0
/*
 * System RAM and page classes.
 *
 * The RAM ranges come from the resource tree at load (its lock may be held
 * by a stopped CPU at panic).  A page's class is read from its struct page
 * the way makedumpfile reads it on 6.1: a buddy head covers its whole free
 * block; user pages are judged on the compound head; mapped file pages are
 * "user shared", unmapped ones "file cache"; reserved pages (the kernel
 * image, mem_map, memblock) form class 0; slab, stacks and everything not
 * identified are kernel data.  Offline and poisoned pages are never read.
 */
#include <linux/ioport.h>
#include <linux/mm.h>
#include <linux/page-flags.h>
#include <linux/uaccess.h>
#include <linux/nmi.h>
#include "dumpsaver.h"

static int ds_add_ram(struct resource *res, void *arg)
{
	unsigned long first = PFN_UP(res->start);
	unsigned long end = PFN_DOWN(res->end + 1);

	if (end <= first)
		return 0;
	if (ds.nr_ram == DS_MAX_RAM_RANGES)
		return -E2BIG;
	ds.ram[ds.nr_ram].start_pfn = first;
	ds.ram[ds.nr_ram].end_pfn = end;
	ds.nr_ram++;
	if (end > ds.mem_pages)
		ds.mem_pages = end;
	return 0;
}

int ds_ram_init(void)
{
	ds.nr_ram = 0;
	ds.mem_pages = 0;
	return walk_iomem_res_desc(IORES_DESC_NONE,
				   IORESOURCE_SYSTEM_RAM | IORESOURCE_BUSY,
				   0, -1, NULL, ds_add_ram);
}

/*
 * The class of @pfn, or -1 for a page never to read (not RAM, offline,
 * poisoned).  *@span is how many pages from @pfn share the answer.
 */
int ds_classify(unsigned long pfn, unsigned long *span)
{
	struct page *page, *head;

	*span = 1;
	if (!pfn_valid(pfn))
		return -1;
	page = pfn_to_page(pfn);
	if (PageOffline(page) || PageHWPoison(page))
		return -1;
	if (PageBuddy(page)) {
		unsigned long order = page_private(page);

		if (order < MAX_ORDER)
			*span = 1UL << order;
		return DS_CLASS_FREE;
	}
	if (PageReserved(page))
		return DS_CLASS_KERNEL_TEXT;
	if (PageTable(page))
		return DS_CLASS_PAGE_TABLE;
	head = compound_head(page);
	if (PageSlab(head))
		return DS_CLASS_KERNEL_DATA;
	if (PageMlocked(head))
		return DS_CLASS_LOCKED;
	if (PageAnon(head) || PageHuge(head))
		return DS_CLASS_USER_ANON;
	if (PageLRU(head) || PageSwapCache(head))
		return page_mapped(head) ? DS_CLASS_USER_SHARED :
					   DS_CLASS_FILE_CACHE;
	if (!PageTail(page) && !page_ref_count(page))
		return DS_CLASS_FREE;	/* on a per-cpu free list */
	return DS_CLASS_KERNEL_DATA;
}

void ds_count_classes(u64 counts[DS_NR_CLASSES])
{
	unsigned long pfn, span;
	int i, c;

	memset(counts, 0, sizeof(u64) * DS_NR_CLASSES);
	for (i = 0; i < ds.nr_ram; i++) {
		for (pfn = ds.ram[i].start_pfn; pfn < ds.ram[i].end_pfn;
		     pfn += span) {
			c = ds_classify(pfn, &span);
			span = min(span, ds.ram[i].end_pfn - pfn);
			if (c >= 0)
				counts[c] += span;
			if (!(pfn & 0xffff))
				touch_nmi_watchdog();
		}
	}
}

/* Copy one page through the direct map; false when it is not mapped. */
bool ds_copy_page(unsigned long pfn, void *dst)
{
	return !copy_from_kernel_nofault(dst, pfn_to_kaddr(pfn), PAGE_SIZE);
}
