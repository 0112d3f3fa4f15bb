/* idle.c -- the idle stack of parked workers and servers.
 *
 * Parking joins the idle stack and releases the VM in one critical section,
 * so a worker is never both unfindable and unowning: whoever looks at the
 * stack under the lock sees it either owning or parked.
 *
 * A parked worker leaves the stack in one of these ways:
 *   activation (heartbeat, under the lock): state PARKED -> GRANTED by CAS,
 *     then the owner word is CAS'd from the unowned word the heartbeat saw at
 *     two ticks to the worker's index (if that fails, the worker is pushed
 *     back, PARKED);
 *   a hand-over or a revocation (under the lock): PARKED -> GRANTED by CAS,
 *     then the word is stored (or CAS'd from the revoking word);
 *   unpark (under the lock): PARKED -> RUNNING by CAS (woken without the VM);
 *   the heartbeat's servers (under the lock): PARKED -> WAITING by CAS, into
 *     the wait queue;
 *   its own timeout or signal, without the lock: PARKED -> LEFT_IDLE by
 *     CAS.  Still linked, it is unlinked by its own tidy-up if the lock comes
 *     within LOCK_TRY_NS, else by the next lock holder that meets it
 *     (vmown__idle_take_locked skips and unlinks it) or by its next park or
 *     queueing.  The idle count includes it until then.
 * The CASes from PARKED decide between a waker and the worker's leave, as
 * in the wait queue (owner.c, "Leaving the queue").  A worker that loses its
 * leave to a grant or an unpark takes the post that is on its way (in
 * slices: if an activation gives it back, PARKED again, it leaves then).
 *
 * No owner value is reserved while the heartbeat picks a worker: the pick
 * happens under the lock *before* the CAS, so the CAS either installs the
 * chosen worker or fails because somebody took the VM, and the worker stays
 * parked. */

#define _GNU_SOURCE
#include "vmown_core.h"

int vmown__idle_unlink_locked(vmown_vm *vm, uint32_t me) {
    uint32_t prev;
    int rc = vmown__list_unlink_locked(vm, &vm->block->idle_head, offsetof(struct vmown_slot, idle_next), me, &prev);
    if (rc == 0) atomic_fetch_sub_explicit(&vm->block->idle_count, 1, RELAXED);
    return rc;
}

/* Take a parked worker off the idle stack: `target`, or (0) the most
 * recently parked one, by a CAS PARKED -> `to`, unlinking on the way the
 * workers that left by themselves.  *out = 0: nobody parked (or target is
 * not parked). */
int vmown__idle_take_locked(vmown_vm *vm, uint32_t target, uint32_t to, uint32_t *out) {
    *out = 0;
    for (uint32_t steps = 0; steps <= vm->nslots; steps++) {
        uint32_t i = target;
        int rc;
        if (i == 0 && (rc = vmown__read_link(vm, &vm->block->idle_head, &i)) < 0) return rc;
        if (i == 0) return 0;
        _Atomic uint32_t *state = &slot_of(vm, i)->state;
        uint32_t st = atomic_load_explicit(state, RELAXED);
        if (st == VMOWN_SLOT_LEFT_IDLE) {
            if ((rc = vmown__unlink_left_locked(vm, i)) < 0) return rc;
            if (target) return 0;
            continue;
        }
        if (st != VMOWN_SLOT_PARKED) {
            if (target) return 0;  /* not parked (any more) */
            mark_broken(vm);       /* a slot on the idle stack is PARKED or LEFT_IDLE */
            return VMOWN_EBROKEN;
        }
        vmown__widen();  /* I1: the worker may leave between this look and the CAS */
        if (!atomic_compare_exchange_strong_explicit(state, &st, to, SEQ_CST, RELAXED)) continue;  /* it left */
        if ((rc = vmown__idle_unlink_locked(vm, i)) < 0) return rc;
        *out = i;
        return 0;
    }
    mark_broken(vm);
    return VMOWN_EBROKEN;
}

/* Out of the idle stack, a server (vmown__queue_idle) has its own priority
 * again.  Owning, it came through the queue as a waiter does: counted as a
 * slow own, so that every acquisition is an own or an activation. */
static int leave_serving(vmown_vm *vm, uint32_t me, int rc) {
    struct vmown_slot *s = slot_of(vm, me);
    if (atomic_load_explicit(&s->serving, RELAXED)) {
        if (rc == 1) bump(&s->slow_owns);
        atomic_store_explicit(&s->priority, atomic_load_explicit(&s->saved_priority, RELAXED), RELAXED);
        atomic_store_explicit(&s->serving, 0, RELAXED);
        atomic_fetch_sub_explicit(&vm->block->servers_out, 1, RELAXED);
    }
    return rc;
}

/* Onto the idle stack; a slot still linked where it left before (LEFT,
 * LEFT_IDLE) is unlinked there first. */
int vmown__idle_push_locked(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    int rc = vmown__unlink_left_locked(vm, me);
    if (rc < 0) return rc;
    atomic_store_explicit(&s->idle_next, atomic_load_explicit(&b->idle_head, RELAXED), RELAXED);
    atomic_store_explicit(&b->idle_head, me, RELAXED);
    atomic_fetch_add_explicit(&b->idle_count, 1, RELAXED);
    atomic_store_explicit(&s->state, VMOWN_SLOT_PARKED, RELAXED);
    return 0;
}

/* Relays.  A worker given the VM from the idle stack because a callout
 * blocked (an activation or a revocation: it was not serving; or a server
 * that claimed a soft grant: only a callout's disown makes one) while more
 * processes are runnable keeps up to RELAY_DEPTH servers queued behind it,
 * before it runs a step: when that step blocks in its callout, the disown
 * finds the next server queued and grants it at once, instead of leaving the
 * VM unowned until the heartbeat's next tick (a stall of 1-2 ms per
 * RELAY_DEPTH processes in a burst; docs/design-log.md, "Burst latency").
 * A grant from a scheduling point (a park's or a yield's hand-off) relays
 * nothing: a run queue of steps that do not block is served by its owner,
 * and relaying there would hand the VM on at every step.  The published
 * runnable count may be high (the owner updates it at spawns and when the
 * queue empties): a relayed server that finds the queue empty parks again,
 * one wake-up wasted.
 *   B1. Relay vs the heartbeat's top-up: both queue under the lock and
 *       count in `servers` and servers_out; the heartbeat counts relayed
 *       servers that came out like its own, so the relay does not make a
 *       tick look slow or fast.  At most RELAY_DEPTH + the heartbeat's depth
 *       are queued.
 *   B2. Relay vs the owner's park: the relay runs while this thread owns the
 *       VM, so vmown__queue_idle cannot grant the server now; the server is
 *       in the wait queue when this thread's step blocks (its callout's
 *       disown soft-grants it) or when this thread parks (hand-off).
 *   B3. A new worker (park_new) takes an unowned VM with work waiting. */
#ifndef RELAY_DEPTH
#define RELAY_DEPTH 2
#endif

static void serve_ahead(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    uint64_t runnable = atomic_load_explicit(&b->work[VMOWN_WORK_RUNNABLE], RELAXED);
    if (runnable < 2) return;
    uint32_t mine = atomic_load_explicit(&slot_of(vm, me)->serving, RELAXED) ? 1 : 0;
    uint32_t want = runnable - 1 < RELAY_DEPTH ? (uint32_t)runnable - 1 : RELAY_DEPTH;
    uint32_t queued = atomic_load_explicit(&b->servers_out, RELAXED) - mine;
    for (; queued < want; queued++) {
        if (vmown__queue_idle(vm) <= 0) break;
        atomic_fetch_add_explicit(&b->servers, 1, RELAXED);
        atomic_fetch_add_explicit(&b->relays, 1, RELAXED);
    }
}

/* Parked: sleep until unparked (0), given the VM (1), or the deadline or a
 * signal (a negative code). */
static int wait_parked(vmown_vm *vm, uint32_t me, int64_t deadline) {
    struct vmown_slot *s = slot_of(vm, me);
    int rc;
    unsigned strays = 0;
    /* A leave found the slot taken (GRANTED, or RUNNING: unparked): wait for
     * the post in slices, whatever the deadline and signals.  Cleared when
     * an activation gives the worker back (PARKED again). */
    bool taken_seen = false;
    for (;;) {
        rc = vmown__sem_wait(&s->sem, taken_seen ? vmown__now_ns() + SLICE_NS : deadline);
        if (rc == VMOWN_EBROKEN) { mark_broken(vm); return rc; }  /* a peer wrote over the semaphore */
        if (unlikely(is_broken(vm))) return VMOWN_EBROKEN;  /* woken by the marking: nobody will activate us */
        uint32_t st = atomic_load_explicit(&s->state, ACQUIRE);
        if (rc == 0) {
            if (st == VMOWN_SLOT_GRANTED) break;
            if (st == VMOWN_SLOT_RUNNING) return 0;  /* unparked */
            if (++strays > MAX_STRAY_POSTS) { mark_broken(vm); return VMOWN_EBROKEN; }
            continue;                                 /* a stray post */
        }
        if (taken_seen) {
            if (rc != VMOWN_ETIMEDOUT) continue;  /* the post is on its way */
            /* A whole slice without the post: its sender died before it.
             * Take what it gave; a late post is a stray to the next wait. */
            if (st == VMOWN_SLOT_GRANTED) break;
            if (st == VMOWN_SLOT_RUNNING) return 0;
            taken_seen = false;  /* given back (PARKED): past the deadline, leave again */
        }
        /* The deadline passed, or a signal: leave, without the lock. */
        vmown__widen();  /* I1: an activation may land between the timeout and the CAS */
        st = VMOWN_SLOT_PARKED;
        if (atomic_compare_exchange_strong_explicit(&s->state, &st, VMOWN_SLOT_LEFT_IDLE, SEQ_CST, ACQUIRE)) {
            bump(&s->interrupts);
            vmown__tidy_left(vm, me);
            return rc;
        }
        if (st == VMOWN_SLOT_WAITING) {
            /* Queued by the heartbeat (vmown__queue_idle): a waiter now,
             * which waits like any other, its timeout no longer applying. */
            rc = vmown__await_grant(vm, me, -1, 0);
            return rc < 0 ? rc : 1;
        }
        if (st != VMOWN_SLOT_GRANTED && st != VMOWN_SLOT_RUNNING) { mark_broken(vm); return VMOWN_EBROKEN; }
        taken_seen = true;  /* activated or unparked meanwhile: that post is on its way */
    }
    /* Activated (a hard grant), or granted from the queue, perhaps softly. */
    uint64_t w = atomic_load_explicit(&vm->block->owner_word, ACQUIRE);
    bool from_callout = !atomic_load_explicit(&s->serving, RELAXED) ||
                        (VMOWN__IS_PENDING(w) && VMOWN__HOLDER(w) == (int32_t)me);
    if ((rc = vmown__settle_grant(vm, me)) < 0) return rc;
    if (rc == 0) {
        rc = vmown__await_grant(vm, me, -1, 0);  /* robbed and queued again */
        return rc < 0 ? rc : 1;
    }
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
    bump(&s->waits);
    if (from_callout) serve_ahead(vm, me);
    return 1;
}

/* park_owning's result when the lock was not to be had by the deadline:
 * never parked, still owning (vmown_park returns 1). */
#define PARK_KEPT 2

/* Park, releasing the VM in the same critical section (hand-off to the
 * head waiter, if any). */
static int park_owning(vmown_vm *vm, uint32_t me, int64_t timeout_ns) {
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w = my_word(vm, me);
    if (VMOWN__OWNER(w) != (int32_t)me) return not_owner(vm);
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    uint32_t head = 0;
    /* The lock by the deadline (LOCK_TRY_NS at least), or no park: the
     * caller still owns the VM, as if activated at once. */
    int rc = vmown__lock_block_until(vm, vmown__lock_deadline(deadline));
    if (rc == VMOWN_ETIMEDOUT || rc == VMOWN_ESTUCK) return PARK_KEPT;
    if (rc < 0) return rc;
    if ((rc = vmown__idle_push_locked(vm, me)) < 0) {
        unlock_block(vm);
        return rc;
    }
    rc = vmown__pop_head_locked(vm, &head);
    /* Counted before the release: whoever owns next sees the counts. */
    bump(&s->disowns);
    if (head) bump(&s->hand_offs);
    /* Caution: after this store another thread may run VM code. */
    atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, head), SEQ_CST);
    unlock_block(vm);
    if (rc < 0) return rc;
    if (head) {
        vmown__widen();
        post(vm, head);
    }
    /* No waiter can be stranded: one that queues after the unlock finds the
     * VM unowned under the lock and takes it itself. */
    return wait_parked(vm, me, deadline);
}

/* Park a thread that does not own the VM (a new worker). */
static int park_new(vmown_vm *vm, uint32_t me, int64_t timeout_ns) {
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w = atomic_load_explicit(&vm->block->owner_word, RELAXED);
    if (VMOWN__HOLDER(w) == (int32_t)me) return VMOWN_ENOTOWNER;
    uint32_t st = atomic_load_explicit(&s->state, RELAXED);
    if (st != VMOWN_SLOT_RUNNING && st != VMOWN_SLOT_LEFT && st != VMOWN_SLOT_LEFT_IDLE) return VMOWN_EBADSLOT;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    /* B3. A new worker that finds the VM unowned while processes are
     * runnable takes it: its owner is out in a callout and nobody was queued
     * (a burst outran the idle stack; without this the worker would wait on
     * the stack for the heartbeat's next activation).  Its CAS from the
     * unowned word races with an activation's, a kick's and a returning
     * callout's own, as any own does: one wins, the others queue or give up.
     * Like an activated worker it then relays. */
    uint64_t w0 = atomic_load_explicit(&vm->block->owner_word, ACQUIRE);
    if (VMOWN__OWNER(w0) == 0 && atomic_load_explicit(&vm->block->work[VMOWN_WORK_RUNNABLE], RELAXED) != 0 &&
        atomic_compare_exchange_strong_explicit(&vm->block->owner_word, &w0,
                                                VMOWN__WORD(VMOWN__EPOCH(w0), me), ACQUIRE, RELAXED)) {
        bump(&s->slow_owns);
        atomic_fetch_add_explicit(&vm->block->relays, 1, RELAXED);
        serve_ahead(vm, me);
        return 1;
    }
    int rc = vmown__lock_block_until(vm, vmown__lock_deadline(deadline));
    if (rc < 0) return rc;  /* VMOWN_ETIMEDOUT: never parked */
    rc = vmown__idle_push_locked(vm, me);
    unlock_block(vm);
    return rc < 0 ? rc : wait_parked(vm, me, deadline);
}

int vmown_park(vmown_vm *vm, uint32_t me, int64_t timeout_ns) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    int rc = park_owning(vm, me, timeout_ns);
    if (rc != PARK_KEPT) return leave_serving(vm, me, rc);
    /* Counted as a park given the VM back at once, a disown and a slow own:
     * callers count every park as a disown (the scheduler's "callouts" are
     * disowns less parks), and every disown meets an acquisition. */
    struct vmown_slot *s = slot_of(vm, me);
    bump(&s->disowns);
    bump(&s->slow_owns);
    leave_serving(vm, me, 0);
    return 1;
}

int vmown_park_new(vmown_vm *vm, uint32_t me, int64_t timeout_ns) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    return leave_serving(vm, me, park_new(vm, me, timeout_ns));
}

int vmown_unpark(vmown_vm *vm, uint32_t target) {
    if (target != 0 && !valid_index(vm, target)) return VMOWN_EBADSLOT;
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    uint32_t woken;
    rc = vmown__idle_take_locked(vm, target, VMOWN_SLOT_RUNNING, &woken);
    unlock_block(vm);
    if (rc < 0 || woken == 0) return rc;
    post(vm, woken);
    return (int)woken;
}

int vmown__queue_idle(vmown_vm *vm) {
    uint32_t target, granted = 0;
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    /* Off the idle stack and into the queue in one critical section: whoever
     * looks under the lock finds it in exactly one of them. */
    if ((rc = vmown__idle_take_locked(vm, 0, VMOWN_SLOT_WAITING, &target)) < 0 || target == 0) goto done;
    struct vmown_slot *s = slot_of(vm, target);
    /* Behind every other waiter: a thread back from a callout carries a
     * process already under way. */
    atomic_store_explicit(&s->saved_priority, atomic_load_explicit(&s->priority, RELAXED), RELAXED);
    atomic_store_explicit(&s->priority, INT32_MIN, RELAXED);
    atomic_store_explicit(&s->serving, 1, RELAXED);
    atomic_fetch_add_explicit(&vm->block->servers_out, 1, RELAXED);
    if ((rc = vmown__enqueue_locked(vm, target)) < 0) goto done;
    /* enqueue_locked counted it in `waiters_and_hb_asleep` (seq_cst) before this load of
     * the owner word: an owner releasing meanwhile sees the waiter (and hands
     * off or kicks, blocking on the lock until we are done), or we see the VM
     * unowned and grant it here. */
    rc = vmown__grant_head_locked(vm, &granted);
done:
    unlock_block(vm);
    vmown__post_granted(vm, granted);
    return rc < 0 ? rc : (int)target;
}

int vmown__activate(vmown_vm *vm, uint64_t expected) {
    struct vmown__block *b = vm->block;
    uint32_t worker;
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    /* GRANTED before the word names it (a worker that left must never be
     * named); given back, PARKED on top of the stack again, if the word
     * moved. */
    if ((rc = vmown__idle_take_locked(vm, 0, VMOWN_SLOT_GRANTED, &worker)) < 0 || worker == 0) {
        unlock_block(vm);
        if (rc == 0) atomic_fetch_add_explicit(&b->starved, 1, RELAXED);
        return rc;
    }
    if (!atomic_compare_exchange_strong_explicit(&b->owner_word, &expected,
                                                 VMOWN__WORD(VMOWN__EPOCH(expected), worker), SEQ_CST, RELAXED)) {
        rc = vmown__idle_push_locked(vm, worker);
        unlock_block(vm);
        return rc;  /* somebody took the VM since the tick looked */
    }
    unlock_block(vm);
    vmown__widen();
    post(vm, worker);
    atomic_fetch_add_explicit(&b->activations, 1, RELAXED);
    return 1;
}

void vmown_set_work(vmown_vm *vm, uint64_t runnable, int64_t next_timer_ns) {
    atomic_store_explicit(&vm->block->work[VMOWN_WORK_RUNNABLE], runnable, RELAXED);
    atomic_store_explicit(&vm->block->next_timer_ns, next_timer_ns, RELAXED);
}

