/* lifecycle.c -- undoing what the layers above the core set up.
 *
 * The one file of the C core allowed to call up: detaching a handle stops
 * this process's heartbeat and frees its worker pool, and unregistering a
 * slot unbinds the calling thread from it (callout.c).  Everything below
 * (block.c, owner.c, grants.c, idle.c, repair.c) calls nothing above it, so
 * the layers have no cycle (tests/test_layers.py).
 */
#define _GNU_SOURCE
#include "vmown_internal.h"

#include <stdlib.h>

void vmown_vm_detach(vmown_vm *vm) {
    if (!vm) return;
    vmown_heartbeat_stop(vm);
    /* A pooled worker still out in a callout uses vm when it is back: leave
     * it allocated (the block stays mapped as long as the caller keeps it). */
    if (!vmown__workers_free(vm)) return;
    free(vm);
}

int vmown_unregister(vmown_vm *vm, uint32_t me) {
    int rc = vmown__unregister(vm, me);
    if (rc == 0) vmown__unbind_if(vm, me);
    return rc;
}
