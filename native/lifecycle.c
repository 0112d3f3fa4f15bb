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

void vmown_cb_detach(vmown_cb *cb) {
    if (!cb) return;
    vmown_heartbeat_stop(cb);
    /* A pooled worker still out in a callout uses cb when it is back: leave
     * it allocated (the block stays mapped as long as the caller keeps it). */
    if (!vmown__workers_free(cb)) return;
    free(cb);
}

int vmown_unregister(vmown_cb *cb, uint32_t me) {
    int rc = vmown__unregister(cb, me);
    if (rc == 0) vmown__unbind_if(cb, me);
    return rc;
}
