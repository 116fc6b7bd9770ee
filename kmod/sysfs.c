// SPDX-License-Identifier: GPL-2.0
/*
 * /sys/kernel/dumpsaver: the module's state (docs/sysfs-abi.md).
 * Root only: the estimates walk every page of RAM.
 */
#include <linux/kobject.h>
#include <linux/sysfs.h>
#include "dumpsaver.h"

static struct kobject *ds_kobj;

static const char *const ds_class_names[DS_NR_CLASSES] = {
	"kernel_text", "kernel_data", "page_table", "free",
	"user_anon", "user_shared", "file_cache", "locked",
};

static ssize_t armed_show(struct kobject *k, struct kobj_attribute *a,
			  char *buf)
{
	return sysfs_emit(buf, "%d\n", ds.armed);
}

static ssize_t reason_show(struct kobject *k, struct kobj_attribute *a,
			   char *buf)
{
	return sysfs_emit(buf, "%s\n", ds.reason);
}

static ssize_t region_show(struct kobject *k, struct kobj_attribute *a,
			   char *buf)
{
	return sysfs_emit(buf, "%016llx-%016llx\n", (u64)ds.start,
			  (u64)ds.start + ds.size - 1);
}

static ssize_t mode_show(struct kobject *k, struct kobj_attribute *a,
			 char *buf)
{
	static const char *const names[] = {
		[DS_MODE_NONE] = "none",
		[DS_MODE_RESERVED] = "reserved",
		[DS_MODE_MOVABLE] = "movable",
	};

	return sysfs_emit(buf, "%s\n", names[ds.mode]);
}

static ssize_t codec_show(struct kobject *k, struct kobj_attribute *a,
			  char *buf)
{
	return sysfs_emit(buf, "%s\n", ds_codec_name(ds.codec));
}

static ssize_t excluded_show(struct kobject *k, struct kobj_attribute *a,
			     char *buf)
{
	return sysfs_emit(buf, "0x%x\n", ds.excluded);
}

static ssize_t estimate_show(struct kobject *k, struct kobj_attribute *a,
			     char *buf)
{
	u64 counts[DS_NR_CLASSES], kept, bytes;
	int len, i;

	bytes = ds_estimate(&kept, counts);
	len = sysfs_emit(buf, "kept_pages %llu\nestimate_bytes %llu\n"
			 "region_bytes %llu\nregion_in_use %llu\n", kept, bytes,
			 ds.size, ds_region_in_use());
	for (i = 0; i < DS_NR_CLASSES; i++)
		len += sysfs_emit_at(buf, len, "%s %llu\n", ds_class_names[i],
				     counts[i]);
	return len;
}

static struct kobj_attribute ds_attrs[] = {
	__ATTR(armed, 0400, armed_show, NULL),
	__ATTR(reason, 0400, reason_show, NULL),
	__ATTR(region, 0400, region_show, NULL),
	__ATTR(mode, 0400, mode_show, NULL),
	__ATTR(codec, 0400, codec_show, NULL),
	__ATTR(excluded, 0400, excluded_show, NULL),
	__ATTR(estimate, 0400, estimate_show, NULL),
};

static struct attribute *ds_attr_list[ARRAY_SIZE(ds_attrs) + 1];

static const struct attribute_group ds_group = {
	.attrs = ds_attr_list,
};

int ds_sysfs_init(void)
{
	int i, ret;

	for (i = 0; i < ARRAY_SIZE(ds_attrs); i++)
		ds_attr_list[i] = &ds_attrs[i].attr;
	ds_kobj = kobject_create_and_add("dumpsaver", kernel_kobj);
	if (!ds_kobj)
		return -ENOMEM;
	ret = sysfs_create_group(ds_kobj, &ds_group);
	if (ret)
		kobject_put(ds_kobj);
	return ret;
}

void ds_sysfs_exit(void)
{
	sysfs_remove_group(ds_kobj, &ds_group);
	kobject_put(ds_kobj);
}
