/* channel_bench.c -- the channel between two processes, from C: what the
 * mechanism itself costs, without Python and cffi on top.
 *
 * Usage: channel_bench MESSAGES ROUNDS SAMPLES
 * Two channels in one anonymous MAP_SHARED mapping, a forked child.
 *   stream: the parent sends MESSAGES 64-byte messages through a 1 MiB ring,
 *           the child receives them and answers "done" on the other channel;
 *           messages / (first send .. answer), best of ROUNDS rounds.
 *   rtt:    16-byte ping, echoed by the child; p50 and p99 of SAMPLES round
 *           trips after 1000 untimed ones (CLOCK_MONOTONIC).
 * Prints one JSON object: c_msgs_per_s, c_rtt_p50_us, c_rtt_p99_us.
 */
#define _GNU_SOURCE
#include "../../native/vmown.h"

#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#define STREAM_CAPACITY (1u << 20)
#define CONTROL_CAPACITY 4096u
#define WARMUP 1000

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void check(int64_t rc, const char *what) {
    if (rc < 0) {
        fprintf(stderr, "channel_bench: %s failed: %lld\n", what, (long long)rc);
        exit(1);
    }
}

/* The calls return VMOWN_EINTR after each slice asleep: call again. */
static int send_all(vmown_channel *ch, const char *data, uint64_t len) {
    int rc;
    while ((rc = vmown_channel_send(ch, data, len)) == VMOWN_EINTR) {
    }
    return rc;
}

static int64_t recv_one(vmown_channel_port *port) {
    int64_t rc;
    while ((rc = vmown_channel_recv(port)) == VMOWN_EINTR) {
    }
    return rc;
}

static int compare(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

int main(int argc, char **argv) {
    if (argc != 4) {
        fprintf(stderr, "usage: channel_bench MESSAGES ROUNDS SAMPLES\n");
        return 2;
    }
    long messages = atol(argv[1]), rounds = atol(argv[2]), samples = atol(argv[3]);
    if (messages < 1 || rounds < 1 || samples < 1) return 2;
    uint64_t data_size = vmown_channel_size(STREAM_CAPACITY), control_size = vmown_channel_size(CONTROL_CAPACITY);
    size_t page = vmown_page_size(), data_len = (data_size + page - 1) / page * page;
    void *mem;
    check(vmown_map_anonymous(data_len + 2 * page, &mem), "mmap");
    vmown_channel *data, *control;
    check(vmown_channel_init(mem, data_size, STREAM_CAPACITY, 1024, &data), "init");
    check(vmown_channel_init((char *)mem + data_len, control_size, CONTROL_CAPACITY, 64, &control), "init");
    char buf[1024];
    vmown_channel_port data_port = {.ch = data, .buf = buf, .cap = sizeof buf};
    vmown_channel_port control_port = {.ch = control, .buf = buf, .cap = sizeof buf};
    long total_rtt = WARMUP + samples;

    pid_t pid = fork();
    if (pid < 0) return 1;
    if (pid == 0) {
        for (long r = 0; r < rounds; r++) {
            check(send_all(control, "ready", 5), "send");
            for (long i = 0; i < messages; i++) check(recv_one(&data_port), "recv");
            check(send_all(control, "done", 4), "send");
        }
        for (long i = 0; i < total_rtt; i++) {
            int64_t n = recv_one(&data_port);
            check(n, "recv");
            check(send_all(control, buf, (uint64_t)n), "send");
        }
        _exit(0);
    }

    char message[64];
    memset(message, 'm', sizeof message);
    double best = 0;
    for (long r = 0; r < rounds; r++) {
        check(recv_one(&control_port), "recv");
        int64_t start = now_ns();
        for (long i = 0; i < messages; i++) check(send_all(data, message, sizeof message), "send");
        check(recv_one(&control_port), "recv");
        double rate = messages / ((now_ns() - start) / 1e9);
        if (rate > best) best = rate;
    }
    int64_t *rtt = calloc((size_t)samples, sizeof *rtt);
    if (!rtt) return 1;
    for (long i = 0; i < total_rtt; i++) {
        int64_t start = now_ns();
        check(send_all(data, message, 16), "send");
        check(recv_one(&control_port), "recv");
        if (i >= WARMUP) rtt[i - WARMUP] = now_ns() - start;
    }
    int status;
    if (waitpid(pid, &status, 0) != pid || !WIFEXITED(status) || WEXITSTATUS(status) != 0) {
        fprintf(stderr, "channel_bench: the child failed\n");
        return 1;
    }
    qsort(rtt, (size_t)samples, sizeof *rtt, compare);
    printf("{\"c_msgs_per_s\": %.0f, \"c_rtt_p50_us\": %.3f, \"c_rtt_p99_us\": %.3f}\n", best,
           rtt[(samples - 1) / 2] / 1e3, rtt[(samples * 99 + 99) / 100 - 1] / 1e3);
    return 0;
}
