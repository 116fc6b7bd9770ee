// SPDX-License-Identifier: GPL-2.0
/*
 * dumpsaver: write an in-memory crash dump at panic, for dumpsaver to save
 * at the next boot (docs/kernel-module.md, docs/format.md).
 *
 * Armed at load with the region it may write to.  Everything the panic
 * path needs is prepared here.  The region is either reserved memory
 * (memmap=SIZE$ADDR), or legacy persistent memory (memmap=SIZE!ADDR) given
 * back to the page allocator as movable RAM, which holds only pages a dump
 * never keeps.  The module refuses to arm (it loads, and says why in
 * /sys/kernel/dumpsaver/reason) over a reserved region that holds an unsaved
 * dump, over RAM that is not all online in ZONE_MOVABLE, and over anything
 * else: boot RAM, or what the resource tree does not show as Reserved.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/io.h>
#include <linux/ioport.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/slab.h>
#include <linux/string.h>
#include "dumpsaver.h"

struct ds_state ds;

static unsigned long region_start;
module_param(region_start, ulong, 0444);
MODULE_PARM_DESC(region_start, "Physical address of the dump region (page aligned)");

static unsigned long region_size;
module_param(region_size, ulong, 0444);
MODULE_PARM_DESC(region_size, "Length of the dump region in bytes (whole pages)");

static char *codec = "zlib";
module_param(codec, charp, 0444);
MODULE_PARM_DESC(codec, "Per-page compression: zlib (default), lz4 or zstd (load dumpsaver_lz4 or dumpsaver_zstd first)");

static int level = 1;
module_param(level, int, 0444);
MODULE_PARM_DESC(level, "Compression level: zlib 1 (fastest, default) to 9, zstd 1 to 19; lz4 has none");

static uint exclude = DS_DEFAULT_EXCLUDED;
module_param(exclude, uint, 0444);
MODULE_PARM_DESC(exclude, "Mask of page classes not saved (docs/format.md; default 0x78: free, user, cache)");

static char *boot_id;
module_param(boot_id, charp, 0444);
MODULE_PARM_DESC(boot_id, "This boot's /proc/sys/kernel/random/boot_id, recorded in the dump");

static unsigned long crash_notes[DS_MAX_CPUS];
static int nr_crash_notes;
module_param_array(crash_notes, ulong, &nr_crash_notes, 0444);
MODULE_PARM_DESC(crash_notes, "Physical address of each CPU's crash_notes, in CPU order (/sys/devices/system/cpu/cpuN/crash_notes)");

static unsigned long text_start;
module_param(text_start, ulong, 0444);
MODULE_PARM_DESC(text_start, "Physical start of the kernel's text and rodata (/proc/iomem \"Kernel code\"), saved as class kernel_text");

static unsigned long text_end;
module_param(text_end, ulong, 0444);
MODULE_PARM_DESC(text_end, "Physical end (exclusive) of the kernel's text and rodata; without both, every reserved page is kernel data");

static unsigned long image_end;
module_param(image_end, ulong, 0444);
MODULE_PARM_DESC(image_end, "Physical end (exclusive) of the kernel image's data and bss (/proc/iomem \"Kernel bss\"): saved first");

static int reboot = 1;
module_param(reboot, int, 0444);
MODULE_PARM_DESC(reboot, "Emergency restart after writing: 0 never, 1 when panic would hang (panic=0, default), 2 always");

static void ds_refuse(const char *why)
{
	strscpy(ds.reason, why, sizeof(ds.reason));
	pr_warn("not armed: %s\n", why);
}

void ds_disarm(const char *why)
{
	lockdep_assert_held(&ds.arm_lock);
	ds.armed = false;
	ds_refuse(why);
}

/* A reserved region: memory the kernel never uses, mapped write-back. */
static void ds_arm_reserved(void)
{
	if (region_intersects(ds.start, ds.size, IORESOURCE_MEM,
			      IORES_DESC_RESERVED) != REGION_INTERSECTS) {
		ds_refuse("the region is not reserved memory (memmap=SIZE$ADDR) nor RAM given back as movable (memmap=SIZE!ADDR)");
		return;
	}
	ds.area = memremap(ds.start, ds.size, MEMREMAP_WB);
	if (!ds.area) {
		ds_refuse("cannot map the region");
		return;
	}
	ds.area_remapped = true;
	if (ds_header_valid(ds.area, ds.size)) {
		ds_refuse("an unsaved dump is in the region: save it first");
		return;
	}
	ds.mode = DS_MODE_RESERVED;
	ds.armed = true;
}

/*
 * A movable region: online RAM, written through the direct map.  No dump
 * can wait there unsaved (the saver gives the range back only once its copy
 * is durable), and its content is other owners' pages: no header check.
 */
static void ds_arm_movable(void)
{
	char why[DS_REASON_LEN];

	if (!ds_region_movable(why, sizeof(why))) {
		ds_refuse(why);
		return;
	}
	ds.area = pfn_to_kaddr(ds.region_pfn_start);
	ds.mode = DS_MODE_MOVABLE;
	ds.armed = true;
}

static void ds_arm(void)
{
	u64 ram = ds_region_ram_bytes();

	mutex_lock(&ds.arm_lock);
	if (!ram)
		ds_arm_reserved();
	else if (ram == ds.size)
		ds_arm_movable();
	else
		ds_refuse("the region is partly System RAM: give exactly the memory blocks onlined movable, or reserved memory");
	mutex_unlock(&ds.arm_lock);
}

static int ds_check_params(void)
{
	if (!region_size || !PAGE_ALIGNED(region_start) ||
	    !PAGE_ALIGNED(region_size) || region_start + region_size < region_start) {
		pr_err("region_start and region_size must be given, page aligned\n");
		return -EINVAL;
	}
	ds.codec = ds_codec_parse(codec);
	if ((int)ds.codec < 0) {
		pr_err("unknown codec %s (zlib, lz4, zstd)\n", codec);
		return -EINVAL;
	}
	if (level < 1 || level > (ds.codec == DS_CODEC_ZLIB ? 9 : 19) ||
	    exclude >> DS_NR_CLASSES || reboot < 0 || reboot > 2) {
		pr_err("level is 1-9 (zstd 1-19), exclude below 0x100, reboot 0-2\n");
		return -EINVAL;
	}
	if (ds_codec_get(ds.codec)) {
		pr_err("codec %s needs its module loaded first (modprobe dumpsaver_%s)\n",
		       codec, codec);
		return -ENOENT;
	}
	return 0;
}

static void ds_release(void)
{
	ds_ram_exit();
	ds_meta_free();
	ds_compressor_free(&ds.zpanic);
	ds_compressor_free(&ds.zestimate);
	ds_codec_put();
	kfree(ds.page_buf);
	kfree(ds.estimate_buf);
	if (ds.area_remapped)
		memunmap(ds.area);
}

static int __init ds_init(void)
{
	int ret = ds_check_params();

	if (ret)
		return ret;
	mutex_init(&ds.estimate_lock);
	mutex_init(&ds.arm_lock);
	ds.start = region_start;
	ds.size = region_size;
	ds.region_pfn_start = PFN_DOWN(region_start);
	ds.region_pfn_end = PFN_DOWN(region_start + region_size);
	ds.level = level;
	ds.excluded = exclude;
	ds.reboot = reboot;
	if (text_end > text_start) {
		ds.text_pfn_start = PFN_DOWN(text_start);
		ds.text_pfn_end = PFN_UP(text_end);
	}
	if (image_end > text_end)
		ds.image_pfn_end = PFN_UP(image_end);

	ret = ds_ram_init();
	if (ret) {
		pr_err("cannot read the System RAM ranges (%d)\n", ret);
		goto fail;
	}
	ret = -ENOMEM;
	ds.page_buf = kmalloc(PAGE_SIZE, GFP_KERNEL);
	ds.estimate_buf = kmalloc(2 * PAGE_SIZE, GFP_KERNEL);
	if (!ds.page_buf || !ds.estimate_buf)
		goto fail;
	ret = ds_compressor_init(&ds.zpanic, level);
	if (!ret)
		ret = ds_compressor_init(&ds.zestimate, level);
	if (!ret)
		ret = ds_meta_init(boot_id, crash_notes, nr_crash_notes);
	if (ret) {
		pr_err("cannot prepare the panic path (%d)\n", ret);
		goto fail;
	}

	ds_arm();
	ret = ds_sysfs_init();
	if (ret)
		goto fail;
	ret = ds_panic_init();
	if (ret) {
		ds_sysfs_exit();
		goto fail;
	}
	if (ds.armed)
		pr_info("armed: %llu MiB at %pa (%s), %s, %d CPU notes\n",
			ds.size >> 20, &ds.start,
			ds.mode == DS_MODE_MOVABLE ? "movable RAM" : "reserved",
			ds_codec_name(ds.codec), ds.nr_notes);
	return 0;
fail:
	ds_release();
	return ret;
}

static void __exit ds_exit(void)
{
	ds_panic_exit();
	ds_sysfs_exit();
	ds_release();
}

module_init(ds_init);
module_exit(ds_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Write an in-memory crash dump at panic for dumpsaver");
MODULE_AUTHOR("dumpsaver developers");
