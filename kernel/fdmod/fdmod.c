// SPDX-License-Identifier: GPL-2.0
/*
 * fdmod: multicasts the exits of opted-in processes over RDMA (kernel/README.md).
 *
 * An ib_client: on the RDMA device named DEVICE_NAME (port PORT) it keeps a
 * protection domain, a completion queue (reaped in softirq), a UD queue pair
 * (Q_Key 0x01234567) and an address handle for the multicast group IPV6_GID
 * (on InfiniBand: DLID LID).  heartbeat_send_multicast(imm) posts one
 * immediate-only send (no payload) to the group: discd's RDMA transport
 * decodes imm = node ID << 16 | tag as a process-exit notice.
 *
 * With heartbeat.ko loaded, every exit of an opted-in process sends
 * self ID << 16 | tag.  fdmod finds heartbeat_set_callback with symbol_get()
 * (no link-time dependency: the modules load and unload in any order) and a
 * module notifier registers the callback when heartbeat comes later.
 *
 * /proc/fdmod/map (0600): the node map from discd, "self ID" then "ID ADDRESS"
 * lines, replaced as a whole when the writer closes the file.
 * /proc/fdmod/stats (0444): state and counters as "name value" lines.
 */
#define pr_fmt(fmt) KBUILD_MODNAME ": " fmt

#include <linux/atomic.h>
#include <linux/bitops.h>
#include <linux/ctype.h>
#include <linux/delay.h>
#include <linux/errno.h>
#include <linux/fs.h>
#include <linux/inet.h>
#include <linux/kernel.h>
#include <linux/kref.h>
#include <linux/mm.h>
#include <linux/module.h>
#include <linux/moduleparam.h>
#include <linux/mutex.h>
#include <linux/notifier.h>
#include <linux/proc_fs.h>
#include <linux/seq_file.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/workqueue.h>
#include <net/if_inet6.h>
#include <net/ip.h>
#include <net/ipv6.h>
#include <rdma/ib_addr.h>
#include <rdma/ib_cache.h>
#include <rdma/ib_verbs.h>

#include "../include/discd_kapi.h"

static char *DEVICE_NAME = "rxe0";
module_param(DEVICE_NAME, charp, 0444);
MODULE_PARM_DESC(DEVICE_NAME, "RDMA device to send on (default rxe0)");

static int PORT = 1;
module_param(PORT, int, 0444);
MODULE_PARM_DESC(PORT, "port of the device (default 1)");

static char *IPV6_GID = "::ffff:239.192.77.77";
module_param(IPV6_GID, charp, 0444);
MODULE_PARM_DESC(IPV6_GID, "multicast group GID (default ::ffff:239.192.77.77, discd's group on RoCE v2)");

static ushort LID;
module_param(LID, ushort, 0444);
MODULE_PARM_DESC(LID, "multicast LID of the group (InfiniBand link layer only; default 0)");

#define FD_QKEY		0x01234567
#define FD_SQ_DEPTH	256		/* sends in flight */
#define FD_RETRY	(2 * HZ)	/* set-up retry while the port or its GID is missing */
#define FD_MAX_NODES	65536
#define FD_LINE_MAX	128

/* ------------------------------------------------------------ state */

static struct in6_addr fd_group;	/* IPV6_GID, parsed */

/* The device named DEVICE_NAME, while the RDMA core has it. */
struct fd_dev {
	struct ib_device *ibdev;
	struct ib_event_handler events;
	struct delayed_work work;	/* (re)build: retry, GID change */
	bool removing;			/* under fd_dev_mutex */
	bool up;			/* under fd_dev_mutex */
	int last_err;			/* of the last set-up attempt */
	/* The resources while up: */
	struct ib_pd *pd;
	struct ib_cq *cq;
	struct ib_qp *qp;
	struct ib_ah *ah;
	struct ib_cqe send_cqe;
	struct ib_sge no_sge;		/* sg_list of the sends (num_sge 0) */
	atomic_t outstanding;		/* posted, not yet completed */
	int gid_index;
	union ib_gid sgid;
	bool roce;
};

static DEFINE_MUTEX(fd_dev_mutex);	/* fd_current, set-up and tear-down */
static struct fd_dev *fd_current;
static DEFINE_SPINLOCK(fd_send_lock);	/* fd_active, for senders */
static struct fd_dev *fd_active;	/* fd_current once up */

static u16 fd_self_id;			/* from the map; 0 = unknown */
static bool fd_exiting;

static atomic64_t fd_stat_sends, fd_stat_send_errors, fd_stat_no_device, fd_stat_no_id,
	fd_stat_completions, fd_stat_map_updates, fd_stat_map_rejects;

/* ------------------------------------------------------------ sending */

static void fd_send_done(struct ib_cq *cq, struct ib_wc *wc)
{
	struct fd_dev *fd = cq->cq_context;

	atomic_dec(&fd->outstanding);
	atomic64_inc(&fd_stat_completions);
	if (wc->status != IB_WC_SUCCESS && wc->status != IB_WC_WR_FLUSH_ERR) {
		atomic64_inc(&fd_stat_send_errors);
		pr_warn_ratelimited("send completed with %s\n", ib_wc_status_msg(wc->status));
	}
}

int heartbeat_send_multicast(int imm_data)
{
	const struct ib_send_wr *bad;
	struct ib_ud_wr wr;
	struct fd_dev *fd;
	unsigned long flags;
	int err;

	spin_lock_irqsave(&fd_send_lock, flags);
	fd = fd_active;
	if (!fd) {
		err = -ENODEV;
		goto out;
	}
	if (atomic_read(&fd->outstanding) >= FD_SQ_DEPTH) {
		err = -ENOBUFS;
		goto out;
	}
	memset(&wr, 0, sizeof(wr));
	wr.wr.wr_cqe = &fd->send_cqe;
	wr.wr.opcode = IB_WR_SEND_WITH_IMM;
	wr.wr.send_flags = IB_SEND_SIGNALED;
	wr.wr.ex.imm_data = cpu_to_be32((u32)imm_data);
	wr.wr.sg_list = &fd->no_sge;
	wr.wr.num_sge = 0;
	wr.ah = fd->ah;
	wr.remote_qpn = IB_MULTICAST_QPN;
	wr.remote_qkey = FD_QKEY;
	atomic_inc(&fd->outstanding);
	err = ib_post_send(fd->qp, &wr.wr, &bad);
	if (err)
		atomic_dec(&fd->outstanding);
out:
	spin_unlock_irqrestore(&fd_send_lock, flags);
	if (!err)
		atomic64_inc(&fd_stat_sends);
	else if (err == -ENODEV)
		atomic64_inc(&fd_stat_no_device);
	else
		atomic64_inc(&fd_stat_send_errors);
	return err;
}
EXPORT_SYMBOL_GPL(heartbeat_send_multicast);

/* heartbeat's callback: in the exiting task, preemption disabled. */
static void fd_exit_cb(u32 pid, u16 tag, int status)
{
	u16 id;

	if (READ_ONCE(fd_exiting))
		return;
	id = READ_ONCE(fd_self_id);
	if (!id) {
		atomic64_inc(&fd_stat_no_id);
		return;
	}
	heartbeat_send_multicast((int)((u32)id << 16 | tag));
}

/* ------------------------------------------------------------ heartbeat */

static DEFINE_MUTEX(fd_hb_mutex);
static bool fd_hb_attached;		/* under fd_hb_mutex */

/* Registers fd_exit_cb with heartbeat if heartbeat is loaded (and live). */
static void fd_attach_heartbeat(void)
{
	int (*set)(void (*cb)(u32 pid, u16 tag, int status));
	int err;

	mutex_lock(&fd_hb_mutex);
	set = symbol_get(heartbeat_set_callback);
	if (set) {
		err = set(fd_exit_cb);
		symbol_put(heartbeat_set_callback);
		fd_hb_attached = !err;
		if (err)
			pr_warn("heartbeat refused the callback: %d\n", err);
	}
	mutex_unlock(&fd_hb_mutex);
}

static void fd_detach_heartbeat(void)
{
	int (*set)(void (*cb)(u32 pid, u16 tag, int status));

	mutex_lock(&fd_hb_mutex);
	if (fd_hb_attached) {
		/*
		 * No symbol: heartbeat is going away.  Its exit unhooks it, and
		 * its module notifier drops our callback when we go; meanwhile
		 * fd_exit_cb does nothing (fd_exiting).
		 */
		set = symbol_get(heartbeat_set_callback);
		if (set) {
			set(NULL);
			symbol_put(heartbeat_set_callback);
		}
		fd_hb_attached = false;
	}
	mutex_unlock(&fd_hb_mutex);
}

static int fd_module_event(struct notifier_block *nb, unsigned long action, void *data)
{
	struct module *mod = data;

	if (strcmp(mod->name, "heartbeat"))
		return NOTIFY_DONE;
	if (action == MODULE_STATE_LIVE) {
		fd_attach_heartbeat();
	} else if (action == MODULE_STATE_GOING) {
		mutex_lock(&fd_hb_mutex);
		fd_hb_attached = false;
		mutex_unlock(&fd_hb_mutex);
	}
	return NOTIFY_OK;
}

static struct notifier_block fd_module_nb = {
	.notifier_call = fd_module_event,
};

/* ------------------------------------------------------------ the device */

/*
 * The source GID: on RoCE the first RoCE v2 GID of the group's family
 * (IPv4-mapped for an IPv4 group, else a non-link-local IPv6 one); on IB 0.
 */
static int fd_pick_gid(struct fd_dev *fd, int *index, union ib_gid *gid)
{
	const struct ib_port_immutable *imm;
	bool want_v4 = ipv6_addr_v4mapped(&fd_group);
	unsigned int i;

	if (!fd->roce) {
		*index = 0;
		return rdma_query_gid(fd->ibdev, PORT, 0, gid);
	}
	imm = ib_port_immutable_read(fd->ibdev, PORT);
	for (i = 0; i < imm->gid_tbl_len; i++) {
		const struct ib_gid_attr *attr = rdma_get_gid_attr(fd->ibdev, PORT, i);
		const struct in6_addr *a;
		bool ok;

		if (IS_ERR(attr))
			continue;
		a = (const struct in6_addr *)attr->gid.raw;
		ok = attr->gid_type == IB_GID_TYPE_ROCE_UDP_ENCAP &&
		     ipv6_addr_v4mapped(a) == want_v4 &&
		     (want_v4 || !(ipv6_addr_type(a) & IPV6_ADDR_LINKLOCAL));
		if (ok) {
			*index = i;
			*gid = attr->gid;
		}
		rdma_put_gid_attr(attr);
		if (ok)
			return 0;
	}
	return -EAGAIN;
}

/* Under fd_dev_mutex. */
static void fd_teardown(struct fd_dev *fd)
{
	unsigned long flags;
	int i;

	if (!fd->up)
		return;
	spin_lock_irqsave(&fd_send_lock, flags);
	fd_active = NULL;
	spin_unlock_irqrestore(&fd_send_lock, flags);
	/* No sender is inside a post now; let posted sends complete (bounded). */
	for (i = 0; i < 50 && atomic_read(&fd->outstanding); i++)
		msleep(20);
	ib_destroy_qp(fd->qp);
	rdma_destroy_ah(fd->ah, RDMA_DESTROY_AH_SLEEPABLE);
	ib_free_cq(fd->cq);
	ib_dealloc_pd(fd->pd);
	fd->qp = NULL;
	fd->ah = NULL;
	fd->cq = NULL;
	fd->pd = NULL;
	fd->up = false;
	pr_info("%s port %d down\n", dev_name(&fd->ibdev->dev), PORT);
}

static int fd_modify_qp(struct ib_qp *qp, enum ib_qp_state state, int mask)
{
	struct ib_qp_attr a;

	memset(&a, 0, sizeof(a));
	a.qp_state = state;
	a.pkey_index = 0;
	a.port_num = PORT;
	a.qkey = FD_QKEY;
	a.sq_psn = 0;
	return ib_modify_qp(qp, &a, IB_QP_STATE | mask);
}

/* Under fd_dev_mutex: PD, CQ, UD QP (INIT, RTR, RTS), AH for the group. */
static int fd_setup(struct fd_dev *fd)
{
	struct ib_device *dev = fd->ibdev;
	struct ib_qp_init_attr qia;
	struct rdma_ah_attr aha;
	union ib_gid dgid;
	unsigned long flags;
	int err;

	if (!rdma_is_port_valid(dev, PORT))
		return -EINVAL;
	if (rdma_protocol_roce(dev, PORT))
		fd->roce = true;
	else if (rdma_protocol_ib(dev, PORT))
		fd->roce = false;
	else
		return -EOPNOTSUPP;	/* iWARP: no UD */
	err = fd_pick_gid(fd, &fd->gid_index, &fd->sgid);
	if (err)
		return err;

	fd->pd = ib_alloc_pd(dev, 0);
	if (IS_ERR(fd->pd)) {
		err = PTR_ERR(fd->pd);
		goto err_none;
	}
	fd->cq = ib_alloc_cq(dev, fd, FD_SQ_DEPTH + 1, 0, IB_POLL_SOFTIRQ);
	if (IS_ERR(fd->cq)) {
		err = PTR_ERR(fd->cq);
		goto err_pd;
	}
	memset(&qia, 0, sizeof(qia));
	qia.qp_context = fd;
	qia.send_cq = fd->cq;
	qia.recv_cq = fd->cq;
	qia.qp_type = IB_QPT_UD;
	qia.sq_sig_type = IB_SIGNAL_REQ_WR;
	qia.cap.max_send_wr = FD_SQ_DEPTH;
	qia.cap.max_recv_wr = 1;
	qia.cap.max_send_sge = 1;
	qia.cap.max_recv_sge = 1;
	fd->qp = ib_create_qp(fd->pd, &qia);
	if (IS_ERR(fd->qp)) {
		err = PTR_ERR(fd->qp);
		goto err_cq;
	}
	err = fd_modify_qp(fd->qp, IB_QPS_INIT, IB_QP_PKEY_INDEX | IB_QP_PORT | IB_QP_QKEY);
	if (!err)
		err = fd_modify_qp(fd->qp, IB_QPS_RTR, 0);
	if (!err)
		err = fd_modify_qp(fd->qp, IB_QPS_RTS, IB_QP_SQ_PSN);
	if (err)
		goto err_qp;

	memset(&aha, 0, sizeof(aha));
	aha.type = rdma_ah_find_type(dev, PORT);
	rdma_ah_set_port_num(&aha, PORT);
	rdma_ah_set_sl(&aha, 0);
	memcpy(dgid.raw, &fd_group, sizeof(dgid.raw));
	if (fd->roce) {
		/* What the RDMA CM uses for a RoCE v2 IPv4 group: an IP TTL. */
		rdma_ah_set_grh(&aha, &dgid, 0, fd->gid_index, IPV6_DEFAULT_HOPLIMIT, 0);
		/*
		 * rdma_create_ah() (unlike the user-space path) leaves the
		 * destination MAC to the caller: the group's multicast MAC.
		 */
		if (ipv6_addr_v4mapped(&fd_group))
			ip_eth_mc_map(fd_group.s6_addr32[3], (char *)aha.roce.dmac);
		else
			ipv6_eth_mc_map(&fd_group, (char *)aha.roce.dmac);
	} else {
		rdma_ah_set_grh(&aha, &dgid, 0, fd->gid_index, 1, 0);
		rdma_ah_set_dlid(&aha, LID);
	}
	fd->ah = rdma_create_ah(fd->pd, &aha, RDMA_CREATE_AH_SLEEPABLE);
	if (IS_ERR(fd->ah)) {
		err = PTR_ERR(fd->ah);
		goto err_qp;
	}

	fd->send_cqe.done = fd_send_done;
	atomic_set(&fd->outstanding, 0);
	fd->up = true;
	spin_lock_irqsave(&fd_send_lock, flags);
	fd_active = fd;
	spin_unlock_irqrestore(&fd_send_lock, flags);
	pr_info("%s port %d up: UD QP %u, source GID index %d (%pI6c), group %pI6c\n",
		dev_name(&dev->dev), PORT, fd->qp->qp_num, fd->gid_index, fd->sgid.raw, &fd_group);
	return 0;

err_qp:
	ib_destroy_qp(fd->qp);
err_cq:
	ib_free_cq(fd->cq);
err_pd:
	ib_dealloc_pd(fd->pd);
err_none:
	fd->qp = NULL;
	fd->cq = NULL;
	fd->pd = NULL;
	fd->ah = NULL;
	return err;
}

/*
 * Sets up (again) if down or if the source GID changed; retries while the
 * port or its GID is missing.
 */
static void fd_work(struct work_struct *work)
{
	struct fd_dev *fd = container_of(to_delayed_work(work), struct fd_dev, work);
	union ib_gid gid;
	int index, err;

	mutex_lock(&fd_dev_mutex);
	if (fd->removing)
		goto out;
	if (fd->up) {
		if (!fd_pick_gid(fd, &index, &gid) && index == fd->gid_index &&
		    !memcmp(&gid, &fd->sgid, sizeof(gid)))
			goto out;
		fd_teardown(fd);
	}
	err = fd_setup(fd);
	if (err && err != fd->last_err)
		pr_info("%s port %d not set up (%d): %s\n", dev_name(&fd->ibdev->dev), PORT, err,
			err == -EAGAIN ? "no suitable GID yet, retrying" : "retrying");
	fd->last_err = err;
	if (err)
		schedule_delayed_work(&fd->work, FD_RETRY);
out:
	mutex_unlock(&fd_dev_mutex);
}

static void fd_event(struct ib_event_handler *h, struct ib_event *ev)
{
	struct fd_dev *fd = container_of(h, struct fd_dev, events);

	switch (ev->event) {
	case IB_EVENT_GID_CHANGE:
	case IB_EVENT_PORT_ACTIVE:
	case IB_EVENT_LID_CHANGE:
	case IB_EVENT_PKEY_CHANGE:
	case IB_EVENT_CLIENT_REREGISTER:
		if (ev->element.port_num == PORT)
			mod_delayed_work(system_wq, &fd->work, HZ / 10);
		break;
	default:
		break;
	}
}

static struct ib_client fd_client;

static int fd_add(struct ib_device *dev)
{
	struct fd_dev *fd;

	if (strcmp(dev_name(&dev->dev), DEVICE_NAME))
		return -EOPNOTSUPP;
	fd = kzalloc(sizeof(*fd), GFP_KERNEL);
	if (!fd)
		return -ENOMEM;
	fd->ibdev = dev;
	INIT_DELAYED_WORK(&fd->work, fd_work);
	INIT_IB_EVENT_HANDLER(&fd->events, dev, fd_event);
	mutex_lock(&fd_dev_mutex);
	fd_current = fd;
	mutex_unlock(&fd_dev_mutex);
	ib_set_client_data(dev, &fd_client, fd);
	ib_register_event_handler(&fd->events);
	schedule_delayed_work(&fd->work, 0);
	return 0;
}

static void fd_remove(struct ib_device *dev, void *client_data)
{
	struct fd_dev *fd = client_data;

	ib_unregister_event_handler(&fd->events);
	mutex_lock(&fd_dev_mutex);
	fd->removing = true;
	mutex_unlock(&fd_dev_mutex);
	cancel_delayed_work_sync(&fd->work);
	mutex_lock(&fd_dev_mutex);
	fd_teardown(fd);
	if (fd_current == fd)
		fd_current = NULL;
	mutex_unlock(&fd_dev_mutex);
	kfree(fd);
}

static struct ib_client fd_client = {
	.name	= "fdmod",
	.add	= fd_add,
	.remove	= fd_remove,
};

/* ------------------------------------------------------------ the map */

struct fd_node {
	u16 id;
	u8 family;			/* AF_INET or AF_INET6 */
	union {
		__be32 v4;
		struct in6_addr v6;
	} addr;
};

struct fd_map {
	struct kref ref;
	u16 self;
	u32 count;
	struct fd_node nodes[];
};

static DEFINE_MUTEX(fd_map_mutex);
static struct fd_map *fd_map;		/* under fd_map_mutex; NULL until written */

static void fd_map_release(struct kref *ref)
{
	kvfree(container_of(ref, struct fd_map, ref));
}

static struct fd_map *fd_map_get(void)
{
	struct fd_map *m;

	mutex_lock(&fd_map_mutex);
	m = fd_map;
	if (m)
		kref_get(&m->ref);
	mutex_unlock(&fd_map_mutex);
	return m;
}

static void fd_map_put(struct fd_map *m)
{
	if (m)
		kref_put(&m->ref, fd_map_release);
}

/* A write transaction: the lines of one open file, applied on close. */
struct fd_txn {
	bool poisoned;
	bool have_self;
	bool touched;			/* anything written */
	u16 self;
	u32 count, cap;
	struct fd_node *nodes;		/* kvmalloc'd, cap entries */
	size_t len;			/* of the partial line in line[] */
	char line[FD_LINE_MAX];
	char chunk[256];		/* copy_from_user buffer */
};

/* One open file of /proc/fdmod/map: the map it reads, the map it writes. */
struct fd_map_file {
	struct fd_map *map;		/* pinned at open, for reading */
	struct fd_txn *txn;		/* when opened for writing */
};

static int fd_txn_add(struct fd_txn *t, const struct fd_node *n)
{
	if (t->count == t->cap) {
		u32 cap = t->cap ? t->cap * 2 : 64;
		struct fd_node *nodes;

		if (t->cap >= FD_MAX_NODES)
			return -EINVAL;
		cap = min_t(u32, cap, FD_MAX_NODES);
		nodes = kvmalloc_array(cap, sizeof(*nodes), GFP_KERNEL);
		if (!nodes)
			return -ENOMEM;
		if (t->count)
			memcpy(nodes, t->nodes, t->count * sizeof(*nodes));
		kvfree(t->nodes);
		t->nodes = nodes;
		t->cap = cap;
	}
	t->nodes[t->count++] = *n;
	return 0;
}

static int fd_parse_id(const char *s, u16 *id)
{
	if (kstrtou16(s, 10, id) || *id == 0)
		return -EINVAL;
	return 0;
}

/*
 * One line, NUL-terminated, without its newline: "self ID" first, then
 * "ID ADDRESS".  Blank lines are ignored.
 */
static int fd_txn_line(struct fd_txn *t, char *line)
{
	char *tok[3], *p = line;
	struct fd_node n;
	const char *end;
	int ntok = 0;

	while (ntok < 3) {
		while (*p == ' ' || *p == '\t' || *p == '\r')
			p++;
		if (!*p)
			break;
		tok[ntok++] = p;
		while (*p && *p != ' ' && *p != '\t' && *p != '\r')
			p++;
		if (*p)
			*p++ = '\0';
	}
	if (ntok == 0)
		return 0;
	if (ntok != 2)
		return -EINVAL;
	if (!strcmp(tok[0], "self")) {
		if (t->have_self || t->count)
			return -EINVAL;
		if (fd_parse_id(tok[1], &t->self))
			return -EINVAL;
		t->have_self = true;
		return 0;
	}
	if (!t->have_self)
		return -EINVAL;
	memset(&n, 0, sizeof(n));
	if (fd_parse_id(tok[0], &n.id))
		return -EINVAL;
	if (in4_pton(tok[1], -1, (u8 *)&n.addr.v4, -1, &end) && !*end)
		n.family = AF_INET;
	else if (in6_pton(tok[1], -1, n.addr.v6.s6_addr, -1, &end) && !*end)
		n.family = AF_INET6;
	else
		return -EINVAL;
	return fd_txn_add(t, &n);
}

static ssize_t fd_map_write(struct file *file, const char __user *ubuf, size_t count, loff_t *ppos)
{
	struct fd_map_file *mf = ((struct seq_file *)file->private_data)->private;
	struct fd_txn *t = mf->txn;
	size_t done = 0;
	int err = 0;

	if (!t)
		return -EBADF;
	if (t->poisoned)
		return -EINVAL;
	t->touched = true;
	while (done < count && !err) {
		size_t n = min(count - done, sizeof(t->chunk)), i;

		if (copy_from_user(t->chunk, ubuf + done, n)) {
			t->poisoned = true;
			return -EFAULT;
		}
		for (i = 0; i < n && !err; i++) {
			char c = t->chunk[i];

			if (c == '\n') {
				t->line[t->len] = '\0';
				err = fd_txn_line(t, t->line);
				t->len = 0;
			} else if (c == '\0' || t->len >= FD_LINE_MAX - 1) {
				err = -EINVAL;
			} else {
				t->line[t->len++] = c;
			}
		}
		done += n;
	}
	if (err) {
		t->poisoned = true;
		return err == -ENOMEM ? -ENOMEM : -EINVAL;
	}
	return count;
}

/* On close: a whole valid transaction replaces the map. */
static void fd_txn_commit(struct fd_txn *t)
{
	struct fd_map *m, *old;

	if (!t->touched)
		return;
	if (!t->poisoned && t->len) {
		t->line[t->len] = '\0';
		if (fd_txn_line(t, t->line))
			t->poisoned = true;
		t->len = 0;
	}
	if (t->poisoned || !t->have_self) {
		atomic64_inc(&fd_stat_map_rejects);
		return;
	}
	m = kvmalloc(struct_size(m, nodes, t->count), GFP_KERNEL);
	if (!m) {
		atomic64_inc(&fd_stat_map_rejects);
		return;
	}
	kref_init(&m->ref);
	m->self = t->self;
	m->count = t->count;
	if (t->count)
		memcpy(m->nodes, t->nodes, t->count * sizeof(*m->nodes));
	mutex_lock(&fd_map_mutex);
	old = fd_map;
	fd_map = m;
	WRITE_ONCE(fd_self_id, m->self);
	mutex_unlock(&fd_map_mutex);
	fd_map_put(old);
	atomic64_inc(&fd_stat_map_updates);
}

static void *fd_map_start(struct seq_file *s, loff_t *pos)
{
	struct fd_map_file *mf = s->private;

	if (!mf->map || *pos > mf->map->count)
		return NULL;
	return *pos == 0 ? SEQ_START_TOKEN : &mf->map->nodes[*pos - 1];
}

static void *fd_map_next(struct seq_file *s, void *v, loff_t *pos)
{
	++*pos;
	return fd_map_start(s, pos);
}

static void fd_map_stop(struct seq_file *s, void *v)
{
}

static int fd_map_show(struct seq_file *s, void *v)
{
	struct fd_map_file *mf = s->private;
	const struct fd_node *n = v;

	if (v == SEQ_START_TOKEN)
		seq_printf(s, "self %u\n", mf->map->self);
	else if (n->family == AF_INET)
		seq_printf(s, "%u %pI4\n", n->id, &n->addr.v4);
	else
		seq_printf(s, "%u %pI6c\n", n->id, &n->addr.v6);
	return 0;
}

static const struct seq_operations fd_map_seq_ops = {
	.start	= fd_map_start,
	.next	= fd_map_next,
	.stop	= fd_map_stop,
	.show	= fd_map_show,
};

static int fd_map_open(struct inode *inode, struct file *file)
{
	struct fd_map_file *mf;
	int err;

	mf = kzalloc(sizeof(*mf), GFP_KERNEL);
	if (!mf)
		return -ENOMEM;
	if (file->f_mode & FMODE_WRITE) {
		mf->txn = kzalloc(sizeof(*mf->txn), GFP_KERNEL);
		if (!mf->txn) {
			kfree(mf);
			return -ENOMEM;
		}
	}
	if (file->f_mode & FMODE_READ)
		mf->map = fd_map_get();	/* readers see one whole map */
	err = seq_open(file, &fd_map_seq_ops);
	if (err) {
		fd_map_put(mf->map);
		kfree(mf->txn);
		kfree(mf);
		return err;
	}
	((struct seq_file *)file->private_data)->private = mf;
	return 0;
}

static int fd_map_release_file(struct inode *inode, struct file *file)
{
	struct fd_map_file *mf = ((struct seq_file *)file->private_data)->private;

	if (mf->txn) {
		fd_txn_commit(mf->txn);
		kvfree(mf->txn->nodes);
		kfree(mf->txn);
	}
	fd_map_put(mf->map);
	kfree(mf);
	return seq_release(inode, file);
}

static const struct proc_ops fd_map_ops = {
	.proc_open	= fd_map_open,
	.proc_read	= seq_read,
	.proc_write	= fd_map_write,
	.proc_lseek	= seq_lseek,
	.proc_release	= fd_map_release_file,
};

/* ------------------------------------------------------------ stats */

static int fd_stats_show(struct seq_file *s, void *v)
{
	struct fd_map *m;
	bool up = false, present = false, attached;
	int gid_index = -1;
	u16 self;

	mutex_lock(&fd_dev_mutex);
	if (fd_current) {
		present = true;
		up = fd_current->up;
		if (up)
			gid_index = fd_current->gid_index;
	}
	mutex_unlock(&fd_dev_mutex);
	mutex_lock(&fd_hb_mutex);
	attached = fd_hb_attached;
	mutex_unlock(&fd_hb_mutex);
	m = fd_map_get();
	self = READ_ONCE(fd_self_id);

	seq_printf(s, "device %s\n", DEVICE_NAME);
	seq_printf(s, "port %d\n", PORT);
	seq_printf(s, "present %s\n", present ? "yes" : "no");
	seq_printf(s, "state %s\n", up ? "up" : "down");
	seq_printf(s, "gid_index %d\n", gid_index);
	seq_printf(s, "group %pI6c\n", &fd_group);
	seq_printf(s, "heartbeat %s\n", attached ? "attached" : "detached");
	seq_printf(s, "node_id %u\n", self);
	seq_printf(s, "map_entries %u\n", m ? m->count : 0);
	seq_printf(s, "map_updates %lld\n", (long long)atomic64_read(&fd_stat_map_updates));
	seq_printf(s, "map_rejects %lld\n", (long long)atomic64_read(&fd_stat_map_rejects));
	seq_printf(s, "sends %lld\n", (long long)atomic64_read(&fd_stat_sends));
	seq_printf(s, "send_errors %lld\n", (long long)atomic64_read(&fd_stat_send_errors));
	seq_printf(s, "sends_without_device %lld\n", (long long)atomic64_read(&fd_stat_no_device));
	seq_printf(s, "sends_without_id %lld\n", (long long)atomic64_read(&fd_stat_no_id));
	seq_printf(s, "completions %lld\n", (long long)atomic64_read(&fd_stat_completions));
	fd_map_put(m);
	return 0;
}

/* ------------------------------------------------------------ module */

static struct proc_dir_entry *fd_proc_dir;

static int __init fd_init(void)
{
	int err;

	if (in6_pton(IPV6_GID, -1, fd_group.s6_addr, -1, NULL) != 1 ||
	    !rdma_is_multicast_addr(&fd_group)) {
		pr_err("IPV6_GID=%s is not a multicast GID\n", IPV6_GID);
		return -EINVAL;
	}
	if (PORT < 1 || PORT > 255) {
		pr_err("PORT=%d is out of range\n", PORT);
		return -EINVAL;
	}
	fd_proc_dir = proc_mkdir("fdmod", NULL);
	if (!fd_proc_dir)
		return -ENOMEM;
	if (!proc_create("map", 0600, fd_proc_dir, &fd_map_ops) ||
	    !proc_create_single("stats", 0444, fd_proc_dir, fd_stats_show)) {
		err = -ENOMEM;
		goto err_proc;
	}
	err = ib_register_client(&fd_client);
	if (err)
		goto err_proc;
	/*
	 * The notifier first: heartbeat arriving in between is not missed
	 * (registering twice is harmless: the same callback).
	 */
	err = register_module_notifier(&fd_module_nb);
	if (err)
		goto err_client;
	fd_attach_heartbeat();
	return 0;

err_client:
	ib_unregister_client(&fd_client);
err_proc:
	proc_remove(fd_proc_dir);
	return err;
}

static void __exit fd_exit(void)
{
	WRITE_ONCE(fd_exiting, true);
	/* No new registration after this (the notifier may call attach). */
	unregister_module_notifier(&fd_module_nb);
	fd_detach_heartbeat();
	ib_unregister_client(&fd_client);	/* fd_remove(): tears the device down */
	proc_remove(fd_proc_dir);		/* closes open map files (commits) */
	mutex_lock(&fd_map_mutex);
	fd_map_put(fd_map);
	fd_map = NULL;
	mutex_unlock(&fd_map_mutex);
}

module_init(fd_init);
module_exit(fd_exit);

MODULE_LICENSE("GPL");
MODULE_AUTHOR("discd");
MODULE_DESCRIPTION("discd: multicasts the exits of opted-in processes over RDMA UD");
