/* channel_test.c -- producers and consumers hammer one channel.
 *
 * Usage: channel_test [PRODUCERS] [CONSUMERS] [MESSAGES_PER_PRODUCER] [CAPACITY] [SPIN_NS]
 * Each producer sends MESSAGES messages of varying length (0 .. max_message)
 * holding its id, a sequence number and a pattern derived from both; some
 * sends use short timeouts and retry, and some make one attempt that does
 * not wait (try_send, as vmown._channel_ext does) before the blocking call;
 * some receives likewise (try_recv).  Consumers check every byte of every
 * message, that each producer's messages reach them in increasing order,
 * and mark each (producer, seq) in a table that must end with every entry
 * seen exactly once.  When the producers are done, main closes the channel;
 * consumers drain it and must then get VMOWN_ECHAN_CLOSED.  A small ring
 * makes it wrap, fill and empty constantly, so both sides sleep and wake.
 * Built plain and with -fsanitize=thread by tests/test_channel.py.  Exit 0
 * and one summary line "failures=0 ..." when every invariant held.
 */
#define _GNU_SOURCE
#include "../vmown.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define MAX_MESSAGE 200
#define MAX_PRODUCERS 64

static vmown_channel *ch;
static long per_producer;
static int producers, consumers;
static _Atomic unsigned char *seen;  /* producers * per_producer entries */
static _Atomic long failures, received, timeouts, tries_done, tries_not_now;

static void fail(const char *what, long a, long b) {
    fprintf(stderr, "channel_test: invariant broken: %s (%ld, %ld)\n", what, a, b);
    atomic_fetch_add(&failures, 1);
}

static unsigned char pattern(long producer, long seq, long i) { return (unsigned char)(producer * 131 + seq * 7 + i); }

static size_t length_of(long producer, long seq) { return (size_t)((producer * 37 + seq * 13) % (MAX_MESSAGE + 1)); }

static void *producer(void *arg) {
    long id = (long)(size_t)arg;
    char msg[MAX_MESSAGE];
    for (long seq = 0; seq < per_producer; seq++) {
        size_t len = length_of(id, seq);
        if (len < 16) len = 16;
        memcpy(msg, &id, 8);
        memcpy(msg + 8, &seq, 8);
        for (size_t i = 16; i < len; i++) msg[i] = (char)pattern(id, seq, (long)i);
        int rc;
        if (seq % 5 == 1) {
            rc = vmown_channel_try_send(ch, msg, len);
            atomic_fetch_add(rc == VMOWN_EAGAIN ? &tries_not_now : &tries_done, 1);
            if (rc == VMOWN_EAGAIN)
                while ((rc = vmown_channel_send(ch, msg, len)) == VMOWN_EINTR) {
                }
        } else if (seq % 5 == 0) {
            while ((rc = vmown_channel_send_timed(ch, msg, len, 20000)) == VMOWN_ETIMEDOUT || rc == VMOWN_EINTR)
                if (rc == VMOWN_ETIMEDOUT) atomic_fetch_add(&timeouts, 1);
        } else {
            while ((rc = vmown_channel_send(ch, msg, len)) == VMOWN_EINTR) {
            }
        }
        if (rc != 0) fail("send", rc, seq);
    }
    return NULL;
}

static void *consumer(void *arg) {
    char buf[MAX_MESSAGE];
    vmown_channel_port port = {.ch = ch, .buf = buf, .cap = sizeof buf};
    long last[MAX_PRODUCERS];
    for (int i = 0; i < MAX_PRODUCERS; i++) last[i] = -1;
    for (long k = (long)(size_t)arg;; k++) {
        int64_t n;
        if (k % 7 == 1) {
            n = vmown_channel_try_recv(&port);
            atomic_fetch_add(n == VMOWN_EAGAIN ? &tries_not_now : &tries_done, 1);
            if (n == VMOWN_EAGAIN) continue;  /* the next k blocks */
        } else {
            n = k % 7 == 0 ? vmown_channel_recv_timed(&port, 30000) : vmown_channel_recv(&port);
        }
        if (n == VMOWN_ETIMEDOUT || n == VMOWN_EINTR) {  /* EINTR: a slice asleep; look again */
            if (n == VMOWN_ETIMEDOUT) atomic_fetch_add(&timeouts, 1);
            continue;
        }
        if (n == VMOWN_ECHAN_CLOSED) break;
        if (n < 16) {
            fail("recv", (long)n, k);
            break;
        }
        long id, seq;
        memcpy(&id, buf, 8);
        memcpy(&seq, buf + 8, 8);
        if (id < 0 || id >= producers || seq < 0 || seq >= per_producer) {
            fail("message names no producer/seq", id, seq);
            continue;
        }
        size_t len = length_of(id, seq);
        if ((size_t)n != (len < 16 ? 16 : len)) fail("length", (long)n, (long)len);
        for (long i = 16; i < n; i++)
            if ((unsigned char)buf[i] != pattern(id, seq, i)) {
                fail("payload byte", i, seq);
                break;
            }
        if (seq <= last[id]) fail("out of order for its producer", seq, last[id]);
        last[id] = seq;
        if (atomic_fetch_add(&seen[id * per_producer + seq], 1) != 0) fail("duplicate", id, seq);
        atomic_fetch_add(&received, 1);
    }
    return NULL;
}

int main(int argc, char **argv) {
    producers = argc > 1 ? atoi(argv[1]) : 4;
    consumers = argc > 2 ? atoi(argv[2]) : 4;
    per_producer = argc > 3 ? atol(argv[3]) : 20000;
    uint64_t capacity = argc > 4 ? strtoull(argv[4], NULL, 10) : 1024;
    int64_t spin_ns = argc > 5 ? atoll(argv[5]) : 2000;
    if (producers < 1 || producers > MAX_PRODUCERS || consumers < 1 || per_producer < 1) return 2;
    uint64_t size = vmown_channel_size(capacity);
    void *mem = NULL;
    if (size == 0 || posix_memalign(&mem, 4096, size) != 0) return 2;
    seen = calloc((size_t)(producers * per_producer), 1);
    int rc = vmown_channel_init(mem, size, capacity, MAX_MESSAGE, &ch);
    if (rc != 0 || !seen) {
        fprintf(stderr, "channel_test: init failed: %d\n", rc);
        return 2;
    }
    vmown_channel_set_spin_ns(ch, spin_ns);
    if (vmown_channel_send(ch, "x", MAX_MESSAGE + 1) != VMOWN_ECHAN_TOOBIG) fail("too big accepted", 0, 0);
    if (vmown_channel_try_send(ch, "x", MAX_MESSAGE + 1) != VMOWN_ECHAN_TOOBIG) fail("too big tried", 0, 0);
    {
        char buf[MAX_MESSAGE];
        vmown_channel_port port = {.ch = ch, .buf = buf, .cap = sizeof buf};
        if (vmown_channel_try_recv(&port) != VMOWN_EAGAIN) fail("try_recv on an empty channel", 0, 0);
    }
    pthread_t threads[2 * MAX_PRODUCERS + 64];
    int nthreads = 0;
    for (long i = 0; i < consumers; i++) pthread_create(&threads[nthreads++], NULL, consumer, (void *)(size_t)i);
    for (long i = 0; i < producers; i++) pthread_create(&threads[nthreads++], NULL, producer, (void *)(size_t)i);
    for (int i = consumers; i < nthreads; i++) pthread_join(threads[i], NULL);
    while ((rc = vmown_channel_close(ch, -1)) == VMOWN_EINTR) {
    }
    if (rc != 0) fail("close", rc, 0);
    for (int i = 0; i < consumers; i++) pthread_join(threads[i], NULL);
    if (vmown_channel_send(ch, "x", 1) != VMOWN_ECHAN_CLOSED) fail("send after close", 0, 0);
    if (vmown_channel_try_send(ch, "x", 1) != VMOWN_ECHAN_CLOSED) fail("try_send after close", 0, 0);
    {
        char buf[MAX_MESSAGE];
        vmown_channel_port port = {.ch = ch, .buf = buf, .cap = sizeof buf};
        if (vmown_channel_try_recv(&port) != VMOWN_ECHAN_CLOSED) fail("try_recv after close", 0, 0);
    }
    for (long i = 0; i < producers * per_producer; i++)
        if (atomic_load(&seen[i]) != 1) {
            fail("message lost", i / per_producer, i % per_producer);
            break;
        }
    vmown_channel_stats stats;
    vmown_channel_stats_read(ch, &stats);
    if (stats.sent != stats.received || stats.messages != 0 || stats.used != 0 || !stats.closed || stats.broken)
        fail("stats after draining", (long)stats.sent, (long)stats.received);
    printf("failures=%ld received=%ld timeouts=%ld tries=%ld/%ld send_sleeps=%llu recv_sleeps=%llu wakes=%llu\n",
           atomic_load(&failures), atomic_load(&received), atomic_load(&timeouts), atomic_load(&tries_done),
           atomic_load(&tries_done) + atomic_load(&tries_not_now),
           (unsigned long long)stats.send_sleeps, (unsigned long long)stats.recv_sleeps,
           (unsigned long long)stats.wakes);
    vmown_channel_detach(ch);
    free(mem);
    free((void *)seen);
    return atomic_load(&failures) ? 1 : 0;
}
