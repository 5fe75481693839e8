/* hbtool: drives discd's kernel modules (kernel/) in the guest tests (tests/guests/test_kernel.py).
 * Built on the host with gcc against the uapi header; prints one JSON object per command on stdout.
 *
 *   hbtool optin TAG [PID] [-- CMD ARG...]  opt PID (default: itself) in by ioctl, then exec CMD
 *   hbtool killwait PID [MARKER]           drain /dev/heartbeat, create MARKER (content: wall-clock
 *                                          ms), SIGKILL PID, wait (10 s) for its record: the record,
 *                                          kill->hook and kill->read times (us), /proc start ticks
 *   hbtool probe                           bad-input probes as root: the errno name of each
 *   hbtool probe-user                      the probes an unprivileged user makes (run by setpriv)
 *   hbtool flood N TAG                     N children opt in and exit 3 one after the other; then
 *                                          reads every record (how many, their lost counts,
 *                                          statuses), and the lost count of one more exit's record
 *   hbtool capacity N                      N+1 children opt in at once: how many were refused
 *   hbtool threads group|each              a 5-thread process ends by exit_group(5) or thread by
 *                                          thread (leader first, SYS_exit(7)): its records, status
 *   hbtool noticewait MARKER LOG ID TAG [S [N]]  wait (S s, default 30) for MARKER (2 ms polls),
 *                                          then (N s, default 15) for discd's JSON log LOG to show
 *                                          process.notice with node ID and TAG (1 ms polls):
 *                                          {"ms": the time between, "event": the line}
 *   hbtool write FILE CHUNK...             one open, one write(2) per CHUNK (\n, \t, \\ escapes),
 *                                          close: each result's errno name ("OK" on success)
 * Exit status 0 when the command ran (the JSON tells what happened), 2 on a usage or setup error.
 * Every wait is bounded. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "../../../kernel/include/uapi/discd_heartbeat.h"

_Static_assert(sizeof(struct heartbeat_exit) == HEARTBEAT_EXIT_RECORD_SIZE, "record size");

static const char *ename(int e) {
    switch (e) {
    case 0: return "OK";
    case EINVAL: return "EINVAL";
    case EEXIST: return "EEXIST";
    case ENOENT: return "ENOENT";
    case ESRCH: return "ESRCH";
    case EPERM: return "EPERM";
    case EACCES: return "EACCES";
    case ENOTTY: return "ENOTTY";
    case EAGAIN: return "EAGAIN";
    case EFAULT: return "EFAULT";
    case ENOSPC: return "ENOSPC";
    case EBADF: return "EBADF";
    case ENODEV: return "ENODEV";
    default: return strerrorname_np(e) ? strerrorname_np(e) : "E?";
    }
}

static int die(const char *what) {
    fprintf(stderr, "hbtool: %s: %s\n", what, strerror(errno));
    return 2;
}

static uint64_t clock_ns(clockid_t c) {
    struct timespec ts;
    clock_gettime(c, &ts);
    return (uint64_t)ts.tv_sec * 1000000000ull + (uint64_t)ts.tv_nsec;
}

/* The errno of an ioctl/read/write result (0 on success). */
static int res(long r) { return r < 0 ? errno : 0; }

static int optin(int fd, unsigned pid, unsigned tag) {
    struct heartbeat_optin o = {.pid = pid, .tag = tag};
    return res(ioctl(fd, HEARTBEAT_IOC_OPTIN, &o));
}

static int optout(int fd, unsigned pid) {
    __u32 p = pid;
    return res(ioctl(fd, HEARTBEAT_IOC_OPTOUT, &p));
}

static int write_str(int fd, const char *s) { return res(write(fd, s, strlen(s))); }

static void print_record(const struct heartbeat_exit *r) {
    printf("\"pid\":%u,\"tag\":%u,\"flags\":%u,\"status\":%d,\"lost\":%u,\"start_ns\":%llu,\"exit_ns\":%llu",
           r->pid, r->tag, r->flags, r->status, r->lost, (unsigned long long)r->start_ns,
           (unsigned long long)r->exit_ns);
}

/* Reads every queued record (non-blocking fd); returns how many were read into out (at most max). */
static int drain(int fd, struct heartbeat_exit *out, int max) {
    struct heartbeat_exit buf[64];
    int n = 0;
    for (int rounds = 0; rounds < 100000; rounds++) {
        ssize_t got = read(fd, buf, sizeof buf);
        if (got <= 0) break;
        for (size_t i = 0; i < (size_t)got / sizeof buf[0]; i++) {
            if (out && n < max) out[n] = buf[i];
            n++;
        }
    }
    return n;
}

/* Field 22 of /proc/PID/stat (start time in clock ticks since boot), or -1. */
static long long start_ticks(int pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", pid);
    FILE *f = fopen(path, "r");
    if (!f) return -1;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p) return -1;
    long long v = -1;
    /* after ")": field 3 (state) is the first; field 22 is the 20th */
    p++;
    for (int field = 3; field <= 22 && p; field++) {
        while (*p == ' ') p++;
        if (field == 22) v = strtoll(p, NULL, 10);
        p = strchr(p, ' ');
    }
    return v;
}

static int cmd_optin(int argc, char **argv) {
    if (argc < 1) return 2;
    unsigned tag = (unsigned)strtoul(argv[0], NULL, 0), pid = 0;
    int i = 1;
    if (i < argc && strcmp(argv[i], "--") != 0) pid = (unsigned)strtoul(argv[i++], NULL, 0);
    int fd = open(HEARTBEAT_DEVICE, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return die(HEARTBEAT_DEVICE);
    int e = optin(fd, pid, tag);
    close(fd);
    if (e) {
        fprintf(stderr, "hbtool: opt-in of %u with tag %u: %s\n", pid, tag, ename(e));
        return 1;
    }
    if (i < argc && strcmp(argv[i], "--") == 0 && i + 1 < argc) {
        execvp(argv[i + 1], argv + i + 1);
        return die(argv[i + 1]);
    }
    printf("{\"optin\":\"OK\"}\n");
    return 0;
}

static int cmd_killwait(int argc, char **argv) {
    if (argc < 1) return 2;
    int pid = atoi(argv[0]);
    int fd = open(HEARTBEAT_DEVICE, O_RDONLY | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return die(HEARTBEAT_DEVICE);
    drain(fd, NULL, 0);
    long long ticks = start_ticks(pid);
    if (argc > 1) {
        FILE *m = fopen(argv[1], "w");
        if (!m) return die(argv[1]);
        fprintf(m, "%llu\n", (unsigned long long)(clock_ns(CLOCK_REALTIME) / 1000000));
        fclose(m);
    }
    uint64_t t0 = clock_ns(CLOCK_BOOTTIME);
    if (kill(pid, SIGKILL)) return die("kill");
    uint64_t deadline = t0 + 10000000000ull;
    for (;;) {
        uint64_t now = clock_ns(CLOCK_BOOTTIME);
        if (now >= deadline) {
            printf("{\"error\":\"no record for pid %d within 10 s\"}\n", pid);
            return 0;
        }
        struct pollfd p = {.fd = fd, .events = POLLIN};
        int r = poll(&p, 1, (int)((deadline - now) / 1000000) + 1);
        if (r < 0 && errno != EINTR) return die("poll");
        if (r <= 0) continue;
        struct heartbeat_exit rec[64];
        ssize_t got = read(fd, rec, sizeof rec);
        uint64_t t1 = clock_ns(CLOCK_BOOTTIME);
        if (got < 0) {
            if (errno == EAGAIN || errno == EINTR) continue;
            return die("read");
        }
        if (got % (ssize_t)sizeof rec[0]) {
            printf("{\"error\":\"read returned %zd bytes, not whole records\"}\n", got);
            return 0;
        }
        for (size_t i = 0; i < (size_t)got / sizeof rec[0]; i++) {
            if (rec[i].pid != (unsigned)pid) continue;
            printf("{");
            print_record(&rec[i]);
            printf(",\"stat_start_ticks\":%lld,\"ticks_per_s\":%ld,\"hook_us\":%lld,\"read_us\":%llu}\n", ticks,
                   sysconf(_SC_CLK_TCK), ((long long)rec[i].exit_ns - (long long)t0) / 1000,
                   (unsigned long long)(t1 - t0) / 1000);
            return 0;
        }
    }
}

static int cmd_probe(void) {
    int fd = open(HEARTBEAT_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return die(HEARTBEAT_DEVICE);
    char buf[64];
    printf("{\"tag_70000\":\"%s\"", ename(optin(fd, 0, 70000)));
    printf(",\"optin_self\":\"%s\"", ename(optin(fd, 0, 1)));
    printf(",\"optin_again\":\"%s\"", ename(optin(fd, 0, 2)));
    printf(",\"optin_again_by_pid\":\"%s\"", ename(optin(fd, (unsigned)getpid(), 3)));
    printf(",\"optout_self\":\"%s\"", ename(optout(fd, 0)));
    printf(",\"optout_again\":\"%s\"", ename(optout(fd, 0)));
    printf(",\"no_such_pid\":\"%s\"", ename(optin(fd, 4194303, 1)));
    printf(",\"pid_too_big\":\"%s\"", ename(optin(fd, 0xfffffff0u, 1)));
    printf(",\"unknown_ioctl\":\"%s\"", ename(res(ioctl(fd, _IO('H', 99)))));
    printf(",\"bad_pointer\":\"%s\"", ename(res(ioctl(fd, HEARTBEAT_IOC_OPTIN, (void *)8))));
    printf(",\"write_garbage\":\"%s\"", ename(write_str(fd, "abc\n")));
    printf(",\"write_bad_pid\":\"%s\"", ename(write_str(fd, "7 x\n")));
    printf(",\"write_big_tag\":\"%s\"", ename(write_str(fd, "70000\n")));
    printf(",\"write_two_lines\":\"%s\"", ename(write_str(fd, "7\n8\n")));
    printf(",\"write_self\":\"%s\"", ename(write_str(fd, "5\n")));
    printf(",\"write_self_again\":\"%s\"", ename(write_str(fd, "6 0\n")));
    printf(",\"optout_after_write\":\"%s\"", ename(optout(fd, 0)));
    drain(fd, NULL, 0);
    printf(",\"read_short\":\"%s\"", ename(res(read(fd, buf, 16))));
    printf(",\"read_empty\":\"%s\"", ename(res(read(fd, buf, 32))));
    struct pollfd p = {.fd = fd, .events = POLLIN | POLLOUT};
    int r = poll(&p, 1, 0);
    printf(",\"poll_empty\":\"%s\"", r == 1 && (p.revents & POLLOUT) && !(p.revents & POLLIN) ? "OUT" : "?");
    printf("}\n");
    close(fd);
    return 0;
}

static int cmd_probe_user(void) {
    int fd = open(HEARTBEAT_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) {
        printf("{\"open\":\"%s\"}\n", ename(errno));
        return 0;
    }
    char buf[64];
    printf("{\"open\":\"OK\",\"uid\":%u", (unsigned)getuid());
    printf(",\"read\":\"%s\"", ename(res(read(fd, buf, sizeof buf))));
    printf(",\"optin_pid1\":\"%s\"", ename(optin(fd, 1, 1)));
    printf(",\"optout_pid1\":\"%s\"", ename(optout(fd, 1)));
    printf(",\"optin_self\":\"%s\"", ename(optin(fd, 0, 1)));
    printf(",\"optout_self\":\"%s\"", ename(optout(fd, 0)));
    printf("}\n");
    close(fd);
    return 0;
}

static int cmd_flood(int argc, char **argv) {
    if (argc < 2) return 2;
    int n = atoi(argv[0]);
    unsigned tag = (unsigned)strtoul(argv[1], NULL, 0);
    if (n < 1 || n > 100000) return 2;
    int fd = open(HEARTBEAT_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return die(HEARTBEAT_DEVICE);
    drain(fd, NULL, 0);
    int failed = 0;
    uint64_t t0 = clock_ns(CLOCK_MONOTONIC);
    for (int i = 0; i < n; i++) {
        pid_t c = fork();
        if (c < 0) return die("fork");
        if (c == 0) _exit(optin(fd, 0, tag) ? 1 : 3);
        int st;
        if (waitpid(c, &st, 0) != c || !WIFEXITED(st) || WEXITSTATUS(st) != 3) failed++;
    }
    uint64_t t1 = clock_ns(CLOCK_MONOTONIC);
    static struct heartbeat_exit recs[8192];
    int got = drain(fd, recs, 8192);
    unsigned long long lost = 0;
    int bad_status = 0, bad_tag = 0, lost_records = 0;
    for (int i = 0; i < got && i < 8192; i++) {
        lost += recs[i].lost;
        if (recs[i].lost) lost_records++;
        if (recs[i].status != 3 << 8) bad_status++;
        if (recs[i].tag != tag) bad_tag++;
    }
    /* One more exit once the queue has room: its record carries the count of those dropped. */
    long long next_lost = -1;
    pid_t c = fork();
    if (c < 0) return die("fork");
    if (c == 0) _exit(optin(fd, 0, tag) ? 1 : 3);
    waitpid(c, NULL, 0);
    struct pollfd p = {.fd = fd, .events = POLLIN};
    if (poll(&p, 1, 5000) == 1) {
        struct heartbeat_exit r;
        if (read(fd, &r, sizeof r) == (ssize_t)sizeof r && r.pid == (unsigned)c) next_lost = r.lost;
    }
    printf("{\"children\":%d,\"optin_failed\":%d,\"fork_ms\":%llu,\"records\":%d,\"lost_in_records\":%llu,"
           "\"records_with_lost\":%d,\"bad_status\":%d,\"bad_tag\":%d,\"next_lost\":%lld}\n",
           n, failed, (unsigned long long)(t1 - t0) / 1000000, got, lost, lost_records, bad_status, bad_tag,
           next_lost);
    close(fd);
    return 0;
}

/* N + 1 children opt themselves in and stay until all have tried: with max_watched=N the last is
 * refused.  They exit 0 once the parent lets go. */
static int cmd_capacity(int argc, char **argv) {
    if (argc < 1) return 2;
    int n = atoi(argv[0]);
    if (n < 1 || n > 1000) return 2;
    int fd = open(HEARTBEAT_DEVICE, O_WRONLY | O_CLOEXEC);
    if (fd < 0) return die(HEARTBEAT_DEVICE);
    int results[2], hold[2];
    if (pipe(results) || pipe(hold)) return die("pipe");
    pid_t kids[1001];
    for (int i = 0; i <= n; i++) {
        kids[i] = fork();
        if (kids[i] < 0) return die("fork");
        if (kids[i] == 0) {
            close(results[0]);
            close(hold[1]);
            int e = optin(fd, 0, 4);
            if (write(results[1], &e, sizeof e) != sizeof e) _exit(2);
            char b;
            while (read(hold[0], &b, 1) > 0) {
            }
            _exit(0);
        }
    }
    close(results[1]);
    close(hold[0]);
    int ok = 0, enospc = 0, other = 0;
    for (int i = 0; i <= n; i++) {
        int e;
        if (read(results[0], &e, sizeof e) != sizeof e) {
            other++;
            continue;
        }
        if (e == 0) ok++;
        else if (e == ENOSPC) enospc++;
        else other++;
    }
    close(hold[1]);
    for (int i = 0; i <= n; i++) waitpid(kids[i], NULL, 0);
    printf("{\"tried\":%d,\"ok\":%d,\"enospc\":%d,\"other\":%d}\n", n + 1, ok, enospc, other);
    close(fd);
    return 0;
}

static void *thread_exit(void *arg) {
    struct timespec ts = {0, 20000000};
    nanosleep(&ts, NULL); /* after the leader */
    syscall(SYS_exit, (int)(intptr_t)arg);
    return NULL;
}

static void *thread_group_exit(void *arg) {
    (void)arg;
    exit(5);
}

static void *thread_sleep(void *arg) {
    (void)arg;
    pause();
    return NULL;
}

/* A child with 4 more threads opts in and ends: "group" (one thread calls exit(5): exit_group) or
 * "each" (the leader calls SYS_exit(7) first, then each thread its own SYS_exit). Reports the
 * records read for the child within 1 s of its end: exactly one is right, with the status
 * wait(2) gives (1280, or 1792: the leader's code). */
static int cmd_threads(int argc, char **argv) {
    if (argc < 1) return 2;
    int group = !strcmp(argv[0], "group");
    int fd = open(HEARTBEAT_DEVICE, O_RDWR | O_NONBLOCK | O_CLOEXEC);
    if (fd < 0) return die(HEARTBEAT_DEVICE);
    drain(fd, NULL, 0);
    pid_t c = fork();
    if (c < 0) return die("fork");
    if (c == 0) {
        if (optin(fd, 0, 6)) _exit(1);
        pthread_t t;
        for (int i = 0; i < 4; i++) {
            void *(*fn)(void *) = group ? (i == 2 ? thread_group_exit : thread_sleep) : thread_exit;
            if (pthread_create(&t, NULL, fn, (void *)(intptr_t)(10 + i))) _exit(1);
        }
        if (group) pause();
        syscall(SYS_exit, 7);
        _exit(1);
    }
    int st = 0;
    waitpid(c, &st, 0);
    struct timespec ts = {1, 0};
    nanosleep(&ts, NULL);
    struct heartbeat_exit recs[64];
    int n = drain(fd, recs, 64), mine = 0, status = -1;
    for (int i = 0; i < n && i < 64; i++)
        if (recs[i].pid == (unsigned)c) {
            mine++;
            status = recs[i].status;
        }
    printf("{\"mode\":\"%s\",\"wait_status\":%d,\"records\":%d,\"status\":%d}\n", argv[0], st, mine, status);
    close(fd);
    return 0;
}

/* Whether line is discd's JSON process.notice event naming node id and tag. */
static int is_notice(const char *line, const char *id, const char *tag) {
    char want[64];
    if (!strstr(line, "\"event\":\"process.notice\"")) return 0;
    const char *keys[2][2] = {{"id", id}, {"tag", tag}};
    for (int k = 0; k < 2; k++) {
        int found = 0;
        for (const char *end = ",}"; *end && !found; end++) {
            snprintf(want, sizeof want, "\"%s\":%s%c", keys[k][0], keys[k][1], *end);
            found = strstr(line, want) != NULL;
        }
        if (!found) return 0;
    }
    return 1;
}

/* Waits (polling every 2 ms) for MARKER to exist, then (every 1 ms) for LOG to gain a
 * process.notice line naming ID and TAG: the time between, on this guest's clock, without the
 * fork-and-grep delays of a shell loop. */
static int cmd_noticewait(int argc, char **argv) {
    if (argc < 4) return 2;
    const char *marker = argv[0], *logpath = argv[1], *id = argv[2], *tag = argv[3];
    double timeout = argc > 4 ? atof(argv[4]) : 30, notice_timeout = argc > 5 ? atof(argv[5]) : 15;
    uint64_t start = clock_ns(CLOCK_MONOTONIC), limit = start + (uint64_t)(timeout * 1e9);
    struct timespec two_ms = {0, 2000000}, one_ms = {0, 1000000};
    struct stat st;
    while (stat(marker, &st) != 0) {
        if (clock_ns(CLOCK_MONOTONIC) >= limit) {
            printf("{\"error\":\"no %s within %.0f s\"}\n", marker, timeout);
            return 0;
        }
        nanosleep(&two_ms, NULL);
    }
    uint64_t t1 = clock_ns(CLOCK_MONOTONIC);
    limit = t1 + (uint64_t)(notice_timeout * 1e9);
    int fd = open(logpath, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return die(logpath);
    static char line[65536];
    size_t len = 0;
    for (;;) {
        char buf[8192];
        ssize_t n = read(fd, buf, sizeof buf);
        if (n < 0) return die("read");
        if (n == 0) {
            if (clock_ns(CLOCK_MONOTONIC) >= limit) {
                printf("{\"error\":\"no process.notice for node %s tag %s within %.0f s\"}\n", id, tag,
                       notice_timeout);
                return 0;
            }
            nanosleep(&one_ms, NULL);
            continue;
        }
        for (ssize_t i = 0; i < n; i++) {
            if (buf[i] != '\n') {
                if (len < sizeof line - 1) line[len++] = buf[i];
                continue;
            }
            line[len] = '\0';
            len = 0;
            if (is_notice(line, id, tag)) {
                uint64_t t2 = clock_ns(CLOCK_MONOTONIC);
                printf("{\"ms\":%.1f,\"event\":%s}\n", (double)(t2 - t1) / 1e6, line);
                return 0;
            }
        }
    }
}

static size_t unescape(const char *s, char *out) {
    size_t n = 0;
    for (; *s; s++) {
        if (*s == '\\' && s[1]) {
            s++;
            out[n++] = *s == 'n' ? '\n' : *s == 't' ? '\t' : *s;
        } else {
            out[n++] = *s;
        }
    }
    return n;
}

static int cmd_write(int argc, char **argv) {
    if (argc < 1) return 2;
    int fd = open(argv[0], O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        printf("{\"open\":\"%s\"}\n", ename(errno));
        return 0;
    }
    printf("{\"open\":\"OK\",\"writes\":[");
    for (int i = 1; i < argc; i++) {
        char *buf = malloc(strlen(argv[i]) + 1);
        if (!buf) return die("malloc");
        size_t n = unescape(argv[i], buf);
        ssize_t w = write(fd, buf, n);
        printf("%s\"%s\"", i > 1 ? "," : "", w < 0 ? ename(errno) : (size_t)w == n ? "OK" : "SHORT");
        free(buf);
    }
    printf("],\"close\":\"%s\"}\n", ename(res(close(fd))));
    return 0;
}

int main(int argc, char **argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: hbtool optin|killwait|probe|probe-user|flood|capacity|threads|noticewait|write ...\n");
        return 2;
    }
    setvbuf(stdout, NULL, _IOLBF, 0);
    const char *c = argv[1];
    if (!strcmp(c, "optin")) return cmd_optin(argc - 2, argv + 2);
    if (!strcmp(c, "killwait")) return cmd_killwait(argc - 2, argv + 2);
    if (!strcmp(c, "probe")) return cmd_probe();
    if (!strcmp(c, "probe-user")) return cmd_probe_user();
    if (!strcmp(c, "flood")) return cmd_flood(argc - 2, argv + 2);
    if (!strcmp(c, "capacity")) return cmd_capacity(argc - 2, argv + 2);
    if (!strcmp(c, "noticewait")) return cmd_noticewait(argc - 2, argv + 2);
    if (!strcmp(c, "threads")) return cmd_threads(argc - 2, argv + 2);
    if (!strcmp(c, "write")) return cmd_write(argc - 2, argv + 2);
    fprintf(stderr, "hbtool: unknown command %s\n", c);
    return 2;
}
