/* grants.c -- soft grants, lazy callouts and their revocation.
 *
 * Soft grants (callout disowns only)
 * ----------------------------------
 * A hard hand-off costs the receiver a wake-up (~5-40 us) during which nobody
 * runs VM code; and a thread whose callout takes 2 us is back long before
 * that, finds the VM given away and queues in turn.  With many threads in
 * flight every short callout then hands the VM on: a lock convoy.  The classic cure is to let a
 * running thread barge, as glibc's mutexes do.  So vmown_callout_begin's
 * disown (vmown__disown with soft set, owner.c) gives the head waiter a *soft* grant:
 *   under the lock: dequeue head (state GRANTED), claimant := head, store
 *   (epoch+1, PENDING | head), remember that word in my slot (soft_word);
 *   unlock, post head.
 * The waiter, woken, claims: CAS (e, PENDING|head) -> (e, head).  The granter,
 * back from its call first, steals: CAS (e, PENDING|head) -> (e, me), allowed
 * only while the word equals its own soft_word (the epoch makes that word
 * unique).  The Python API's disown, park and yield keep hard, FIFO grants.
 * A pending word is owned for everybody else: the heartbeat does not activate
 * on it, own() queues behind it, observers report its holder (vmown_owner).
 *
 * Invariant: at most one soft grant is unsettled (b->claimant != 0): a soft
 * disown that finds a claimant releases the VM (store (epoch+1, 0)) instead
 * of waking another waiter -- the claimant will look under the lock.
 *
 * S1. Claim vs steal.
 *       G: store (e, P|W) ; post W      W: wakes ; CAS (e, P|W) -> (e, W)
 *       G: callout returns: CAS (e, P|W) -> (e, G)
 *     Both CAS from the same word: exactly one wins.  W wins: it clears
 *     claimant (CAS W -> 0) and runs; G's CAS fails and G queues as any own.
 *     G wins: W's CAS fails, W is robbed (S2).
 * S2. The robbed waiter goes back.  Under the lock: claimant := 0, robbed++;
 *     if the VM is free (G released it meanwhile, S3), CAS it to W and run;
 *     else re-queue at the place its ticket gives it (the head, among equal
 *     priorities), unlock, then load the owner word (seq_cst): if unowned,
 *     kick -- the store-load pair of owner.c's notes, W's side being the
 *     `waiters_and_hb_asleep` increment of the re-queue.
 * S3. The thief disowns again while W is on its way back.
 *       G: lock; claimant == W: store (e', 0); unlock
 *       W: lock; VM free: CAS -> W  |  VM taken (by G again, or anybody's
 *          fast own): re-queue; that owner's disown sees the queue
 *     G decides and stores under the lock, W looks under the lock: if G goes
 *     first W sees its release; if W goes first, claimant is 0 and W is
 *     counted, so G grants W.  No waiter sleeps with the VM free and nobody
 *     to wake it.  Not waking another waiter here avoids a herd: one wake
 *     per robbery, not one per disown.
 * S4. Steal vs activation.  The heartbeat CASes only from an unowned word, a
 *     pending word is owned: they never race on one word.  A release by the
 *     thief (S3) is an ordinary unowned word; the activation's CAS and W's
 *     CAS (S2) race from it and one wins.
 * S5. Unfairness is bounded: a grant is hard (as for a Python disown) when the
 *     head has been robbed MAX_ROBBED times in this wait, or ROB_LIMIT_NS
 *     have passed since its first robbery (its ticket, robbery count and
 *     time survive a re-queue).  A thread making only short callouts hands
 *     over within ~1 ms of robbing somebody.
 * S6. Dead processes.  A holder of a pending grant that died: waiters' slices
 *     check the holder (VMOWN__HOLDER) like an owner, and reaping releases a
 *     word that names it, owning or pending (a thief's CAS may win instead:
 *     the reaper's CAS then fails, rightly).  A claimant that died robbed,
 *     before re-queueing: its slot is GRANTED and named nowhere; reaping
 *     clears claimant (a waiter's slice checks the claimant's process too)
 *     and repair_locked queues such a slot again.  A thief that died owns the
 *     VM the ordinary way.  At a slice end a waiter that finds the VM unowned
 *     kicks.  Debug stop VMOWN_DEBUG_STOP_CLAIM stops a waiter woken by a
 *     soft grant before its claim, for the crash tests.
 * S7. A robbed waiter repairs the block.  Its own lock_block may find the
 *     last holder dead: repair_locked queues it again (GRANTED, named
 *     nowhere) and clears claimant, and the reap that follows may grant it
 *     the VM, hard.  So under the lock it checks its state (WAITING: sleep
 *     again) and the word (names it: owning) before it calls the missing
 *     claimant a broken invariant.  Found by the crash rounds.
 * S8. A granter that dies between its store and its post (hard or soft):
 *     the waiter, GRANTED for a whole slice with no post, settles anyway.
 *     Debug stop VMOWN_DEBUG_STOP_BEFORE_POST stops a disown there.
 *
 * Lazy callouts
 * -------------
 * A callout that finds nobody waiting need not release the word at all.  The
 * eager disown is a seq_cst store (a locked instruction on x86) and the own a
 * CAS: together most of a generated wrapper's cost over a plain call.  So
 * while this process's heartbeat runs (vm->lazy), vmown_callout_begin only
 * marks its slot: lazy_seq goes odd (a plain store), and the owner word still
 * names it.  The return makes lazy_seq even and reads the word (plain load):
 * if it still names the caller, that is all -- no locked instruction either
 * way.  As in HotSpot's thread-state transitions, the cost moves to the rare
 * side: a thread that wants the VM queues as usual, and the heartbeat, seeing
 * the same odd seq for a whole tick while somebody waits or work waits,
 * *revokes*:
 *   R1. CAS word (e, T) -> (e, REVOKING|T);
 *   R2. membarrier: a full barrier on every thread of the process;
 *   R3. read T's lazy_seq: still the odd seq of R1's tick -> T is out; under
 *       the lock CAS (e, REVOKING|T) -> (e+1, X) and post X (the head waiter,
 *       else a parked worker if work waits, else nobody: X = 0).  Changed ->
 *       T is back: CAS it back to (e, T) (called off).
 * T's return is  L1: store lazy_seq := even ; L2: load word.
 *   - L2 reads (e, T): T owns, and the revoker cannot take it.  Proof: R2's
 *     barrier falls in T's program somewhere.  If after L2, L1 was before it
 *     and R3 sees it: called off.  If before L1 (or between L1 and L2), L2
 *     comes after the barrier and after R1, and reads REVOKING: contradiction.
 *   - L2 reads (e, REVOKING|T): T CASes it back to (e, T).  The revoker's
 *     final CAS starts from the same word: exactly one wins.  T wins: it
 *     owns, the revocation is void.  The revoker wins: T was revoked.
 *   - anything else: revoked; T owns the ordinary way (vmown_own).
 * Between L1 and L2 only a compiler barrier is needed (the light side of the
 * asymmetric fence); the hardware may reorder them, the membarrier does not
 * care where its barrier lands.  Without a heartbeat in this process, or a
 * kernel without membarrier (os layer), callouts stay eager.
 *   - A caller that finds (e, REVOKING|T) while it runs VM code (its L2 read
 *     (e, T) just before R1; the revocation will be called off) takes it back
 *     the same way before it uses the word (settle_revoking).
 *   - Begin when waiters are counted: eager (a soft grant), as before (the
 *     caller reads the count and asks for `eager`: callout.c's begin, which
 *     needs the count for VMOWN_CALLOUT_WANTED as well).  A
 *     waiter that queues during a lazy callout waits for the heartbeat (at
 *     most about two ticks) or the owner's next scheduling point.  It wakes
 *     a sleeping heartbeat (the store-load pair on `waiters_and_hb_asleep`, both RMWs).
 *   - Heartbeat sleep vs lazy begin: the heartbeat sets HB_ASLEEP, runs a
 *     membarrier, then reads lazy_seq; begin stores lazy_seq, then loads
 *     `waiters_and_hb_asleep`.  The same argument: one sees the other.
 *   - Only the heartbeat of T's own process revokes T (a private membarrier
 *     reaches only its own threads); so a process without a heartbeat on the
 *     block never goes lazy.
 *   - Dead T: the word names T (or REVOKING|T); VMOWN__HOLDER reads T, and
 *     reaping releases it as for any dead owner.
 *   - Only callouts made entirely without the GIL go lazy (the generated C
 *     wrappers); vmown.callout takes the GIL back before its end, and would
 *     hold the VM while it waits for it (callout.c).
 *   - A function whose callout was revoked blocks, likely again: callout.c
 *     makes its callouts eager (hints by tag) while they keep being handed
 *     over, so the VM passes at their disown instead of a tick later
 *     (without the hints every such callout is revoked: docs/design-log.md).
 */
#define _GNU_SOURCE
#include "vmown_core.h"

/* The owner word as seen by `me`, which runs VM code: a revocation being
 * called off may have left (e, REVOKING|me) for a moment (see "Lazy
 * callouts"); take it back before using the word.  If the CAS fails the
 * revoker restored (e, me) itself. */
uint64_t vmown__settle_revoking(vmown_vm *vm, uint32_t me, uint64_t w) {
    if (likely(!VMOWN__IS_REVOKING(w)) || VMOWN__HOLDER(w) != (int32_t)me) return w;
    uint64_t mine = VMOWN__WORD(VMOWN__EPOCH(w), me);
    if (atomic_compare_exchange_strong_explicit(&vm->block->owner_word, &w, mine, ACQUIRE, RELAXED)) return mine;
    return w;
}

/* Woken GRANTED: take the VM.  A hard grant named us in the word already; a
 * soft grant is claimed by CAS, which races with the granter's steal (see
 * "Soft grants" at the top).  Returns 1 owning, 0 robbed and queued again
 * (the caller sleeps again), or a negative code. */
int vmown__settle_grant(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t w = atomic_load_explicit(&b->owner_word, ACQUIRE);
    if (VMOWN__OWNER(w) == (int32_t)me) return 1;  /* a hard grant */
    if (VMOWN__IS_PENDING(w) && VMOWN__HOLDER(w) == (int32_t)me) {
        vmown__debug_stop(VMOWN_DEBUG_STOP_CLAIM);
        vmown__widen();  /* lets the granter's steal come first */
        if (atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), me), ACQUIRE,
                                                    RELAXED)) {
            uint32_t mine = me;  /* settled: soft grants may wake waiters again */
            atomic_compare_exchange_strong_explicit(&b->claimant, &mine, 0, RELAXED, RELAXED);
            return 1;
        }
    }
    /* Robbed: the granter took the VM back before our claim. */
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    if (atomic_load_explicit(&s->state, RELAXED) != VMOWN_SLOT_GRANTED) {
        unlock_block(vm);
        return 0;  /* a repair queued us again meanwhile */
    }
    if (VMOWN__OWNER(atomic_load_explicit(&b->owner_word, ACQUIRE)) == (int32_t)me) {
        /* Taking this lock repaired the block (its last holder died): the
         * repair queued us again and the reap handed us the VM, hard.  Its
         * post is a stray now, which the next wait skips. */
        unlock_block(vm);
        return 1;
    }
    if (atomic_load_explicit(&b->claimant, RELAXED) != me) {
        /* GRANTED, not named by the word, yet no soft grant of ours is
         * unsettled: a hard grant was lost.  Fail loudly. */
        mark_broken(vm);
        unlock_block(vm);
        return VMOWN_EBROKEN;
    }
    atomic_store_explicit(&b->claimant, 0, RELAXED);
    uint32_t robbed = atomic_load_explicit(&s->robbed, RELAXED);
    if (robbed == 0) atomic_store_explicit(&s->robbed_since_ns, vmown__now_ns(), RELAXED);
    atomic_store_explicit(&s->robbed, robbed + 1, RELAXED);
    bump(&s->robberies);
    w = atomic_load_explicit(&b->owner_word, SEQ_CST);
    if (VMOWN__OWNER(w) == 0 &&
        atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), me), ACQUIRE,
                                                RELAXED)) {
        unlock_block(vm);
        return 1;  /* free by now (the thief released it without waking anybody): ours */
    }
    rc = vmown__requeue_locked(vm, me);
    unlock_block(vm);
    if (rc < 0) return rc;
    /* The store-load pair again: an owner that released before it could see
     * us counted did not hand the VM to anybody. */
    return (rc = vmown__after_queueing(vm)) < 0 ? rc : 0;
}

/* ---- lazy callouts (see the notes) ---- */

int vmown__callout_disown(vmown_vm *vm, uint32_t me, uint64_t callout, bool eager) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, RELAXED);
    if (unlikely(seq & 1)) return VMOWN_ENOTOWNER;  /* out in one already: a nested call is plain */
    if (likely(!eager) && likely(atomic_load_explicit(&vm->lazy, RELAXED))) {
        uint64_t w = my_word(vm, me);
        if (unlikely(VMOWN__OWNER(w) != (int32_t)me)) return VMOWN_ENOTOWNER;
        atomic_store_explicit(&s->callout, callout, RELAXED);
        atomic_store_explicit(&s->callout_tick, atomic_load_explicit(&b->ticks, RELAXED), RELAXED);
        bump(&s->disowns);
        bump(&s->lazy_disowns);
        /* Release: whoever the heartbeat hands the VM to sees what we did. */
        atomic_store_explicit(&s->lazy_seq, seq + 1, RELEASE);
        atomic_signal_fence(SEQ_CST);  /* the light side: the store before the load */
        if (unlikely(atomic_load_explicit(&b->waiters_and_hb_asleep, RELAXED) & VMOWN__HB_ASLEEP)) vmown__wake_heartbeat(vm);
        return 1;
    }
    return vmown__disown(vm, me, callout, true);
}

/* A callout of a function that blocks (callout.c's hints) while work waits:
 * hand the VM to a parked worker at the disown, as the heartbeat's activation
 * would a tick or two later (docs/design-log.md, "Burst latency").  Work
 * waits: a runnable process, or a timer (the worker parks to watch it: one
 * wake-up, for a call that blocks anyway).  With somebody queued, or nobody
 * parked, or no work, an ordinary eager disown (a soft grant to the head
 * waiter).
 *   D1. Hand-over vs the heartbeat's activation: both pick the idle head
 *       under the lock and store the word; the activation's CAS from the
 *       unowned word it saw fails once the word names the worker.
 *   D2. Hand-over vs a thread that queues meanwhile: the head is read under
 *       the lock; a waiter that queues after the unlock finds the VM owned by
 *       the worker, which sees it at its next scheduling point. */
int vmown__callout_hand_over(vmown_vm *vm, uint32_t me, uint64_t callout) {
    if (unlikely(!valid_index(vm, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    if (atomic_load_explicit(&b->waiters_and_hb_asleep, RELAXED) & VMOWN__WAITERS_MASK) goto plain;
    if (atomic_load_explicit(&b->work[VMOWN_WORK_RUNNABLE], RELAXED) == 0 &&
        atomic_load_explicit(&b->next_timer_ns, RELAXED) == 0)
        goto plain;
    uint64_t w = my_word(vm, me);
    if (unlikely(VMOWN__OWNER(w) != (int32_t)me)) return VMOWN_ENOTOWNER;
    uint32_t worker = 0, head;
    int rc = vmown__lock_block_until(vm, vmown__now_ns() + LOCK_TRY_NS);
    if (rc == VMOWN_ETIMEDOUT || rc == VMOWN_ESTUCK) goto plain;  /* which does not wait for the lock either */
    if (rc < 0) return rc;
    if ((rc = vmown__drop_left_locked(vm, &head)) < 0 || head != 0 ||
        (rc = vmown__idle_take_locked(vm, 0, VMOWN_SLOT_GRANTED, &worker)) < 0 || worker == 0) {
        unlock_block(vm);
        if (rc < 0) return rc;
        goto plain;
    }
    atomic_store_explicit(&s->callout, callout, RELAXED);
    atomic_store_explicit(&s->callout_tick, atomic_load_explicit(&b->ticks, RELAXED), RELAXED);
    bump(&s->disowns);
    bump(&s->hand_offs);  /* before the release, as in vmown_park */
    atomic_fetch_add_explicit(&b->hand_overs, 1, RELAXED);
    /* Caution: once the word names the worker it may run VM code. */
    atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, worker), SEQ_CST);
    unlock_block(vm);
    vmown__widen();
    post(vm, worker);
    /* A callout is out: wake a sleeping heartbeat, as the eager disown does
     * (the worker may park and leave the VM unowned with a timer waiting). */
    if (atomic_load_explicit(&b->waiters_and_hb_asleep, SEQ_CST) & VMOWN__HB_ASLEEP) vmown__wake_heartbeat(vm);
    return 0;
plain:
    return vmown__disown(vm, me, callout, true);
}

int vmown__lazy_return(vmown_vm *vm, uint32_t me) {
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, RELAXED);
    if (seq & 1) atomic_store_explicit(&s->lazy_seq, seq + 1, RELAXED);  /* L1 */
    atomic_signal_fence(SEQ_CST);
#ifdef VMOWN_WIDEN_FAST_PATHS
    vmown__widen();
#endif
    uint64_t w = atomic_load_explicit(&b->owner_word, ACQUIRE);  /* L2 */
    if (likely(VMOWN__OWNER(w) == (int32_t)me) || VMOWN__OWNER(vmown__settle_revoking(vm, me, w)) == (int32_t)me) {
        bump(&s->fast_owns);
        return 0;
    }
    return 1;  /* revoked */
}

uint64_t vmown__lazy_out(vmown_vm *vm, uint64_t w) {
    uint32_t t = (uint32_t)VMOWN__OWNER(w);  /* pending and revoking words name no valid index */
    if (!atomic_load_explicit(&vm->lazy_ok, RELAXED) || !valid_index(vm, t)) return 0;
    struct vmown_slot *s = slot_of(vm, t);
    if (atomic_load_explicit(&s->pid, RELAXED) != vm->hb_pid) return 0;
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, ACQUIRE);
    return seq & 1 ? seq : 0;
}

int vmown__revoke(vmown_vm *vm, uint64_t w, uint64_t seq, bool work) {
    struct vmown__block *b = vm->block;
    uint32_t t = (uint32_t)VMOWN__OWNER(w);
    if (!valid_index(vm, t)) return 0;
    struct vmown_slot *s = slot_of(vm, t);
    uint64_t revoking = VMOWN__WORD(VMOWN__EPOCH(w), VMOWN__REVOKING | t);
    vmown__widen();  /* lets T come back before R1: its L2 reads (e, T), R3 calls off */
    if (!atomic_compare_exchange_strong_explicit(&b->owner_word, &w, revoking, SEQ_CST, RELAXED)) return 0; /* R1 */
    vmown__widen();  /* lets T come back between R1 and R3: it takes the word back */
    vmown__membarrier();  /* R2 */
    if (atomic_load_explicit(&s->lazy_seq, ACQUIRE) != seq) {  /* R3: back */
        atomic_compare_exchange_strong_explicit(&b->owner_word, &revoking, w, RELEASE, RELAXED);
        atomic_fetch_add_explicit(&b->called_off, 1, RELAXED);
        return 0;
    }
    uint32_t target = 0;
    bool idle = false;
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    /* The target is marked GRANTED before the word names it (one that left
     * must never be named), and given back if T takes the word back. */
    if ((rc = vmown__reserve_head_locked(vm, &target)) == 0 && target == 0 && work) {
        rc = vmown__idle_take_locked(vm, 0, VMOWN_SLOT_GRANTED, &target);
        idle = target != 0;
    }
    if (rc < 0) {
        unlock_block(vm);
        return rc;
    }
    /* T may take the word back meanwhile: then this fails and T owns. */
    if (!atomic_compare_exchange_strong_explicit(&b->owner_word, &revoking,
                                                 VMOWN__WORD(VMOWN__EPOCH(w) + 1, target), SEQ_CST, RELAXED)) {
        if (idle) rc = vmown__idle_push_locked(vm, target);
        else if (target) atomic_store_explicit(&slot_of(vm, target)->state, VMOWN_SLOT_WAITING, RELAXED);
        unlock_block(vm);
        atomic_fetch_add_explicit(&b->called_off, 1, RELAXED);
        return rc;
    }
    if (target && !idle) rc = vmown__unlink_locked(vm, target);  /* the reserved head, out of the queue */
    unlock_block(vm);
    if (rc < 0) return rc;
    atomic_fetch_add_explicit(&b->revocations, 1, RELAXED);
    if (idle) atomic_fetch_add_explicit(&b->activations, 1, RELAXED);
    if (target) {
        vmown__widen();
        post(vm, target);
    }
    return 1;
}

