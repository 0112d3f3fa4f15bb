/* repair.c -- dead peers: the block's lock and the slots they leave behind.
 *
 * A process can die at any instruction.  What that leaves, and who mends it:
 *   inside the lock: the lock word names the dead holder's pid, and the
 *     next locker takes it over (os_linux.c: vmown__lock returns 1);
 *     repair_locked rebuilds the queue and the idle stack from the slots;
 *   owning, or granted and not yet running, or activated while parked: the
 *     owner word names a slot of a dead process.  Waiters sleep in slices of
 *     SLICE_NS; at each slice they check the owner's process (pid and start
 *     time, so a recycled pid does not pass) and, if it is dead, release the
 *     VM on its behalf and hand it on;
 *   waiting or parked: its slots stay linked until a repair frees them;
 *   in a callout: its slot stays RUNNING until registration runs out of
 *     slots and reclaims the slots of dead processes.
 * Reaping frees every slot of the dead process at once, under the lock. */
#define _GNU_SOURCE
#include "vmown_core.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

static int cmp_by_queue_order(const void *a, const void *b, void *arg) {
    vmown_vm *vm = arg;
    struct vmown_slot *x = slot_of(vm, *(const uint32_t *)a), *y = slot_of(vm, *(const uint32_t *)b);
    int32_t px = atomic_load_explicit(&x->priority, RELAXED), py = atomic_load_explicit(&y->priority, RELAXED);
    if (px != py) return px > py ? -1 : 1;
    uint64_t tx = atomic_load_explicit(&x->ticket, RELAXED), ty = atomic_load_explicit(&y->ticket, RELAXED);
    return tx < ty ? -1 : tx > ty;
}

/* The lock's previous holder died inside it: the queue may be half-linked.
 * Rebuild it from the slots' own states, in (priority, ticket) order. */
static int repair_locked(vmown_vm *vm) {
    struct vmown__block *b = vm->block;
    uint32_t *order = malloc(sizeof(uint32_t) * vm->nslots), n = 0, in_use = 0;
    if (!order) return -ENOMEM;
    for (uint32_t i = 1; i <= vm->nslots; i++) {
        uint32_t st = atomic_load_explicit(&slot_of(vm, i)->state, RELAXED);
        if (st != VMOWN_SLOT_FREE) in_use++;
        if (st == VMOWN_SLOT_WAITING) order[n++] = i;
        /* Left a list by itself: it runs, and the lists are rebuilt without
         * it.  A waiter that leaves during this scan is read WAITING (queued
         * and counted here: LEFT and linked after, which is consistent) or
         * LEFT (dropped). */
        if (st == VMOWN_SLOT_LEFT || st == VMOWN_SLOT_LEFT_IDLE)
            atomic_store_explicit(&slot_of(vm, i)->state, VMOWN_SLOT_RUNNING, RELEASE);
        /* GRANTED but the word names it neither as owner nor as pending:
         * the granter died between dequeue and store, or it was robbed of a
         * soft grant and died before queueing again; queue it again (a live
         * robbed claimant that finds itself WAITING just sleeps on). */
        if (st == VMOWN_SLOT_GRANTED &&
            VMOWN__HOLDER(atomic_load_explicit(&b->owner_word, RELAXED)) != (int32_t)i) {
            atomic_store_explicit(&slot_of(vm, i)->state, VMOWN_SLOT_WAITING, RELAXED);
            order[n++] = i;
            if (atomic_load_explicit(&b->claimant, RELAXED) == i) atomic_store_explicit(&b->claimant, 0, RELAXED);
        }
    }
    qsort_r(order, n, sizeof *order, cmp_by_queue_order, vm);
    atomic_store_explicit(&b->head, n ? order[0] : 0, RELAXED);
    atomic_store_explicit(&b->tail, n ? order[n - 1] : 0, RELAXED);
    for (uint32_t k = 0; k < n; k++)
        atomic_store_explicit(&slot_of(vm, order[k])->next, k + 1 < n ? order[k + 1] : 0, RELAXED);
    uint64_t att = atomic_load_explicit(&b->waiters_and_hb_asleep, RELAXED);
    atomic_store_explicit(&b->waiters_and_hb_asleep, (att & ~VMOWN__WAITERS_MASK) | n, SEQ_CST);
    uint32_t idle = 0, idle_count = 0;
    for (uint32_t i = 1; i <= vm->nslots; i++) {
        if (atomic_load_explicit(&slot_of(vm, i)->state, RELAXED) != VMOWN_SLOT_PARKED) continue;
        atomic_store_explicit(&slot_of(vm, i)->idle_next, idle, RELAXED);
        idle = i;
        idle_count++;
    }
    atomic_store_explicit(&b->idle_head, idle, RELAXED);
    atomic_store_explicit(&b->idle_count, idle_count, RELAXED);
    atomic_store_explicit(&b->in_use, in_use, RELAXED);
    free(order);
    return 0;
}

int vmown__lock_block(vmown_vm *vm) { return vmown__lock_block_until(vm, -1); }

int vmown__lock_block_until(vmown_vm *vm, int64_t deadline_ns) {
    if (unlikely(atomic_load_explicit(&vm->block->hdr.state, ACQUIRE) != VMOWN__READY)) return VMOWN_EBROKEN;
    int rc = vmown__lock(&vm->block->lock, deadline_ns, LOCK_TIMEOUT_NS);
    if (rc == 1) {
        /* Somebody died holding the lock: make the queue whole, then free
         * the slots of every dead process (it may have been half-way into
         * the queue).  A waiter granted here is posted under the lock: this
         * path is rare, and posting under it is safe. */
        uint32_t granted = 0;
        rc = repair_locked(vm);
        if (rc == 0) rc = vmown__reap_dead_locked(vm, &granted);
        if (rc < 0) {
            mark_broken(vm);
            vmown__unlock(&vm->block->lock);
            return rc;
        }
        if (granted) post(vm, granted);
        rc = 0;
    } else if (rc < 0 && rc != VMOWN_ESTUCK && rc != VMOWN_ETIMEDOUT) {
        mark_broken(vm);
    }
    return rc;
}


void vmown__fold_counters_locked(vmown_vm *vm, struct vmown_slot *s) {
    vmown_counters *f = &vm->block->folded;
    /* folded is only written under the lock; readers tolerate a torn sum. */
#define FOLD(name) f->name += atomic_load_explicit(&s->name, RELAXED);
    VMOWN__SLOT_COUNTERS(FOLD)
#undef FOLD
}


/* Free every slot of processes that are gone; release the VM if one of them
 * owned it.  Returns how many slots were freed; *granted as above. */
int vmown__reap_dead_locked(vmown_vm *vm, uint32_t *granted) {
    struct vmown__block *b = vm->block;
    int32_t self = (int32_t)getpid(), dead_pid = 0, live_pid = 0;
    int freed = 0, rc = 0;
    *granted = 0;
    for (uint32_t i = 1; i <= vm->nslots; i++) {
        struct vmown_slot *s = slot_of(vm, i);
        uint32_t st = atomic_load_explicit(&s->state, RELAXED);
        int32_t pid = atomic_load_explicit(&s->pid, RELAXED);
        if (st == VMOWN_SLOT_FREE || pid == self || pid == live_pid) continue;
        if (pid != dead_pid) {
            if (vmown__process_alive(pid, atomic_load_explicit(&s->start_time, RELAXED))) {
                live_pid = pid;
                continue;
            }
            dead_pid = pid;
        }
        if (st == VMOWN_SLOT_WAITING && (rc = vmown__unlink_locked(vm, i)) < 0) return rc;
        if (st == VMOWN_SLOT_PARKED && (rc = vmown__idle_unlink_locked(vm, i)) < 0) return rc;
        if ((rc = vmown__unlink_left_locked(vm, i)) < 0) return rc;  /* LEFT, LEFT_IDLE */
        /* Owning, hard-granted, or holding a pending soft grant (a thief
         * may steal the last one meanwhile: then this CAS fails, rightly). */
        uint64_t w = atomic_load_explicit(&b->owner_word, SEQ_CST);
        if (VMOWN__HOLDER(w) == (int32_t)i)
            atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w) + 1, 0),
                                                    SEQ_CST, RELAXED);
        /* A claimant that died unsettled: soft grants may wake waiters again. */
        if (atomic_load_explicit(&b->claimant, RELAXED) == i) atomic_store_explicit(&b->claimant, 0, RELAXED);
        /* A server that died queued or granted: the heartbeat counts on it no more. */
        if (atomic_exchange_explicit(&s->serving, 0, RELAXED))
            atomic_fetch_sub_explicit(&b->servers_out, 1, RELAXED);
        vmown__fold_counters_locked(vm, s);
        atomic_store_explicit(&s->state, VMOWN_SLOT_FREE, RELEASE);
        atomic_fetch_sub_explicit(&b->in_use, 1, RELAXED);
        freed++;
    }
    if (freed) {
        atomic_fetch_add_explicit(&b->reaped, (uint64_t)freed, RELAXED);
        if ((rc = vmown__grant_head_locked(vm, granted)) < 0) return rc;
    }
    return freed;
}

static bool slot_dead(vmown_vm *vm, int32_t i) {
    if (i <= 0 || !valid_index(vm, (uint32_t)i)) return false;
    struct vmown_slot *o = slot_of(vm, (uint32_t)i);
    int32_t pid = atomic_load_explicit(&o->pid, RELAXED);
    return pid != (int32_t)getpid() && !vmown__process_alive(pid, atomic_load_explicit(&o->start_time, RELAXED));
}

/* A waiter's slice ran out: if the owner (or the holder of a pending grant,
 * or an unsettled claimant) belongs to a dead process, reap.  If the VM is
 * unowned, kick: whoever should have handed it on (a claimant that died
 * between its robbery and its re-queue) cannot any more. */
int vmown__check_owner(vmown_vm *vm) {
    uint64_t w = atomic_load_explicit(&vm->block->owner_word, ACQUIRE);
    if (!slot_dead(vm, VMOWN__HOLDER(w)) &&
        !slot_dead(vm, (int32_t)atomic_load_explicit(&vm->block->claimant, RELAXED))) {
        if (VMOWN__OWNER(w) == 0 && (atomic_load_explicit(&vm->block->waiters_and_hb_asleep, RELAXED) & VMOWN__WAITERS_MASK))
            return vmown__kick(vm);
        return 0;
    }
    /* A waiter has a deadline to keep: a lock held by a stopped peer is
     * tried again at the next slice. */
    uint32_t granted;
    int rc = vmown__lock_block_until(vm, vmown__now_ns() + LOCK_TRY_NS);
    if (rc == VMOWN_ETIMEDOUT || rc == VMOWN_ESTUCK) return 0;
    if (rc < 0) return rc;
    rc = vmown__reap_dead_locked(vm, &granted);
    unlock_block(vm);
    vmown__post_granted(vm, granted);
    return rc < 0 ? rc : 0;
}

int vmown_reap(vmown_vm *vm) {
    uint32_t granted;
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    rc = vmown__reap_dead_locked(vm, &granted);
    unlock_block(vm);
    vmown__post_granted(vm, granted);
    return rc;
}

