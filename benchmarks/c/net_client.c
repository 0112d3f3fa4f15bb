/* The client of suite `net`: the same program against every echo server.
 *
 *   net_client PORT CONNECTIONS MESSAGE_BYTES WARMUP_S DURATION_S
 *
 * Opens CONNECTIONS TCP connections to 127.0.0.1:PORT (TCP_NODELAY), then on
 * each one, closed loop: send MESSAGE_BYTES, wait until as many came back,
 * check them, send again.  One thread, epoll, non-blocking sockets: the
 * client costs a few microseconds of CPU per request, far less than any of
 * the Python servers, so the figure is the server's.  Requests completed in
 * the WARMUP_S seconds after connecting are not counted; then DURATION_S
 * seconds are.  Prints one JSON object: requests per second and the p50 and
 * p99 of the latency (send of a message to the last byte of its echo), in
 * microseconds, and the requests counted and completed in all.  Exits 1 with a message on stderr if the server fails.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

typedef struct {
    int fd;
    size_t sent;     /* bytes of the current message written */
    size_t received; /* bytes of its echo read */
    uint64_t start_ns;
    unsigned char seed;
} conn_t;

static size_t msg_bytes;
static unsigned char *pattern;

static uint64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (uint64_t)ts.tv_sec * 1000000000u + (uint64_t)ts.tv_nsec;
}

static void fail(const char *what) {
    fprintf(stderr, "net_client: %s: %s\n", what, strerror(errno));
    exit(1);
}

static int cmp_u64(const void *a, const void *b) {
    uint64_t x = *(const uint64_t *)a, y = *(const uint64_t *)b;
    return x < y ? -1 : x > y;
}

/* Write what is left of the current message; 0 when it is all out. */
static int push(conn_t *c) {
    while (c->sent < msg_bytes) {
        ssize_t n = send(c->fd, pattern + c->seed + c->sent, msg_bytes - c->sent, MSG_NOSIGNAL);
        if (n < 0) {
            if (errno == EAGAIN) return 1;
            fail("send");
        }
        c->sent += (size_t)n;
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc != 6) {
        fprintf(stderr, "usage: net_client PORT CONNECTIONS MESSAGE_BYTES WARMUP_S DURATION_S\n");
        return 2;
    }
    int port = atoi(argv[1]), count = atoi(argv[2]);
    msg_bytes = (size_t)atol(argv[3]);
    double warmup_s = atof(argv[4]), duration_s = atof(argv[5]);
    pattern = malloc(msg_bytes + 256);
    unsigned char *buf = malloc(msg_bytes);
    conn_t *conns = calloc((size_t)count, sizeof *conns);
    size_t cap = 1 << 20, samples = 0;
    uint64_t *lat = malloc(cap * sizeof *lat);
    if (!pattern || !buf || !conns || !lat) fail("malloc");
    for (size_t i = 0; i < msg_bytes + 256; i++) pattern[i] = (unsigned char)(i * 7 + 3);

    int ep = epoll_create1(EPOLL_CLOEXEC);
    if (ep < 0) fail("epoll_create1");
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((uint16_t)port)};
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    for (int i = 0; i < count; i++) {
        conn_t *c = &conns[i];
        c->fd = socket(AF_INET, SOCK_STREAM, 0);
        if (c->fd < 0) fail("socket");
        if (connect(c->fd, (struct sockaddr *)&addr, sizeof addr) < 0) fail("connect");
        int one = 1;
        setsockopt(c->fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
        if (fcntl(c->fd, F_SETFL, fcntl(c->fd, F_GETFL) | O_NONBLOCK) < 0) fail("fcntl");
        struct epoll_event ev = {.events = EPOLLIN | EPOLLOUT | EPOLLET, .data.ptr = c};
        if (epoll_ctl(ep, EPOLL_CTL_ADD, c->fd, &ev) < 0) fail("epoll_ctl");
        c->seed = (unsigned char)i;
        c->start_ns = now_ns();
        push(c);
    }

    uint64_t begin = now_ns();
    uint64_t count_from = begin + (uint64_t)(warmup_s * 1e9);
    uint64_t end = count_from + (uint64_t)(duration_s * 1e9);
    uint64_t counted = 0, all = 0;
    struct epoll_event events[256];
    for (;;) {
        uint64_t t = now_ns();
        if (t >= end) break;
        int n = epoll_wait(ep, events, 256, 100);
        if (n < 0) {
            if (errno == EINTR) continue;
            fail("epoll_wait");
        }
        for (int k = 0; k < n; k++) {
            conn_t *c = events[k].data.ptr;
            if (events[k].events & EPOLLOUT) push(c);
            for (;;) {
                ssize_t got = recv(c->fd, buf, msg_bytes - c->received, 0);
                if (got < 0) {
                    if (errno == EAGAIN) break;
                    fail("recv");
                }
                if (got == 0) {
                    errno = ECONNRESET;
                    fail("the server closed a connection");
                }
                if (memcmp(buf, pattern + c->seed + c->received, (size_t)got) != 0) {
                    errno = EPROTO;
                    fail("echo differs from the message");
                }
                c->received += (size_t)got;
                if (c->received == msg_bytes) {
                    uint64_t done = now_ns();
                    all++;
                    if (done >= count_from && done < end) {
                        counted++;
                        if (samples == cap) {
                            cap *= 2;
                            lat = realloc(lat, cap * sizeof *lat);
                            if (!lat) fail("realloc");
                        }
                        lat[samples++] = done - c->start_ns;
                    }
                    c->seed = (unsigned char)(c->seed + 1);
                    c->sent = c->received = 0;
                    c->start_ns = done;
                    push(c);
                }
            }
        }
    }
    if (samples == 0) {
        errno = ETIMEDOUT;
        fail("no request completed");
    }
    qsort(lat, samples, sizeof *lat, cmp_u64);
    printf("{\"rps\": %.1f, \"p50_us\": %.1f, \"p99_us\": %.1f, \"requests\": %llu, \"all_requests\": %llu}\n",
           (double)counted / duration_s, (double)lat[samples / 2] / 1e3,
           (double)lat[(size_t)((double)samples * 0.99)] / 1e3, (unsigned long long)counted, (unsigned long long)all);
    return 0;
}
