/* imm_send: sends immediate-only UD multicasts to an RDMA multicast group, as the kernel module
 * fdmod sends a process-exit notice (32-bit immediate, no payload). Test tool of the guest test bed
 * (tests/guests), built by guestbed.py with the host's gcc against rdma-core.
 *
 *   imm_send LOCAL_ADDR GROUP IMMEDIATE [COUNT]
 *
 * Binds an rdma_cm UDP ID to LOCAL_ADDR (IPv4), joins GROUP, posts COUNT (default 1) sends with
 * immediate IMMEDIATE (decimal or 0x hex, host order; sent big-endian), waits for their
 * completions, leaves. Exit status 0 when every send completed successfully. Every wait is bounded. */
#include <arpa/inet.h>
#include <errno.h>
#include <poll.h>
#include <rdma/rdma_cma.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int die(const char *what) {
    fprintf(stderr, "imm_send: %s: %s\n", what, strerror(errno));
    return 2;
}

static int next_event(struct rdma_event_channel *ch, enum rdma_cm_event_type want, struct rdma_cm_event **out) {
    struct pollfd p = {.fd = ch->fd, .events = POLLIN};
    if (poll(&p, 1, 10000) != 1) {
        errno = ETIMEDOUT;
        return -1;
    }
    if (rdma_get_cm_event(ch, out)) return -1;
    if ((*out)->event != want) {
        fprintf(stderr, "imm_send: got %s, want %s (status %d)\n", rdma_event_str((*out)->event),
                rdma_event_str(want), (*out)->status);
        rdma_ack_cm_event(*out);
        errno = EPROTO;
        return -1;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 4) {
        fprintf(stderr, "usage: imm_send LOCAL_ADDR GROUP IMMEDIATE [COUNT]\n");
        return 2;
    }
    struct sockaddr_in local = {.sin_family = AF_INET}, group = {.sin_family = AF_INET};
    if (inet_pton(AF_INET, argv[1], &local.sin_addr) != 1 || inet_pton(AF_INET, argv[2], &group.sin_addr) != 1) {
        fprintf(stderr, "imm_send: bad address\n");
        return 2;
    }
    uint32_t imm = (uint32_t)strtoul(argv[3], NULL, 0);
    int count = argc > 4 ? atoi(argv[4]) : 1;
    if (count < 1 || count > 1000) count = 1;

    struct rdma_event_channel *ch = rdma_create_event_channel();
    struct rdma_cm_id *id;
    struct rdma_cm_event *ev;
    if (!ch || rdma_create_id(ch, &id, NULL, RDMA_PS_UDP)) return die("rdma_create_id");
    if (rdma_bind_addr(id, (struct sockaddr *)&local) || !id->verbs) return die("rdma_bind_addr");
    struct ibv_pd *pd = ibv_alloc_pd(id->verbs);
    struct ibv_cq *cq = pd ? ibv_create_cq(id->verbs, 64, NULL, NULL, 0) : NULL;
    if (!cq) return die("ibv_create_cq");
    struct ibv_qp_init_attr qa = {.send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_UD,
                                  .cap = {.max_send_wr = 64, .max_recv_wr = 1, .max_send_sge = 1, .max_recv_sge = 1}};
    if (rdma_create_qp(id, pd, &qa)) return die("rdma_create_qp");
    if (rdma_join_multicast(id, (struct sockaddr *)&group, NULL)) return die("rdma_join_multicast");
    if (next_event(ch, RDMA_CM_EVENT_MULTICAST_JOIN, &ev)) return die("join");
    struct rdma_ud_param ud = ev->param.ud;
    rdma_ack_cm_event(ev);
    struct ibv_ah *ah = ibv_create_ah(pd, &ud.ah_attr);
    if (!ah) return die("ibv_create_ah");

    int ok = 0;
    for (int i = 0; i < count; i++) {
        struct ibv_send_wr wr, *bad;
        memset(&wr, 0, sizeof wr);
        wr.wr_id = (uint64_t)i;
        wr.opcode = IBV_WR_SEND_WITH_IMM;
        wr.send_flags = IBV_SEND_SIGNALED;
        wr.imm_data = htonl(imm);
        wr.wr.ud.ah = ah;
        wr.wr.ud.remote_qpn = ud.qp_num;
        wr.wr.ud.remote_qkey = ud.qkey;
        if (ibv_post_send(id->qp, &wr, &bad)) return die("ibv_post_send");
        struct ibv_wc wc;
        int got = 0;
        for (int tries = 0; tries < 100000 && got == 0; tries++) got = ibv_poll_cq(cq, 1, &wc);
        if (got == 1 && wc.status == IBV_WC_SUCCESS) ok++;
        else fprintf(stderr, "imm_send: send %d: %s\n", i, got == 1 ? ibv_wc_status_str(wc.status) : "no completion");
    }
    printf("imm_send: %d of %d sends with immediate 0x%08x completed\n", ok, count, imm);
    rdma_leave_multicast(id, (struct sockaddr *)&group);
    ibv_destroy_ah(ah);
    rdma_destroy_qp(id);
    ibv_destroy_cq(cq);
    ibv_dealloc_pd(pd);
    rdma_destroy_id(id);
    rdma_destroy_event_channel(ch);
    return ok == count ? 0 : 1;
}
