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
#include <linux/sched/clock.h>
#include <linux/timekeeping.h>
#include "dumpsaver.h"

/* Saved first when space runs out: dumpsaver.simulate.PRIORITY. */
static const u8 ds_priority[DS_NR_CLASSES] = {
	DS_CLASS_KERNEL_DATA, DS_CLASS_PAGE_TABLE, DS_CLASS_KERNEL_TEXT,
	DS_CLASS_LOCKED, DS_CLASS_USER_ANON, DS_CLASS_USER_SHARED,
	DS_CLASS_FILE_CACHE, DS_CLASS_FREE,
};

static atomic_t ds_ran = ATOMIC_INIT(0);

struct ds_pass {
	struct ds_enc *e;
	int class;
	unsigned long n;
	unsigned long lo, hi;	/* only pfns in [lo, hi) */
};

/* Write the pages of one class; false (the walk stops) once the area is full. */
static bool ds_write_run(unsigned long pfn, unsigned long n, int class,
			 void *arg)
{
	struct ds_pass *p = arg;
	unsigned long k;

	if (class != p->class || pfn + n <= p->lo || pfn >= p->hi)
		return true;
	for (k = 0; k < n; k++) {
		if (pfn + k < p->lo || pfn + k >= p->hi)
			continue;
		if (!ds_copy_page(pfn + k, ds.page_buf))
			continue;
		if (ds_enc_page(p->e, pfn + k, ds.page_buf))
			return false;
		if (!(++p->n & 0x3ff))
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

/*
 * Start the recorded stack at the notifier's caller (notifier_call_chain,
 * in vmlinux), as if the registers were taken there: debuggers unwind with
 * vmlinux's ORC tables and cannot unwind this module's frame.  The frame
 * address makes the compiler give this function a frame pointer: its slot
 * holds the caller's rbp, the next one the return address.
 */
static __always_inline void ds_caller_regs(struct pt_regs *regs)
{
#ifdef CONFIG_X86_64
	unsigned long *frame = __builtin_frame_address(0);

	regs->ip = (unsigned long)__builtin_return_address(0);
	regs->bp = frame[0];
	regs->sp = (unsigned long)(frame + 2);
#endif
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
	ds_caller_regs(&regs);
	/*
	 * This CPU's own clock: the timekeeper's fast accessors read a base
	 * that CPUs stopped mid-update can leave behind, and went backwards
	 * across the write in two of three panics in QEMU.
	 */
	t0 = sched_clock();
	info.crash_time_ns = ktime_get_real_fast_ns();
	pr_emerg("dumpsaver: writing the dump to %pa (%llu MiB, %s)\n",
		 &ds.start, ds.size >> 20,
		 ds.mode == DS_MODE_MOVABLE ? "movable RAM" : "reserved");
	if (ds_enc_begin(&e))
		return NOTIFY_DONE;
	ds_meta_write(&e, msg, info.crash_time_ns, &regs, &info.nr_cpus);
	ds_enc_meta_end(&e);

	ds_count_classes(info.class_pages);
	info.selected = ds_selected(info.class_pages);
	/*
	 * The kernel image's data and bss first (init_task, per-cpu offsets,
	 * the first page tables): a dump truncated after them still opens in
	 * a debugger.  Then every class in order, that range left out.
	 */
	if (!(ds.excluded & BIT(DS_CLASS_KERNEL_DATA)) && ds.image_pfn_end) {
		struct ds_pass pass = { .e = &e, .class = DS_CLASS_KERNEL_DATA,
					.lo = ds.text_pfn_end,
					.hi = ds.image_pfn_end };

		ds_walk(ds_write_run, &pass);
	}
	for (i = 0; i < DS_NR_CLASSES && !e.full; i++) {
		struct ds_pass pass = { .e = &e, .class = ds_priority[i],
					.hi = ULONG_MAX };

		if (ds.excluded & BIT(pass.class))
			continue;
		if (pass.class == DS_CLASS_KERNEL_DATA && ds.image_pfn_end) {
			pass.hi = ds.text_pfn_end;
			ds_walk(ds_write_run, &pass);
			pass.lo = ds.image_pfn_end;
			pass.hi = ULONG_MAX;
		}
		ds_walk(ds_write_run, &pass);
	}

	info.mem_pages = ds_mem_pages();
	info.excluded = ds.excluded;
	memcpy(info.dump_id, ds.dump_id, 16);
	memcpy(info.boot_id, ds.boot_id, 16);
	ds_enc_finish(&e, &info);
	ds.last_entries = e.nr_entries;
	ds.last_ns = sched_clock() - t0;
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

struct ds_sample {
	u64 kept, sampled, bytes;
};

/* Count the kept pages; compress one in 16 (process context). */
static bool ds_sample_run(unsigned long pfn, unsigned long n, int class,
			  void *arg)
{
	struct ds_sample *s = arg;
	u8 *src = ds.estimate_buf, *dst = src + PAGE_SIZE;
	unsigned long k;
	unsigned int len;

	if (ds.excluded & BIT(class))
		return true;
	for (k = 0; k < n; k++, s->kept++) {
		if ((pfn + k) & 15 || !ds_copy_page(pfn + k, src))
			continue;
		s->sampled++;
		if (!memchr_inv(src, 0, PAGE_SIZE))
			continue;
		len = ds_compress_page(&ds.zestimate, src, PAGE_SIZE, dst,
				       PAGE_SIZE - 1);
		s->bytes += len ? len : PAGE_SIZE;
	}
	cond_resched();
	return true;
}

/*
 * What a dump written now would take: the kernel pages kept, and an
 * estimate of their size in the region from one page in 16 (plus the
 * directory and the meta section).
 */
u64 ds_estimate(u64 *kept_pages, u64 counts[DS_NR_CLASSES])
{
	struct ds_sample s = { 0 };

	ds_count_classes(counts);
	mutex_lock(&ds.estimate_lock);
	ds_walk(ds_sample_run, &s);
	mutex_unlock(&ds.estimate_lock);
	*kept_pages = s.kept;
	if (s.sampled)
		s.bytes = div64_u64(s.bytes * s.kept, s.sampled);
	return s.bytes + s.kept * sizeof(struct ds_entry) + ds.vmcoreinfo_room +
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
