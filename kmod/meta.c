// SPDX-License-Identifier: GPL-2.0
/*
 * The meta section: what a debugger needs besides the pages.
 *
 * Prepared at load: the VMCOREINFO text (copied from the note the kernel
 * keeps at paddr_vmcoreinfo_note()), the boot id, this dump's id, and a
 * mapping of every CPU's crash_notes buffer.  With crash_kexec_post_notifiers
 * set, panic() NMI-stops the other CPUs and each saves its NT_PRSTATUS there
 * before the panic notifiers run; the panicking CPU's registers are taken
 * by the notifier itself.  Written at panic, in the order dumpsaver's
 * MetaInfo.encode() writes them: MACHINE, PANIC, UTS, PRSTATUS per CPU,
 * VMCOREINFO, DMESG.
 */
#include <linux/crash_core.h>
#include <linux/elf.h>
#include <linux/io.h>
#include <linux/kmsg_dump.h>
#include <linux/sched.h>
#include <linux/slab.h>
#include <linux/smp.h>
#include <linux/uaccess.h>
#include <linux/utsname.h>
#include <linux/uuid.h>
#include <asm/msr.h>
#include <asm/segment.h>
#include "dumpsaver.h"

/* The log: enough for Debian's 128 KiB buffer many times over. */
#define DS_DMESG_MAX	(4U << 20)
#define DS_CRASHTIME_ROOM	40

int ds_meta_init(const char *boot_id, const unsigned long *notes, int n)
{
	struct elf_note *note = phys_to_virt(paddr_vmcoreinfo_note());
	uuid_t u;
	int i;

	if (boot_id && *boot_id) {
		if (uuid_parse(boot_id, &u))
			return -EINVAL;
		memcpy(ds.boot_id, u.b, 16);
	}
	uuid_gen(&u);
	memcpy(ds.dump_id, u.b, 16);

	ds.vmcoreinfo_len = 0;
	if (note->n_namesz == sizeof(VMCOREINFO_NOTE_NAME) &&
	    !memcmp(note + 1, VMCOREINFO_NOTE_NAME, note->n_namesz))
		ds.vmcoreinfo_len = min_t(size_t, note->n_descsz,
					  VMCOREINFO_BYTES);
	ds.vmcoreinfo_room = ds.vmcoreinfo_len + DS_CRASHTIME_ROOM;
	ds.vmcoreinfo = kzalloc(ds.vmcoreinfo_room, GFP_KERNEL);
	if (!ds.vmcoreinfo)
		return -ENOMEM;
	memcpy(ds.vmcoreinfo, (u8 *)(note + 1) + VMCOREINFO_NOTE_NAME_BYTES,
	       ds.vmcoreinfo_len);
	/* The text ends at its first NUL, whatever the note says. */
	ds.vmcoreinfo_len = strnlen(ds.vmcoreinfo, ds.vmcoreinfo_len);

	ds.nr_notes = 0;
	for (i = 0; i < n && i < DS_MAX_CPUS; i++) {
		ds.notes[i] = NULL;
		if (notes[i])
			ds.notes[i] = memremap(notes[i], DS_NOTE_BYTES,
					       MEMREMAP_WB);
		ds.nr_notes = i + 1;
	}
	return 0;
}

void ds_meta_free(void)
{
	int i;

	for (i = 0; i < ds.nr_notes; i++)
		if (ds.notes[i])
			memunmap(ds.notes[i]);
	ds.nr_notes = 0;
	kfree(ds.vmcoreinfo);
	ds.vmcoreinfo = NULL;
}

/* The NT_PRSTATUS @cpu saved into its crash_notes, if it did. */
static bool ds_saved_prstatus(int cpu, struct elf_prstatus *prs)
{
	u8 buf[DS_NOTE_BYTES];
	struct elf_note *n = (struct elf_note *)buf;

	if (cpu >= ds.nr_notes || !ds.notes[cpu] ||
	    copy_from_kernel_nofault(buf, ds.notes[cpu], sizeof(buf)))
		return false;
	if (n->n_namesz != sizeof(CRASH_CORE_NOTE_NAME) ||
	    n->n_type != NT_PRSTATUS || n->n_descsz != sizeof(*prs) ||
	    memcmp(n + 1, CRASH_CORE_NOTE_NAME, n->n_namesz))
		return false;
	memcpy(prs, buf + CRASH_CORE_NOTE_HEAD_BYTES + CRASH_CORE_NOTE_NAME_BYTES,
	       sizeof(*prs));
	return true;
}

/*
 * elf_core_copy_regs() reads the inactive GS base through a helper that is
 * not exported on x86_64; the same 27 words, from the same sources.
 */
static void ds_copy_regs(elf_gregset_t *out, struct pt_regs *regs)
{
#ifdef CONFIG_X86_64
	unsigned long *w = (unsigned long *)out;
	unsigned int seg;

	BUILD_BUG_ON(sizeof(*out) != 27 * sizeof(unsigned long));
	memcpy(w, regs, 21 * sizeof(unsigned long));
	rdmsrl(MSR_FS_BASE, w[21]);
	rdmsrl(MSR_KERNEL_GS_BASE, w[22]);
	savesegment(ds, seg);
	w[23] = seg;
	savesegment(es, seg);
	w[24] = seg;
	savesegment(fs, seg);
	w[25] = seg;
	savesegment(gs, seg);
	w[26] = seg;
#else
	elf_core_copy_regs(out, regs);
#endif
}

/*
 * Write the panicking CPU's note into its own crash_notes buffer, as
 * crash_save_cpu() does when a kdump kernel is loaded: drgn takes every
 * CPU's registers from those buffers in the dump's memory.  Done before the
 * page walk, so the page holding it is saved with the note in it.
 */
static void ds_save_own_note(int cpu, const struct elf_prstatus *prs)
{
	u8 buf[DS_NOTE_BYTES];
	struct elf_note *n = (struct elf_note *)buf;

	if (cpu >= ds.nr_notes || !ds.notes[cpu])
		return;
	memset(buf, 0, sizeof(buf));	/* the final note is all zero */
	n->n_namesz = sizeof(CRASH_CORE_NOTE_NAME);
	n->n_descsz = sizeof(*prs);
	n->n_type = NT_PRSTATUS;
	memcpy(buf + CRASH_CORE_NOTE_HEAD_BYTES, CRASH_CORE_NOTE_NAME,
	       sizeof(CRASH_CORE_NOTE_NAME));
	memcpy(buf + CRASH_CORE_NOTE_HEAD_BYTES + CRASH_CORE_NOTE_NAME_BYTES,
	       prs, sizeof(*prs));
	memcpy(ds.notes[cpu], buf, sizeof(buf));
}

static void ds_meta_prstatus(struct ds_enc *e, struct pt_regs *regs,
			     u32 *nr_cpus)
{
	struct elf_prstatus prs;
	int cpu, me = smp_processor_id();

	*nr_cpus = 0;
	for_each_present_cpu(cpu) {
		if (cpu == me) {
			memset(&prs, 0, sizeof(prs));
			prs.common.pr_pid = current->pid;
			ds_copy_regs(&prs.pr_reg, regs);
			ds_save_own_note(cpu, &prs);
		} else if (!ds_saved_prstatus(cpu, &prs)) {
			continue;
		}
		ds_enc_meta(e, DS_META_PRSTATUS, &prs, sizeof(prs));
		(*nr_cpus)++;
	}
}

static void ds_meta_dmesg(struct ds_enc *e)
{
	struct kmsg_dump_iter iter;
	size_t len = 0;
	u64 room;
	char *dst = ds_enc_meta_open(e, &room);

	room = min3(room, (u64)DS_DMESG_MAX, e->size / 8);
	kmsg_dump_rewind(&iter);
	if (room && kmsg_dump_get_buffer(&iter, false, dst, room, &len))
		len = min_t(u64, len, room);
	ds_enc_meta_close(e, DS_META_DMESG, len);
}

void ds_meta_write(struct ds_enc *e, const char *panic_msg, u64 crash_ns,
		   struct pt_regs *regs, u32 *nr_cpus)
{
	struct new_utsname *uts = init_utsname();
	const char *const fields[DS_UTS_FIELDS] = {
		uts->sysname, uts->nodename, uts->release,
		uts->version, uts->machine, uts->domainname,
	};
	__le16 machine = cpu_to_le16(ELF_ARCH);
	size_t n = panic_msg ? strnlen(panic_msg, DS_MAX_STRING) : 0;
	u64 room;
	char *dst;

	ds_enc_meta(e, DS_META_MACHINE, &machine, sizeof(machine));
	while (n && panic_msg[n - 1] == '\n')
		n--;
	ds_enc_meta(e, DS_META_PANIC, panic_msg, n);
	ds_enc_meta_uts(e, fields);
	ds_meta_prstatus(e, regs, nr_cpus);

	dst = ds_enc_meta_open(e, &room);
	if (room >= ds.vmcoreinfo_room) {
		memcpy(dst, ds.vmcoreinfo, ds.vmcoreinfo_len);
		n = ds.vmcoreinfo_len;
		n += scnprintf(dst + n, DS_CRASHTIME_ROOM, "CRASHTIME=%llu\n",
			       crash_ns / NSEC_PER_SEC);
		ds_enc_meta_close(e, DS_META_VMCOREINFO, n);
	}
	ds_meta_dmesg(e);
}
