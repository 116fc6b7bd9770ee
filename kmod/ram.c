// SPDX-License-Identifier: GPL-2.0
/*
 * System RAM and page classes.
 *
 * The RAM ranges come from the resource tree at load and again after memory
 * hotplug (its lock may be held by a stopped CPU at panic).  A page's class
 * is read from its struct page the way makedumpfile reads it on 6.1: a buddy
 * head covers its whole free block; user pages are judged on the compound
 * head; mapped file pages are "user shared", unmapped ones "file cache";
 * reserved pages are kernel text when they lie in the kernel's text and
 * rodata (parameters text_start/text_end: its vmlinux has them too), else
 * kernel data (the image's data and bss, mem_map, memblock), like slab,
 * stacks and everything not identified.  Offline and poisoned pages are
 * never read.  The region's own pages are never part of the walk.
 *
 * A region that is online movable RAM must stay so while armed: the memory
 * hotplug notifier refuses to offline its blocks.
 */
#include <linux/ioport.h>
#include <linux/memory.h>
#include <linux/memory_hotplug.h>
#include <linux/mm.h>
#include <linux/nmi.h>
#include <linux/page-flags.h>
#include <linux/sched.h>
#include <linux/uaccess.h>
#include "dumpsaver.h"

static int ds_add_pfns(struct ds_ram *t, unsigned long first,
		       unsigned long end)
{
	if (end <= first)
		return 0;
	if (t->nr == DS_MAX_RAM_RANGES)
		return -E2BIG;
	t->range[t->nr].start_pfn = first;
	t->range[t->nr].end_pfn = end;
	t->nr++;
	return 0;
}

/*
 * One System RAM range, the region's own pfns left out: when the region is
 * online movable RAM the dump overwrites those pages, so they are never
 * counted, estimated or dumped.
 */
static int ds_add_ram(struct resource *res, void *arg)
{
	struct ds_ram *t = arg;
	unsigned long first = PFN_UP(res->start);
	unsigned long end = PFN_DOWN(res->end + 1);
	int ret;

	if (end <= first)
		return 0;
	t->mem_pages = max(t->mem_pages, end);
	if (first >= ds.region_pfn_end || end <= ds.region_pfn_start)
		return ds_add_pfns(t, first, end);
	ret = ds_add_pfns(t, first, min(end, ds.region_pfn_start));
	if (!ret)
		ret = ds_add_pfns(t, max(first, ds.region_pfn_end), end);
	return ret;
}

/* Read the ranges into the table not in use, then publish it. */
static int ds_ram_refresh(void)
{
	struct ds_ram *t;
	int ret;

	mutex_lock(&ds.ram_lock);
	t = ds.ram == &ds.ram_tables[0] ? &ds.ram_tables[1] : &ds.ram_tables[0];
	t->nr = 0;
	t->mem_pages = 0;
	ret = walk_iomem_res_desc(IORES_DESC_NONE,
				  IORESOURCE_SYSTEM_RAM | IORESOURCE_BUSY,
				  0, -1, t, ds_add_ram);
	if (ret)
		goto out;
	/* The table is complete before a panic can see it. */
	smp_store_release(&ds.ram, t);
out:
	mutex_unlock(&ds.ram_lock);
	return ret;
}

static bool ds_in_region(const struct memory_notify *mn)
{
	return mn->start_pfn < ds.region_pfn_end &&
	       mn->start_pfn + mn->nr_pages > ds.region_pfn_start;
}

/*
 * A movable region must stay online while armed: its memory blocks may not
 * go offline (the offline fails with EBUSY; "dumpsaver disarm" first).  An
 * offline that began before the module was loaded and ends after it armed
 * disarms it.
 */
static int ds_memory_event(struct notifier_block *nb, unsigned long action,
			   void *arg)
{
	struct memory_notify *mn = arg;
	int ret = NOTIFY_OK;

	mutex_lock(&ds.arm_lock);
	if (ds.mode == DS_MODE_MOVABLE && ds_in_region(mn)) {
		if (action == MEM_GOING_OFFLINE && ds.armed) {
			pr_warn("dumpsaver: refusing to offline memory at %#llx: the dump region is armed over it (dumpsaver disarm first)\n",
				(u64)PFN_PHYS(mn->start_pfn));
			ret = notifier_from_errno(-EBUSY);
		} else if (action == MEM_OFFLINE && ds.armed) {
			ds_disarm("part of the region went offline (memory hotplug)");
			ds.mode = DS_MODE_NONE;
		}
	}
	mutex_unlock(&ds.arm_lock);
	if (action == MEM_ONLINE || action == MEM_OFFLINE) {
		if (ds_ram_refresh())
			pr_warn("dumpsaver: cannot re-read System RAM after hotplug\n");
	}
	return ret;
}

static struct notifier_block ds_memory_nb = {
	.notifier_call = ds_memory_event,
};

int ds_ram_init(void)
{
	int ret;

	mutex_init(&ds.ram_lock);
	ret = ds_ram_refresh();
	if (!ret)
		ret = register_memory_notifier(&ds_memory_nb);
	return ret;
}

void ds_ram_exit(void)
{
	unregister_memory_notifier(&ds_memory_nb);
}

unsigned long ds_mem_pages(void)
{
	/* Pairs with ds_ram_refresh(): a whole table. */
	return smp_load_acquire(&ds.ram)->mem_pages;
}

static int ds_sum_ram(struct resource *res, void *arg)
{
	*(u64 *)arg += resource_size(res);
	return 0;
}

/* Bytes of the region that are System RAM (with @flags added). */
static u64 ds_region_ram(unsigned long flags)
{
	u64 bytes = 0;

	walk_iomem_res_desc(IORES_DESC_NONE,
			    IORESOURCE_SYSTEM_RAM | IORESOURCE_BUSY | flags,
			    ds.start, ds.start + ds.size - 1, &bytes,
			    ds_sum_ram);
	return bytes;
}

/*
 * How much of the region is System RAM, the resource tree walked with its
 * children: memory that kmem gives back is "System RAM (kmem)" under the
 * dax device, under "Persistent Memory (legacy)".
 */
u64 ds_region_ram_bytes(void)
{
	return ds_region_ram(0);
}

/*
 * May the dump be written into the region, System RAM?  Only if all of it
 * is RAM a driver added (kmem: not the boot RAM the next boot hands to the
 * page allocator before the dump is saved), every page online and in
 * ZONE_MOVABLE: then it holds only user and page-cache pages, which a dump
 * never keeps.  Else false, with the reason in @why.
 */
bool ds_region_movable(char *why, size_t len)
{
	unsigned long pfn;
	struct page *page;

	if (ds_region_ram(IORESOURCE_SYSRAM_DRIVER_MANAGED) != ds.size) {
		snprintf(why, len,
			 "the region is boot RAM, not memory given back by a driver (memmap=SIZE!ADDR, then daxctl)");
		return false;
	}
	for (pfn = ds.region_pfn_start; pfn < ds.region_pfn_end; pfn++) {
		page = pfn_to_online_page(pfn);
		if (!page) {
			snprintf(why, len,
				 "memory at %#llx in the region is offline: online it movable (daxctl online-memory --movable)",
				 (u64)PFN_PHYS(pfn));
			return false;
		}
		if (page_zonenum(page) != ZONE_MOVABLE) {
			snprintf(why, len,
				 "memory at %#llx in the region is in zone %s, not Movable: online it movable",
				 (u64)PFN_PHYS(pfn), page_zone(page)->name);
			return false;
		}
		if (!(pfn & 0xfff))
			cond_resched();
	}
	return true;
}

/*
 * The class of @pfn, or -1 for a page never to read (not RAM, offline,
 * poisoned).  *@span is how many pages from @pfn share the answer.
 */
static int ds_classify(unsigned long pfn, unsigned long *span)
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
		return pfn >= ds.text_pfn_start && pfn < ds.text_pfn_end ?
		       DS_CLASS_KERNEL_TEXT : DS_CLASS_KERNEL_DATA;
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

/*
 * Call @fn for every run of RAM pages of one class, in pfn order, until it
 * returns false (then false).  Safe at panic: no lock, no allocation.
 */
bool ds_walk(ds_run_fn fn, void *arg)
{
	/* Pairs with ds_ram_refresh(): a whole table. */
	const struct ds_ram *t = smp_load_acquire(&ds.ram);
	unsigned long pfn, span;
	int i, c;

	for (i = 0; i < t->nr; i++) {
		for (pfn = t->range[i].start_pfn; pfn < t->range[i].end_pfn;
		     pfn += span) {
			c = ds_classify(pfn, &span);
			span = min(span, t->range[i].end_pfn - pfn);
			if (c >= 0 && !fn(pfn, span, c, arg))
				return false;
			if (!(pfn & 0xffff))
				touch_nmi_watchdog();
		}
	}
	return true;
}

/*
 * Pages of a movable region holding data now (not free): what a dump
 * written now would overwrite.  0 for a reserved region.
 */
u64 ds_region_in_use(void)
{
	unsigned long pfn, span, steps = 0;
	u64 n = 0;
	int c;

	if (ds.mode != DS_MODE_MOVABLE)
		return 0;
	for (pfn = ds.region_pfn_start; pfn < ds.region_pfn_end; pfn += span) {
		span = 1;
		if (pfn_to_online_page(pfn)) {
			c = ds_classify(pfn, &span);
			span = min(span, ds.region_pfn_end - pfn);
			if (c >= 0 && c != DS_CLASS_FREE)
				n += span;
		}
		if (!(++steps & 0xfff))
			cond_resched();
	}
	return n;
}

static bool ds_count_run(unsigned long pfn, unsigned long n, int class,
			 void *arg)
{
	((u64 *)arg)[class] += n;
	return true;
}

void ds_count_classes(u64 counts[DS_NR_CLASSES])
{
	memset(counts, 0, sizeof(u64) * DS_NR_CLASSES);
	ds_walk(ds_count_run, counts);
}

/* Copy one page through the direct map; false when it is not mapped. */
bool ds_copy_page(unsigned long pfn, void *dst)
{
	return !copy_from_kernel_nofault(dst, pfn_to_kaddr(pfn), PAGE_SIZE);
}
