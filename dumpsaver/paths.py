"""Every system path the program touches by default, in one table.

Each is a default only: the configuration or a command-line option overrides it,
and the tests pass their own (a temp directory, a plain file for /dev/mem).  This
module imports nothing, so the no-dump fast path (dumpsaver.cli) can use it.
"""

#: The configuration file; ``$DUMPSAVER_CONFIG`` (or ``--config``) names another.
CONFIG = "/etc/dumpsaver/dumpsaver.yaml"
CONFIG_ENV = "DUMPSAVER_CONFIG"
#: The kernel's mcore interface (docs/sysfs-abi.md) and its header attribute.
SYSFS = "/sys/kernel/mcore"
SYSFS_HEADER = SYSFS + "/header"
#: The kernel command line (memmap= reservations) and the resource map they are checked on.
CMDLINE = "/proc/cmdline"
IOMEM = "/proc/iomem"
#: The physical memory device.
MEM = "/dev/mem"
#: Where saved dumps go, and the state (failed attempts, the self-test record).
DUMP_DIR = "/var/dumps"
STATE_DIR = "/var/lib/dumpsaver"
#: PID 1's private D-Bus socket (exists before the system bus does).
PID1_PRIVATE = "/run/systemd/private"
