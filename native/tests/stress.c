/* stress.c -- many threads cycle own -> critical section -> disown.
 *
 * Usage: stress [THREADS] [CYCLES] [WIDEN_NS] [HEARTBEAT_HZ]
 * Each cycle takes the VM (by own, by try_own until it wins, by own with a
 * timeout of up to 200 us again and again until it wins, or by yield when it
 * already owns and others wait), checks inside the critical section that
 * nobody else is inside and that the owner word names it, bumps a plain
 * (non-atomic) counter, and disowns.  Some cycles also make a callout in the
 * middle (vmown_callout_begin/end: a soft grant to the head waiter, stolen
 * back or claimed) and check the critical section again after it.  With a
 * heartbeat (HEARTBEAT_HZ > 0), callouts that find nobody waiting go out
 * lazily (grants.c, "Lazy callouts"), some cycles make a callout of up to
 * 300 us (past a tick at 10 kHz, so that the heartbeat revokes it for a
 * thread that queued meanwhile), and threads pause outside the VM now and
 * then so that the queue empties and callouts go lazy.  At the end the
 * counter must equal THREADS * CYCLES and the queue must be empty (the timed
 * owns leave it without the lock: owner.c, "Leaving the queue"; some of them
 * must have timed out).  Built plain and with
 * -fsanitize=thread by tests/test_native.py.  Exit 0 and one summary line
 * when every invariant held.
 */
#define _GNU_SOURCE
#include <vmown.h>

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

static vmown_vm *vm;
static long cycles;
static unsigned long counter;  /* plain: only the owner touches it */
static int inside;             /* plain: only the owner touches it */
static _Atomic long failures;
static _Atomic long timeouts;  /* timed owns that left the queue */
static int heartbeat_hz;

static void fail(const char *what) {
    fprintf(stderr, "stress: invariant broken: %s\n", what);
    failures++;
}

static void critical(int me) {
    if (inside) fail("two threads inside the critical section");
    inside = 1;
    if (vmown_owner(vm) != me) fail("owner word does not name the thread inside");
    counter++;
    inside = 0;
}

static void *worker(void *arg) {
    unsigned seed = (unsigned)(size_t)arg * 2654435761u;
    int me = vmown_register(vm);
    if (me < 1) { fail("register"); return NULL; }
    if (vmown_bind_thread(vm, (uint32_t)me) != 0) fail("bind");
    for (long i = 0; i < cycles; i++) {
        int how = rand_r(&seed) % 8, rc;
        if (how == 0) {
            while ((rc = vmown_try_own(vm, me)) == 0) sched_yield();
            if (rc != 1) fail("try_own");
        } else if (how == 6) {
            /* Timed: each timeout leaves the queue, racing the grants. */
            while ((rc = vmown_own_wait(vm, me, rand_r(&seed) % 200000, 0)) == VMOWN_ETIMEDOUT) timeouts++;
            if (rc != 0) fail("own_wait");
        } else if ((rc = vmown_own(vm, me)) != 0) {
            fail("own");
        }
        critical(me);
        if (how == 2) sched_yield();  /* own while descheduled: others queue */
        if (how == 1) {
            rc = vmown_yield(vm, me, -1, 0);  /* 1 = yielded and got it back */
            if (rc < 0) fail("yield");
            critical(me);
            counter--;  /* the second visit is not a cycle */
        }
        if (how == 3 || how == 4) {
            /* A callout: soft grant if others wait; 3 comes back at once
             * (the steal races the claim), 4 after a yield (the claim wins). */
            uint32_t token = vmown_callout_begin((uint64_t)i + 1);
            if (token == 0) fail("callout_begin");
            if (how == 4) sched_yield();
            vmown_callout_end(token);
            critical(me);
            counter--;
        }
        if (how == 5 && heartbeat_hz) {
            /* long enough to be revoked; the return races the revoker */
            uint32_t token = vmown_callout_begin((uint64_t)i + 1);
            if (token == 0) fail("callout_begin");
            usleep((useconds_t)(rand_r(&seed) % 300));
            vmown_callout_end(token);
            critical(me);
            counter--;
            /* Stay a while (up to 200 us): a revoker that wrongly went on
             * would hand the VM away under us meanwhile. */
            int64_t until = vmown_now_ns() + rand_r(&seed) % 200000;
            while (vmown_now_ns() < until)
                if (vmown_owner(vm) != me) fail("the VM was taken from a thread back from its callout");
        }
        if (vmown_disown(vm, me, (uint64_t)i) != 0) fail("disown");
        if (heartbeat_hz && rand_r(&seed) % 4 == 0) usleep((useconds_t)(rand_r(&seed) % 100));
    }
    if (vmown_unregister(vm, me) != 0) fail("unregister");
    vmown_bind_thread(NULL, 0);
    return NULL;
}

int main(int argc, char **argv) {
    int threads = argc > 1 ? atoi(argv[1]) : 8;
    cycles = argc > 2 ? atol(argv[2]) : 100000;
    vmown_debug_set_widen_ns(argc > 3 ? atol(argv[3]) : 0);
    heartbeat_hz = argc > 4 ? atoi(argv[4]) : 0;
    size_t len = vmown_block_size(64);
    void *mem;
    if (vmown_map_anonymous(len, &mem) != 0 || vmown_vm_init(mem, len, 64, &vm) != 0) {
        fprintf(stderr, "stress: cannot make a control block\n");
        return 2;
    }
    pthread_t t[256];
    if (threads < 1 || threads > 256) return 2;
    if (heartbeat_hz && vmown_heartbeat_start(vm, (uint32_t)heartbeat_hz) != 0) {
        fprintf(stderr, "stress: cannot start the heartbeat\n");
        return 2;
    }
    for (int i = 0; i < threads; i++) pthread_create(&t[i], NULL, worker, (void *)(size_t)(i + 1));
    for (int i = 0; i < threads; i++) pthread_join(t[i], NULL);
    vmown_heartbeat_stats h;
    vmown_heartbeat_read(vm, &h);
    if (vmown_heartbeat_stop(vm) != 0) fail("heartbeat stop");
    vmown_counters c;
    vmown_counters_read(vm, &c);
    if (counter != (unsigned long)threads * (unsigned long)cycles) fail("counter is not exact");
    /* Reading the queue unlinks the slots that left and are still linked. */
    uint32_t queued[64];
    if (vmown_queue_read(vm, queued, 64) != 0) fail("the queue is not empty");
    if (vmown_waiters(vm) != 0 || vmown_owner(vm) != 0) fail("queue or owner left behind");
    if (vmown_slots_in_use(vm) != 0) fail("slots left registered");
    printf("stress: threads=%d cycles=%ld counter=%lu fast=%llu slow=%llu waits=%llu hand_offs=%llu soft_grants=%llu "
           "steals=%llu robberies=%llu lazy=%llu revocations=%llu called_off=%llu timeouts=%ld failures=%ld\n",
           threads, cycles, counter, (unsigned long long)c.fast_owns, (unsigned long long)c.slow_owns,
           (unsigned long long)c.waits, (unsigned long long)c.hand_offs, (unsigned long long)c.soft_grants,
           (unsigned long long)c.steals, (unsigned long long)c.robberies, (unsigned long long)c.lazy_disowns,
           (unsigned long long)h.revocations, (unsigned long long)h.called_off, (long)timeouts, (long)failures);
    vmown_vm_detach(vm);
    munmap(mem, len);
    return failures ? 1 : 0;
}
