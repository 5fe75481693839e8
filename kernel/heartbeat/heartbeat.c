// SPDX-License-Identifier: GPL-2.0
/*
 * heartbeat: reports the exits of opted-in processes (kernel/README.md).
 *
 * A probe on the sched_process_exit tracepoint (found by name: Debian's 6.1
 * exports no register_trace_sched_process_exit) sees every thread exit.  When
 * the last thread of a thread group exits and the group is opted in, it
 *   - calls the callback another module set with heartbeat_set_callback()
 *     (fdmod multicasts the exit over RDMA), then
 *   - queues a struct heartbeat_exit record for the reader of /dev/heartbeat.
 *
 * /dev/heartbeat (misc device, mode 0666):
 *   ioctl HEARTBEAT_IOC_OPTIN / HEARTBEAT_IOC_OPTOUT, or write "TAG\n" or
 *   "TAG PID\n", opt a process in; read() returns whole records, for openers
 *   with CAP_SYS_ADMIN only.  The queue is global, so one reader (discd) is the
 *   design: several readers would share the records between them.
 * /proc/heartbeat: counters as "name value" lines.
 *
 * The opted-in set is keyed by thread group id and start time (boot-time ns of
 * the group leader), so a recycled pid is never mistaken for a watched one.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/capability.h>
#include <linux/cred.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/hashtable.h>
#include <linux/kernel.h>
#include <linux/log2.h>
#include <linux/miscdevice.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/notifier.h>
#include <linux/pid.h>
#include <linux/poll.h>
#include <linux/proc_fs.h>
#include <linux/rcupdate.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/sched/task.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/threads.h>
#include <linux/timekeeping.h>
#include <linux/tracepoint.h>
#include <linux/uaccess.h>
#include <linux/wait.h>

#include "../include/uapi/discd_heartbeat.h"
#include "../include/discd_kapi.h"

#define HB_HASH_BITS	10
#define HB_WRITE_MAX	64		/* bytes of one "TAG [PID]\n" write */

static_assert(sizeof(struct heartbeat_exit) == HEARTBEAT_EXIT_RECORD_SIZE);

static unsigned int max_watched = 65536;
module_param(max_watched, uint, 0444);
MODULE_PARM_DESC(max_watched, "opted-in processes at most (1..1048576, default 65536; more: ENOSPC)");

static unsigned int queue_len = 4096;
module_param(queue_len, uint, 0444);
MODULE_PARM_DESC(queue_len, "records queued for the reader at most (16..65536, a power of two; default 4096)");

/* One opted-in thread group. */
struct hb_watch {
	struct hlist_node node;
	pid_t tgid;			/* in the initial PID namespace */
	u64 start_ns;			/* group leader's start_boottime */
	u16 tag;
};

static DEFINE_HASHTABLE(hb_watches, HB_HASH_BITS);
static DEFINE_SPINLOCK(hb_watch_lock);	/* hb_watches, hb_nwatched */
static unsigned int hb_nwatched;

/* The records: a ring of queue_len; head and tail run freely (unsigned). */
static struct heartbeat_exit *hb_queue;
static unsigned int hb_head, hb_tail;	/* under hb_queue_lock */
static u32 hb_pending_lost;		/* dropped since the last queued record */
static DEFINE_SPINLOCK(hb_queue_lock);
static DECLARE_WAIT_QUEUE_HEAD(hb_wait);
static DEFINE_MUTEX(hb_read_mutex);	/* one read() at a time takes records */

/* The callback of heartbeat_set_callback(): read under RCU by the probe. */
static void (__rcu *hb_cb)(u32 pid, u16 tag, int status);
static DEFINE_MUTEX(hb_cb_mutex);	/* serializes updates of hb_cb */

static atomic64_t hb_stat_optins, hb_stat_exits, hb_stat_lost, hb_stat_calls;

static struct tracepoint *hb_tp;
static struct proc_dir_entry *hb_proc;

/* file->private_data of /dev/heartbeat: whether the opener may read. */
enum { HB_OPENER_USER, HB_OPENER_ADMIN };

/* ------------------------------------------------------------ the set */

static struct hb_watch *hb_find_locked(pid_t tgid, u64 start_ns)
{
	struct hb_watch *w;

	hash_for_each_possible(hb_watches, w, node, tgid)
		if (w->tgid == tgid && w->start_ns == start_ns)
			return w;
	return NULL;
}

/*
 * The group leader of pid (0: the caller's), with a reference; NULL if none.
 * pid is looked up in the caller's PID namespace.
 */
static struct task_struct *hb_get_leader(u32 pid)
{
	struct task_struct *t = NULL;

	if (pid > PID_MAX_LIMIT)
		return NULL;
	rcu_read_lock();
	if (pid == 0)
		t = current;
	else
		t = pid_task(find_vpid(pid), PIDTYPE_PID);
	if (t) {
		t = t->group_leader;
		get_task_struct(t);
	}
	rcu_read_unlock();
	return t;
}

/*
 * kill(2)'s rule: the caller's real or effective uid is the target's real or
 * saved uid, or the caller has CAP_KILL.
 */
static bool hb_may_watch(struct task_struct *t)
{
	const struct cred *cred = current_cred(), *tcred;
	bool ok;

	if (same_thread_group(t, current))
		return true;
	rcu_read_lock();
	tcred = __task_cred(t);
	ok = uid_eq(cred->euid, tcred->suid) || uid_eq(cred->euid, tcred->uid) ||
	     uid_eq(cred->uid, tcred->suid) || uid_eq(cred->uid, tcred->uid);
	rcu_read_unlock();
	return ok || capable(CAP_KILL);
}

static int hb_optin(u32 pid, u32 tag)
{
	struct task_struct *t;
	struct hb_watch *w;
	int err = 0;

	if (tag > U16_MAX)
		return -EINVAL;
	t = hb_get_leader(pid);
	if (!t)
		return -ESRCH;
	if (!hb_may_watch(t)) {
		err = -EPERM;
		goto out;
	}
	w = kmalloc(sizeof(*w), GFP_KERNEL);
	if (!w) {
		err = -ENOMEM;
		goto out;
	}
	w->tgid = task_tgid_nr(t);
	w->start_ns = t->start_boottime;
	w->tag = tag;

	spin_lock(&hb_watch_lock);
	/*
	 * A group whose last thread has passed the exit hook must not be added
	 * (it would never leave).  signal->live drops to 0 before the hook runs
	 * and the hook takes this lock: seen > 0 here, the hook comes after us.
	 */
	if (atomic_read(&t->signal->live) == 0) {
		err = -ESRCH;
	} else if (hb_find_locked(w->tgid, w->start_ns)) {
		err = -EEXIST;
	} else if (hb_nwatched >= max_watched) {
		err = -ENOSPC;
	} else {
		hash_add(hb_watches, &w->node, w->tgid);
		hb_nwatched++;
		w = NULL;
	}
	spin_unlock(&hb_watch_lock);
	kfree(w);
	if (!err)
		atomic64_inc(&hb_stat_optins);
out:
	put_task_struct(t);
	return err;
}

static int hb_optout(u32 pid)
{
	struct task_struct *t;
	struct hb_watch *w = NULL;
	int err = 0;

	t = hb_get_leader(pid);
	if (!t)
		return -ESRCH;
	if (!hb_may_watch(t)) {
		err = -EPERM;
		goto out;
	}
	spin_lock(&hb_watch_lock);
	w = hb_find_locked(task_tgid_nr(t), t->start_boottime);
	if (w) {
		hash_del(&w->node);
		hb_nwatched--;
	} else {
		err = -ENOENT;
	}
	spin_unlock(&hb_watch_lock);
	kfree(w);
out:
	put_task_struct(t);
	return err;
}

/* ------------------------------------------------------------ the hook */

static void hb_enqueue(const struct heartbeat_exit *rec)
{
	bool queued = false;

	spin_lock(&hb_queue_lock);
	if (hb_tail - hb_head < queue_len) {
		struct heartbeat_exit *slot = &hb_queue[hb_tail & (queue_len - 1)];

		*slot = *rec;
		slot->lost = hb_pending_lost;
		hb_pending_lost = 0;
		/* The reader takes the slot once it sees the new tail. */
		smp_store_release(&hb_tail, hb_tail + 1);
		queued = true;
	} else if (hb_pending_lost < U32_MAX) {
		hb_pending_lost++;
	}
	spin_unlock(&hb_queue_lock);
	if (queued)
		wake_up_interruptible_poll(&hb_wait, EPOLLIN | EPOLLRDNORM);
	else
		atomic64_inc(&hb_stat_lost);
}

/*
 * sched_process_exit: runs in the exiting task (p == current) late in
 * do_exit(), after signal->live was decremented and exit_code set, with
 * preemption disabled.
 */
static void hb_probe_exit(void *data, struct task_struct *p)
{
	void (*cb)(u32 pid, u16 tag, int status);
	struct task_struct *leader;
	struct heartbeat_exit rec;
	struct hb_watch *w;
	pid_t tgid;
	u64 start;

	/* Only when the whole group is gone: other threads still run. */
	if (atomic_read(&p->signal->live))
		return;
	leader = p->group_leader;
	tgid = p->tgid;
	start = leader->start_boottime;

	/*
	 * Threads exiting at once may all see live == 0 here: the one that
	 * takes the entry out reports the exit, once.
	 */
	spin_lock(&hb_watch_lock);
	if (!hb_nwatched) {
		spin_unlock(&hb_watch_lock);
		return;
	}
	w = hb_find_locked(tgid, start);
	if (w) {
		hash_del(&w->node);
		hb_nwatched--;
	}
	spin_unlock(&hb_watch_lock);
	if (!w)
		return;

	memset(&rec, 0, sizeof(rec));
	rec.pid = tgid;
	rec.tag = w->tag;
	/*
	 * What wait(2) reports: the group's exit code when the group was told to
	 * exit (exit_group, a fatal signal, with 0x80 for a core dump), else the
	 * leader's own exit code.
	 */
	rec.status = (p->signal->flags & SIGNAL_GROUP_EXIT) ?
		     p->signal->group_exit_code : leader->exit_code;
	rec.start_ns = start;
	rec.exit_ns = ktime_get_boottime_ns();
	kfree(w);

	rcu_read_lock();
	cb = rcu_dereference(hb_cb);
	if (cb) {
		cb(rec.pid, rec.tag, rec.status);
		atomic64_inc(&hb_stat_calls);
	}
	rcu_read_unlock();

	atomic64_inc(&hb_stat_exits);
	hb_enqueue(&rec);
}

static void hb_find_tracepoint(struct tracepoint *tp, void *priv)
{
	if (!strcmp(tp->name, "sched_process_exit"))
		hb_tp = tp;
}

/* ------------------------------------------------------------ callback */

int heartbeat_set_callback(void (*cb)(u32 pid, u16 tag, int status))
{
	void (*old)(u32 pid, u16 tag, int status);
	int err = 0;

	mutex_lock(&hb_cb_mutex);
	old = rcu_dereference_protected(hb_cb, lockdep_is_held(&hb_cb_mutex));
	if (cb) {
		if (old && old != cb)
			err = -EBUSY;
		else
			rcu_assign_pointer(hb_cb, cb);
	} else if (old) {
		RCU_INIT_POINTER(hb_cb, NULL);
		/*
		 * The probe calls it with preemption disabled, under
		 * rcu_read_lock(): after this no CPU is inside the old one.
		 */
		synchronize_rcu();
	}
	mutex_unlock(&hb_cb_mutex);
	return err;
}
EXPORT_SYMBOL_GPL(heartbeat_set_callback);

/*
 * A module going away with its callback still set (its exit raced with ours,
 * or it forgot): forget the callback before the module's code is freed.
 */
static int hb_module_event(struct notifier_block *nb, unsigned long action, void *data)
{
	void (*cb)(u32 pid, u16 tag, int status);
	struct module *mod = data;

	if (action != MODULE_STATE_GOING)
		return NOTIFY_DONE;
	mutex_lock(&hb_cb_mutex);
	cb = rcu_dereference_protected(hb_cb, lockdep_is_held(&hb_cb_mutex));
	if (cb && within_module((unsigned long)cb, mod)) {
		RCU_INIT_POINTER(hb_cb, NULL);
		synchronize_rcu();
		pr_info("callback of module %s dropped: the module is going\n", mod->name);
	}
	mutex_unlock(&hb_cb_mutex);
	return NOTIFY_OK;
}

static struct notifier_block hb_module_nb = {
	.notifier_call = hb_module_event,
};

/* ------------------------------------------------------------ /dev/heartbeat */

/* Readers need CAP_SYS_ADMIN when they open (write-only openers are not asked). */
static int hb_open(struct inode *inode, struct file *file)
{
	bool admin = (file->f_mode & FMODE_READ) && capable(CAP_SYS_ADMIN);

	file->private_data = (void *)(uintptr_t)(admin ? HB_OPENER_ADMIN : HB_OPENER_USER);
	return nonseekable_open(inode, file);
}

static bool hb_is_admin(struct file *file)
{
	return (uintptr_t)file->private_data == HB_OPENER_ADMIN;
}

static bool hb_queued(void)
{
	/* Pairs with the release in hb_enqueue(): the record is complete. */
	return smp_load_acquire(&hb_tail) != READ_ONCE(hb_head);
}

/* Copies whole records to buf; the bytes copied, or -EFAULT if none. */
static ssize_t hb_take(char __user *buf, size_t count)
{
	struct heartbeat_exit rec;
	ssize_t done = 0;

	while (count - done >= sizeof(rec)) {
		unsigned int head = READ_ONCE(hb_head);

		/*
		 * Only readers (serialized by hb_read_mutex) move the head; the
		 * producer never writes the slot at the head of a non-empty ring.
		 */
		if (smp_load_acquire(&hb_tail) == head)
			break;
		rec = hb_queue[head & (queue_len - 1)];
		if (copy_to_user(buf + done, &rec, sizeof(rec)))
			return done ? done : -EFAULT;
		spin_lock(&hb_queue_lock);
		hb_head = head + 1;
		spin_unlock(&hb_queue_lock);
		done += sizeof(rec);
	}
	return done;
}

static ssize_t hb_read(struct file *file, char __user *buf, size_t count, loff_t *ppos)
{
	ssize_t n;

	if (!hb_is_admin(file))
		return -EPERM;
	if (count < sizeof(struct heartbeat_exit))
		return -EINVAL;
	for (;;) {
		if (mutex_lock_interruptible(&hb_read_mutex))
			return -ERESTARTSYS;
		n = hb_take(buf, count);
		mutex_unlock(&hb_read_mutex);
		if (n)
			return n;
		if (file->f_flags & O_NONBLOCK)
			return -EAGAIN;
		if (wait_event_interruptible(hb_wait, hb_queued()))
			return -ERESTARTSYS;
	}
}

static __poll_t hb_poll(struct file *file, poll_table *pt)
{
	__poll_t mask = EPOLLOUT | EPOLLWRNORM;

	poll_wait(file, &hb_wait, pt);
	if (hb_is_admin(file) && hb_queued())
		mask |= EPOLLIN | EPOLLRDNORM;
	return mask;
}

/*
 * "TAG\n" or "TAG PID\n" (the newline optional): opt PID (default: the
 * writer's thread group) in with TAG.
 */
static ssize_t hb_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	char buf[HB_WRITE_MAX + 1], *sp;
	unsigned int tag, pid = 0;
	size_t len = count;
	int err;

	if (count == 0)
		return 0;
	if (count > HB_WRITE_MAX)
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[len] = '\0';
	if (buf[len - 1] == '\n')
		buf[--len] = '\0';
	if (strlen(buf) != len)		/* a NUL inside */
		return -EINVAL;
	sp = strchr(buf, ' ');
	if (sp) {
		*sp++ = '\0';
		if (kstrtouint(sp, 10, &pid))
			return -EINVAL;
	}
	if (kstrtouint(buf, 10, &tag))
		return -EINVAL;
	err = hb_optin(pid, tag);
	return err ? err : count;
}

static long hb_ioctl(struct file *file, unsigned int cmd, unsigned long arg)
{
	void __user *uarg = (void __user *)arg;

	switch (cmd) {
	case HEARTBEAT_IOC_OPTIN: {
		struct heartbeat_optin o;

		if (copy_from_user(&o, uarg, sizeof(o)))
			return -EFAULT;
		return hb_optin(o.pid, o.tag);
	}
	case HEARTBEAT_IOC_OPTOUT: {
		__u32 pid;

		if (get_user(pid, (__u32 __user *)uarg))
			return -EFAULT;
		return hb_optout(pid);
	}
	default:
		return -ENOTTY;
	}
}

static const struct file_operations hb_fops = {
	.owner		= THIS_MODULE,
	.open		= hb_open,
	.read		= hb_read,
	.write		= hb_write,
	.poll		= hb_poll,
	.unlocked_ioctl	= hb_ioctl,
	.compat_ioctl	= compat_ptr_ioctl,
	.llseek		= no_llseek,
};

static struct miscdevice hb_misc = {
	.minor	= MISC_DYNAMIC_MINOR,
	.name	= "heartbeat",
	.fops	= &hb_fops,
	.mode	= 0666,
};

/* ------------------------------------------------------------ /proc/heartbeat */

static int hb_proc_show(struct seq_file *m, void *v)
{
	unsigned int watched, queued;
	bool cb;

	spin_lock(&hb_watch_lock);
	watched = hb_nwatched;
	spin_unlock(&hb_watch_lock);
	spin_lock(&hb_queue_lock);
	queued = hb_tail - hb_head;
	spin_unlock(&hb_queue_lock);
	cb = rcu_access_pointer(hb_cb);

	seq_printf(m, "watched %u\n", watched);
	seq_printf(m, "watched_max %u\n", max_watched);
	seq_printf(m, "optins %lld\n", (long long)atomic64_read(&hb_stat_optins));
	seq_printf(m, "exits %lld\n", (long long)atomic64_read(&hb_stat_exits));
	seq_printf(m, "queued %u\n", queued);
	seq_printf(m, "queue_size %u\n", queue_len);
	seq_printf(m, "lost %lld\n", (long long)atomic64_read(&hb_stat_lost));
	seq_printf(m, "callback %s\n", cb ? "set" : "none");
	seq_printf(m, "callback_calls %lld\n", (long long)atomic64_read(&hb_stat_calls));
	return 0;
}

/* ------------------------------------------------------------ module */

static void hb_free_watches(void)
{
	struct hb_watch *w;
	struct hlist_node *tmp;
	int bkt;

	spin_lock(&hb_watch_lock);
	hash_for_each_safe(hb_watches, bkt, tmp, w, node) {
		hash_del(&w->node);
		kfree(w);
	}
	hb_nwatched = 0;
	spin_unlock(&hb_watch_lock);
}

static int __init hb_init(void)
{
	int err;

	if (queue_len < 16 || queue_len > 65536 || !is_power_of_2(queue_len)) {
		pr_err("queue_len=%u: not a power of two in 16..65536\n", queue_len);
		return -EINVAL;
	}
	if (max_watched < 1 || max_watched > (1U << 20)) {
		pr_err("max_watched=%u: not in 1..1048576\n", max_watched);
		return -EINVAL;
	}
	hb_queue = kvcalloc(queue_len, sizeof(*hb_queue), GFP_KERNEL);
	if (!hb_queue)
		return -ENOMEM;
	for_each_kernel_tracepoint(hb_find_tracepoint, NULL);
	if (!hb_tp) {
		pr_err("no sched_process_exit tracepoint in this kernel\n");
		err = -ENOENT;
		goto err_queue;
	}
	err = tracepoint_probe_register(hb_tp, hb_probe_exit, NULL);
	if (err) {
		pr_err("cannot attach to sched_process_exit: %d\n", err);
		goto err_queue;
	}
	err = register_module_notifier(&hb_module_nb);
	if (err)
		goto err_probe;
	hb_proc = proc_create_single("heartbeat", 0444, NULL, hb_proc_show);
	if (!hb_proc) {
		err = -ENOMEM;
		goto err_notifier;
	}
	/* Last: nobody opts in before the hook is in place. */
	err = misc_register(&hb_misc);
	if (err)
		goto err_proc;
	return 0;

err_proc:
	proc_remove(hb_proc);
err_notifier:
	unregister_module_notifier(&hb_module_nb);
err_probe:
	tracepoint_probe_unregister(hb_tp, hb_probe_exit, NULL);
	tracepoint_synchronize_unregister();
err_queue:
	kvfree(hb_queue);
	return err;
}

static void __exit hb_exit(void)
{
	/* An open /dev/heartbeat holds the module: no file is open here. */
	misc_deregister(&hb_misc);
	proc_remove(hb_proc);
	unregister_module_notifier(&hb_module_nb);
	tracepoint_probe_unregister(hb_tp, hb_probe_exit, NULL);
	/* No CPU is in the probe (nor in the callback) after this. */
	tracepoint_synchronize_unregister();
	mutex_lock(&hb_cb_mutex);
	RCU_INIT_POINTER(hb_cb, NULL);
	mutex_unlock(&hb_cb_mutex);
	hb_free_watches();
	kvfree(hb_queue);
}

module_init(hb_init);
module_exit(hb_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("discd");
MODULE_DESCRIPTION("discd: reports the exits of opted-in processes (/dev/heartbeat)");
