/* SPDX-License-Identifier: GPL-2.0 */
/* The dumpsaver module's state, shared by its files. */
#ifndef DUMPSAVER_H
#define DUMPSAVER_H

#include <linux/types.h>
#include <linux/crash_core.h>
#include <linux/elfcore.h>
#include <linux/mutex.h>
#include <linux/ptrace.h>
#include "encode.h"
#include "codec.h"

#define DS_MAX_RAM_RANGES	256
#define DS_MAX_CPUS		1024
#define DS_REASON_LEN		160
/* A crash_notes buffer: the PRSTATUS note and an empty final note. */
#define DS_NOTE_BYTES		CRASH_CORE_NOTE_BYTES

struct ds_range {
	unsigned long start_pfn;	/* first pfn */
	unsigned long end_pfn;		/* one past the last */
};

struct ds_ram {
	struct ds_range range[DS_MAX_RAM_RANGES];
	int nr;
	unsigned long mem_pages;	/* highest RAM pfn + 1 */
};

struct ds_compressor {
	void *workspace;
	void *ctx;			/* what the codec's init() returned */
};

/* What the module is armed over (sysfs "mode"). */
enum ds_mode {
	DS_MODE_NONE,		/* not armed */
	DS_MODE_RESERVED,	/* reserved memory, never RAM (memmap=SIZE$ADDR) */
	DS_MODE_MOVABLE,	/* online RAM in ZONE_MOVABLE (memmap=! given back) */
};

struct ds_state {
	/*
	 * The region the dump may be written to, never claimed: reserved
	 * memory mapped with memremap, or online movable RAM used through the
	 * direct map.  Its pfns are never part of the dump.
	 */
	phys_addr_t start;
	u64 size;
	unsigned long region_pfn_start;
	unsigned long region_pfn_end;	/* one past the last */
	u8 *area;
	bool area_remapped;		/* memunmap at unload */
	enum ds_mode mode;

	/*
	 * armed and reason change at load and when memory hotplug takes part
	 * of a movable region away (arm_lock); the panic path reads armed.
	 */
	bool armed;
	char reason[DS_REASON_LEN];	/* why not armed, or "" */
	struct mutex arm_lock;
	u32 codec;
	u32 excluded;
	int level;

	/*
	 * System RAM, read at load and after memory hotplug (the resource
	 * tree may be locked at panic): two tables, the current one published
	 * by pointer so that a panic during a refresh reads a whole table.
	 */
	struct ds_ram ram_tables[2];
	struct ds_ram *ram;
	struct mutex ram_lock;
	unsigned long text_pfn_start;	/* the kernel's text and rodata */
	unsigned long text_pfn_end;
	unsigned long image_pfn_end;	/* the image's data and bss end here */

	struct ds_compressor zpanic;	/* the panic path's workspace */
	struct ds_compressor zestimate;	/* sysfs estimates (estimate_lock) */
	struct mutex estimate_lock;
	void *page_buf;			/* one page, copied before compressing */
	void *estimate_buf;

	char *vmcoreinfo;		/* the VMCOREINFO text, plus room */
	size_t vmcoreinfo_len;
	size_t vmcoreinfo_room;

	void *notes[DS_MAX_CPUS];	/* each CPU's crash_notes, mapped */
	int nr_notes;

	u8 boot_id[16];
	u8 dump_id[16];
	int reboot;			/* 0 never, 1 if panic would hang, 2 always */

	/* Figures of the last run of the panic path (tests, sysfs). */
	u64 last_entries;
	u64 last_ns;
};

extern struct ds_state ds;

/* ram.c */
typedef bool (*ds_run_fn)(unsigned long pfn, unsigned long n, int class,
			  void *arg);
int ds_ram_init(void);
u64 ds_region_ram_bytes(void);
bool ds_region_movable(char *why, size_t len);
u64 ds_region_in_use(void);
void ds_ram_exit(void);
unsigned long ds_mem_pages(void);
bool ds_walk(ds_run_fn fn, void *arg);
void ds_count_classes(u64 counts[DS_NR_CLASSES]);
bool ds_copy_page(unsigned long pfn, void *dst);

/* compress.c */
const char *ds_codec_name(u32 codec);
int ds_codec_parse(const char *name);
int ds_codec_get(u32 codec);
void ds_codec_put(void);
int ds_compressor_init(struct ds_compressor *c, int level);
void ds_compressor_free(struct ds_compressor *c);
unsigned int ds_compress_page(void *ctx, const void *page,
			      unsigned int page_size, void *dst,
			      unsigned int room);

/* meta.c */
int ds_meta_init(const char *boot_id, const unsigned long *notes, int n);
void ds_meta_free(void);
void ds_meta_write(struct ds_enc *e, const char *panic_msg, u64 crash_ns,
		   struct pt_regs *regs, u32 *nr_cpus);

/* panic.c */
int ds_panic_init(void);
void ds_panic_exit(void);
u64 ds_estimate(u64 *kept_pages, u64 counts[DS_NR_CLASSES]);

/* main.c */
void ds_disarm(const char *why);

/* sysfs.c */
int ds_sysfs_init(void);
void ds_sysfs_exit(void);

#endif /* DUMPSAVER_H */
