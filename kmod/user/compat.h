/* SPDX-License-Identifier: GPL-2.0 */
/*
 * What encode.c needs from the kernel, for a user-space build (the
 * conformance test): fixed-width types, byte order, CRC32 and sort().
 */
#ifndef DUMPSAVER_USER_COMPAT_H
#define DUMPSAVER_USER_COMPAT_H

#include <assert.h>
#include <endian.h>
#include <errno.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <linux/types.h>

typedef uint8_t u8;
typedef uint16_t u16;
typedef uint32_t u32;
typedef uint64_t u64;
typedef int64_t s64;

#define __force
#define cpu_to_le16(x) ((__le16)htole16(x))
#define cpu_to_le32(x) ((__le32)htole32(x))
#define cpu_to_le64(x) ((__le64)htole64(x))
#define le32_to_cpu(x) le32toh(x)
#define le64_to_cpu(x) le64toh(x)
#define min(a, b) ((a) < (b) ? (a) : (b))
#define min_t(t, a, b) ((t)(a) < (t)(b) ? (t)(a) : (t)(b))
/* Orders the header's stores as the kernel's wmb() does. */
#define wmb() __atomic_thread_fence(__ATOMIC_RELEASE)

u32 crc32_le(u32 seed, const void *data, size_t len);
void sort(void *base, size_t num, size_t size,
	  int (*cmp)(const void *, const void *),
	  void (*swap)(void *, void *, int));

#endif /* DUMPSAVER_USER_COMPAT_H */
