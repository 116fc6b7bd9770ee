// SPDX-License-Identifier: GPL-2.0
/*
 * The panic notifier: writes the dump, header last, then reboots if panic()
 * would not.  Nothing here sleeps, allocates or takes a lock: the other
 * CPUs are stopped, maybe holding any lock.  Pages are written most useful
 * class first, so that a region too small loses the least useful ones
 * (the dump is then marked TRUNCATED, as dumpsaver's simulator does).
 */
#include <linux/atomic.h>
#include <linux/kexec.h>
#include <linux/nmi.h>
#include <linux/notifier.h>
#include <linux/panic.h>
#include <linux/panic_notifier.h>
#include <linux/reboot.h>
#include <linux/timekeeping.h>
#include "dumpsaver.h"

/* Saved first when space runs out: dumpsaver.simulate.PRIORITY. */
static const u8 ds_priority[DS_NR_CLASSES] = {
	DS_CLASS_KERNEL_DATA, DS_CLASS_PAGE_TABLE, DS_CLASS_KERNEL_TEXT,
	DS_CLASS_LOCKED, DS_CLASS_USER_ANON, DS_CLASS_USER_SHARED,
	DS_CLASS_FILE_CACHE, DS_CLASS_FREE,
};

static atomic_t ds_ran = ATOMIC_INIT(0);

/* Write every page of @class; false once the area is full. */
static bool ds_write_class(struct ds_enc *e, int class)
{
	unsigned long pfn, span, k, n = 0;
	int i;

	for (i = 0; i < ds.nr_ram; i++) {
		for (pfn = ds.ram[i].start_pfn; pfn < ds.ram[i].end_pfn;
		     pfn += span) {
			int c = ds_classify(pfn, &span);

			span = min(span, ds.ram[i].end_pfn - pfn);
			if (c != class)
				continue;
			for (k = 0; k < span; k++) {
				if (!ds_copy_page(pfn + k, ds.page_buf))
					continue;
				if (ds_enc_page(e, pfn + k, ds.page_buf))
					return false;
				if (!(++n & 0x3ff))
					touch_nmi_watchdog();
			}
		}
		touch_nmi_watchdog();
	}
	return true;
}

static u64 ds_selected(const u64 counts[DS_NR_CLASSES])
{
	u64 n = 0;
	int c;

	for (c = 0; c < DS_NR_CLASSES; c++)
		if (!(ds.excluded & BIT(c)))
			n += counts[c];
	return n;
}

static int ds_panic(struct notifier_block *nb, unsigned long event, void *msg)
{
	struct ds_dump_info info = { .codec = ds.codec };
	struct ds_enc e = {
		.area = ds.area,
		.size = ds.size,
		.paddr = ds.start,
		.page_size = PAGE_SIZE,
		.compress = ds_compress_page,
		.compress_ctx = &ds.zpanic,
	};
	struct pt_regs regs;
	u64 t0;
	int i;

	if (!ds.armed || atomic_xchg(&ds_ran, 1))
		return NOTIFY_DONE;
	crash_setup_regs(&regs, NULL);
	t0 = ktime_get_mono_fast_ns();
	info.crash_time_ns = ktime_get_real_fast_ns();
	pr_emerg("dumpsaver: writing the dump to %pa (%llu MiB)\n", &ds.start,
		 ds.size >> 20);
	if (ds_enc_begin(&e))
		return NOTIFY_DONE;
	ds_meta_write(&e, msg, info.crash_time_ns, &regs, &info.nr_cpus);
	ds_enc_meta_end(&e);

	ds_count_classes(info.class_pages);
	info.selected = ds_selected(info.class_pages);
	for (i = 0; i < DS_NR_CLASSES && !e.full; i++)
		if (!(ds.excluded & BIT(ds_priority[i])))
			ds_write_class(&e, ds_priority[i]);

	info.mem_pages = ds.mem_pages;
	info.excluded = ds.excluded;
	memcpy(info.dump_id, ds.dump_id, 16);
	memcpy(info.boot_id, ds.boot_id, 16);
	ds_enc_finish(&e, &info);
	ds.last_entries = e.nr_entries;
	ds.last_ns = ktime_get_mono_fast_ns() - t0;
	pr_emerg("dumpsaver: %llu of %llu pages in %llu KiB in %llu ms%s\n",
		 e.nr_entries, info.selected, e.pos >> 10,
		 ds.last_ns / NSEC_PER_MSEC,
		 e.full ? ", truncated: the region is too small" : "");

	if (ds.reboot == 2 || (ds.reboot == 1 && !panic_timeout)) {
		pr_emerg("dumpsaver: rebooting, RAM kept\n");
		emergency_restart();
	}
	return NOTIFY_DONE;
}

static struct notifier_block ds_panic_nb = {
	.notifier_call = ds_panic,
	.priority = INT_MIN,	/* after the other notifiers */
};

/*
 * What a dump written now would take: the kernel pages kept, and an
 * estimate of their compressed size from one page in 16 (plus the
 * directory and the meta section).
 */
u64 ds_estimate(u64 *kept_pages, u64 counts[DS_NR_CLASSES])
{
	unsigned long pfn, span, k;
	u64 sampled = 0, bytes = 0, kept = 0;
	u8 *src = ds.estimate_buf, *dst = src + PAGE_SIZE;
	int i, c;

	ds_count_classes(counts);
	mutex_lock(&ds.estimate_lock);
	for (i = 0; i < ds.nr_ram; i++) {
		for (pfn = ds.ram[i].start_pfn; pfn < ds.ram[i].end_pfn;
		     pfn += span) {
			c = ds_classify(pfn, &span);
			span = min(span, ds.ram[i].end_pfn - pfn);
			if (c < 0 || (ds.excluded & BIT(c)))
				continue;
			for (k = 0; k < span; k++, kept++) {
				unsigned int n;

				if ((pfn + k) & 15 || !ds_copy_page(pfn + k, src))
					continue;
				sampled++;
				if (!memchr_inv(src, 0, PAGE_SIZE))
					continue;
				n = ds_compress_page(&ds.zestimate, src,
						     PAGE_SIZE, dst,
						     PAGE_SIZE - 1);
				bytes += n ? n : PAGE_SIZE;
			}
			cond_resched();
		}
	}
	mutex_unlock(&ds.estimate_lock);
	*kept_pages = kept;
	if (sampled)
		bytes = div64_u64(bytes * kept, sampled);
	return bytes + kept * sizeof(struct ds_entry) + ds.vmcoreinfo_room +
	       (256 << 10);
}

int ds_panic_init(void)
{
	return atomic_notifier_chain_register(&panic_notifier_list,
					      &ds_panic_nb);
}

void ds_panic_exit(void)
{
	atomic_notifier_chain_unregister(&panic_notifier_list, &ds_panic_nb);
}
