/* stopped_peer_test.c -- a callout comes back while a peer process is
 * stopped inside the block's lock, for longer than the lock's stuck time.
 *
 * Usage: stopped_peer_test
 * The parent owns the VM and goes out in a callout.  A forked child takes
 * the VM and then the block's lock, and the parent stops it (SIGSTOP, as a
 * debugger or a profiler does) for STOPPED_US, more than the 2 s after which
 * a wait with no deadline of its own ends "stuck" (LOCK_TIMEOUT_NS, and as
 * many rounds).  The callout comes back meanwhile: the VM is the child's, so
 * its end waits for the lock.  The end cannot report an error; it must go
 * on waiting, not abort the process, and own the VM once the child,
 * resumed, lets the lock and the VM go.  Prints one line; exit non-zero on
 * failure (an abort ends the program with SIGABRT).
 */
#define _GNU_SOURCE
#include "../vmown.h"
#include "../vmown_internal.h"

#define TEST_NAME "stopped_peer_test"
#include "check.h"

#include <pthread.h>
#include <signal.h>
#include <sys/wait.h>

#define STOPPED_US 3000000

static pid_t child;

static void *resume_later(void *arg) {
    (void)arg;
    usleep(STOPPED_US);
    kill(child, SIGCONT);
    return NULL;
}

int main(void) {
    vmown_vm *vm = make_block(8);
    int me = vmown_register(vm);
    CHECK(me > 0 && vmown_bind_thread(vm, (uint32_t)me) == 0 && vmown_own(vm, (uint32_t)me) == 0,
          "register, bind, own");
    uint32_t token = vmown_callout_begin(1);  /* no heartbeat: eager, the VM released */
    CHECK(token != 0 && vmown_owner(vm) == 0, "out in a callout, the VM unowned");

    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    child = fork();
    CHECK(child >= 0, "fork");
    if (child == 0) {
        int slot = vmown_register(vm);
        if (slot <= 0 || vmown_own(vm, (uint32_t)slot) != 0) _exit(3);
        if (vmown__lock(&vm->block->lock, -1, 0) != 0) _exit(4);
        if (write(ready[1], "r", 1) != 1) _exit(5);
        usleep(200000);  /* stopped in here */
        vmown__unlock(&vm->block->lock);
        if (vmown_disown(vm, (uint32_t)slot, 0) != 0) _exit(6);
        _exit(vmown_unregister(vm, (uint32_t)slot) == 0 ? 0 : 7);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "the child owns the VM and holds the lock");
    CHECK(kill(child, SIGSTOP) == 0, "stop the child");
    pthread_t resumer;
    CHECK(pthread_create(&resumer, NULL, resume_later, NULL) == 0, "resumer");

    int64_t start = vmown_now_ns();
    vmown_callout_end(token);  /* the VM is the child's: waits for the lock */
    int64_t waited = vmown_now_ns() - start;
    CHECK(vmown_owner(vm) == me, "the callout's end does not own the VM");
    pthread_join(resumer, NULL);
    int status;
    CHECK(waitpid(child, &status, 0) == child && WIFEXITED(status) && WEXITSTATUS(status) == 0,
          "the child failed (status %d)", status);
    CHECK(waited >= (int64_t)STOPPED_US * 1000 - 200000000, "owned after %.2f s, with the child stopped",
          waited / 1e9);
    printf("callout end with a peer stopped in the lock for %.1f s: owned after %.2f s: ok\n", STOPPED_US / 1e6,
           waited / 1e9);
    vmown_disown(vm, (uint32_t)me, 0);
    free_block(vm);
    return 0;
}
