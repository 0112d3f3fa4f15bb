/* broken_end_test.c -- a callout comes back to a block a peer has broken.
 *
 * Usage: broken_end_test
 * The main thread owns the VM and goes out in a callout; a second thread
 * owns the VM meanwhile, so the callout's end has to wait for it, under
 * the block's lock.  A peer then writes a word into the lock that no lock
 * holds (a pid no process can have): the block is broken for good.  The end
 * must come back without owning the VM -- not abort the process, not wait
 * for ever -- keep errno, and say why through vmown_callout_error, once.
 * After it the thread's callouts are plain calls and its own fails with the
 * same error.
 *
 * Then the threads already asleep when a block breaks: one queued for the
 * VM, one parked with no timeout.  The lock word is written over; the next
 * thread that needs the lock marks the block broken, and the marking wakes
 * both, which return VMOWN_EBROKEN instead of sleeping for a grant nobody
 * can give.  Prints one line per case; exit non-zero on failure (an abort
 * ends the program with SIGABRT, a hang the caller's timeout).
 */
#define _GNU_SOURCE
#include "../vmown.h"
#include "../vmown_internal.h"

#define TEST_NAME "broken_end_test"
#include "check.h"

#include <errno.h>
#include <pthread.h>

static vmown_vm *vm;
static _Atomic int other_owns;

static void *own_meanwhile(void *arg) {
    (void)arg;
    int slot = vmown_register(vm);
    CHECK(slot > 0 && vmown_own(vm, (uint32_t)slot) == 0, "the other thread owns the VM");
    atomic_store(&other_owns, 1);
    return NULL;  /* leaves owning: only the block's brokenness ends the callout's wait */
}

static int owned_by_other(void) { return atomic_load(&other_owns); }

/* ---- threads asleep when the block breaks ---- */

static _Atomic int waiter_rc = 1, parked_rc = 1;
static _Atomic int parked_ready;

static void *queue_for_the_vm(void *arg) {
    (void)arg;
    int slot = vmown_register(vm);
    CHECK(slot > 0, "register the waiter");
    atomic_store(&waiter_rc, vmown_own(vm, (uint32_t)slot));  /* queued: the VM is owned */
    return NULL;
}

static void *park_for_good(void *arg) {
    (void)arg;
    int slot = vmown_register(vm);
    CHECK(slot > 0 && vmown_own(vm, (uint32_t)slot) == 0, "register and own the parker");
    atomic_store(&parked_ready, 1);
    atomic_store(&parked_rc, vmown_park(vm, (uint32_t)slot, -1));  /* releases the VM; no timeout */
    return NULL;
}

static int waiter_queued(void) { return vmown_waiters(vm) == 1; }
static int waiter_back(void) { return atomic_load(&waiter_rc) != 1; }
static int parked_back(void) { return atomic_load(&parked_rc) != 1; }

static void sleepers_woken(void) {
    vm = make_block(8);
    int owner = vmown_register(vm);
    CHECK(owner > 0 && vmown_own(vm, (uint32_t)owner) == 0, "register, own");
    pthread_t parker, waiter;
    /* The parker owns first and parks, handing the VM back to nobody: the
     * owner takes it, then the waiter queues behind the owner. */
    CHECK(vmown_disown(vm, (uint32_t)owner, 0) == 0, "disown for the parker");
    CHECK(pthread_create(&parker, NULL, park_for_good, NULL) == 0, "parker");
    while (!atomic_load(&parked_ready)) usleep(1000);
    while (vmown_owner(vm) != 0) usleep(1000);  /* parked: the VM released */
    CHECK(vmown_own(vm, (uint32_t)owner) == 0, "own again");
    CHECK(pthread_create(&waiter, NULL, queue_for_the_vm, NULL) == 0, "waiter");
    wait_for(waiter_queued, "the waiter to queue");

    atomic_store(&vm->block->lock.word, 0x7FFFFFFFu);  /* the hostile peer's word */
    CHECK(vmown_broken(vm) == 0, "marked before anybody tried the lock");
    int rc = vmown_disown(vm, (uint32_t)owner, 0);  /* the hand-off needs the lock: it finds it broken */
    CHECK(rc == VMOWN_EBROKEN && vmown_broken(vm) == 1, "the disown gave %d, broken %d", rc, vmown_broken(vm));
    wait_for(waiter_back, "the queued waiter to wake");
    wait_for(parked_back, "the parked thread to wake");
    CHECK(atomic_load(&waiter_rc) == VMOWN_EBROKEN, "the waiter's own gave %d", atomic_load(&waiter_rc));
    CHECK(atomic_load(&parked_rc) == VMOWN_EBROKEN, "the park gave %d", atomic_load(&parked_rc));
    pthread_join(waiter, NULL);
    pthread_join(parker, NULL);
    printf("a queued and a parked thread, asleep when the block broke: both woken with VMOWN_EBROKEN: ok\n");
    free_block(vm);
}

int main(void) {
    vm = make_block(8);
    int me = vmown_register(vm);
    CHECK(me > 0 && vmown_bind_thread(vm, (uint32_t)me) == 0 && vmown_own(vm, (uint32_t)me) == 0,
          "register, bind, own");
    uint32_t token = vmown_callout_begin_eager(1);
    CHECK(token != 0 && vmown_owner(vm) == 0, "out in a callout, the VM unowned");

    pthread_t other;
    CHECK(pthread_create(&other, NULL, own_meanwhile, NULL) == 0, "thread");
    wait_for(owned_by_other, "the other thread to own the VM");
    pthread_join(other, NULL);

    /* What a hostile peer writes: a lock word no lock holds. */
    atomic_store(&vm->block->lock.word, 0x7FFFFFFFu);

    CHECK(vmown_callout_error() == 0, "an error before any end");
    errno = 4242;
    vmown_callout_end(token);  /* the VM is the other thread's: waits, under the lock it cannot take */
    CHECK(errno == 4242, "the end changed errno to %d", errno);
    int error = vmown_callout_error();
    CHECK(error == VMOWN_EBROKEN, "the end's error is %d, not VMOWN_EBROKEN", error);
    CHECK(vmown_callout_error() == 0, "the error is told once");
    CHECK(vmown_owner(vm) != me, "the end owns a broken block");
    CHECK(vmown_callout_begin(1) == 0, "a callout of a thread that does not own is not a plain call");
    CHECK(vmown_own(vm, (uint32_t)me) == VMOWN_EBROKEN, "own after the broken end is not VMOWN_EBROKEN");
    printf("callout end on a block broken meanwhile: returned not owning, error %d: ok\n", error);
    free_block(vm);
    sleepers_woken();
    return 0;
}
