/* lazy_test.c -- lazy callouts and their revocation (native/grants.c,
 * "Lazy callouts"), from C.
 *
 * Usage: lazy_test [ROUNDS]
 * With a heartbeat running, a callout that finds nobody waiting keeps the
 * owner word; the heartbeat revokes the VM from one that stays out a tick
 * while somebody needs it.  Checks, one line each, exit non-zero on the first
 * failure:
 *   short: 500 callouts of 0.2 ms with work published are lazy, keep the
 *     owner word (same epoch), and are never revoked unless stretched;
 *   worker: a lazy callout that blocks 20 ms with work published: the VM is
 *     revoked and a parked worker runs while the callout is out (ROUNDS
 *     times; the latency is printed, not asserted);
 *   after a revocation: callouts with its tag are eager; one whose VM the
 *     worker took sets the count back to 64; 64 that nobody needed later it
 *     is lazy again; other tags stay lazy (callout.c, hints);
 *   waiter: a long lazy callout with nothing to do lets the heartbeat sleep;
 *     a thread that queues wakes it and gets the VM while the callout is out;
 *   nested: a callout inside a lazy callout is a plain call;
 *   called off before R1: the callout comes back while the revoker waits
 *     (widened); the revoker then marks the word (e, REVOKING|T) anyway,
 *     the owner sees it while running and gives the VM on through it, and
 *     the revocation is called off;
 *   called off after R1: the callout comes back after R1 and takes the word
 *     back with its CAS; the queued thread does not get the VM;
 *   stop: stopping the heartbeat revokes a lazy callout that is out;
 *   eager: vmown_heartbeat_set_lazy(vm, 0) makes callouts release the word.
 */
#define _GNU_SOURCE
#include "../vmown.h"
#include "../vmown_internal.h"

#define TEST_NAME "lazy_test"
#include "check.h"

#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

static vmown_vm *vm;
static _Atomic int64_t activated_at;


#define MS 1000000LL

static vmown_heartbeat_stats hb(void) {
    vmown_heartbeat_stats s;
    vmown_heartbeat_read(vm, &s);
    return s;
}

static uint64_t lazies(void) {
    vmown_counters c;
    vmown_counters_read(vm, &c);
    return c.lazy_disowns;
}

static int one_idle(void) { return hb().idle_workers == 1; }

/* A worker: parked new; when activated, note the time, clear the work, park. */
static void *worker(void *arg) {
    (void)arg;
    int me = vmown_register(vm);
    CHECK(me > 0, "register");
    int rc = vmown_park_new(vm, me, -1);
    while (rc == 1) {
        activated_at = vmown_now_ns();
        vmown_set_work(vm, 0, 0);
        rc = vmown_park(vm, me, -1);
    }
    CHECK(rc == 0, "park returned %d", rc);
    vmown_unregister(vm, me);
    return NULL;
}

/* A thread that queues for the VM, notes when it got it, gives it back. */
static _Atomic int64_t waiter_owned_at;
static int waiter_queued(void) { return vmown_waiters(vm) == 1 || waiter_owned_at != 0; }
static void *waiter(void *arg) {
    (void)arg;
    int me = vmown_register(vm);
    CHECK(me > 0, "register");
    CHECK(vmown_own(vm, me) == 0, "waiter own");
    waiter_owned_at = vmown_now_ns();
    CHECK(vmown_disown(vm, me, 0) == 0, "waiter disown");
    vmown_unregister(vm, me);
    return NULL;
}

static pthread_t start_waiter(void) {
    pthread_t t;
    waiter_owned_at = 0;
    pthread_create(&t, NULL, waiter, NULL);
    wait_for(waiter_queued, "the thread to queue");
    return t;
}

static int32_t owner_field(void) { return (int32_t)(uint32_t)vmown_owner_word(vm); }

/* Until the heartbeat is in a widened revocation (vmown_debug_set_widen_ns):
 * it revokes inside a tick, so its tick count stands still meanwhile.  Waits
 * until the count has moved past `since` and then stood still for
 * `still_ns` (ticks come every 1 ms otherwise), 2 s at most: on a loaded
 * machine the heartbeat may take a while to tick at all. */
static void wait_for_revoker(uint64_t since, int64_t still_ns) {
    uint64_t last = hb().ticks;
    int64_t changed = vmown_now_ns();
    for (int i = 0; i < 4000; i++) {
        usleep(500);
        uint64_t ticks = hb().ticks;
        if (ticks != last) {
            last = ticks;
            changed = vmown_now_ns();
        } else if (ticks > since && vmown_now_ns() - changed >= still_ns) {
            return;
        }
    }
}

#define LAZY VMOWN_CALLOUT_LAZY

int main(int argc, char **argv) {
    int rounds = argc > 1 ? atoi(argv[1]) : 20;
    vm = make_block(16);
    int me = vmown_register(vm);
    CHECK(me > 0 && vmown_bind_thread(vm, (uint32_t)me) == 0, "register and bind");
    CHECK(vmown_own(vm, me) == 0, "own");
    uint32_t token = vmown_callout_begin(1);
    CHECK(token == (uint32_t)me && vmown_owner(vm) == 0, "without a heartbeat a callout is eager");
    vmown_callout_end(token);
    CHECK(vmown_heartbeat_start(vm, 1000) == 0 && hb().lazy == 1, "heartbeat start: lazy callouts on");

    /* short: lazy, the word kept, no revocation */
    vmown_set_work(vm, 1, 0);
    uint32_t epoch = vmown_epoch(vm);
    uint64_t lazy0 = lazies(), rev0 = hb().revocations;
    int stretched = 0, eager = 0;
    for (int i = 0; i < 500; i++) {
        int64_t t0 = vmown_now_ns();
        token = vmown_callout_begin(2);
        CHECK(token != 0, "no token");
        eager += !(token & LAZY);  /* after a (stretched, revoked) one */
        CHECK(!(token & LAZY) || vmown_owner(vm) == me, "the word names the owner during a lazy callout");
        usleep(200);
        vmown_callout_end(token);
        CHECK(vmown_owner(vm) == me, "own after a short callout");
        stretched += vmown_now_ns() - t0 >= MS;
    }
    uint64_t revoked = hb().revocations - rev0;
    /* Eager callouts come from hints only: each revocation buys the tag
     * VMOWN__EAGER_AFTER_REVOCATION of them, and each callout stretched
     * past two ticks (each is among the stretched ones) VMOWN__BLOCKS_HINT
     * hand-over ones. */
    CHECK(lazies() - lazy0 == (uint64_t)(500 - eager) &&
              (uint64_t)eager <= VMOWN__EAGER_AFTER_REVOCATION * revoked + VMOWN__BLOCKS_HINT * (uint64_t)stretched,
          "%llu of 500 callouts lazy, %llu revoked, %d stretched", (unsigned long long)(lazies() - lazy0),
          (unsigned long long)revoked, stretched);
    CHECK(revoked <= (uint64_t)stretched, "%llu revocations of 0.2 ms callouts (%d stretched)",
          (unsigned long long)revoked, stretched);
    CHECK(revoked || vmown_epoch(vm) == epoch, "the word changed without a revocation");
    printf("short: %d of 500 callouts lazy, %llu revoked (%d stretched past a tick): ok\n", 500 - eager,
           (unsigned long long)revoked, stretched);

    /* worker: revoked for a parked worker while the callout blocks */
    /* No work published before the worker parks: with work waiting and the
     * VM owned, the heartbeat would queue it as a server (heartbeat.c). */
    vmown_set_work(vm, 0, 0);
    pthread_t w;
    pthread_create(&w, NULL, worker, NULL);
    wait_for(one_idle, "the worker to park");
    int64_t worst = 0, total = 0;
    int revoked_rounds = 0;
    for (int r = 0; r < rounds; r++) {
        uint64_t revs = hb().revocations, acts = hb().activations, servers = hb().servers;
        uint64_t overs = hb().hand_overs;
        activated_at = 0;
        vmown_set_work(vm, 1, 0);
        int64_t t0 = vmown_now_ns();
        token = vmown_callout_begin(3);
        int lazy = (token & LAZY) != 0;
        usleep(20000);
        int64_t back = vmown_now_ns();
        vmown_callout_end(token);
        CHECK(vmown_owner(vm) == me, "own after a revoked callout");
        /* Lazy: the worker is activated, or queued as a server first (the
         * VM is owned and the run queue makes no progress: heartbeat.c) and
         * handed the VM as the head waiter: a revocation either way.  The
         * next 64 callouts of the tag are eager: an activation. */
        if (lazy) {
            CHECK(hb().revocations == revs + 1, "round %d: not revoked (called off %llu)", r,
                  (unsigned long long)hb().called_off);
            revoked_rounds++;
        } else {
            /* Handed over at the disown (the tag blocked before: callout.c's
             * hints); or activated; or, if a tick found the VM owned with
             * work waiting before the callout went out (a loaded machine),
             * queued as a server and handed the VM by the eager disown. */
            CHECK(hb().hand_overs == overs + 1 || hb().activations == acts + 1 || hb().servers > servers,
                  "round %d: eager, but neither handed over, activated nor served", r);
        }
        CHECK(activated_at > t0 && activated_at < back, "round %d: the worker did not run during the callout", r);
        int64_t lat = activated_at - t0;
        worst = lat > worst ? lat : worst;
        total += lat;
        wait_for(one_idle, "the worker to park again");
    }
    printf("worker: %d rounds (%d lazy, revoked), the worker ran %.2f ms (mean), %.2f ms (worst) after the "
           "callout went out\n", rounds, revoked_rounds, total / 1e6 / rounds, worst / 1e6);
    CHECK(revoked_rounds >= 1 && (rounds <= 1 || revoked_rounds < rounds), "%d of %d rounds lazy", revoked_rounds,
          rounds);

    /* after a revocation, the next 64 callouts of that function (tag) are
     * eager; others stay lazy */
    vmown_set_work(vm, 1, 0);
    token = vmown_callout_begin(30);
    CHECK(token & LAZY, "a new tag is not lazy");
    usleep(20000);
    vmown_callout_end(token);
    wait_for(one_idle, "the worker to park again");
    /* an eager one whose VM the worker took: the count is full again */
    vmown_set_work(vm, 1, 0);
    token = vmown_callout_begin(30);
    /* eager, and wanted: the tag is known to block */
    CHECK(token == ((uint32_t)me | VMOWN_CALLOUT_WANTED), "a revoked tag is not eager");
    usleep(20000);
    vmown_callout_end(token);
    wait_for(one_idle, "the worker to park again");
    vmown_set_work(vm, 0, 0);
    for (int i = 0; i < VMOWN__EAGER_AFTER_REVOCATION; i++) {
        token = vmown_callout_begin(30);
        /* wanted while the tag's blocks hint lasts (VMOWN__BLOCKS_HINT) */
        CHECK((token & ~VMOWN_CALLOUT_WANTED) == (uint32_t)me && (i > 0 || (token & VMOWN_CALLOUT_WANTED)),
              "callout %d of a revoked tag is not eager", i);
        vmown_callout_end(token);
        token = vmown_callout_begin(31);
        CHECK(token & LAZY, "another tag is not lazy");
        vmown_callout_end(token);
    }
    token = vmown_callout_begin(30);
    CHECK(token & LAZY, "the 65th callout of a revoked tag is not lazy");
    vmown_callout_end(token);
    printf("after a revocation: eager while the VM is taken, lazy 64 untaken callouts later; other tags lazy: "
           "ok\n");

    vmown_set_work(vm, 0, 0);

    /* waiter: the heartbeat sleeps through a quiet lazy callout; a thread
     * that queues wakes it and gets the VM while the callout is out */
    uint64_t sleeps = hb().sleeps, revs = hb().revocations;
    token = vmown_callout_begin(4);
    usleep(30000);
    CHECK(hb().sleeps > sleeps, "the heartbeat did not sleep during a quiet lazy callout");
    uint64_t ticks = hb().ticks;
    usleep(10000);
    CHECK(hb().ticks == ticks, "the heartbeat ticked while asleep");
    int64_t queued = vmown_now_ns();
    pthread_t t = start_waiter();
    for (int i = 0; i < 2000 && !waiter_owned_at; i++) usleep(500);
    CHECK(waiter_owned_at != 0, "the queued thread did not get the VM during a lazy callout");
    CHECK(hb().revocations == revs + 1, "not a revocation");
    vmown_callout_end(token);
    pthread_join(t, NULL);
    CHECK(vmown_owner(vm) == me, "own after the waiter");
    printf("waiter: the heartbeat slept, the queued thread woke it and owned %.2f ms later: ok\n",
           (waiter_owned_at - queued) / 1e6);

    /* nested */
    token = vmown_callout_begin(5);
    CHECK(vmown_callout_begin(6) == 0, "a callout inside a lazy callout is not plain");
    vmown_callout_end(0);
    vmown_callout_end(token);
    CHECK(vmown_owner(vm) == me, "own after a nested callout");
    printf("nested: plain: ok\n");

    /* called off before R1: back while the revoker waits before its CAS */
    vmown_debug_set_widen_ns(60 * MS);
    uint64_t off = hb().called_off;
    revs = hb().revocations;
    token = vmown_callout_begin(7);
    ticks = hb().ticks;
    t = start_waiter();  /* queues; the revoker starts on the next ticks */
    wait_for_revoker(ticks, 15 * MS);  /* in its 60 ms before R1 */
    vmown_callout_end(token);  /* before R1: the word is ours */
    CHECK(owner_field() == me, "the word did not name the owner back from its callout");
    int saw = 0;
    for (int i = 0; i < 4000 && !saw; i++) {  /* up to 2 s: the heartbeat may be slow to run on a loaded machine */
        saw = owner_field() == (int32_t)(VMOWN__REVOKING | (uint32_t)me);
        if (!saw) usleep(500);
    }
    CHECK(saw, "the revoker never marked the word (the forced interleaving did not happen)");
    /* The word reads (e, REVOKING|me) while we run: a disown settles it. */
    CHECK(vmown_disown(vm, me, 0) == 0, "disown through a revoking word");
    pthread_join(t, NULL);
    CHECK(waiter_owned_at != 0, "the waiter did not get the VM from the disown");
    for (int i = 0; i < 2000 && hb().called_off == off; i++) usleep(1000);
    CHECK(hb().called_off == off + 1 && hb().revocations == revs, "not called off");
    vmown_debug_set_widen_ns(0);
    CHECK(vmown_own(vm, me) == 0, "own");
    printf("called off before R1: the owner ran through a revoking word: ok\n");

    /* called off after R1: back between R1 and R3, takes the word back */
    vmown_debug_set_widen_ns(20 * MS);
    off = hb().called_off;
    revs = hb().revocations;
    token = vmown_callout_begin(8);
    t = start_waiter();
    saw = 0;
    for (int i = 0; i < 8000 && !saw; i++) {  /* up to 2 s, as above */
        saw = owner_field() == (int32_t)(VMOWN__REVOKING | (uint32_t)me);
        if (!saw) usleep(250);
    }
    CHECK(saw, "the revoker never marked the word");
    vmown_callout_end(token);  /* reads (e, REVOKING|me): takes it back */
    CHECK(owner_field() == me && waiter_owned_at == 0, "the callout did not take the word back");
    for (int i = 0; i < 200 && hb().called_off == off; i++) usleep(1000);
    CHECK(hb().called_off == off + 1 && hb().revocations == revs, "not called off");
    CHECK(waiter_owned_at == 0 && vmown_owner(vm) == me, "the VM went to the waiter");
    vmown_debug_set_widen_ns(0);
    CHECK(vmown_disown(vm, me, 0) == 0, "disown");
    pthread_join(t, NULL);
    CHECK(vmown_own(vm, me) == 0, "own");
    printf("called off after R1: the callout took the word back: ok\n");

    /* stop: a lazy callout that is out is revoked */
    revs = hb().revocations;
    token = vmown_callout_begin(9);
    usleep(5000);
    CHECK(vmown_heartbeat_stop(vm) == 0, "heartbeat stop");
    CHECK(vmown_owner(vm) == 0 && hb().revocations == revs + 1 && hb().lazy == 0, "stop left a lazy callout owning");
    vmown_callout_end(token);
    CHECK(vmown_owner(vm) == me, "own after the stop");
    printf("stop: the callout out was revoked: ok\n");

    /* eager on request */
    CHECK(vmown_heartbeat_start(vm, 1000) == 0, "heartbeat restart");
    CHECK(vmown_heartbeat_set_lazy(vm, 0) == 0, "set eager");
    token = vmown_callout_begin(10);
    CHECK(token == (uint32_t)me && vmown_owner(vm) == 0, "an eager callout kept the word");
    vmown_callout_end(token);
    CHECK(vmown_heartbeat_set_lazy(vm, 1) == 1, "set lazy");
    token = vmown_callout_begin(11);
    CHECK(vmown_owner(vm) == me, "lazy again");
    vmown_callout_end(token);
    printf("eager on request: ok\n");

    CHECK(vmown_unpark(vm, 0) > 0, "unpark the worker");
    pthread_join(w, NULL);
    CHECK(vmown_heartbeat_stop(vm) == 0, "heartbeat stop");
    vmown_bind_thread(NULL, 0);
    vmown_unregister(vm, me);
    free_block(vm);
    printf("lazy_test: all passed\n");
    return 0;
}
