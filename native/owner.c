/* owner.c -- the owner word, own and disown, the wait queue, hand-off.
 *
 * Notes about the implementation
 * ------------------------------
 * Three kinds of object: the owner word (who runs VM code), the slots (one per
 * thread, each with its own process-shared semaphore), and the wait queue (a
 * linked list of slots, FIFO among equal priorities) under the block's lock.
 *
 * Rejected: a mutex as the ownership itself (the release would be a syscall
 * whenever anyone sleeps on it, and the lock could not be handed to a chosen
 * thread); a condition variable (wakes in no defined order, and a broadcast
 * wakes everybody).  Chosen, as in Go's runtime and the threaded Cog VM: an
 * atomic word that is claimed by CAS when free and *handed over* by storing
 * the receiver's index into it, then posting the receiver's semaphore.
 *
 * Owner word = epoch << 32 | owner.  Only the owner writes the word while it
 * is owned; anybody may CAS it while the owner field is 0 (and, while it is a
 * pending soft grant, its holder and its granter may: see grants.c, "Soft grants").  Hence a release is
 * a plain store, and an acquisition is a CAS from (epoch, 0).
 *
 * Disown (release), by the owner:
 *   1. if waiters are counted, take the lock (waiting LOCK_TRY_NS at most),
 *      dequeue the first waiter (a CAS WAITING -> GRANTED, see "Leaving the
 *      queue"), store (epoch+1, head), unlock, post head's semaphore (a
 *      callout's disown stores a soft grant instead, see below).  If the
 *      lock is not to be had (a peer stopped in it), store (epoch+1, 0)
 *      instead: the counted waiters find the VM unowned at their next slice
 *      and kick (race O5);
 *   2. else store (epoch+1, 0) seq_cst, then load `waiters_and_hb_asleep` seq_cst; if a
 *      waiter appeared meanwhile, kick (below).
 * Own, by a thread that does not own:
 *   1. CAS (epoch, 0) -> (epoch, me): done, nothing to restore.
 *   2. else take the lock, try the CAS again, else enqueue and count me in
 *      `waiters_and_hb_asleep` (seq_cst), unlock;
 *   3. load the owner word seq_cst; if it reads 0, kick;
 *   4. sleep on my semaphore until a post finds my state GRANTED; at each
 *      slice (SLICE_NS) look at the owner (dead: reap; unowned: kick).
 * Kick: under the lock, while the queue holds a waiter and the owner is 0,
 *   mark the first waiter GRANTED (CAS), then CAS (epoch, 0) -> (epoch,
 *   head); on success dequeue head, unlock and post it; on failure make it
 *   WAITING again.  A kick waits LOCK_TRY_NS at most for the lock: nobody
 *   needs one to get through, and a waiter's next slice kicks again.
 *
 * Why no wake-up is lost (a store-load, "Dekker" pair):
 *   owner:  store owner := 0   ; load waiters_and_hb_asleep
 *   waiter: add waiters_and_hb_asleep += 1 ; load owner
 * All four are seq_cst, so at least one side sees the other's store: either
 * the owner sees the waiter (and kicks, or hands off), or the waiter sees the
 * VM free (and kicks).  If both see each other both kick; kick is idempotent:
 * its CAS succeeds for one head at most, and a failed CAS means whoever took
 * the word will see the waiter at its own release.  The count only changes
 * under the lock (+1 as a slot is linked, -1 as it is unlinked), and a slot
 * that left the queue stays linked and counted until unlinked: the count is
 * never below the waiters that sleep, which is all the argument needs.  A
 * kick or a hand-off that gives up on the lock leaves the VM unowned with
 * the waiters counted; the waiter side's slice check then kicks, so the
 * worst a stopped lock holder costs a waiter is its wait, not its wake-up.
 *
 * Why a post is never lost: the granter sets GRANTED and stores the new
 * owner *before* posting, and the semaphore counts, so a post that arrives before
 * the waiter sleeps makes its wait return at once.  The waiter trusts its
 * state, not the post: a stray post (a repaired block may post twice) makes it
 * look at its state and sleep again.
 *
 * Leaving the queue (a timeout, a signal, vmown_own_cancel), without the
 * lock, so that a peer stopped inside the lock cannot keep a waiter past its
 * deadline:
 *   1. the waiter's sleep ends at its deadline (or a signal);
 *   2. CAS state WAITING -> LEFT.  Success: it has left; it returns its
 *      timeout now.  Failure, state GRANTED: a grant came first; the VM (or
 *      a soft grant) is its own and a post is on its way: it waits for the
 *      post in slices, whatever the deadline, and owns;
 *   3. tidy-up: take the lock if it comes within LOCK_TRY_NS, unlink the
 *      slot, count it out, make it RUNNING.  Else the slot stays linked and
 *      counted, LEFT, and the next lock holder that meets it does that: a
 *      grant at the head (vmown__drop_left_locked), the queue's reader,
 *      repair, reap, or the thread itself when it queues, parks, sets its
 *      priority or unregisters again.
 * Caution: between step 2 and the unlink, the slot is linked but not waiting.
 * Every lock holder that walks or pops the queue skips LEFT slots and never
 * names one in the owner word: a grant marks its waiter GRANTED by a CAS
 * from WAITING *before* the word names it (race O3: the grant and the
 * leave both CAS the slot's state from WAITING; one wins).  A kick whose word CAS
 * then fails gives the grant back (GRANTED -> WAITING, in place, under the
 * lock); a waiter whose step 2 saw that grant finds itself WAITING at its
 * next slice and leaves then (race O4): a deadline overrun of one slice at
 * most.  A slot that left queues again at the back, with a new ticket (race
 * O6), as if it had been unlinked when it left: turned back to WAITING in
 * place it would go ahead of everybody who queued since it gave up.  The idle stack
 * has the same protocol (idle.c; state LEFT_IDLE).
 *
 * Lock order: the block's lock is the only lock; no semaphore is posted and no
 * other lock is taken while holding it, except in repair.
 *
 * Debug: vmown_debug_set_widen_ns() stretches the windows that the
 * arguments above are about (enqueue -> sleep, store owner -> post, a soft
 * grant's wake -> claim, a waiter's timeout -> its leaving CAS, a granter's
 * look at the head -> its granting CAS) so that stress tests run through them
 * instead of past them.  VMOWN_DEBUG_STOP_LEAVE stops a waiter between steps 1
 * and 2.
 */
#define _GNU_SOURCE
#include "vmown_core.h"

#include <stdlib.h>

static _Atomic int64_t widen_ns;

void vmown_debug_set_widen_ns(int64_t ns) { atomic_store(&widen_ns, ns < 0 ? 0 : ns); }

void vmown__widen(void) {
    int64_t ns = atomic_load_explicit(&widen_ns, RELAXED);
    if (likely(ns == 0)) return;
    int64_t until = vmown__now_ns() + ns;
    do vmown__thread_yield();
    while (vmown__now_ns() < until);
}

static _Atomic int debug_stop_point;

void vmown_debug_set_stop(int point) { atomic_store(&debug_stop_point, point); }

void vmown__debug_stop(int point) {
    if (unlikely(atomic_load_explicit(&debug_stop_point, RELAXED) == point)) vmown__stop_self();
}

/* ---- the wait queue; every function here runs under the lock ---- */

/* Read a link from shared memory: 0 or a valid index, else the block is
 * corrupt and is marked broken. */
int vmown__read_link(vmown_vm *vm, _Atomic uint32_t *link, uint32_t *out) {
    uint32_t i = atomic_load_explicit(link, RELAXED);
    if (i != 0 && !valid_index(vm, i)) {
        mark_broken(vm);
        return VMOWN_EBROKEN;
    }
    *out = i;
    return 0;
}

int vmown__enqueue_locked(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint32_t tail, prev = 0, cur;
    int rc;
    /* O6. Left the queue before and still linked there (its tidy-up did not
     * get the lock): unlink it, then queue it at the back with a new ticket, as
     * if it had been unlinked when it left.  Turning it back to WAITING in
     * place would put it ahead of everybody who queued since it gave up. */
    if ((rc = vmown__unlink_left_locked(vm, me)) < 0) return rc;
    int32_t prio = atomic_load_explicit(&s->priority, RELAXED);
    atomic_store_explicit(&s->ticket, atomic_fetch_add_explicit(&b->next_ticket, 1, RELAXED), RELAXED);
    atomic_store_explicit(&s->state, VMOWN_SLOT_WAITING, RELAXED);
    atomic_store_explicit(&s->robbed, 0, RELAXED);  /* a new wait: no robbery yet */
    if ((rc = vmown__read_link(vm, &b->tail, &tail)) < 0) return rc;
    if (tail == 0 || atomic_load_explicit(&slot_of(vm, tail)->priority, RELAXED) >= prio) {
        /* The common case: append. */
        atomic_store_explicit(&s->next, 0, RELAXED);
        if (tail) atomic_store_explicit(&slot_of(vm, tail)->next, me, RELAXED);
        else atomic_store_explicit(&b->head, me, RELAXED);
        atomic_store_explicit(&b->tail, me, RELAXED);
    } else {
        /* Insert before the first slot of lower priority; bounded walk. */
        if ((rc = vmown__read_link(vm, &b->head, &cur)) < 0) return rc;
        for (uint32_t steps = 0; cur && atomic_load_explicit(&slot_of(vm, cur)->priority, RELAXED) >= prio;
             steps++) {
            if (steps > vm->nslots) { mark_broken(vm); return VMOWN_EBROKEN; }
            prev = cur;
            if ((rc = vmown__read_link(vm, &slot_of(vm, cur)->next, &cur)) < 0) return rc;
        }
        atomic_store_explicit(&s->next, cur, RELAXED);
        if (prev) atomic_store_explicit(&slot_of(vm, prev)->next, me, RELAXED);
        else atomic_store_explicit(&b->head, me, RELAXED);
    }
    vmown__debug_stop(VMOWN_DEBUG_STOP_IN_LOCK);  /* linked, not yet counted */
    /* seq_cst: pairs with the load of `waiters_and_hb_asleep` after a release store. */
    atomic_fetch_add_explicit(&b->waiters_and_hb_asleep, 1, SEQ_CST);
    return 0;
}

/* Put `me` back in the queue at the place its ticket gives it: a waiter
 * robbed of a soft grant keeps its place (among equal priorities it is older
 * than everybody, so this is the head).  Bounded walk, as enqueue_locked. */
int vmown__requeue_locked(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    int32_t prio = atomic_load_explicit(&s->priority, RELAXED);
    uint64_t ticket = atomic_load_explicit(&s->ticket, RELAXED);
    uint32_t prev = 0, cur;
    int rc;
    if ((rc = vmown__read_link(vm, &b->head, &cur)) < 0) return rc;
    for (uint32_t steps = 0; cur; steps++) {
        struct vmown_slot *c = slot_of(vm, cur);
        int32_t p = atomic_load_explicit(&c->priority, RELAXED);
        if (p < prio || (p == prio && atomic_load_explicit(&c->ticket, RELAXED) > ticket)) break;
        if (steps > vm->nslots) { mark_broken(vm); return VMOWN_EBROKEN; }
        prev = cur;
        if ((rc = vmown__read_link(vm, &c->next, &cur)) < 0) return rc;
    }
    atomic_store_explicit(&s->state, VMOWN_SLOT_WAITING, RELAXED);
    atomic_store_explicit(&s->next, cur, RELAXED);
    if (prev) atomic_store_explicit(&slot_of(vm, prev)->next, me, RELAXED);
    else atomic_store_explicit(&b->head, me, RELAXED);
    if (cur == 0) atomic_store_explicit(&b->tail, me, RELAXED);
    /* seq_cst: the same store-load pair as enqueue_locked. */
    atomic_fetch_add_explicit(&b->waiters_and_hb_asleep, 1, SEQ_CST);
    return 0;
}

/* Unlink `me` from a slot list (the queue: field `next`; the idle stack:
 * `idle_next`) whose first link is *head.  The walk is bounded by nslots and
 * every link is checked, so a corrupt list marks the block broken instead of
 * looping.  *prev_out is me's predecessor (0: it was first). */
int vmown__list_unlink_locked(vmown_vm *vm, _Atomic uint32_t *head, size_t link, uint32_t me,
                              uint32_t *prev_out) {
#define LINK(i) ((_Atomic uint32_t *)((char *)slot_of(vm, (i)) + link))
    uint32_t prev = 0, cur, next;
    int rc;
    if ((rc = vmown__read_link(vm, head, &cur)) < 0) return rc;
    for (uint32_t steps = 0; cur != me; steps++) {
        if (cur == 0 || steps > vm->nslots) { mark_broken(vm); return VMOWN_EBROKEN; }
        prev = cur;
        if ((rc = vmown__read_link(vm, LINK(cur), &cur)) < 0) return rc;
    }
    if ((rc = vmown__read_link(vm, LINK(me), &next)) < 0) return rc;
    atomic_store_explicit(prev ? LINK(prev) : head, next, RELAXED);
    atomic_store_explicit(LINK(me), 0, RELAXED);
    *prev_out = prev;
    return 0;
#undef LINK
}

/* Unlink `me` from wherever it is in the queue, and count it out. */
int vmown__unlink_locked(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    uint32_t prev;
    int rc = vmown__list_unlink_locked(vm, &b->head, offsetof(struct vmown_slot, next), me, &prev);
    if (rc < 0) return rc;
    if (atomic_load_explicit(&b->tail, RELAXED) == me) atomic_store_explicit(&b->tail, prev, RELAXED);
    atomic_fetch_sub_explicit(&b->waiters_and_hb_asleep, 1, SEQ_CST);
    return 0;
}

/* A slot that left the queue (LEFT) or the idle stack (LEFT_IDLE) by
 * itself: unlink it from that list and make it RUNNING, which it has been
 * since it left.  Any other state: nothing to do. */
int vmown__unlink_left_locked(vmown_vm *vm, uint32_t i) {
    struct vmown_slot *s = slot_of(vm, i);
    uint32_t st = atomic_load_explicit(&s->state, RELAXED);
    int rc;
    if (st == VMOWN_SLOT_LEFT) rc = vmown__unlink_locked(vm, i);
    else if (st == VMOWN_SLOT_LEFT_IDLE) rc = vmown__idle_unlink_locked(vm, i);
    else return 0;
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELEASE);
    return rc;
}

/* Unlink the slots that left, at the head of the queue; *out is the head
 * then (0: empty).  Bounded: each round unlinks one slot. */
int vmown__drop_left_locked(vmown_vm *vm, uint32_t *out) {
    for (uint32_t steps = 0;; steps++) {
        uint32_t head;
        int rc = vmown__read_link(vm, &vm->block->head, &head);
        if (rc < 0) return rc;
        if (head == 0 || atomic_load_explicit(&slot_of(vm, head)->state, RELAXED) != VMOWN_SLOT_LEFT) {
            *out = head;
            return 0;
        }
        if (steps > vm->nslots) { mark_broken(vm); return VMOWN_EBROKEN; }
        if ((rc = vmown__unlink_left_locked(vm, head)) < 0) return rc;
    }
}

/* Mark the first waiter GRANTED with a CAS from WAITING, which a waiter
 * leaving at that moment races with its own CAS to LEFT: one of them wins
 * (race O3).  Slots that left on the way are unlinked.  The chosen slot
 * stays linked and counted: the caller unlinks it (vmown__pop_head_locked)
 * or gives the grant back (VMOWN_SLOT_WAITING again, in place).  *out = 0:
 * nobody waits. */
int vmown__reserve_head_locked(vmown_vm *vm, uint32_t *out) {
    for (uint32_t steps = 0;; steps++) {
        uint32_t head;
        int rc = vmown__drop_left_locked(vm, &head);
        if (rc < 0 || head == 0) {
            *out = 0;
            return rc;
        }
        if (steps > vm->nslots) { mark_broken(vm); return VMOWN_EBROKEN; }
        _Atomic uint32_t *state = &slot_of(vm, head)->state;
        uint32_t st = atomic_load_explicit(state, RELAXED);
        if (st != VMOWN_SLOT_WAITING) {
            if (st == VMOWN_SLOT_LEFT) continue;  /* it left since: unlink it next round */
            mark_broken(vm);  /* a linked slot is WAITING or LEFT */
            return VMOWN_EBROKEN;
        }
        vmown__widen();  /* O3: the waiter may leave between this look and the CAS */
        if (atomic_compare_exchange_strong_explicit(state, &st, VMOWN_SLOT_GRANTED, SEQ_CST, RELAXED)) {
            *out = head;
            return 0;
        }
    }
}

/* Dequeue the first waiter and mark it GRANTED; the caller stores it as
 * owner. */
int vmown__pop_head_locked(vmown_vm *vm, uint32_t *out) {
    int rc = vmown__reserve_head_locked(vm, out);
    if (rc < 0 || *out == 0) return rc;
    return vmown__unlink_locked(vm, *out);
}

/* ---- hand-over ---- */

/* Under the lock: give an unowned VM to the head waiter, if both exist.
 * Sets *granted to the slot to post after unlocking (0: none).  The waiter
 * is marked GRANTED before the word names it (a waiter that left must never
 * be named); if the word's CAS then fails, the grant is given back. */
int vmown__grant_head_locked(vmown_vm *vm, uint32_t *granted) {
    struct vmown__block *b = vm->block;
    uint32_t head;
    int rc;
    *granted = 0;
    for (;;) {
        uint64_t w = atomic_load_explicit(&b->owner_word, SEQ_CST);
        if (VMOWN__OWNER(w) != 0) return 0;  /* its owner will see the queue */
        if ((rc = vmown__reserve_head_locked(vm, &head)) < 0 || head == 0) return rc;
        if (atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), head),
                                                    SEQ_CST, RELAXED))
            break;
        /* Lost the CAS to an epoch bump, or to a taker who will see us:
         * the waiter waits on, still linked and counted.  If it tried to
         * leave meanwhile it saw GRANTED and waits for a post in slices; at
         * the next it finds itself WAITING and leaves then. */
        atomic_store_explicit(&slot_of(vm, head)->state, VMOWN_SLOT_WAITING, RELAXED);
    }
    rc = vmown__unlink_locked(vm, head);
    if (rc == 0) *granted = head;
    return rc;
}

void vmown__post_granted(vmown_vm *vm, uint32_t granted) {
    if (!granted) return;
    vmown__widen();
    post(vm, granted);
}

/* Give an unowned VM to the head waiter, if both exist.  Nobody needs a
 * kick to get through: if the lock is not to be had within LOCK_TRY_NS (a
 * peer stopped in it, say), the grant is left to the next lock holder or
 * to a waiter's slice (vmown__check_owner kicks again). */
int vmown__kick(vmown_vm *vm) {
    uint32_t granted;
    int rc = vmown__lock_block_until(vm, vmown__now_ns() + LOCK_TRY_NS);
    if (rc == VMOWN_ETIMEDOUT || rc == VMOWN_ESTUCK) return 0;
    if (rc < 0) return rc;
    rc = vmown__grant_head_locked(vm, &granted);
    unlock_block(vm);
    vmown__post_granted(vm, granted);
    return rc;
}

/* Wake this block's heartbeat if it sleeps (VMOWN__HB_ASLEEP in
 * `waiters_and_hb_asleep`): the core's side of the heartbeat's sleep, so that the core
 * calls nothing above it.  A stray post is harmless. */
void vmown__wake_heartbeat(vmown_vm *vm) {
    uint64_t was = atomic_fetch_and_explicit(&vm->block->waiters_and_hb_asleep, ~VMOWN__HB_ASLEEP, SEQ_CST);
    if (was & VMOWN__HB_ASLEEP) (void)vmown__sem_post(&vm->block->hb_sem);  /* fails only if corrupt */
}

/* Just queued (counted in `waiters_and_hb_asleep`, seq_cst): the other half of the
 * store-load pairs.  The owner released before it could see us: kick.  The
 * owner is out in a lazy callout, which only a revocation ends, and the
 * heartbeat sleeps: wake it (grants.c, "Lazy callouts"). */
int vmown__after_queueing(vmown_vm *vm) {
    struct vmown__block *b = vm->block;
    uint64_t w = atomic_load_explicit(&b->owner_word, SEQ_CST);
    if (VMOWN__OWNER(w) == 0) return vmown__kick(vm);
    uint32_t t = (uint32_t)VMOWN__OWNER(w);
    if ((atomic_load_explicit(&b->waiters_and_hb_asleep, SEQ_CST) & VMOWN__HB_ASLEEP) && valid_index(vm, t) &&
        (atomic_load_explicit(&slot_of(vm, t)->lazy_seq, RELAXED) & 1))
        vmown__wake_heartbeat(vm);
    return 0;
}

/* Left the queue (LEFT) or the idle stack (LEFT_IDLE), by its own CAS:
 * unlink it now if the lock comes within LOCK_TRY_NS, so that the counts
 * and the lists read exact at once; else the next lock holder that meets
 * it does. */
void vmown__tidy_left(vmown_vm *vm, uint32_t me) {
    if (vmown__lock_block_until(vm, vmown__now_ns() + LOCK_TRY_NS) < 0) return;
    (void)vmown__unlink_left_locked(vm, me);  /* a failure marked the block broken */
    unlock_block(vm);
}

/* Leave the queue without the lock (see the notes, "Leaving the queue"):
 * true if this slot was WAITING and is LEFT now; false if a grant came
 * first (*state_out GRANTED: the VM, or a soft grant, is ours and its post
 * is on its way) or the slot was not queued (RUNNING, LEFT). */
static bool leave_queue(vmown_vm *vm, uint32_t me, uint32_t *state_out) {
    struct vmown_slot *s = slot_of(vm, me);
    uint32_t st = VMOWN_SLOT_WAITING;
    /* Caution: from a successful CAS on, a lock holder may unlink this slot
     * and make it RUNNING at any moment; nothing here writes it again. */
    bool left = atomic_compare_exchange_strong_explicit(&s->state, &st, VMOWN_SLOT_LEFT, SEQ_CST, ACQUIRE);
    *state_out = st;
    if (left) {
        bump(&s->interrupts);
        vmown__tidy_left(vm, me);
    }
    return left;
}

/* Sleep until GRANTED.  On a signal (if interruptible) or a timeout, leave
 * the queue; if the grant won that race, take it instead.  Robbed of a soft
 * grant, sleep again, with the caller's deadline and flags. */
int vmown__await_grant(vmown_vm *vm, uint32_t me, int64_t deadline_ns, int flags) {
    struct vmown_slot *s = slot_of(vm, me);
    unsigned strays = 0;
    /* A leave found the slot GRANTED: wait for the post in slices, whatever
     * the deadline and signals.  Cleared when a grant given back
     * (vmown__grant_head_locked) makes the slot WAITING again. */
    bool granted_seen = false;
    for (;;) {
        int64_t slice_end = vmown__now_ns() + SLICE_NS;
        bool sliced = granted_seen || deadline_ns < 0 || slice_end < deadline_ns;
        int rc = vmown__sem_wait(&s->sem, sliced ? slice_end : deadline_ns);
        if (rc == VMOWN_EBROKEN) { mark_broken(vm); return rc; }  /* a peer wrote over the semaphore */
        if (unlikely(is_broken(vm))) return VMOWN_EBROKEN;  /* woken by the marking: no grant will come */
        if (rc == 0) {
            if (atomic_load_explicit(&s->state, ACQUIRE) == VMOWN_SLOT_GRANTED) goto granted;
            if (++strays > MAX_STRAY_POSTS) { mark_broken(vm); return VMOWN_EBROKEN; }
            continue;  /* a stray post */
        }
        if (rc == VMOWN_ETIMEDOUT && sliced) {
            /* Granted, but no post for a whole slice: the granter died
             * between its store and its post.  Take the grant; should the
             * post come after all, the next wait skips it as a stray. */
            if (atomic_load_explicit(&s->state, ACQUIRE) == VMOWN_SLOT_GRANTED) goto granted;
            if (granted_seen) {
                granted_seen = false;  /* the grant was given back: past the deadline, leave again */
                continue;
            }
            if ((rc = vmown__check_owner(vm)) < 0) return rc;
            if ((flags & VMOWN_WAIT_SLICES) &&
                atomic_load_explicit(&s->state, ACQUIRE) == VMOWN_SLOT_WAITING)
                return VMOWN_EAGAIN;  /* still queued: the caller runs its signal handlers */
            continue;
        }
        if (rc == VMOWN_EINTR && (granted_seen || !(flags & VMOWN_WAIT_INTERRUPTIBLE))) continue;
        /* The deadline passed, or a signal: leave, without the lock. */
        vmown__debug_stop(VMOWN_DEBUG_STOP_LEAVE);
        vmown__widen();  /* O3: a grant may land between the timeout and the CAS */
        uint32_t st;
        if (leave_queue(vm, me, &st)) return rc;
        if (st != VMOWN_SLOT_GRANTED) { mark_broken(vm); return VMOWN_EBROKEN; }  /* queued, so WAITING or GRANTED */
        granted_seen = true;
        continue;
    granted:
        vmown__debug_stop(VMOWN_DEBUG_STOP_GRANTED);
        granted_seen = false;
        if ((rc = vmown__settle_grant(vm, me)) < 0) return rc;
        if (rc == 1) break;
        /* robbed: queued again, waiting as asked */
    }
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
    bump(&s->waits);
    return 0;
}


/* A soft grant turns hard for a waiter robbed this often, or this long after
 * its first robbery: a thread that makes only short callouts cannot keep the
 * VM from it. */
#ifndef MAX_ROBBED
#define MAX_ROBBED 64
#endif
#ifndef ROB_LIMIT_NS
#define ROB_LIMIT_NS 1000000  /* 1 ms: one heartbeat tick at the default rate */
#endif

int vmown__disown(vmown_vm *vm, uint32_t me, uint64_t callout, bool soft) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w = my_word(vm, me);
    if (unlikely(VMOWN__OWNER(w) != (int32_t)me)) return not_owner(vm);
    atomic_store_explicit(&s->callout, callout, RELAXED);
    atomic_store_explicit(&s->callout_tick, atomic_load_explicit(&b->ticks, RELAXED), RELAXED);
    bump(&s->disowns);
    if (likely((atomic_load_explicit(&b->waiters_and_hb_asleep, RELAXED) & VMOWN__WAITERS_MASK) == 0)) {
        /* Release; seq_cst orders it before the load of waiters_and_hb_asleep below. */
        atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, 0), SEQ_CST);
        uint64_t att = atomic_load_explicit(&b->waiters_and_hb_asleep, SEQ_CST);
        if (likely(att == 0)) return 0;
        if (att & VMOWN__HB_ASLEEP) vmown__wake_heartbeat(vm);
        return (att & VMOWN__WAITERS_MASK) ? vmown__kick(vm) : 0;
    }
    /* Hand-off: give the VM straight to the head waiter. */
    uint32_t head = 0;
    int rc = vmown__lock_block_until(vm, vmown__now_ns() + LOCK_TRY_NS);
    if (rc == VMOWN_ETIMEDOUT || rc == VMOWN_ESTUCK) {
        /* A peer holds the lock (stopped in it, say): release without a
         * hand-off rather than wait.  The waiters are counted, so each finds
         * the VM unowned at its next slice and kicks (vmown__check_owner);
         * whoever takes it meanwhile sees them at its own release. */
        atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, 0), SEQ_CST);
        if (atomic_load_explicit(&b->waiters_and_hb_asleep, SEQ_CST) & VMOWN__HB_ASLEEP) vmown__wake_heartbeat(vm);
        return 0;
    }
    if (rc < 0) return rc;
    if (soft && atomic_load_explicit(&b->claimant, RELAXED) != 0) {
        /* A robbed claimant is on its way back (race S3): it looks again
         * under this lock after us, so it finds the VM free or queues and
         * is granted by a later disown.  Waking another waiter now would
         * only make a herd. */
        atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, 0), SEQ_CST);
        unlock_block(vm);
        if (atomic_load_explicit(&b->waiters_and_hb_asleep, SEQ_CST) & VMOWN__HB_ASLEEP) vmown__wake_heartbeat(vm);
        return 0;
    }
    rc = vmown__pop_head_locked(vm, &head);
    uint32_t word_owner = head;
    if (soft && head) {
        struct vmown_slot *h = slot_of(vm, head);
        uint32_t robbed = atomic_load_explicit(&h->robbed, RELAXED);
        soft = robbed == 0 || (robbed < MAX_ROBBED && vmown__now_ns() -
                                   atomic_load_explicit(&h->robbed_since_ns, RELAXED) < ROB_LIMIT_NS);
    }
    if (soft && head) {
        word_owner = VMOWN__PENDING | head;
        atomic_store_explicit(&b->claimant, head, RELAXED);
        atomic_store_explicit(&s->soft_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, word_owner), RELAXED);
        bump(&s->soft_grants);
    } else if (head) {
        bump(&s->hand_offs);  /* before the release, as in vmown_park */
    }
    /* Caution: once the word names head, head may run VM code; nothing of the
     * VM may be touched after this store. */
    atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, word_owner), SEQ_CST);
    unlock_block(vm);
    if (rc < 0) return rc;
    if (head) {
        vmown__debug_stop(VMOWN_DEBUG_STOP_BEFORE_POST);  /* S8 */
        vmown__widen();
        post(vm, head);
    } else if (atomic_load_explicit(&b->waiters_and_hb_asleep, SEQ_CST) & VMOWN__WAITERS_MASK) {
        return vmown__kick(vm);
    }
    return 0;
}

int vmown_disown(vmown_vm *vm, uint32_t me, uint64_t callout) { return vmown__disown(vm, me, callout, false); }

static int own_fast(vmown_vm *vm, struct vmown_slot *s, uint32_t me, uint64_t *w) {
    *w = atomic_load_explicit(&vm->block->owner_word, RELAXED);
    if (likely(VMOWN__OWNER(*w) == 0)) {
        if (atomic_compare_exchange_strong_explicit(&vm->block->owner_word, w, VMOWN__WORD(VMOWN__EPOCH(*w), me),
                                                    ACQUIRE, RELAXED)) {
            bump(&s->fast_owns);
            return 1;
        }
    } else if (*w == atomic_load_explicit(&s->soft_word, RELAXED)) {
        /* Our own soft grant, not claimed yet: steal it back (race S1). */
        if (atomic_compare_exchange_strong_explicit(&vm->block->owner_word, w, VMOWN__WORD(VMOWN__EPOCH(*w), me),
                                                    ACQUIRE, RELAXED)) {
            atomic_store_explicit(&s->soft_word, 0, RELAXED);
            bump(&s->steals);
            bump(&s->fast_owns);
            return 1;
        }
    }
    return 0;
}

int vmown_own_wait(vmown_vm *vm, uint32_t me, int64_t timeout_ns, int flags) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w;
    if (likely(own_fast(vm, s, me, &w))) return 0;
    if (VMOWN__OWNER(vmown__settle_revoking(vm, me, w)) == (int32_t)me) return VMOWN_EALREADY;
    uint32_t st = atomic_load_explicit(&s->state, RELAXED);
    if (st != VMOWN_SLOT_RUNNING && st != VMOWN_SLOT_LEFT && st != VMOWN_SLOT_LEFT_IDLE) return VMOWN_EBADSLOT;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    int rc = vmown__lock_block_until(vm, deadline);
    if (rc < 0) return rc;
    if ((rc = vmown__unlink_left_locked(vm, me)) < 0) {  /* left before and still linked: tidy up */
        unlock_block(vm);
        return rc;
    }
    w = atomic_load_explicit(&b->owner_word, RELAXED);
    if (VMOWN__OWNER(w) == 0 &&
        atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), me), ACQUIRE,
                                                RELAXED)) {
        unlock_block(vm);
        bump(&s->slow_owns);
        return 0;
    }
    if (timeout_ns == 0) {
        unlock_block(vm);
        return VMOWN_ETIMEDOUT;
    }
    rc = vmown__enqueue_locked(vm, me);
    unlock_block(vm);
    if (rc < 0) return rc;
    bump(&s->slow_owns);
    vmown__widen();
    /* The other half of the store-load pair: the owner may have released
     * before it could see us counted. */
    if ((rc = vmown__after_queueing(vm)) < 0) return rc;
    return vmown__await_grant(vm, me, deadline, flags);
}

int vmown_own(vmown_vm *vm, uint32_t me) { return vmown_own_wait(vm, me, -1, 0); }

int vmown_own_resume(vmown_vm *vm, uint32_t me, int64_t deadline_ns, int flags) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    uint32_t st = atomic_load_explicit(&slot_of(vm, me)->state, ACQUIRE);
    if (st != VMOWN_SLOT_WAITING && st != VMOWN_SLOT_GRANTED) return VMOWN_EBADSLOT;
    return vmown__await_grant(vm, me, deadline_ns, flags);
}

int vmown_own_cancel(vmown_vm *vm, uint32_t me) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    uint32_t st;
    if (leave_queue(vm, me, &st) || st != VMOWN_SLOT_GRANTED) return 0;
    int rc = vmown__await_grant(vm, me, -1, 0);  /* granted meanwhile: take the post on its way */
    return rc < 0 ? rc : 1;
}

int vmown_thread_own(const vmown_thread *t) {
    return vmown_own_wait(t->vm, t->slot, -1, VMOWN_WAIT_INTERRUPTIBLE | VMOWN_WAIT_SLICES);
}

int vmown_thread_disown(const vmown_thread *t) { return vmown_disown(t->vm, t->slot, 0); }

int vmown_try_own(vmown_vm *vm, uint32_t me) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w;
    if (own_fast(vm, s, me, &w)) return 1;
    return VMOWN__OWNER(vmown__settle_revoking(vm, me, w)) == (int32_t)me ? VMOWN_EALREADY : 0;
}

int vmown_yield(vmown_vm *vm, uint32_t me, int64_t timeout_ns, int flags) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w = my_word(vm, me);
    if (VMOWN__OWNER(w) != (int32_t)me) return not_owner(vm);
    if ((atomic_load_explicit(&b->waiters_and_hb_asleep, RELAXED) & VMOWN__WAITERS_MASK) == 0) return 0;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    uint32_t head = 0;
    /* The lock by the deadline (LOCK_TRY_NS at least), or no yield: the
     * caller keeps the VM, as when nobody waits. */
    int rc = vmown__lock_block_until(vm, vmown__lock_deadline(deadline));
    if (rc == VMOWN_ETIMEDOUT || rc == VMOWN_ESTUCK) return 0;
    if (rc < 0) return rc;
    if ((rc = vmown__pop_head_locked(vm, &head)) < 0 || head == 0) {
        unlock_block(vm);
        return rc;
    }
    if ((rc = vmown__enqueue_locked(vm, me)) < 0) {
        mark_broken(vm);
        unlock_block(vm);
        return rc;
    }
    bump(&s->hand_offs);
    atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, head), SEQ_CST);
    unlock_block(vm);
    vmown__widen();
    post(vm, head);
    rc = vmown__await_grant(vm, me, deadline, flags);
    return rc < 0 ? rc : 1;
}

int vmown_set_priority(vmown_vm *vm, uint32_t me, int32_t priority) {
    if (!valid_index(vm, me)) return VMOWN_EBADSLOT;
    struct vmown_slot *s = slot_of(vm, me);
    uint32_t st = atomic_load_explicit(&s->state, RELAXED);
    if (st == VMOWN_SLOT_LEFT || st == VMOWN_SLOT_LEFT_IDLE) {
        /* Still linked where it left: unlinked first, so that no list holds
         * a slot out of its priority order. */
        int rc = vmown__lock_block(vm);
        if (rc < 0) return rc;
        rc = vmown__unlink_left_locked(vm, me);
        unlock_block(vm);
        if (rc < 0) return rc;
        st = atomic_load_explicit(&s->state, RELAXED);
    }
    if (st != VMOWN_SLOT_RUNNING) return VMOWN_EBUSY;
    atomic_store_explicit(&s->priority, priority, RELAXED);
    return 0;
}

