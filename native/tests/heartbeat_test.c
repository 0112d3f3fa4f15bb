/* heartbeat_test.c -- the heartbeat, parking and activation, from C.
 *
 * Usage: heartbeat_test [ROUNDS]
 * Checks, printing one line each and exiting non-zero on the first failure:
 *   park/unpark/timeout: a parked worker is woken without the VM by unpark,
 *     and a park with a timeout returns ETIMEDOUT, off the idle stack; so
 *     does a new worker's park (vmown_park_new), which the owner may not make;
 *   activation: the owner publishes work and disowns around a "callout" that
 *     blocks 20 ms; a parked worker (first parked new, never owning) is activated (it runs while the callout
 *     is still out) -- ROUNDS times; the latency is printed, not asserted;
 *   no work, no activation: the same callout with nothing runnable;
 *   stall: the owner keeps the VM while runnable work makes no progress
 *     (vmown_work_words[0] unchanged): the heartbeat queues the parked
 *     worker as a server, behind a thread that queued on its own; the
 *     worker gets the VM after that thread, its priority restored;
 *   quiet: with no callout in flight the heartbeat stops ticking, and the
 *     next disown makes it tick again.
 */
#define _GNU_SOURCE
#include "../vmown.h"

#define TEST_NAME "heartbeat_test"
#include "check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static vmown_vm *vm;
static _Atomic int64_t activated_at;
static _Atomic int worker_slot;


static vmown_heartbeat_stats hb(void) {
    vmown_heartbeat_stats s;
    vmown_heartbeat_read(vm, &s);
    return s;
}

static int one_idle(void) { return hb().idle_workers == 1; }
static int two_waiters(void) { return vmown_waiters(vm) == 2; }

/* A thread that queues for the VM on its own, then gives it back. */
static _Atomic int other_owned;
static void *other(void *arg) {
    (void)arg;
    int me = vmown_register(vm);
    CHECK(me > 0, "register");
    CHECK(vmown_own(vm, me) == 0, "other own");
    other_owned = me;
    CHECK(vmown_disown(vm, me, 0) == 0, "other disown");
    vmown_unregister(vm, me);
    return NULL;
}

/* A worker: park without ever having owned the VM (vmown_park_new); when
 * activated, note the time, clear the work, park again (vmown_park). */
static void *worker(void *arg) {
    (void)arg;
    int me = vmown_register(vm);
    CHECK(me > 0, "register");
    worker_slot = me;
    int rc = vmown_park_new(vm, me, -1);
    while (rc == 1) {
        activated_at = vmown_now_ns();
        vmown_set_work(vm, 0, 0);
        rc = vmown_park(vm, me, -1);
    }
    CHECK(rc == 0, "park returned %d", rc);  /* unparked: time to go */
    vmown_unregister(vm, me);
    return NULL;
}

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    vm = make_block(16);
    int me = vmown_register(vm);

    /* park with a timeout; unpark without a parked worker */
    CHECK(vmown_own(vm, me) == 0, "own");
    CHECK(vmown_park(vm, me, 2000000) == VMOWN_ETIMEDOUT, "park timeout");
    CHECK(hb().idle_workers == 0 && vmown_owner(vm) == 0, "timed-out park left the idle stack");
    CHECK(vmown_unpark(vm, 0) == 0, "unpark with nobody parked");
    /* a new worker's park: refused to the owner; times out off the stack */
    CHECK(vmown_own(vm, me) == 0 && vmown_park_new(vm, me, 0) == VMOWN_ENOTOWNER, "park_new by the owner");
    CHECK(vmown_disown(vm, me, 0) == 0, "disown");
    CHECK(vmown_park_new(vm, me, 2000000) == VMOWN_ETIMEDOUT, "park_new timeout");
    CHECK(hb().idle_workers == 0 && vmown_owner(vm) == 0, "timed-out park_new left the idle stack");
    printf("park timeout and unpark: ok\n");

    CHECK(vmown_heartbeat_start(vm, 1000) == 0, "heartbeat start");
    CHECK(vmown_heartbeat_start(vm, 1000) == VMOWN_EBUSY, "second start refused");
    pthread_t t;
    pthread_create(&t, NULL, worker, NULL);
    wait_for(one_idle, "the worker to park");

    /* activation while a callout blocks */
    int64_t worst = 0, total = 0;
    for (int r = 0; r < rounds; r++) {
        CHECK(vmown_own(vm, me) == 0, "own");
        uint64_t before = hb().activations;
        activated_at = 0;
        vmown_set_work(vm, 1, 0);
        int64_t t0 = vmown_now_ns();
        CHECK(vmown_disown(vm, me, 1) == 0, "disown");
        usleep(20000);  /* the blocked callout */
        CHECK(hb().activations == before + 1, "round %d: no activation while the callout blocked", r);
        int64_t lat = activated_at - t0;
        CHECK(activated_at != 0 && lat > 0, "activation time");
        worst = lat > worst ? lat : worst;
        total += lat;
        wait_for(one_idle, "the worker to park again");
    }
    printf("activation: %d rounds, mean %.2f ms, worst %.2f ms after the disown\n", rounds,
           total / 1e6 / rounds, worst / 1e6);

    /* no work: a blocked callout causes no activation */
    CHECK(vmown_own(vm, me) == 0, "own");
    vmown_set_work(vm, 0, 0);
    uint64_t before = hb().activations;
    CHECK(vmown_disown(vm, me, 2) == 0, "disown");
    usleep(20000);
    CHECK(hb().activations == before, "activation without work");
    CHECK(vmown_own(vm, me) == 0, "own");
    /* a timer that comes due while the callout is out does activate (the
     * heartbeat may be asleep by then: it sleeps until the published timer) */
    vmown_set_work(vm, 0, vmown_now_ns() + 5000000);
    CHECK(vmown_disown(vm, me, 2) == 0, "disown");
    usleep(30000);
    CHECK(hb().activations == before + 1, "a due timer caused no activation");
    wait_for(one_idle, "the worker to park again");
    printf("no activation without work; one for a due timer: ok\n");

    /* stall: runnable work, no progress, the VM kept */
    CHECK(vmown_own(vm, me) == 0, "own");
    uint64_t servers = hb().servers;
    vmown_set_work(vm, 3, 0);
    CHECK(vmown_disown(vm, me, 4) == 0 && vmown_own(vm, me) == 0, "a short callout (wakes the heartbeat)");
    pthread_t o;
    pthread_create(&o, NULL, other, NULL);
    wait_for(two_waiters, "the other thread and a server to queue");
    CHECK(hb().servers == servers + 1 && hb().idle_workers == 0, "no server queued");
    uint32_t q[4];
    CHECK(vmown_queue_read(vm, q, 4) == 2 && (int)q[1] == worker_slot, "the server is not behind the other thread");
    activated_at = 0;
    CHECK(vmown_disown(vm, me, 0) == 0, "disown");
    pthread_join(o, NULL);
    wait_for(one_idle, "the server to run and park again");
    CHECK(other_owned && activated_at != 0, "the server did not own the VM after the other thread");
    vmown_slot_info info;
    CHECK(vmown_slot_read(vm, (uint32_t)worker_slot, &info) == 0 && info.priority == 0, "priority not restored");
    printf("stall: a server queued behind a returning thread, then served: ok\n");

    /* quiet: nothing changes, so the heartbeat sleeps and stops ticking */
    CHECK(vmown_own(vm, me) == 0, "own");
    usleep(50000);
    vmown_heartbeat_stats q1 = hb();
    usleep(50000);
    vmown_heartbeat_stats q2 = hb();
    CHECK(q2.sleeps >= 1 && q2.ticks == q1.ticks, "ticks went on while quiet (%llu -> %llu)",
          (unsigned long long)q1.ticks, (unsigned long long)q2.ticks);
    CHECK(vmown_disown(vm, me, 3) == 0, "disown");
    usleep(20000);
    CHECK(hb().ticks > q2.ticks, "a disown did not wake the heartbeat");
    printf("quiet heartbeat stops ticking (%llu sleeps); a disown wakes it: ok\n",
           (unsigned long long)q2.sleeps);

    CHECK(vmown_unpark(vm, 0) > 0, "unpark the worker");
    pthread_join(t, NULL);
    CHECK(vmown_heartbeat_stop(vm) == 0 && hb().running == 0, "heartbeat stop");
    vmown_unregister(vm, me);
    free_block(vm);
    printf("heartbeat_test: all passed\n");
    return 0;
}
