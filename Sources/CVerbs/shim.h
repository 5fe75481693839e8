#ifndef DISCD_CVERBS_SHIM_H
#define DISCD_CVERBS_SHIM_H
#include <infiniband/verbs.h>
#include <rdma/rdma_cma.h>
#include <string.h>

/* Small helpers for what Swift cannot call or build directly: rdma-core's function-like macros
 * (ibv_query_port, ibv_reg_mr) and work requests whose fields sit in anonymous unions. Each is a
 * thin wrapper over one verb; the RDMA transport (Sources/discd/RDMATransport.swift) owns the logic. */

static inline int discd_query_port(struct ibv_context *ctx, uint8_t port, struct ibv_port_attr *attr) {
    return ibv_query_port(ctx, port, attr);
}

static inline struct ibv_mr *discd_reg_mr(struct ibv_pd *pd, void *addr, size_t length) {
    return ibv_reg_mr(pd, addr, length, IBV_ACCESS_LOCAL_WRITE);
}

/* One receive buffer of `length` bytes at `addr` (room for the 40-byte GRH first). */
static inline int discd_post_recv(struct ibv_qp *qp, uint32_t lkey, void *addr, uint32_t length, uint64_t wr_id) {
    struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = length, .lkey = lkey};
    struct ibv_recv_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = wr_id;
    wr.sg_list = &sge;
    wr.num_sge = 1;
    return ibv_post_recv(qp, &wr, &bad);
}

/* A signalled UD send of `length` bytes at `addr` to (ah, remote_qpn, remote_qkey). */
static inline int discd_post_ud_send(struct ibv_qp *qp, struct ibv_ah *ah, uint32_t remote_qpn, uint32_t remote_qkey,
                                     uint32_t lkey, void *addr, uint32_t length, uint64_t wr_id) {
    struct ibv_sge sge = {.addr = (uintptr_t)addr, .length = length, .lkey = lkey};
    struct ibv_send_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = wr_id;
    wr.sg_list = &sge;
    wr.num_sge = length ? 1 : 0;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.wr.ud.ah = ah;
    wr.wr.ud.remote_qpn = remote_qpn;
    wr.wr.ud.remote_qkey = remote_qkey;
    return ibv_post_send(qp, &wr, &bad);
}

/* An immediate-only UD send (no payload, 32-bit immediate in network order on the wire), as the
 * kernel module fdmod sends a process-exit notice; used by tests and by `discd rdma-notify`. */
static inline int discd_post_ud_send_imm(struct ibv_qp *qp, struct ibv_ah *ah, uint32_t remote_qpn,
                                         uint32_t remote_qkey, uint32_t imm_host_order, uint64_t wr_id) {
    struct ibv_send_wr wr, *bad = NULL;
    memset(&wr, 0, sizeof wr);
    wr.wr_id = wr_id;
    wr.num_sge = 0;
    wr.opcode = IBV_WR_SEND_WITH_IMM;
    wr.send_flags = IBV_SEND_SIGNALED;
    wr.imm_data = htobe32(imm_host_order);
    wr.wr.ud.ah = ah;
    wr.wr.ud.remote_qpn = remote_qpn;
    wr.wr.ud.remote_qkey = remote_qkey;
    return ibv_post_send(qp, &wr, &bad);
}

/* An address handle for a unicast to `gid` (16 bytes) through `port`, from our GID at `sgid_index`
 * (RoCE: the kernel resolves the neighbour's MAC). */
static inline struct ibv_ah *discd_create_ah_gid(struct ibv_pd *pd, uint8_t port, uint8_t sgid_index,
                                                 const uint8_t *gid, uint8_t hop_limit) {
    struct ibv_ah_attr attr;
    memset(&attr, 0, sizeof attr);
    attr.is_global = 1;
    attr.port_num = port;
    attr.grh.sgid_index = sgid_index;
    attr.grh.hop_limit = hop_limit;
    memcpy(attr.grh.dgid.raw, gid, 16);
    return ibv_create_ah(pd, &attr);
}

/* The source GID of a received UD datagram: bytes 8..23 of the 40-byte GRH (IB) or, on RoCE v2
 * over IPv4, the IPv4 header in the GRH's last 20 bytes, mapped to ::ffff:a.b.c.d. */
static inline void discd_grh_source_gid(const uint8_t *grh, uint8_t *gid_out) {
    if ((grh[20] >> 4) == 4) { /* RoCE v2 IPv4: bytes 20..39 hold the IPv4 header */
        memset(gid_out, 0, 10);
        gid_out[10] = 0xff;
        gid_out[11] = 0xff;
        memcpy(gid_out + 12, grh + 20 + 12, 4);
    } else {
        memcpy(gid_out, grh + 8, 16);
    }
}

/* A UD queue pair taken from RESET to RTS with `qkey` on `port` (what rdma_create_qp does for an
 * rdma_cm ID in the UDP port space). */
static inline int discd_ud_qp_to_rts(struct ibv_qp *qp, uint8_t port, uint32_t qkey) {
    struct ibv_qp_attr a;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_INIT;
    a.pkey_index = 0;
    a.port_num = port;
    a.qkey = qkey;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_PKEY_INDEX | IBV_QP_PORT | IBV_QP_QKEY)) return -1;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTR;
    if (ibv_modify_qp(qp, &a, IBV_QP_STATE)) return -1;
    memset(&a, 0, sizeof a);
    a.qp_state = IBV_QPS_RTS;
    a.sq_psn = 0;
    return ibv_modify_qp(qp, &a, IBV_QP_STATE | IBV_QP_SQ_PSN);
}

/* The sysfs path of a device's uverbs node (/sys/class/infiniband_verbs/uverbsN): it goes first
 * when the device is unregistered. */
static inline const char *discd_device_dev_path(struct ibv_device *dev) { return dev->dev_path; }

static inline uint32_t discd_wc_imm(const struct ibv_wc *wc) { return be32toh(wc->imm_data); }

static inline int discd_sockaddr_family(const struct sockaddr *sa) { return sa->sa_family; }

#endif
