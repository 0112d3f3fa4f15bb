/* ownership_bench.c -- the C half of the `ownership` suite; prints one JSON object.
 *
 * Usage: ownership_bench PAIRS_PER_BATCH BATCHES SAMPLES GAP_NS
 * Links the core's sources directly (no Python, no cffi); benchmarks/_cbuild.py
 * builds it with the core's own list of sources.
 *
 * pair_c_ns: one thread, nobody else registered, disown() + own() in a tight
 *   loop; both take their fast paths (an atomic store + a load of `waiters_and_hb_asleep`,
 *   then a CAS).  Each batch of PAIRS_PER_BATCH pairs gives a mean; we report
 *   the MINIMUM over BATCHES batch means.  Noise on a shared machine (other
 *   tenants, interrupts, frequency dips) only ever adds time, so the fastest
 *   batch is the best estimate of what the code itself costs.  The calls are
 *   to another translation unit (no LTO), so nothing is optimised away, and
 *   each result is checked as a real caller would.
 *
 * handoff_p50_us / handoff_p99_us: the owner (main thread) hands the VM to a
 *   waiter (a second thread) that is queued and asleep on its semaphore: the
 *   owner stamps CLOCK_MONOTONIC right before vmown_disown(), the waiter
 *   stamps right after vmown_own() returns; one sample is the difference.
 * sem_wake_p50_us / sem_wake_p99_us: the floor: the same two threads, the
 *   same method, through a bare POSIX semaphore (stamp before sem_post, stamp
 *   after sem_wait returns).  pshared = 1, as the core's slot semaphores, so
 *   both paths go through the same kind of futex.
 *
 * Why the waiter is known to be asleep when the owner releases: the owner
 * waits until the waiter is queued (vmown_waiters() == 1, or a flag set right
 * before sem_wait), then until the kernel reports the waiter's thread state as
 * 'S' (/proc/self/task/TID/stat; a thread that spins or yields reads 'R'),
 * then sleeps GAP_NS more, so the waiter has been asleep for a while, as a
 * callout's thread that queued behind a busy owner would be.  From the queued
 * point on, the only place the waiter can sleep is its semaphore: nobody holds
 * the block's lock.  Every hand-off is checked afterwards in the counters.
 *
 * The two kinds of sample alternate (even rounds hand-off, odd rounds bare
 * semaphore), so both see the same machine conditions and their ratio is fair
 * even when the machine's load drifts during the run.
 */
#define _GNU_SOURCE
#include "vmown.h"

#include <fcntl.h>
#include <math.h>
#include <pthread.h>
#include <sched.h>
#include <semaphore.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

enum { HANDOFF, SEM_WAKE, KINDS };

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static _Noreturn void die(const char *what, long rc) {
    fprintf(stderr, "ownership_bench: %s failed (%ld)\n", what, rc);
    exit(1);
}

/* ---- pair_c_ns ---- */

static double pair_ns(vmown_vm *vm, long pairs, int batches) {
    int me = vmown_register(vm);
    if (me < 1 || vmown_own(vm, me) != 0) die("register + own", me);
    double best = INFINITY;
    for (int b = 0; b < batches; b++) {
        int64_t start = now_ns();
        for (long i = 0; i < pairs; i++)
            if (vmown_disown(vm, me, 0) != 0 || vmown_own(vm, me) != 0) die("disown + own", i);
        double mean = (double)(now_ns() - start) / (double)pairs;
        if (mean < best) best = mean;
    }
    if (vmown_unregister(vm, me) != 0) die("unregister", 0);
    return best;
}

/* ---- hand-off and semaphore wake latency ---- */

/* What the owner (main thread) and the waiter thread share. */
static struct {
    vmown_vm *vm;
    sem_t sem;
    long samples;                 /* per kind */
    _Atomic long round;           /* owner -> waiter: start round r (1-based) */
    _Atomic long ready;           /* waiter -> owner: about to sem_wait in round r */
    _Atomic long done;            /* waiter -> owner: round r recorded */
    _Atomic int64_t t0;           /* owner's stamp, ns */
    _Atomic pid_t tid;            /* the waiter's thread id */
    int64_t *latency_ns[KINDS];
} shared;

static void spin_until(_Atomic long *word, long value) {
    while (atomic_load_explicit(word, memory_order_acquire) != value) sched_yield();
}

static void *waiter(void *arg) {
    (void)arg;
    int me = vmown_register(shared.vm);
    if (me < 1) die("register (waiter)", me);
    atomic_store(&shared.tid, (pid_t)syscall(SYS_gettid));
    for (long r = 1; r <= KINDS * shared.samples; r++) {
        spin_until(&shared.round, r);
        int kind = (int)(r % KINDS), rc;
        if (kind == HANDOFF) {
            if ((rc = vmown_own(shared.vm, me)) != 0) die("own (waiter)", rc);
        } else {
            atomic_store_explicit(&shared.ready, r, memory_order_release);
            while (sem_wait(&shared.sem) != 0) continue;  /* EINTR only: no signals here */
        }
        int64_t t1 = now_ns();
        int64_t t0 = atomic_load_explicit(&shared.t0, memory_order_acquire);
        shared.latency_ns[kind][(r - 1) / KINDS] = t1 - t0;
        if (kind == HANDOFF && (rc = vmown_disown(shared.vm, me, 0)) != 0) die("disown (waiter)", rc);
        atomic_store_explicit(&shared.done, r, memory_order_release);
    }
    if (vmown_unregister(shared.vm, me) != 0) die("unregister (waiter)", 0);
    return NULL;
}

/* The scheduler state letter of a thread of this process ('R', 'S', ...). */
static char thread_state(pid_t tid) {
    char path[64], buf[512];
    snprintf(path, sizeof path, "/proc/self/task/%d/stat", (int)tid);
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) die("open /proc/self/task/TID/stat", tid);
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    buf[n > 0 ? n : 0] = '\0';
    char *p = strrchr(buf, ')');  /* comm may hold spaces and parentheses */
    return p && p[1] == ' ' ? p[2] : '?';
}

static void sleep_ns(long ns) {
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    while (nanosleep(&ts, &ts) != 0) continue;
}

static void owner_rounds(long gap_ns) {
    int me = vmown_register(shared.vm), rc;
    if (me < 1) die("register (owner)", me);
    while (atomic_load(&shared.tid) == 0) sched_yield();
    pid_t tid = atomic_load(&shared.tid);
    for (long r = 1; r <= KINDS * shared.samples; r++) {
        int kind = (int)(r % KINDS);
        /* The waiter disowned before its last `done`: this own is uncontended. */
        if (kind == HANDOFF && (rc = vmown_own(shared.vm, me)) != 0) die("own (owner)", rc);
        atomic_store_explicit(&shared.round, r, memory_order_release);
        if (kind == HANDOFF) {
            while (vmown_waiters(shared.vm) != 1) sched_yield();
        } else {
            spin_until(&shared.ready, r);
        }
        while (thread_state(tid) != 'S') sched_yield();
        sleep_ns(gap_ns);
        atomic_store_explicit(&shared.t0, now_ns(), memory_order_release);
        if (kind == HANDOFF) {
            if ((rc = vmown_disown(shared.vm, me, 0)) != 0) die("disown (owner)", rc);
        } else if (sem_post(&shared.sem) != 0) {
            die("sem_post", 0);
        }
        spin_until(&shared.done, r);
    }
    if (vmown_unregister(shared.vm, me) != 0) die("unregister (owner)", 0);
}

static int cmp_i64(const void *a, const void *b) {
    int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
    return (x > y) - (x < y);
}

/* Nearest-rank percentile (pct in 1..100) of sorted samples, in microseconds. */
static double percentile_us(const int64_t *sorted, long n, long pct) {
    return (double)sorted[(pct * n + 99) / 100 - 1] / 1e3;
}

int main(int argc, char **argv) {
    if (argc != 5) {
        fprintf(stderr, "usage: %s PAIRS_PER_BATCH BATCHES SAMPLES GAP_NS\n", argv[0]);
        return 2;
    }
    long pairs = atol(argv[1]), samples = atol(argv[3]), gap_ns = atol(argv[4]);
    int batches = atoi(argv[2]);
    if (pairs < 1 || batches < 1 || samples < 1 || gap_ns < 0) die("parsing arguments", 0);

    size_t len = vmown_block_size(4);
    void *mem;
    int rc;
    if ((rc = vmown_map_anonymous(len, &mem)) != 0) die("vmown_map_anonymous", rc);
    if ((rc = vmown_vm_init(mem, len, 4, &shared.vm)) != 0) die("vmown_vm_init", rc);

    double pair = pair_ns(shared.vm, pairs, batches);

    shared.samples = samples;
    for (int k = 0; k < KINDS; k++)
        if (!(shared.latency_ns[k] = malloc(sizeof(int64_t) * (size_t)samples))) die("malloc", 0);
    if (sem_init(&shared.sem, /*pshared=*/1, 0) != 0) die("sem_init", 0);
    vmown_counters before, after;
    vmown_counters_read(shared.vm, &before);
    pthread_t thread;
    if ((rc = pthread_create(&thread, NULL, waiter, NULL)) != 0) die("pthread_create", rc);
    owner_rounds(gap_ns);
    pthread_join(thread, NULL);
    vmown_counters_read(shared.vm, &after);
    uint64_t hand_offs = after.hand_offs - before.hand_offs;
    if (hand_offs != (uint64_t)samples) die("check: one hand-off per hand-off sample", (long)hand_offs);

    int64_t *handoff = shared.latency_ns[HANDOFF], *sem_wake = shared.latency_ns[SEM_WAKE];
    qsort(handoff, (size_t)samples, sizeof *handoff, cmp_i64);
    qsort(sem_wake, (size_t)samples, sizeof *sem_wake, cmp_i64);
    printf("{\"pair_c_ns\": %.2f, \"handoff_p50_us\": %.2f, \"handoff_p99_us\": %.2f, "
           "\"sem_wake_p50_us\": %.2f, \"sem_wake_p99_us\": %.2f, \"samples\": %ld}\n",
           pair, percentile_us(handoff, samples, 50), percentile_us(handoff, samples, 99),
           percentile_us(sem_wake, samples, 50), percentile_us(sem_wake, samples, 99), samples);
    return 0;
}
