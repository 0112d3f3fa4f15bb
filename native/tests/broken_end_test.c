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
 * same error.  Prints one line; exit non-zero on failure (an abort ends the
 * program with SIGABRT).
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
    return 0;
}
