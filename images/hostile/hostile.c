// SPDX-License-Identifier: GPL-2.0
/*
 * hostile: a guest kernel module that attacks perfvmm from inside the VM
 * (issue 12, item 7). Loading it runs every attack once, prints one
 * "hostile: ..." line per attack with what the guest saw, and fails with
 * -EAGAIN so that it unloads itself. Run by images/guest-scenario's
 * `hostile` scenario, which unbinds virtio_perfhint first (the attacks
 * drive the perf-hint transport by hand) and binds it again afterwards.
 *
 * The addresses are perfvmm's fixed layout (vmm/src/layout.rs): the
 * perf-hint device's virtio-mmio window, the CPU-hotplug controller, and
 * the virtio-mem region (module parameter, 0 to skip).
 */
#include <linux/delay.h>
#include <linux/io.h>
#include <linux/module.h>
#include <linux/slab.h>

#define PERFHINT_MMIO 0xd0000000UL
#define CPU_HOTPLUG 0xd1001000UL

static unsigned long unplugged;
module_param(unplugged, ulong, 0444);
MODULE_PARM_DESC(unplugged, "guest-physical address of unplugged virtio-mem memory (0: skip)");

/* virtio-mmio registers (virtio 1.2, 4.2.2). */
enum {
	R_DRV_FEATURES = 0x020, R_DRV_FEATURES_SEL = 0x024, R_QUEUE_SEL = 0x030,
	R_QUEUE_NUM = 0x038, R_QUEUE_READY = 0x044, R_QUEUE_NOTIFY = 0x050,
	R_STATUS = 0x070, R_DESC_LO = 0x080, R_DESC_HI = 0x084,
	R_AVAIL_LO = 0x090, R_AVAIL_HI = 0x094, R_USED_LO = 0x0a0, R_USED_HI = 0x0a4,
};

struct desc {
	__le64 addr;
	__le32 len;
	__le16 flags;
	__le16 next;
};

#define F_NEXT 1
#define F_WRITE 2
#define F_INDIRECT 4
#define QSIZE 32

static void set_queue_addr(void __iomem *m, int lo, phys_addr_t a)
{
	writel(lower_32_bits(a), m + lo);
	writel(upper_32_bits(a), m + lo + 4);
}

/* Hostile chains on the perf-hint device's hintq: a descriptor that loops
 * to itself, one outside guest memory, one 4 GiB long, a writable one, one
 * naming a descriptor past the table, an indirect one; then an avail index
 * that jumps far ahead, and a notify storm on a queue that does not exist.
 * The ring has 32 entries, more than the device follows in one chain (16),
 * so that the loop meets the device's own limit. */
static void attack_hintq(void)
{
	void __iomem *m = ioremap(PERFHINT_MMIO, 0x1000);
	u8 *page = (u8 *)get_zeroed_page(GFP_KERNEL);
	struct desc *d;
	__le16 *avail;
	__le16 *used;
	phys_addr_t p;
	int i;

	if (!m || !page) {
		pr_info("hostile: hintq: cannot map the device\n");
		goto out;
	}
	p = virt_to_phys(page);
	d = (struct desc *)page;
	avail = (__le16 *)(page + 0x400);
	used = (__le16 *)(page + 0x800);
	d[0] = (struct desc){ cpu_to_le64(p + 0xc00), cpu_to_le32(64), cpu_to_le16(F_NEXT), 0 };
	d[1] = (struct desc){ cpu_to_le64(0xffffffff00000000ULL), cpu_to_le32(4096), 0, 0 };
	d[2] = (struct desc){ cpu_to_le64(p + 0xc00), cpu_to_le32(0xffffffff), 0, 0 };
	d[3] = (struct desc){ cpu_to_le64(p + 0xc00), cpu_to_le32(64), cpu_to_le16(F_WRITE), 0 };
	d[4] = (struct desc){ cpu_to_le64(p + 0xc00), cpu_to_le32(64), cpu_to_le16(F_NEXT),
			      cpu_to_le16(200) };
	d[5] = (struct desc){ cpu_to_le64(p + 0xc00), cpu_to_le32(64), cpu_to_le16(F_INDIRECT), 0 };
	for (i = 0; i < 6; i++)
		avail[2 + i] = cpu_to_le16(i);

	/* Status bits one at a time, in the spec's order (perfvmm ignores a
	 * write that adds two). */
	writel(0, m + R_STATUS);
	writel(1, m + R_STATUS);
	writel(1 | 2, m + R_STATUS);
	writel(1, m + R_DRV_FEATURES_SEL);
	writel(1, m + R_DRV_FEATURES);	/* VIRTIO_F_VERSION_1 */
	writel(0, m + R_DRV_FEATURES_SEL);
	writel(0, m + R_DRV_FEATURES);
	writel(1 | 2 | 8, m + R_STATUS);
	writel(0, m + R_QUEUE_SEL);
	writel(QSIZE, m + R_QUEUE_NUM);
	set_queue_addr(m, R_DESC_LO, p);
	set_queue_addr(m, R_AVAIL_LO, p + 0x400);
	set_queue_addr(m, R_USED_LO, p + 0x800);
	writel(1, m + R_QUEUE_READY);
	writel(1 | 2 | 8 | 4, m + R_STATUS);
	pr_info("hostile: hintq: magic %#x device %#x status %#x after DRIVER_OK\n",
		readl(m + 0x000), readl(m + 0x008), readl(m + R_STATUS));
	wmb();
	avail[1] = cpu_to_le16(6);
	writel(0, m + R_QUEUE_NOTIFY);
	msleep(500);
	pr_info("hostile: hintq: 6 hostile chains, used idx %u\n", le16_to_cpu(READ_ONCE(used[1])));
	/* An avail index 60000 ahead: more chains than the ring holds. */
	avail[1] = cpu_to_le16(60006);
	writel(0, m + R_QUEUE_NOTIFY);
	msleep(200);
	/* A queue that does not exist, made ready and notified 10 000 times. */
	writel(99, m + R_QUEUE_SEL);
	writel(0xffff, m + R_QUEUE_NUM);
	writel(1, m + R_QUEUE_READY);
	for (i = 0; i < 10000; i++)
		writel(99, m + R_QUEUE_NOTIFY);
	/* Reset, and acknowledged again as Linux leaves a device without a
	 * driver, so that virtio_perfhint can bind again. */
	writel(0, m + R_STATUS);
	writel(1, m + R_STATUS);
	pr_info("hostile: hintq: done, status after reset %u\n", readl(m + R_STATUS));
out:
	if (m)
		iounmap(m);
	if (page)
		free_page((unsigned long)page);
}

/* The CPU-hotplug controller: eject vCPU 0, eject vCPUs perfvmm did not
 * ask to remove, select slots past the last, write past the registers. */
static void attack_hotplug(void)
{
	static const u32 slots[] = { 0, 1, 3, 200, 0xffffffff };
	void __iomem *m = ioremap(CPU_HOTPLUG, 0x1000);
	int i;

	/* ACPI's AML maps the controller cached; an uncached mapping of the
	 * same page is refused then. */
	if (!m)
		m = ioremap_cache(CPU_HOTPLUG, 0x1000);
	if (!m) {
		pr_info("hostile: hotplug: cannot map the controller\n");
		return;
	}
	for (i = 0; i < ARRAY_SIZE(slots); i++) {
		writel(slots[i], m + 0);
		writel(0xf, m + 4);	/* every status bit, eject included */
	}
	for (i = 8; i < 0x1000; i += 4)
		writel(0xffffffff, m + i);
	writel(0, m + 0);
	pr_info("hostile: hotplug: done, cpu0 status %#x\n", readl(m + 4));
	iounmap(m);
}

/* Writes into virtio-mem memory nothing is plugged at, and reads it back:
 * the host must neither back it nor keep what was written. */
static void attack_unplugged(void)
{
	void __iomem *m;
	u32 back = 0;
	int i;

	if (!unplugged) {
		pr_info("hostile: unplugged: skipped\n");
		return;
	}
	m = ioremap(unplugged, 1 << 16);
	if (!m) {
		pr_info("hostile: unplugged: cannot map %#lx\n", unplugged);
		return;
	}
	for (i = 0; i < (1 << 16); i += 4)
		writel(0x5a5a5a5a, m + i);
	for (i = 0; i < (1 << 16); i += 4096)
		back |= readl(m + i);
	pr_info("hostile: unplugged: wrote 64 KiB at %#lx, what was written is %s\n",
		unplugged, back ? "kept" : "gone");
	iounmap(m);
}

static int __init hostile_init(void)
{
	attack_hotplug();
	attack_unplugged();
	attack_hintq();
	pr_info("hostile: all attacks done\n");
	return -EAGAIN;
}

module_init(hostile_init);
MODULE_DESCRIPTION("perfvmm's hostile guest: attacks the VMM from inside the VM");
MODULE_LICENSE("GPL");
