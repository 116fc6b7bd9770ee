// SPDX-License-Identifier: GPL-2.0
/*
 * e2e_oops: faults on purpose when loaded, for dumpsaver's end-to-end test.
 *
 * "insmod e2e_oops.ko" writes through a bad pointer in the module's init
 * function.  The page fault is an oops in insmod's own context; with
 * panic_on_oops=1 the kernel panics ("Fatal exception") and the panic
 * notifiers run, as on a machine whose driver goes wrong.
 */
#include <linux/init.h>
#include <linux/module.h>
#include <linux/printk.h>

/* where to write: 0 by default; a parameter, so the compiler cannot know it */
static unsigned long addr;
module_param(addr, ulong, 0400);
MODULE_PARM_DESC(addr, "address to write to (default 0: a NULL pointer)");

static noinline void e2e_oops_fault(void)
{
	pr_emerg("e2e_oops: writing to %#lx\n", addr);
	WRITE_ONCE(*(unsigned long *)addr, 0x6d636f7265ul);
}

static int __init e2e_oops_init(void)
{
	e2e_oops_fault();
	return 0;
}
module_init(e2e_oops_init);

MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("Faults on load (dumpsaver end-to-end test)");
