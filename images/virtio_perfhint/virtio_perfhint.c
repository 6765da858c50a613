// SPDX-License-Identifier: GPL-2.0
/*
 * virtio_perfhint: driver for the virtio perf-hint device (perfvmm).
 *
 * Gives user space /dev/perfhint:
 *   write()  one call is one wire message (see docs/wire-format.md); a
 *            message shorter than the wire header or longer than the
 *            device's max_message_len fails with EINVAL. When the hint
 *            queue is full a non-blocking fd gets EAGAIN, a blocking one
 *            waits for room.
 *   read()   8-byte outcome entries (seq:u32, outcome:u8, pad:u8,
 *            stream:u16) as the device reports them on its event queue;
 *            EAGAIN when none wait on a non-blocking fd.
 * Each open file is a stream of its own: the driver writes its number into
 * every message's header (the device's STREAMS feature), so that the
 * device keeps each file's phases and rate budget apart, and each file
 * reads only the outcomes of its own messages. When a file is released
 * (closed, or its program killed) the driver tells the device, which ends
 * the phases the file left open.
 *   poll()   POLLOUT when a message can be queued, POLLIN when outcomes wait.
 * Once the device is unbound, files still open fail every read and write
 * with ENODEV (sleeping readers are woken) and poll POLLHUP; the driver's
 * state lives until the last of them is closed.
 * and sysfs counters under /sys/class/misc/perfhint/: sent, completed,
 * errors, outcomes, outcomes_dropped.
 */
#include <linux/atomic.h>
#include <linux/fs.h>
#include <linux/kfifo.h>
#include <linux/kref.h>
#include <linux/miscdevice.h>
#include <linux/module.h>
#include <linux/poll.h>
#include <linux/scatterlist.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/uaccess.h>
#include <asm/unaligned.h>
#include <linux/virtio.h>
#include <linux/virtio_config.h>
#include <linux/wait.h>

#define VIRTIO_ID_PERFHINT 65535
#define VIRTIO_PERFHINT_F_EVENTQ 0
#define VIRTIO_PERFHINT_F_MANIFEST 1
#define VIRTIO_PERFHINT_F_STREAMS 2

/* Config space offsets (little-endian). */
#define PH_CFG_VERSION 0
#define PH_CFG_MAX_MESSAGE_LEN 4

#define PH_HEADER_LEN 16
#define PH_MAX_MESSAGE_LEN_CAP 65536
#define PH_OUTCOME_LEN 8
#define PH_EVENT_BUFS 16
#define PH_EVENT_BUF_LEN 256
/* Outcome entries kept per open file; older ones are dropped (and counted). */
#define PH_OUTCOME_FIFO (512 * PH_OUTCOME_LEN)
/* Where the message header's stream number sits, and the outcome's. */
#define PH_STREAM_OFFSET 6
#define PH_OUTCOME_STREAM_OFFSET 6
/* The wire header (docs/wire-format.md): magic, version, flags, length. */
#define PH_MAGIC 0x4850
#define PH_VERSION 1
#define PH_FLAGS_OFFSET 3
#define PH_FLAG_STREAM_CLOSED 0x01
#define PH_TOTAL_LEN_OFFSET 12
/* Files open at once (stream numbers 1..PH_MAX_STREAMS). */
#define PH_MAX_STREAMS 1024

struct perfhint;

/* One open file: its stream number and the outcomes of its messages. */
struct ph_file {
	struct perfhint *ph;
	u32 stream;
	DECLARE_KFIFO(outcomes, u8, PH_OUTCOME_FIFO);
};

struct perfhint {
	/* One reference for the bound device, one per open file: unbinding
	 * with files open leaves this (not the virtqueues) to the last close. */
	struct kref ref;
	struct virtio_device *vdev;
	struct virtqueue *hintq;
	struct virtqueue *eventq;
	spinlock_t lock;	/* serialises virtqueue use, the fifo and `ready` */
	wait_queue_head_t write_wait;
	wait_queue_head_t read_wait;
	u32 max_len;
	bool ready;	/* false once unbound: the virtqueues are gone */
	bool streams;	/* the device takes stream numbers */
	/* Open files by stream number; read under `lock` in interrupts,
	 * entries removed under `lock`. */
	struct xarray files;
	u32 next_stream;
	void *event_bufs[PH_EVENT_BUFS];
	struct miscdevice misc;
	atomic64_t sent, completed, errors, outcomes_seen, outcomes_dropped;
};

/* One device at a time: /dev/perfhint has one name. */
static DEFINE_MUTEX(ph_global_lock);
static struct perfhint *ph_global;

static void ph_reclaim_hintq(struct perfhint *ph)
{
	unsigned int len;
	void *buf;

	while ((buf = virtqueue_get_buf(ph->hintq, &len))) {
		/* A stream's close message is the driver's own, not a write's. */
		bool closing = ph->streams &&
			       (((u8 *)buf)[PH_FLAGS_OFFSET] & PH_FLAG_STREAM_CLOSED);

		kfree(buf);
		if (!closing)
			atomic64_inc(&ph->completed);
	}
}

static void ph_hintq_done(struct virtqueue *vq)
{
	struct perfhint *ph = vq->vdev->priv;
	unsigned long flags;

	spin_lock_irqsave(&ph->lock, flags);
	virtqueue_disable_cb(vq);
	ph_reclaim_hintq(ph);
	spin_unlock_irqrestore(&ph->lock, flags);
	wake_up_interruptible(&ph->write_wait);
}

static int ph_post_event_buf(struct perfhint *ph, void *buf)
{
	struct scatterlist sg;

	sg_init_one(&sg, buf, PH_EVENT_BUF_LEN);
	return virtqueue_add_inbuf(ph->eventq, &sg, 1, buf, GFP_ATOMIC);
}

/* Queues one outcome entry for file `pf`, dropping its oldest when full. */
static void ph_deliver(struct perfhint *ph, struct ph_file *pf, const u8 *entry)
{
	if (kfifo_avail(&pf->outcomes) < PH_OUTCOME_LEN) {
		u8 old[PH_OUTCOME_LEN];

		if (kfifo_out(&pf->outcomes, old, PH_OUTCOME_LEN) != PH_OUTCOME_LEN)
			return;
		atomic64_inc(&ph->outcomes_dropped);
	}
	kfifo_in(&pf->outcomes, entry, PH_OUTCOME_LEN);
}

/* To the file whose stream the entry names; without streams, to every
 * open file. Called with ph->lock held. */
static void ph_route(struct perfhint *ph, const u8 *entry)
{
	struct ph_file *pf;
	unsigned long id;

	atomic64_inc(&ph->outcomes_seen);
	if (!ph->streams) {
		xa_for_each(&ph->files, id, pf)
			ph_deliver(ph, pf, entry);
		return;
	}
	pf = xa_load(&ph->files, get_unaligned_le16(entry + PH_OUTCOME_STREAM_OFFSET));
	if (pf)
		ph_deliver(ph, pf, entry);
	else
		atomic64_inc(&ph->outcomes_dropped);
}

static void ph_eventq_done(struct virtqueue *vq)
{
	struct perfhint *ph = vq->vdev->priv;
	unsigned long flags;
	unsigned int len, i;
	bool kick = false;
	u8 *buf;

	spin_lock_irqsave(&ph->lock, flags);
	while ((buf = virtqueue_get_buf(ph->eventq, &len))) {
		len = min_t(unsigned int, len, PH_EVENT_BUF_LEN);
		for (i = 0; i + PH_OUTCOME_LEN <= len; i += PH_OUTCOME_LEN)
			ph_route(ph, buf + i);
		if (ph->ready && ph_post_event_buf(ph, buf) == 0)
			kick = true;
	}
	if (kick)
		virtqueue_kick(ph->eventq);
	spin_unlock_irqrestore(&ph->lock, flags);
	wake_up_interruptible(&ph->read_wait);
}

/* Queues one message; -ENOSPC when the ring is full. */
static int ph_queue_message(struct perfhint *ph, void *msg, size_t len)
{
	struct scatterlist sg;
	unsigned long flags;
	int err;

	sg_init_one(&sg, msg, len);
	spin_lock_irqsave(&ph->lock, flags);
	if (!ph->ready) {
		err = -ENODEV;
	} else {
		ph_reclaim_hintq(ph);
		err = virtqueue_add_outbuf(ph->hintq, &sg, 1, msg, GFP_ATOMIC);
		if (!err)
			virtqueue_kick(ph->hintq);
	}
	spin_unlock_irqrestore(&ph->lock, flags);
	return err;
}

/*
 * hintq interrupts stay off while the ring has room (every write reclaims
 * finished buffers); a writer about to wait for room turns them on.
 */
static void ph_want_room_callback(struct perfhint *ph)
{
	unsigned long flags;

	spin_lock_irqsave(&ph->lock, flags);
	if (ph->ready && !virtqueue_enable_cb_delayed(ph->hintq))
		ph_reclaim_hintq(ph);
	spin_unlock_irqrestore(&ph->lock, flags);
}

/* True when a message can be queued, or when the device is gone (the
 * write then fails with ENODEV). */
static bool ph_has_room(struct perfhint *ph)
{
	unsigned long flags;
	bool room = true;

	spin_lock_irqsave(&ph->lock, flags);
	if (ph->ready) {
		ph_reclaim_hintq(ph);
		room = ph->hintq->num_free > 0;
	}
	spin_unlock_irqrestore(&ph->lock, flags);
	return room;
}

static bool ph_gone(struct perfhint *ph)
{
	return !READ_ONCE(ph->ready);
}

static void ph_free(struct kref *ref)
{
	struct perfhint *ph = container_of(ref, struct perfhint, ref);

	xa_destroy(&ph->files);
	kfree(ph);
}

static struct ph_file *ph_file_of(struct file *file)
{
	return file->private_data;
}

/* misc_open has set private_data to our miscdevice and holds misc_mtx,
 * which misc_deregister (in ph_remove) also takes: the device is still
 * bound here. */
static int ph_open(struct inode *inode, struct file *file)
{
	struct perfhint *ph = container_of(file->private_data, struct perfhint, misc);
	struct ph_file *pf;
	int err;

	pf = kzalloc(sizeof(*pf), GFP_KERNEL);
	if (!pf)
		return -ENOMEM;
	pf->ph = ph;
	INIT_KFIFO(pf->outcomes);
	/* Cyclic: a number is not given to a new file while others are
	 * free, so the device does not take a new file for a closed one. */
	err = xa_alloc_cyclic(&ph->files, &pf->stream, pf, XA_LIMIT(1, PH_MAX_STREAMS),
			      &ph->next_stream, GFP_KERNEL);
	if (err < 0) {
		kfree(pf);
		return err == -EBUSY ? -EMFILE : err;
	}
	kref_get(&ph->ref);
	file->private_data = pf;
	return 0;
}

/*
 * Tells the device that `stream` is closed, so that the phases its program
 * left open end. Waits up to a second for room in the queue; past that,
 * or with the device gone, the message is not sent (counted as an error)
 * and the device keeps those phases until it is reset.
 */
static void ph_send_stream_closed(struct perfhint *ph, u32 stream)
{
	u8 *msg = kzalloc(PH_HEADER_LEN, GFP_KERNEL);
	int err;

	if (!msg) {
		atomic64_inc(&ph->errors);
		return;
	}
	put_unaligned_le16(PH_MAGIC, msg);
	msg[2] = PH_VERSION;
	msg[PH_FLAGS_OFFSET] = PH_FLAG_STREAM_CLOSED;
	put_unaligned_le16(stream, msg + PH_STREAM_OFFSET);
	put_unaligned_le32(PH_HEADER_LEN, msg + PH_TOTAL_LEN_OFFSET);
	err = ph_queue_message(ph, msg, PH_HEADER_LEN);
	if (err == -ENOSPC) {
		ph_want_room_callback(ph);
		wait_event_timeout(ph->write_wait, ph_has_room(ph), HZ);
		err = ph_queue_message(ph, msg, PH_HEADER_LEN);
	}
	if (err) {
		kfree(msg);
		if (err != -ENODEV)
			atomic64_inc(&ph->errors);
	}
}

static int ph_release(struct inode *inode, struct file *file)
{
	struct ph_file *pf = ph_file_of(file);
	struct perfhint *ph = pf->ph;
	unsigned long flags;

	/* Before the number can be handed to another file. */
	if (ph->streams)
		ph_send_stream_closed(ph, pf->stream);

	/* Under the lock that routing outcomes holds: none is being written
	 * into `pf` once it is out of the table. */
	spin_lock_irqsave(&ph->lock, flags);
	xa_erase(&ph->files, pf->stream);
	spin_unlock_irqrestore(&ph->lock, flags);
	kfree(pf);
	kref_put(&ph->ref, ph_free);
	return 0;
}

static ssize_t ph_write(struct file *file, const char __user *ubuf, size_t len, loff_t *ppos)
{
	struct ph_file *pf = ph_file_of(file);
	struct perfhint *ph = pf->ph;
	void *msg;
	int err;

	if (len < PH_HEADER_LEN || len > ph->max_len) {
		atomic64_inc(&ph->errors);
		return -EINVAL;
	}
	msg = memdup_user(ubuf, len);
	if (IS_ERR(msg)) {
		atomic64_inc(&ph->errors);
		return PTR_ERR(msg);
	}
	/* The stream is the driver's to say, whatever the writer put there. */
	if (ph->streams) {
		put_unaligned_le16(pf->stream, (u8 *)msg + PH_STREAM_OFFSET);
		((u8 *)msg)[PH_FLAGS_OFFSET] &= ~PH_FLAG_STREAM_CLOSED;
	}
	for (;;) {
		err = ph_queue_message(ph, msg, len);
		if (err != -ENOSPC)
			break;
		if (file->f_flags & O_NONBLOCK) {
			err = -EAGAIN;
			break;
		}
		ph_want_room_callback(ph);
		if (wait_event_interruptible(ph->write_wait, ph_has_room(ph))) {
			err = -ERESTARTSYS;
			break;
		}
	}
	if (err) {
		kfree(msg);
		atomic64_inc(&ph->errors);
		return err;
	}
	atomic64_inc(&ph->sent);
	return len;
}

static bool ph_outcomes_waiting(struct ph_file *pf)
{
	return kfifo_len(&pf->outcomes) >= PH_OUTCOME_LEN;
}

/* What a sleeping reader waits for: outcomes, or the device going away. */
static bool ph_readable(struct ph_file *pf)
{
	return ph_outcomes_waiting(pf) || ph_gone(pf->ph);
}

static ssize_t ph_read(struct file *file, char __user *ubuf, size_t len, loff_t *ppos)
{
	struct ph_file *pf = ph_file_of(file);
	struct perfhint *ph = pf->ph;
	u8 tmp[PH_EVENT_BUF_LEN];
	unsigned long flags;
	size_t want, got;

	if (len < PH_OUTCOME_LEN)
		return -EINVAL;
	while (!ph_outcomes_waiting(pf)) {
		if (ph_gone(ph))
			return -ENODEV;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		if (wait_event_interruptible(ph->read_wait, ph_readable(pf)))
			return -ERESTARTSYS;
	}
	want = min_t(size_t, len, sizeof(tmp));
	want -= want % PH_OUTCOME_LEN;
	spin_lock_irqsave(&ph->lock, flags);
	got = kfifo_out(&pf->outcomes, tmp, want);
	spin_unlock_irqrestore(&ph->lock, flags);
	if (copy_to_user(ubuf, tmp, got))
		return -EFAULT;
	return got;
}

static __poll_t ph_poll(struct file *file, poll_table *wait)
{
	struct ph_file *pf = ph_file_of(file);
	struct perfhint *ph = pf->ph;
	__poll_t mask = 0;

	poll_wait(file, &ph->write_wait, wait);
	poll_wait(file, &ph->read_wait, wait);
	if (ph_gone(ph))
		return EPOLLHUP | EPOLLERR;
	if (ph_has_room(ph))
		mask |= EPOLLOUT | EPOLLWRNORM;
	if (ph_outcomes_waiting(pf))
		mask |= EPOLLIN | EPOLLRDNORM;
	return mask;
}

static const struct file_operations ph_fops = {
	.owner = THIS_MODULE,
	.open = ph_open,
	.release = ph_release,
	.write = ph_write,
	.read = ph_read,
	.poll = ph_poll,
	.llseek = noop_llseek,
};

#define PH_COUNTER_ATTR(name)                                                  \
	static ssize_t name##_show(struct device *dev,                         \
				   struct device_attribute *attr, char *buf)   \
	{                                                                      \
		struct perfhint *ph = dev_get_drvdata(dev);                    \
		return sysfs_emit(buf, "%lld\n", atomic64_read(&ph->name));    \
	}                                                                      \
	static DEVICE_ATTR_RO(name)

PH_COUNTER_ATTR(sent);

static ssize_t completed_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct perfhint *ph = dev_get_drvdata(dev);
	unsigned long flags;

	/* hintq interrupts are off while there is room: count what is done. */
	spin_lock_irqsave(&ph->lock, flags);
	if (ph->ready)
		ph_reclaim_hintq(ph);
	spin_unlock_irqrestore(&ph->lock, flags);
	return sysfs_emit(buf, "%lld\n", atomic64_read(&ph->completed));
}
static DEVICE_ATTR_RO(completed);
PH_COUNTER_ATTR(errors);
PH_COUNTER_ATTR(outcomes_dropped);

static ssize_t outcomes_show(struct device *dev, struct device_attribute *attr, char *buf)
{
	struct perfhint *ph = dev_get_drvdata(dev);

	return sysfs_emit(buf, "%lld\n", atomic64_read(&ph->outcomes_seen));
}
static DEVICE_ATTR_RO(outcomes);

static struct attribute *ph_attrs[] = {
	&dev_attr_sent.attr,
	&dev_attr_completed.attr,
	&dev_attr_errors.attr,
	&dev_attr_outcomes.attr,
	&dev_attr_outcomes_dropped.attr,
	NULL,
};
ATTRIBUTE_GROUPS(ph);

static void ph_free_event_bufs(struct perfhint *ph)
{
	int i;

	for (i = 0; i < PH_EVENT_BUFS; i++) {
		kfree(ph->event_bufs[i]);
		ph->event_bufs[i] = NULL;
	}
}

static int ph_probe(struct virtio_device *vdev)
{
	vq_callback_t *callbacks[] = { ph_hintq_done, ph_eventq_done };
	static const char * const names[] = { "hintq", "eventq" };
	struct virtqueue *vqs[2];
	struct perfhint *ph;
	unsigned int nvqs;
	int err, i;

	mutex_lock(&ph_global_lock);
	if (ph_global) {
		mutex_unlock(&ph_global_lock);
		dev_warn(&vdev->dev, "only one perf-hint device is supported\n");
		return -EBUSY;
	}

	ph = kzalloc(sizeof(*ph), GFP_KERNEL);
	if (!ph) {
		err = -ENOMEM;
		goto out_unlock;
	}
	kref_init(&ph->ref);
	ph->vdev = vdev;
	vdev->priv = ph;
	spin_lock_init(&ph->lock);
	init_waitqueue_head(&ph->write_wait);
	init_waitqueue_head(&ph->read_wait);
	xa_init_flags(&ph->files, XA_FLAGS_ALLOC1);

	ph->max_len = virtio_cread32(vdev, PH_CFG_MAX_MESSAGE_LEN);
	if (ph->max_len < PH_HEADER_LEN || ph->max_len > PH_MAX_MESSAGE_LEN_CAP) {
		dev_err(&vdev->dev, "bad max_message_len %u\n", ph->max_len);
		err = -EINVAL;
		goto out_free;
	}

	nvqs = virtio_has_feature(vdev, VIRTIO_PERFHINT_F_EVENTQ) ? 2 : 1;
	ph->streams = virtio_has_feature(vdev, VIRTIO_PERFHINT_F_STREAMS);
	err = virtio_find_vqs(vdev, nvqs, vqs, callbacks, names, NULL);
	if (err)
		goto out_free;
	ph->hintq = vqs[0];
	ph->eventq = nvqs == 2 ? vqs[1] : NULL;
	virtqueue_disable_cb(ph->hintq);

	if (ph->eventq) {
		for (i = 0; i < PH_EVENT_BUFS; i++) {
			ph->event_bufs[i] = kzalloc(PH_EVENT_BUF_LEN, GFP_KERNEL);
			if (!ph->event_bufs[i]) {
				err = -ENOMEM;
				goto out_vqs;
			}
		}
	}

	ph->misc.minor = MISC_DYNAMIC_MINOR;
	ph->misc.name = "perfhint";
	ph->misc.fops = &ph_fops;
	ph->misc.mode = 0666;
	ph->misc.groups = ph_groups;

	virtio_device_ready(vdev);
	ph->ready = true;
	if (ph->eventq) {
		for (i = 0; i < PH_EVENT_BUFS; i++) {
			err = ph_post_event_buf(ph, ph->event_bufs[i]);
			if (err)
				goto out_reset;
		}
		virtqueue_kick(ph->eventq);
	}

	err = misc_register(&ph->misc);
	if (err)
		goto out_reset;
	dev_set_drvdata(ph->misc.this_device, ph);
	ph_global = ph;
	mutex_unlock(&ph_global_lock);
	dev_info(&vdev->dev, "perf-hint device ready (max message %u bytes, %s)\n",
		 ph->max_len, ph->eventq ? "with outcomes" : "no outcomes");
	return 0;

out_reset:
	ph->ready = false;
	virtio_reset_device(vdev);
out_vqs:
	vdev->config->del_vqs(vdev);
	ph_free_event_bufs(ph);
out_free:
	kfree(ph);
out_unlock:
	mutex_unlock(&ph_global_lock);
	return err;
}

static void ph_remove(struct virtio_device *vdev)
{
	struct perfhint *ph = vdev->priv;
	unsigned long flags;
	void *buf;

	mutex_lock(&ph_global_lock);
	misc_deregister(&ph->misc);
	spin_lock_irqsave(&ph->lock, flags);
	ph->ready = false;
	spin_unlock_irqrestore(&ph->lock, flags);
	wake_up_interruptible_all(&ph->write_wait);
	wake_up_interruptible_all(&ph->read_wait);

	virtio_reset_device(vdev);
	while ((buf = virtqueue_detach_unused_buf(ph->hintq)))
		kfree(buf);
	ph_reclaim_hintq(ph);
	/* Event buffers are freed from our own array below. */
	if (ph->eventq)
		while (virtqueue_detach_unused_buf(ph->eventq))
			;
	vdev->config->del_vqs(vdev);
	ph_free_event_bufs(ph);
	ph_global = NULL;
	mutex_unlock(&ph_global_lock);
	/* Open files keep `ph` (its wait queues, the file table) until they close;
	 * their reads and writes now fail with ENODEV. */
	kref_put(&ph->ref, ph_free);
}

static const struct virtio_device_id id_table[] = {
	{ VIRTIO_ID_PERFHINT, VIRTIO_DEV_ANY_ID },
	{ 0 },
};

static unsigned int features[] = {
	VIRTIO_PERFHINT_F_EVENTQ,
	VIRTIO_PERFHINT_F_MANIFEST,
	VIRTIO_PERFHINT_F_STREAMS,
};

static struct virtio_driver virtio_perfhint_driver = {
	.feature_table = features,
	.feature_table_size = ARRAY_SIZE(features),
	.driver.name = KBUILD_MODNAME,
	.driver.owner = THIS_MODULE,
	.id_table = id_table,
	.probe = ph_probe,
	.remove = ph_remove,
};

module_virtio_driver(virtio_perfhint_driver);
MODULE_DEVICE_TABLE(virtio, id_table);
MODULE_DESCRIPTION("virtio perf-hint device driver (/dev/perfhint)");
MODULE_LICENSE("GPL");
