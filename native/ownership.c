/* ownership.c -- the ownership protocol: own, disown, the wait queue.
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
 * pending soft grant, its holder and its granter may: see Soft grants).  Hence a release is
 * a plain store, and an acquisition is a CAS from (epoch, 0).
 *
 * Disown (release), by the owner:
 *   1. if waiters are counted, take the lock, dequeue the head, store
 *      (epoch+1, head), unlock, post head's semaphore (a callout's disown
 *      stores a soft grant instead, see below);
 *   2. else store (epoch+1, 0) seq_cst, then load `attention` seq_cst; if a
 *      waiter appeared meanwhile, kick (below).
 * Own, by a thread that does not own:
 *   1. CAS (epoch, 0) -> (epoch, me): done, nothing to restore.
 *   2. else take the lock, try the CAS again, else enqueue and count me in
 *      `attention` (seq_cst), unlock;
 *   3. load the owner word seq_cst; if it reads 0, kick;
 *   4. sleep on my semaphore until a post finds my state GRANTED.
 * Kick: under the lock, while the queue is not empty and the owner is 0, CAS
 *   (epoch, 0) -> (epoch, head); on success dequeue head, mark it GRANTED,
 *   unlock and post it.
 *
 * Why no wake-up is lost (a store-load, "Dekker" pair):
 *   owner:  store owner := 0   ; load attention
 *   waiter: add attention += 1 ; load owner
 * All four are seq_cst, so at least one side sees the other's store: either
 * the owner sees the waiter (and kicks, or hands off), or the waiter sees the
 * VM free (and kicks).  If both see each other both kick; kick is idempotent:
 * its CAS succeeds for one head at most, and a failed CAS means whoever took
 * the word will see the waiter at its own release.
 *
 * Why a post is never lost: the granter stores the new owner and sets GRANTED
 * *before* posting, and the semaphore counts, so a post that arrives before
 * the waiter sleeps makes its wait return at once.  The waiter trusts its
 * state, not the post: a stray post (a repaired block may post twice) makes it
 * look at its state and sleep again.
 *
 * Leaving the queue early (a signal, a timeout): under the lock, if the slot
 * is still WAITING it unlinks itself; if it is GRANTED the VM is already its
 * own and a post is on its way, so it takes that post and returns success.
 *
 * Soft grants (callout disowns only)
 * ----------------------------------
 * A hard hand-off costs the receiver a wake-up (~5-40 us) during which nobody
 * runs VM code; and a thread whose callout takes 2 us is back long before
 * that, finds the VM given away and queues in turn.  With many threads in
 * flight every short callout then hands the VM on: a lock convoy (measured:
 * up to 39,000 hand-offs for 40,000 calls).  The classic cure is to let a
 * running thread barge, as glibc's mutexes do.  So vmown_callout_begin's
 * disown (vmown__disown_soft) gives the head waiter a *soft* grant:
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
 *     kick -- the store-load pair of the notes above, W's side being the
 *     `attention` increment of the re-queue.
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
 * eager disown is a seq_cst store (a locked instruction on x86, ~5 ns here)
 * and the own a CAS (~5 ns): together they were most of a generated
 * wrapper's cost over a plain call (benchmarks suite `callout`, 1.28 x).  So
 * while this process's heartbeat runs (cb->lazy), vmown_callout_begin only
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
 *   - Begin when waiters are counted: eager (a soft grant), as before.  A
 *     waiter that queues during a lazy callout waits for the heartbeat (at
 *     most about two ticks) or the owner's next scheduling point.  It wakes
 *     a sleeping heartbeat (the store-load pair on `attention`, both RMWs).
 *   - Heartbeat sleep vs lazy begin: the heartbeat sets HB_ASLEEP, runs a
 *     membarrier, then reads lazy_seq; begin stores lazy_seq, then loads
 *     `attention`.  The same argument: one sees the other.
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
 *     over, so the VM passes at their disown instead of a tick later.
 *     Measured (benchmarks suite `heartbeat`, 4 threads blocking 5 ms at a
 *     time): without the hints every callout was revoked and the
 *     heartbeat's CPU rose from 0.025 to 0.028-0.031 of a core; with them
 *     it is the eager figure again.
 *
 * Lock order: the block's lock is the only lock; no semaphore is posted and no
 * other lock is taken while holding it, except in repair.
 *
 * Debug: vmown_debug_set_widen_ns() stretches the windows that the
 * arguments above are about (enqueue -> sleep, store owner -> post, a soft
 * grant's wake -> claim) so that stress tests run through them instead of
 * past them.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define RELAXED memory_order_relaxed
#define ACQUIRE memory_order_acquire
#define RELEASE memory_order_release
#define SEQ_CST memory_order_seq_cst

#define VMOWN__MAX_SLOTS (1u << 20)

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

static _Atomic int64_t vmown__widen_ns;

void vmown_debug_set_widen_ns(int64_t ns) { atomic_store(&vmown__widen_ns, ns < 0 ? 0 : ns); }

static void widen(void) {
    int64_t ns = atomic_load_explicit(&vmown__widen_ns, RELAXED);
    if (likely(ns == 0)) return;
    int64_t until = vmown__now_ns() + ns;
    do vmown__thread_yield();
    while (vmown__now_ns() < until);
}

static _Atomic int vmown__debug_stop;

void vmown_debug_set_stop(int point) { atomic_store(&vmown__debug_stop, point); }

static void debug_stop(int point) {
    if (unlikely(atomic_load_explicit(&vmown__debug_stop, RELAXED) == point)) vmown__stop_self();
}

#define LOCK_TIMEOUT_NS 2000000000  /* 2 s: the lock is held for microseconds */
#define MAX_STRAY_POSTS 1000        /* in one wait: more means a corrupt semaphore */

static void mark_broken(vmown_cb *cb);

/* Post a slot's semaphore; a failure can only come from corrupt memory. */
static void post(vmown_cb *cb, uint32_t slot) {
    if (vmown__sem_post(&cb->b->slots[slot].sem) != 0) mark_broken(cb);
}

static inline void bump(_Atomic uint64_t *counter) {
    atomic_store_explicit(counter, atomic_load_explicit(counter, RELAXED) + 1, RELAXED);
}

static inline struct vmown_slot *slot_of(vmown_cb *cb, uint32_t i) { return &cb->b->slots[i]; }

/* The owner word as seen by `me`, which runs VM code: a revocation being
 * called off may have left (e, REVOKING|me) for a moment (see "Lazy
 * callouts"); take it back before using the word.  If the CAS fails the
 * revoker restored (e, me) itself. */
static uint64_t settle_revoking(vmown_cb *cb, uint32_t me, uint64_t w) {
    if (likely(!VMOWN__IS_REVOKING(w)) || VMOWN__HOLDER(w) != (int32_t)me) return w;
    uint64_t mine = VMOWN__WORD(VMOWN__EPOCH(w), me);
    if (atomic_compare_exchange_strong_explicit(&cb->b->owner_word, &w, mine, ACQUIRE, RELAXED)) return mine;
    return w;
}

static inline uint64_t my_word(vmown_cb *cb, uint32_t me) {
    uint64_t w = atomic_load_explicit(&cb->b->owner_word, RELAXED);
    return unlikely(VMOWN__OWNER(w) != (int32_t)me) ? settle_revoking(cb, me, w) : w;
}

static inline bool valid_index(const vmown_cb *cb, uint32_t i) { return i >= 1 && i <= cb->nslots; }

static size_t header_size(void) { return offsetof(struct vmown__block, slots); }

uint32_t vmown_layout_version(void) { return VMOWN__LAYOUT_VERSION; }

void vmown_layout_read(vmown_layout *out) {
    *out = (vmown_layout){
        .owner_word = offsetof(struct vmown__block, owner_word),
        .attention = offsetof(struct vmown__block, attention),
        .lock = offsetof(struct vmown__block, lock),
        .lock_size = sizeof(pthread_mutex_t),
        .queue_head = offsetof(struct vmown__block, head),
        .queue_tail = offsetof(struct vmown__block, tail),
        .idle_head = offsetof(struct vmown__block, idle_head),
        .slots = offsetof(struct vmown__block, slots),
        .slot_size = sizeof(struct vmown_slot),
        .slot_state = offsetof(struct vmown_slot, state),
        .slot_next = offsetof(struct vmown_slot, next),
        .slot_pid = offsetof(struct vmown_slot, pid),
        .slot_sem = offsetof(struct vmown_slot, sem),
        .sem_size = sizeof(sem_t),
    };
}

size_t vmown_cb_size(uint32_t nslots) {
    size_t page = vmown_page_size();
    size_t bytes = header_size() + ((size_t)nslots + 1) * sizeof(struct vmown_slot);
    return (bytes + page - 1) / page * page;
}

/* ---- process identity (cached per process; refreshed after fork) ---- */

static _Atomic int32_t cached_pid;
static _Atomic uint64_t cached_start_time;

static void identity(int32_t *pid, uint64_t *start_time) {
    int32_t now = (int32_t)getpid();
    if (atomic_load_explicit(&cached_pid, ACQUIRE) != now) {
        atomic_store_explicit(&cached_start_time, vmown__process_start_time(now), RELAXED);
        atomic_store_explicit(&cached_pid, now, RELEASE);
    }
    *pid = now;
    *start_time = atomic_load_explicit(&cached_start_time, RELAXED);
}

/* ---- the wait queue; every function here runs under the lock ---- */

static void mark_broken(vmown_cb *cb) {
    atomic_store_explicit(&cb->b->hdr.state, VMOWN__BROKEN, RELEASE);
}

/* Read a link from shared memory: 0 or a valid index, else the block is
 * corrupt and is marked broken. */
static int read_link(vmown_cb *cb, _Atomic uint32_t *link, uint32_t *out) {
    uint32_t i = atomic_load_explicit(link, RELAXED);
    if (i != 0 && !valid_index(cb, i)) {
        mark_broken(cb);
        return VMOWN_EBROKEN;
    }
    *out = i;
    return 0;
}

static int enqueue_locked(vmown_cb *cb, uint32_t me) {
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    int32_t prio = atomic_load_explicit(&s->priority, RELAXED);
    uint32_t tail, prev = 0, cur;
    int rc;
    atomic_store_explicit(&s->ticket, atomic_fetch_add_explicit(&b->next_ticket, 1, RELAXED), RELAXED);
    atomic_store_explicit(&s->state, VMOWN_SLOT_WAITING, RELAXED);
    atomic_store_explicit(&s->robbed, 0, RELAXED);  /* a new wait: no robbery yet */
    if ((rc = read_link(cb, &b->tail, &tail)) < 0) return rc;
    if (tail == 0 || atomic_load_explicit(&slot_of(cb, tail)->priority, RELAXED) >= prio) {
        /* The common case: append. */
        atomic_store_explicit(&s->next, 0, RELAXED);
        if (tail) atomic_store_explicit(&slot_of(cb, tail)->next, me, RELAXED);
        else atomic_store_explicit(&b->head, me, RELAXED);
        atomic_store_explicit(&b->tail, me, RELAXED);
    } else {
        /* Insert before the first slot of lower priority; bounded walk. */
        if ((rc = read_link(cb, &b->head, &cur)) < 0) return rc;
        for (uint32_t steps = 0; cur && atomic_load_explicit(&slot_of(cb, cur)->priority, RELAXED) >= prio;
             steps++) {
            if (steps > cb->nslots) { mark_broken(cb); return VMOWN_EBROKEN; }
            prev = cur;
            if ((rc = read_link(cb, &slot_of(cb, cur)->next, &cur)) < 0) return rc;
        }
        atomic_store_explicit(&s->next, cur, RELAXED);
        if (prev) atomic_store_explicit(&slot_of(cb, prev)->next, me, RELAXED);
        else atomic_store_explicit(&b->head, me, RELAXED);
    }
    debug_stop(VMOWN_DEBUG_STOP_IN_LOCK);  /* linked, not yet counted */
    /* seq_cst: pairs with the load of `attention` after a release store. */
    atomic_fetch_add_explicit(&b->attention, 1, SEQ_CST);
    return 0;
}

/* Put `me` back in the queue at the place its ticket gives it: a waiter
 * robbed of a soft grant keeps its place (among equal priorities it is older
 * than everybody, so this is the head).  Bounded walk, as enqueue_locked. */
static int requeue_locked(vmown_cb *cb, uint32_t me) {
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    int32_t prio = atomic_load_explicit(&s->priority, RELAXED);
    uint64_t ticket = atomic_load_explicit(&s->ticket, RELAXED);
    uint32_t prev = 0, cur;
    int rc;
    if ((rc = read_link(cb, &b->head, &cur)) < 0) return rc;
    for (uint32_t steps = 0; cur; steps++) {
        struct vmown_slot *c = slot_of(cb, cur);
        int32_t p = atomic_load_explicit(&c->priority, RELAXED);
        if (p < prio || (p == prio && atomic_load_explicit(&c->ticket, RELAXED) > ticket)) break;
        if (steps > cb->nslots) { mark_broken(cb); return VMOWN_EBROKEN; }
        prev = cur;
        if ((rc = read_link(cb, &c->next, &cur)) < 0) return rc;
    }
    atomic_store_explicit(&s->state, VMOWN_SLOT_WAITING, RELAXED);
    atomic_store_explicit(&s->next, cur, RELAXED);
    if (prev) atomic_store_explicit(&slot_of(cb, prev)->next, me, RELAXED);
    else atomic_store_explicit(&b->head, me, RELAXED);
    if (cur == 0) atomic_store_explicit(&b->tail, me, RELAXED);
    /* seq_cst: the same store-load pair as enqueue_locked. */
    atomic_fetch_add_explicit(&b->attention, 1, SEQ_CST);
    return 0;
}

/* Unlink `me` from a slot list (the queue: field `next`; the idle stack:
 * `idle_next`) whose first link is *head.  The walk is bounded by nslots and
 * every link is checked, so a corrupt list marks the block broken instead of
 * looping.  *prev_out is me's predecessor (0: it was first). */
static int list_unlink_locked(vmown_cb *cb, _Atomic uint32_t *head, size_t link, uint32_t me,
                              uint32_t *prev_out) {
#define LINK(i) ((_Atomic uint32_t *)((char *)slot_of(cb, (i)) + link))
    uint32_t prev = 0, cur, next;
    int rc;
    if ((rc = read_link(cb, head, &cur)) < 0) return rc;
    for (uint32_t steps = 0; cur != me; steps++) {
        if (cur == 0 || steps > cb->nslots) { mark_broken(cb); return VMOWN_EBROKEN; }
        prev = cur;
        if ((rc = read_link(cb, LINK(cur), &cur)) < 0) return rc;
    }
    if ((rc = read_link(cb, LINK(me), &next)) < 0) return rc;
    atomic_store_explicit(prev ? LINK(prev) : head, next, RELAXED);
    atomic_store_explicit(LINK(me), 0, RELAXED);
    *prev_out = prev;
    return 0;
#undef LINK
}

/* Unlink `me` from wherever it is in the queue. */
static int unlink_locked(vmown_cb *cb, uint32_t me) {
    struct vmown__block *b = cb->b;
    uint32_t prev;
    int rc = list_unlink_locked(cb, &b->head, offsetof(struct vmown_slot, next), me, &prev);
    if (rc < 0) return rc;
    if (atomic_load_explicit(&b->tail, RELAXED) == me) atomic_store_explicit(&b->tail, prev, RELAXED);
    atomic_fetch_sub_explicit(&b->attention, 1, SEQ_CST);
    return 0;
}

/* Dequeue the head and mark it GRANTED; the caller stores it as owner. */
static int pop_head_locked(vmown_cb *cb, uint32_t *out) {
    uint32_t head;
    int rc = read_link(cb, &cb->b->head, &head);
    if (rc < 0) return rc;
    if (head && (rc = unlink_locked(cb, head)) < 0) return rc;
    if (head) atomic_store_explicit(&slot_of(cb, head)->state, VMOWN_SLOT_GRANTED, RELAXED);
    *out = head;
    return 0;
}

static int cmp_by_queue_order(const void *a, const void *b, void *arg) {
    vmown_cb *cb = arg;
    struct vmown_slot *x = slot_of(cb, *(const uint32_t *)a), *y = slot_of(cb, *(const uint32_t *)b);
    int32_t px = atomic_load_explicit(&x->priority, RELAXED), py = atomic_load_explicit(&y->priority, RELAXED);
    if (px != py) return px > py ? -1 : 1;
    uint64_t tx = atomic_load_explicit(&x->ticket, RELAXED), ty = atomic_load_explicit(&y->ticket, RELAXED);
    return tx < ty ? -1 : tx > ty;
}

/* The lock's previous holder died inside it: the queue may be half-linked.
 * Rebuild it from the slots' own states, in (priority, ticket) order. */
static int repair_locked(vmown_cb *cb) {
    struct vmown__block *b = cb->b;
    uint32_t *order = malloc(sizeof(uint32_t) * cb->nslots), n = 0, in_use = 0;
    if (!order) return -ENOMEM;
    for (uint32_t i = 1; i <= cb->nslots; i++) {
        uint32_t st = atomic_load_explicit(&slot_of(cb, i)->state, RELAXED);
        if (st != VMOWN_SLOT_FREE) in_use++;
        if (st == VMOWN_SLOT_WAITING) order[n++] = i;
        /* GRANTED but the word names it neither as owner nor as pending:
         * the granter died between dequeue and store, or it was robbed of a
         * soft grant and died before queueing again; queue it again (a live
         * robbed claimant that finds itself WAITING just sleeps on). */
        if (st == VMOWN_SLOT_GRANTED &&
            VMOWN__HOLDER(atomic_load_explicit(&b->owner_word, RELAXED)) != (int32_t)i) {
            atomic_store_explicit(&slot_of(cb, i)->state, VMOWN_SLOT_WAITING, RELAXED);
            order[n++] = i;
            if (atomic_load_explicit(&b->claimant, RELAXED) == i) atomic_store_explicit(&b->claimant, 0, RELAXED);
        }
    }
    qsort_r(order, n, sizeof *order, cmp_by_queue_order, cb);
    atomic_store_explicit(&b->head, n ? order[0] : 0, RELAXED);
    atomic_store_explicit(&b->tail, n ? order[n - 1] : 0, RELAXED);
    for (uint32_t k = 0; k < n; k++)
        atomic_store_explicit(&slot_of(cb, order[k])->next, k + 1 < n ? order[k + 1] : 0, RELAXED);
    uint64_t att = atomic_load_explicit(&b->attention, RELAXED);
    atomic_store_explicit(&b->attention, (att & ~VMOWN__WAITERS_MASK) | n, SEQ_CST);
    uint32_t idle = 0, idle_count = 0;
    for (uint32_t i = 1; i <= cb->nslots; i++) {
        if (atomic_load_explicit(&slot_of(cb, i)->state, RELAXED) != VMOWN_SLOT_PARKED) continue;
        atomic_store_explicit(&slot_of(cb, i)->idle_next, idle, RELAXED);
        idle = i;
        idle_count++;
    }
    atomic_store_explicit(&b->idle_head, idle, RELAXED);
    atomic_store_explicit(&b->idle_count, idle_count, RELAXED);
    atomic_store_explicit(&b->in_use, in_use, RELAXED);
    free(order);
    return 0;
}

static int reap_dead_locked(vmown_cb *cb, uint32_t *granted);

static int lock_block(vmown_cb *cb) {
    if (unlikely(atomic_load_explicit(&cb->b->hdr.state, ACQUIRE) != VMOWN__READY)) return VMOWN_EBROKEN;
    int rc = vmown__lock(&cb->b->lock, LOCK_TIMEOUT_NS);
    if (rc == 1) {
        /* Somebody died holding the lock: make the queue whole, then free
         * the slots of every dead process (it may have been half-way into
         * the queue).  A waiter granted here is posted under the lock: this
         * path is rare, and posting under it is safe. */
        uint32_t granted = 0;
        rc = repair_locked(cb);
        if (rc == 0) rc = reap_dead_locked(cb, &granted);
        if (rc < 0) {
            mark_broken(cb);
            vmown__unlock(&cb->b->lock);
            return rc;
        }
        vmown__lock_consistent(&cb->b->lock);
        if (granted) post(cb, granted);
        rc = 0;
    } else if (rc < 0 && rc != VMOWN_ESTUCK) {
        mark_broken(cb);
    }
    return rc;
}

static void unlock_block(vmown_cb *cb) { vmown__unlock(&cb->b->lock); }

/* ---- hand-over ---- */

/* Give an unowned VM to the head waiter, if both exist. */
/* Under the lock: give an unowned VM to the head waiter, if both exist.
 * Sets *granted to the slot to post after unlocking (0: none). */
static int grant_head_locked(vmown_cb *cb, uint32_t *granted) {
    struct vmown__block *b = cb->b;
    uint32_t head;
    int rc;
    *granted = 0;
    for (;;) {
        if ((rc = read_link(cb, &b->head, &head)) < 0 || head == 0) return rc;
        uint64_t w = atomic_load_explicit(&b->owner_word, SEQ_CST);
        if (VMOWN__OWNER(w) != 0) return 0;  /* its owner will see the queue */
        if (atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), head),
                                                    SEQ_CST, RELAXED))
            break;
        /* Lost the CAS to an epoch bump, or to a taker who will see us. */
    }
    rc = pop_head_locked(cb, &head);
    if (rc == 0) *granted = head;
    return rc;
}

static void post_granted(vmown_cb *cb, uint32_t granted) {
    if (!granted) return;
    widen();
    post(cb, granted);
}

/* Give an unowned VM to the head waiter, if both exist. */
static int kick(vmown_cb *cb) {
    uint32_t granted;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    rc = grant_head_locked(cb, &granted);
    unlock_block(cb);
    post_granted(cb, granted);
    return rc;
}

/* Just queued (counted in `attention`, seq_cst): the other half of the
 * store-load pairs.  The owner released before it could see us: kick.  The
 * owner is out in a lazy callout, which only a revocation ends, and the
 * heartbeat sleeps: wake it (see "Lazy callouts"). */
static int after_queueing(vmown_cb *cb) {
    struct vmown__block *b = cb->b;
    uint64_t w = atomic_load_explicit(&b->owner_word, SEQ_CST);
    if (VMOWN__OWNER(w) == 0) return kick(cb);
    uint32_t t = (uint32_t)VMOWN__OWNER(w);
    if ((atomic_load_explicit(&b->attention, SEQ_CST) & VMOWN__HB_ASLEEP) && valid_index(cb, t) &&
        (atomic_load_explicit(&slot_of(cb, t)->lazy_seq, RELAXED) & 1))
        vmown__heartbeat_wake(cb);
    return 0;
}

/* ---- dead processes ----
 *
 * A process can die at any instruction.  What that leaves, and who mends it:
 *   inside the lock: the robust mutex hands the next locker EOWNERDEAD;
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

#define SLICE_NS 50000000  /* 50 ms: a dead owner is found within one slice */

static void fold_counters_locked(vmown_cb *cb, struct vmown_slot *s) {
    vmown_counters *f = &cb->b->folded;
    /* folded is only written under the lock; readers tolerate a torn sum. */
    f->fast_owns += atomic_load_explicit(&s->fast_owns, RELAXED);
    f->slow_owns += atomic_load_explicit(&s->slow_owns, RELAXED);
    f->waits += atomic_load_explicit(&s->waits, RELAXED);
    f->hand_offs += atomic_load_explicit(&s->hand_offs, RELAXED);
    f->disowns += atomic_load_explicit(&s->disowns, RELAXED);
    f->interrupts += atomic_load_explicit(&s->interrupts, RELAXED);
    f->soft_grants += atomic_load_explicit(&s->soft_grants, RELAXED);
    f->steals += atomic_load_explicit(&s->steals, RELAXED);
    f->robberies += atomic_load_explicit(&s->robberies, RELAXED);
    f->lazy_disowns += atomic_load_explicit(&s->lazy_disowns, RELAXED);
}

static int idle_unlink_locked(vmown_cb *cb, uint32_t me);

/* Free every slot of processes that are gone; release the VM if one of them
 * owned it.  Returns how many slots were freed; *granted as above. */
static int reap_dead_locked(vmown_cb *cb, uint32_t *granted) {
    struct vmown__block *b = cb->b;
    int32_t self = (int32_t)getpid(), dead_pid = 0, live_pid = 0;
    int freed = 0, rc = 0;
    *granted = 0;
    for (uint32_t i = 1; i <= cb->nslots; i++) {
        struct vmown_slot *s = slot_of(cb, i);
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
        if (st == VMOWN_SLOT_WAITING && (rc = unlink_locked(cb, i)) < 0) return rc;
        if (st == VMOWN_SLOT_PARKED && (rc = idle_unlink_locked(cb, i)) < 0) return rc;
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
        fold_counters_locked(cb, s);
        atomic_store_explicit(&s->state, VMOWN_SLOT_FREE, RELEASE);
        atomic_fetch_sub_explicit(&b->in_use, 1, RELAXED);
        freed++;
    }
    if (freed) {
        atomic_fetch_add_explicit(&b->reaped, (uint64_t)freed, RELAXED);
        if ((rc = grant_head_locked(cb, granted)) < 0) return rc;
    }
    return freed;
}

static bool slot_dead(vmown_cb *cb, int32_t i) {
    if (i <= 0 || !valid_index(cb, (uint32_t)i)) return false;
    struct vmown_slot *o = slot_of(cb, (uint32_t)i);
    int32_t pid = atomic_load_explicit(&o->pid, RELAXED);
    return pid != (int32_t)getpid() && !vmown__process_alive(pid, atomic_load_explicit(&o->start_time, RELAXED));
}

/* A waiter's slice ran out: if the owner (or the holder of a pending grant,
 * or an unsettled claimant) belongs to a dead process, reap.  If the VM is
 * unowned, kick: whoever should have handed it on (a claimant that died
 * between its robbery and its re-queue) cannot any more. */
static int check_owner(vmown_cb *cb) {
    uint64_t w = atomic_load_explicit(&cb->b->owner_word, ACQUIRE);
    if (!slot_dead(cb, VMOWN__HOLDER(w)) &&
        !slot_dead(cb, (int32_t)atomic_load_explicit(&cb->b->claimant, RELAXED))) {
        if (VMOWN__OWNER(w) == 0 && (atomic_load_explicit(&cb->b->attention, RELAXED) & VMOWN__WAITERS_MASK))
            return kick(cb);
        return 0;
    }
    uint32_t granted;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    rc = reap_dead_locked(cb, &granted);
    unlock_block(cb);
    post_granted(cb, granted);
    return rc < 0 ? rc : 0;
}

int vmown_reap(vmown_cb *cb) {
    uint32_t granted;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    rc = reap_dead_locked(cb, &granted);
    unlock_block(cb);
    post_granted(cb, granted);
    return rc;
}

/* Woken GRANTED: take the VM.  A hard grant named us in the word already; a
 * soft grant is claimed by CAS, which races with the granter's steal (see
 * "Soft grants" at the top).  Returns 1 owning, 0 robbed and queued again
 * (the caller sleeps again), or a negative code. */
static int settle_grant(vmown_cb *cb, uint32_t me) {
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t w = atomic_load_explicit(&b->owner_word, ACQUIRE);
    if (VMOWN__OWNER(w) == (int32_t)me) return 1;  /* a hard grant */
    if (VMOWN__IS_PENDING(w) && VMOWN__HOLDER(w) == (int32_t)me) {
        debug_stop(VMOWN_DEBUG_STOP_CLAIM);
        widen();  /* lets the granter's steal come first */
        if (atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), me), ACQUIRE,
                                                    RELAXED)) {
            uint32_t mine = me;  /* settled: soft grants may wake waiters again */
            atomic_compare_exchange_strong_explicit(&b->claimant, &mine, 0, RELAXED, RELAXED);
            return 1;
        }
    }
    /* Robbed: the granter took the VM back before our claim. */
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if (atomic_load_explicit(&s->state, RELAXED) != VMOWN_SLOT_GRANTED) {
        unlock_block(cb);
        return 0;  /* a repair queued us again meanwhile */
    }
    if (VMOWN__OWNER(atomic_load_explicit(&b->owner_word, ACQUIRE)) == (int32_t)me) {
        /* Taking this lock repaired the block (its last holder died): the
         * repair queued us again and the reap handed us the VM, hard.  Its
         * post is a stray now, which the next wait skips. */
        unlock_block(cb);
        return 1;
    }
    if (atomic_load_explicit(&b->claimant, RELAXED) != me) {
        /* GRANTED, not named by the word, yet no soft grant of ours is
         * unsettled: a hard grant was lost.  Fail loudly. */
        mark_broken(cb);
        unlock_block(cb);
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
        unlock_block(cb);
        return 1;  /* free by now (the thief released it without waking anybody): ours */
    }
    rc = requeue_locked(cb, me);
    unlock_block(cb);
    if (rc < 0) return rc;
    /* The store-load pair again: an owner that released before it could see
     * us counted did not hand the VM to anybody. */
    return (rc = after_queueing(cb)) < 0 ? rc : 0;
}

/* Sleep until GRANTED.  On a signal (if interruptible) or a timeout, leave the
 * queue; if the grant won that race, take it instead.  Robbed of a soft grant,
 * sleep again, with the caller's deadline and flags. */
static int await_grant(vmown_cb *cb, uint32_t me, int64_t deadline_ns, int flags) {
    struct vmown_slot *s = slot_of(cb, me);
    const int64_t deadline_asked = deadline_ns;
    const int flags_asked = flags;
    unsigned strays = 0;
    for (;;) {
        int64_t slice_end = vmown__now_ns() + SLICE_NS;
        bool sliced = deadline_ns < 0 || slice_end < deadline_ns;
        int rc = vmown__sem_wait(&s->sem, sliced ? slice_end : deadline_ns);
        if (rc == 0) {
            if (atomic_load_explicit(&s->state, ACQUIRE) == VMOWN_SLOT_GRANTED) goto granted;
            if (++strays > MAX_STRAY_POSTS) { mark_broken(cb); return VMOWN_EBROKEN; }
            continue;  /* a stray post */
        }
        if (rc == VMOWN_ETIMEDOUT && sliced) {
            /* Granted, but no post for a whole slice: the granter died
             * between its store and its post.  Take the grant; should the
             * post come after all, the next wait skips it as a stray. */
            if (atomic_load_explicit(&s->state, ACQUIRE) == VMOWN_SLOT_GRANTED) goto granted;
            if ((rc = check_owner(cb)) < 0) return rc;
            if ((flags & VMOWN_WAIT_SLICES) &&
                atomic_load_explicit(&s->state, ACQUIRE) == VMOWN_SLOT_WAITING)
                return VMOWN_EAGAIN;  /* still queued: the caller runs its signal handlers */
            continue;
        }
        if (rc == VMOWN_EINTR && !(flags & VMOWN_WAIT_INTERRUPTIBLE)) continue;
        int lrc = lock_block(cb);
        if (lrc < 0) return lrc;
        if (atomic_load_explicit(&s->state, RELAXED) == VMOWN_SLOT_WAITING) {
            lrc = unlink_locked(cb, me);
            atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
            unlock_block(cb);
            bump(&s->interrupts);
            return lrc < 0 ? lrc : rc;
        }
        unlock_block(cb);
        /* GRANTED: the VM is ours (or a soft grant is) and the post is on
         * its way. */
        deadline_ns = -1;
        flags = 0;
        continue;
    granted:
        debug_stop(VMOWN_DEBUG_STOP_GRANTED);
        if ((rc = settle_grant(cb, me)) < 0) return rc;
        if (rc == 1) break;
        deadline_ns = deadline_asked;  /* robbed: queued again, as asked */
        flags = flags_asked;
    }
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
    bump(&s->waits);
    return 0;
}

/* ---- public ---- */

int vmown_cb_init(void *mem, size_t len, uint32_t nslots, vmown_cb **out) {
    size_t page = vmown_page_size();
    if (!mem || !out || (uintptr_t)mem % page || nslots == 0 || nslots > VMOWN__MAX_SLOTS ||
        len < vmown_cb_size(nslots))
        return VMOWN_EINVAL;
    vmown_cb *cb = malloc(sizeof *cb);
    if (!cb) return -ENOMEM;
    struct vmown__block *b = mem;
    /* Phase 1: INITIALIZING first, so that an attacher never reads a
     * half-written header as ready. */
    atomic_store_explicit(&b->hdr.state, VMOWN__INITIALIZING, SEQ_CST);
    memset((char *)mem + sizeof b->hdr, 0, vmown_cb_size(nslots) - sizeof b->hdr);
    int rc = vmown__lock_init(&b->lock);
    if (rc == 0) rc = vmown__sem_init(&b->hb_sem);
    if (rc < 0) { free(cb); return rc; }
    atomic_store_explicit(&b->hdr.magic, VMOWN__MAGIC, RELAXED);
    atomic_store_explicit(&b->hdr.version, VMOWN__LAYOUT_VERSION, RELAXED);
    atomic_store_explicit(&b->hdr.header_size, (uint32_t)header_size(), RELAXED);
    atomic_store_explicit(&b->hdr.slot_size, (uint32_t)sizeof(struct vmown_slot), RELAXED);
    atomic_store_explicit(&b->hdr.nslots, nslots, RELAXED);
    atomic_store_explicit(&b->hdr.total_size, vmown_cb_size(nslots), RELAXED);
    atomic_store_explicit(&b->hdr.sem_size, (uint32_t)sizeof(sem_t), RELAXED);
    atomic_store_explicit(&b->hdr.lock_size, (uint32_t)sizeof(pthread_mutex_t), RELAXED);
    atomic_store_explicit(&b->hdr.creator_pid, (int32_t)getpid(), RELAXED);
    /* Phase 2: publish. */
    atomic_store_explicit(&b->hdr.state, VMOWN__READY, RELEASE);
    *cb = (vmown_cb){.b = b, .len = len, .nslots = nslots};
    *out = cb;
    return 0;
}

int vmown_cb_attach(void *mem, size_t len, vmown_cb **out) {
    if (!mem || !out || (uintptr_t)mem % vmown_page_size()) return VMOWN_EINVAL;
    if (len < sizeof(struct vmown_header)) return VMOWN_ESIZES;
    struct vmown__block *b = mem;
    if (atomic_load_explicit(&b->hdr.magic, RELAXED) != VMOWN__MAGIC) return VMOWN_EBADMAGIC;
    if (atomic_load_explicit(&b->hdr.version, RELAXED) != VMOWN__LAYOUT_VERSION) return VMOWN_EVERSION;
    uint32_t state = atomic_load_explicit(&b->hdr.state, ACQUIRE);
    if (state == VMOWN__INITIALIZING) return VMOWN_ENOTREADY;
    if (state == VMOWN__BROKEN) return VMOWN_EBROKEN;
    if (state != VMOWN__READY) return VMOWN_EBADMAGIC;
    /* Read each size once; compare with this build and with the memory. */
    uint32_t nslots = atomic_load_explicit(&b->hdr.nslots, RELAXED);
    uint64_t total = atomic_load_explicit(&b->hdr.total_size, RELAXED);
    if (len < header_size() || atomic_load_explicit(&b->hdr.header_size, RELAXED) != header_size() ||
        atomic_load_explicit(&b->hdr.slot_size, RELAXED) != sizeof(struct vmown_slot) ||
        atomic_load_explicit(&b->hdr.sem_size, RELAXED) != sizeof(sem_t) ||
        atomic_load_explicit(&b->hdr.lock_size, RELAXED) != sizeof(pthread_mutex_t) || nslots == 0 ||
        nslots > VMOWN__MAX_SLOTS || total != vmown_cb_size(nslots) || total > len)
        return VMOWN_ESIZES;
    vmown_cb *cb = malloc(sizeof *cb);
    if (!cb) return -ENOMEM;
    *cb = (vmown_cb){.b = b, .len = len, .nslots = nslots};
    *out = cb;
    return 0;
}

void vmown_cb_detach(vmown_cb *cb) {
    if (!cb) return;
    vmown_heartbeat_stop(cb);
    /* A pooled worker still out in a callout uses cb when it is back: leave
     * it allocated (the block stays mapped as long as the caller keeps it). */
    if (!vmown__workers_free(cb)) return;
    free(cb);
}

int vmown_register(vmown_cb *cb) {
    struct vmown__block *b = cb->b;
    int32_t pid;
    uint64_t start_time;
    identity(&pid, &start_time);
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    uint32_t hint = atomic_load_explicit(&b->alloc_hint, RELAXED) % cb->nslots, found = 0;
    for (uint32_t k = 0; k < cb->nslots && !found; k++) {
        uint32_t i = 1 + (hint + k) % cb->nslots;
        if (atomic_load_explicit(&slot_of(cb, i)->state, RELAXED) == VMOWN_SLOT_FREE) found = i;
    }
    if (!found) {
        /* Full: slots of processes that died in a callout are reclaimable. */
        uint32_t granted;
        rc = reap_dead_locked(cb, &granted);
        post_granted(cb, granted);  /* posting under the lock: rare, and safe */
        if (rc > 0) {
            for (uint32_t i = 1; i <= cb->nslots && !found; i++)
                if (atomic_load_explicit(&slot_of(cb, i)->state, RELAXED) == VMOWN_SLOT_FREE) found = i;
        }
        if (!found) {
            unlock_block(cb);
            return rc < 0 ? rc : VMOWN_ENOSLOTS;
        }
    }
    struct vmown_slot *s = slot_of(cb, found);
    rc = vmown__sem_init(&s->sem);
    if (rc < 0) {
        unlock_block(cb);
        return rc;
    }
    atomic_store_explicit(&s->next, 0, RELAXED);
    atomic_store_explicit(&s->priority, 0, RELAXED);
    atomic_store_explicit(&s->generation, atomic_load_explicit(&s->generation, RELAXED) + 1, RELAXED);
    atomic_store_explicit(&s->pid, pid, RELAXED);
    atomic_store_explicit(&s->tid, vmown__gettid(), RELAXED);
    atomic_store_explicit(&s->start_time, start_time, RELAXED);
    atomic_store_explicit(&s->callout, 0, RELAXED);
    atomic_store_explicit(&s->callout_tick, 0, RELAXED);
    atomic_store_explicit(&s->soft_word, 0, RELAXED);
    atomic_store_explicit(&s->robbed, 0, RELAXED);
    /* Even (not out), and never back to a value a revoker may still hold. */
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, RELAXED);
    atomic_store_explicit(&s->lazy_seq, seq + (seq & 1), RELAXED);
    _Atomic uint64_t *counters[] = {&s->fast_owns,   &s->slow_owns,   &s->waits,  &s->hand_offs,
                                    &s->disowns,     &s->interrupts,  &s->soft_grants, &s->steals,
                                    &s->robberies,   &s->lazy_disowns};
    for (size_t k = 0; k < sizeof counters / sizeof *counters; k++) atomic_store_explicit(counters[k], 0, RELAXED);
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELEASE);
    atomic_store_explicit(&b->alloc_hint, found, RELAXED);
    atomic_fetch_add_explicit(&b->in_use, 1, RELAXED);
    unlock_block(cb);
    return (int)found;
}

int vmown_unregister(vmown_cb *cb, uint32_t me) {
    if (!valid_index(cb, me)) return VMOWN_EBADSLOT;
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint32_t st = atomic_load_explicit(&s->state, ACQUIRE);
    if (st == VMOWN_SLOT_FREE || atomic_load_explicit(&s->pid, RELAXED) != (int32_t)getpid())
        return VMOWN_EBADSLOT;
    if (st != VMOWN_SLOT_RUNNING) return VMOWN_EBUSY;
    if (VMOWN__HOLDER(atomic_load_explicit(&b->owner_word, ACQUIRE)) == (int32_t)me) {
        int rc = vmown_disown(cb, me, 0);
        if (rc < 0) return rc;
    }
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    fold_counters_locked(cb, s);
    vmown__sem_destroy(&s->sem);
    vmown__unbind_if(cb, me);
    atomic_store_explicit(&s->state, VMOWN_SLOT_FREE, RELEASE);
    atomic_fetch_sub_explicit(&b->in_use, 1, RELAXED);
    unlock_block(cb);
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

static int disown(vmown_cb *cb, uint32_t me, uint64_t callout, bool soft) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t w = my_word(cb, me);
    if (unlikely(VMOWN__OWNER(w) != (int32_t)me)) return VMOWN_ENOTOWNER;
    atomic_store_explicit(&s->callout, callout, RELAXED);
    atomic_store_explicit(&s->callout_tick, atomic_load_explicit(&b->ticks, RELAXED), RELAXED);
    bump(&s->disowns);
    if (likely((atomic_load_explicit(&b->attention, RELAXED) & VMOWN__WAITERS_MASK) == 0)) {
        /* Release; seq_cst orders it before the load of attention below. */
        atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, 0), SEQ_CST);
        uint64_t att = atomic_load_explicit(&b->attention, SEQ_CST);
        if (likely(att == 0)) return 0;
        if (att & VMOWN__HB_ASLEEP) vmown__heartbeat_wake(cb);
        return (att & VMOWN__WAITERS_MASK) ? kick(cb) : 0;
    }
    /* Hand-off: give the VM straight to the head waiter. */
    uint32_t head = 0;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if (soft && atomic_load_explicit(&b->claimant, RELAXED) != 0) {
        /* A robbed claimant is on its way back (race S3): it looks again
         * under this lock after us, so it finds the VM free or queues and
         * is granted by a later disown.  Waking another waiter now would
         * only make a herd. */
        atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, 0), SEQ_CST);
        unlock_block(cb);
        if (atomic_load_explicit(&b->attention, SEQ_CST) & VMOWN__HB_ASLEEP) vmown__heartbeat_wake(cb);
        return 0;
    }
    rc = pop_head_locked(cb, &head);
    uint32_t word_owner = head;
    if (soft && head) {
        struct vmown_slot *h = slot_of(cb, head);
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
    unlock_block(cb);
    if (rc < 0) return rc;
    if (head) {
        debug_stop(VMOWN_DEBUG_STOP_BEFORE_POST);  /* S8 */
        widen();
        post(cb, head);
    } else if (atomic_load_explicit(&b->attention, SEQ_CST) & VMOWN__WAITERS_MASK) {
        return kick(cb);
    }
    return 0;
}

int vmown_disown(vmown_cb *cb, uint32_t me, uint64_t callout) { return disown(cb, me, callout, false); }

/* ---- lazy callouts (see the notes) ---- */

int vmown__callout_disown(vmown_cb *cb, uint32_t me, uint64_t callout, bool eager) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, RELAXED);
    if (unlikely(seq & 1)) return VMOWN_ENOTOWNER;  /* out in one already: a nested call is plain */
    if (likely(!eager) && likely(atomic_load_explicit(&cb->lazy, RELAXED)) &&
        likely((atomic_load_explicit(&b->attention, RELAXED) & VMOWN__WAITERS_MASK) == 0)) {
        uint64_t w = my_word(cb, me);
        if (unlikely(VMOWN__OWNER(w) != (int32_t)me)) return VMOWN_ENOTOWNER;
        atomic_store_explicit(&s->callout, callout, RELAXED);
        atomic_store_explicit(&s->callout_tick, atomic_load_explicit(&b->ticks, RELAXED), RELAXED);
        bump(&s->disowns);
        bump(&s->lazy_disowns);
        /* Release: whoever the heartbeat hands the VM to sees what we did. */
        atomic_store_explicit(&s->lazy_seq, seq + 1, RELEASE);
        atomic_signal_fence(SEQ_CST);  /* the light side: the store before the load */
        if (unlikely(atomic_load_explicit(&b->attention, RELAXED) & VMOWN__HB_ASLEEP)) vmown__heartbeat_wake(cb);
        return 1;
    }
    return disown(cb, me, callout, true);
}

int vmown__lazy_return(vmown_cb *cb, uint32_t me) {
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, RELAXED);
    if (seq & 1) atomic_store_explicit(&s->lazy_seq, seq + 1, RELAXED);  /* L1 */
    atomic_signal_fence(SEQ_CST);
#ifdef VMOWN_WIDEN_FAST_PATHS
    widen();
#endif
    uint64_t w = atomic_load_explicit(&b->owner_word, ACQUIRE);  /* L2 */
    if (likely(VMOWN__OWNER(w) == (int32_t)me) || VMOWN__OWNER(settle_revoking(cb, me, w)) == (int32_t)me) {
        bump(&s->fast_owns);
        return 0;
    }
    return 1;  /* revoked */
}

uint64_t vmown__lazy_out(vmown_cb *cb, uint64_t w) {
    uint32_t t = (uint32_t)VMOWN__OWNER(w);  /* pending and revoking words name no valid index */
    if (!atomic_load_explicit(&cb->lazy_ok, RELAXED) || !valid_index(cb, t)) return 0;
    struct vmown_slot *s = slot_of(cb, t);
    if (atomic_load_explicit(&s->pid, RELAXED) != cb->hb_pid) return 0;
    uint64_t seq = atomic_load_explicit(&s->lazy_seq, ACQUIRE);
    return seq & 1 ? seq : 0;
}

int vmown__revoke(vmown_cb *cb, uint64_t w, uint64_t seq, bool work) {
    struct vmown__block *b = cb->b;
    uint32_t t = (uint32_t)VMOWN__OWNER(w);
    if (!valid_index(cb, t)) return 0;
    struct vmown_slot *s = slot_of(cb, t);
    uint64_t revoking = VMOWN__WORD(VMOWN__EPOCH(w), VMOWN__REVOKING | t);
    widen();  /* lets T come back before R1: its L2 reads (e, T), R3 calls off */
    if (!atomic_compare_exchange_strong_explicit(&b->owner_word, &w, revoking, SEQ_CST, RELAXED)) return 0; /* R1 */
    widen();  /* lets T come back between R1 and R3: it takes the word back */
    vmown__membarrier();  /* R2 */
    if (atomic_load_explicit(&s->lazy_seq, ACQUIRE) != seq) {  /* R3: back */
        atomic_compare_exchange_strong_explicit(&b->owner_word, &revoking, w, RELEASE, RELAXED);
        atomic_fetch_add_explicit(&b->called_off, 1, RELAXED);
        return 0;
    }
    uint32_t target = 0;
    bool idle = false;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if ((rc = read_link(cb, &b->head, &target)) == 0 && target == 0 && work) {
        rc = read_link(cb, &b->idle_head, &target);
        idle = target != 0;
    }
    if (rc < 0) {
        unlock_block(cb);
        return rc;
    }
    /* T may take the word back meanwhile: then this fails and T owns. */
    if (!atomic_compare_exchange_strong_explicit(&b->owner_word, &revoking,
                                                 VMOWN__WORD(VMOWN__EPOCH(w) + 1, target), SEQ_CST, RELAXED)) {
        unlock_block(cb);
        atomic_fetch_add_explicit(&b->called_off, 1, RELAXED);
        return 0;
    }
    uint32_t popped = 0;
    if (idle) {
        rc = idle_unlink_locked(cb, target);
        atomic_store_explicit(&slot_of(cb, target)->state, VMOWN_SLOT_GRANTED, RELAXED);
    } else if (target) {
        rc = pop_head_locked(cb, &popped);  /* the head read above: it holds the lock */
    }
    unlock_block(cb);
    if (rc < 0) return rc;
    atomic_fetch_add_explicit(&b->revocations, 1, RELAXED);
    if (idle) atomic_fetch_add_explicit(&b->activations, 1, RELAXED);
    if (target) {
        widen();
        post(cb, target);
    }
    return 1;
}

static int own_fast(vmown_cb *cb, struct vmown_slot *s, uint32_t me, uint64_t *w) {
    *w = atomic_load_explicit(&cb->b->owner_word, RELAXED);
    if (likely(VMOWN__OWNER(*w) == 0)) {
        if (atomic_compare_exchange_strong_explicit(&cb->b->owner_word, w, VMOWN__WORD(VMOWN__EPOCH(*w), me),
                                                    ACQUIRE, RELAXED)) {
            bump(&s->fast_owns);
            return 1;
        }
    } else if (*w == atomic_load_explicit(&s->soft_word, RELAXED)) {
        /* Our own soft grant, not claimed yet: steal it back (race S1). */
        if (atomic_compare_exchange_strong_explicit(&cb->b->owner_word, w, VMOWN__WORD(VMOWN__EPOCH(*w), me),
                                                    ACQUIRE, RELAXED)) {
            atomic_store_explicit(&s->soft_word, 0, RELAXED);
            bump(&s->steals);
            bump(&s->fast_owns);
            return 1;
        }
    }
    return 0;
}

int vmown_own_wait(vmown_cb *cb, uint32_t me, int64_t timeout_ns, int flags) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t w;
    if (likely(own_fast(cb, s, me, &w))) return 0;
    if (VMOWN__OWNER(settle_revoking(cb, me, w)) == (int32_t)me) return VMOWN_EALREADY;
    if (atomic_load_explicit(&s->state, RELAXED) != VMOWN_SLOT_RUNNING) return VMOWN_EBADSLOT;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    w = atomic_load_explicit(&b->owner_word, RELAXED);
    if (VMOWN__OWNER(w) == 0 &&
        atomic_compare_exchange_strong_explicit(&b->owner_word, &w, VMOWN__WORD(VMOWN__EPOCH(w), me), ACQUIRE,
                                                RELAXED)) {
        unlock_block(cb);
        bump(&s->slow_owns);
        return 0;
    }
    if (timeout_ns == 0) {
        unlock_block(cb);
        return VMOWN_ETIMEDOUT;
    }
    rc = enqueue_locked(cb, me);
    unlock_block(cb);
    if (rc < 0) return rc;
    bump(&s->slow_owns);
    widen();
    /* The other half of the store-load pair: the owner may have released
     * before it could see us counted. */
    if ((rc = after_queueing(cb)) < 0) return rc;
    return await_grant(cb, me, deadline, flags);
}

int vmown_own(vmown_cb *cb, uint32_t me) { return vmown_own_wait(cb, me, -1, 0); }

int vmown_own_resume(vmown_cb *cb, uint32_t me, int64_t deadline_ns, int flags) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    uint32_t st = atomic_load_explicit(&slot_of(cb, me)->state, ACQUIRE);
    if (st != VMOWN_SLOT_WAITING && st != VMOWN_SLOT_GRANTED) return VMOWN_EBADSLOT;
    return await_grant(cb, me, deadline_ns, flags);
}

int vmown_own_cancel(vmown_cb *cb, uint32_t me) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    struct vmown_slot *s = slot_of(cb, me);
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if (atomic_load_explicit(&s->state, RELAXED) == VMOWN_SLOT_WAITING) {
        rc = unlink_locked(cb, me);
        atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
        unlock_block(cb);
        bump(&s->interrupts);
        return rc;
    }
    unlock_block(cb);
    if (atomic_load_explicit(&s->state, ACQUIRE) != VMOWN_SLOT_GRANTED) return 0;
    rc = await_grant(cb, me, -1, 0);  /* granted meanwhile: take the post on its way */
    return rc < 0 ? rc : 1;
}

int vmown_thread_own(const vmown_thread *t) {
    return vmown_own_wait(t->cb, t->slot, -1, VMOWN_WAIT_INTERRUPTIBLE | VMOWN_WAIT_SLICES);
}

int vmown_thread_disown(const vmown_thread *t) { return vmown_disown(t->cb, t->slot, 0); }

int vmown_try_own(vmown_cb *cb, uint32_t me) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t w;
    if (own_fast(cb, s, me, &w)) return 1;
    return VMOWN__OWNER(settle_revoking(cb, me, w)) == (int32_t)me ? VMOWN_EALREADY : 0;
}

int vmown_yield(vmown_cb *cb, uint32_t me, int64_t timeout_ns, int flags) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t w = my_word(cb, me);
    if (VMOWN__OWNER(w) != (int32_t)me) return VMOWN_ENOTOWNER;
    if ((atomic_load_explicit(&b->attention, RELAXED) & VMOWN__WAITERS_MASK) == 0) return 0;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    uint32_t head = 0;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if ((rc = pop_head_locked(cb, &head)) < 0 || head == 0) {
        unlock_block(cb);
        return rc;
    }
    if ((rc = enqueue_locked(cb, me)) < 0) {
        mark_broken(cb);
        unlock_block(cb);
        return rc;
    }
    bump(&s->hand_offs);
    atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, head), SEQ_CST);
    unlock_block(cb);
    widen();
    post(cb, head);
    rc = await_grant(cb, me, deadline, flags);
    return rc < 0 ? rc : 1;
}

int vmown_set_priority(vmown_cb *cb, uint32_t me, int32_t priority) {
    if (!valid_index(cb, me)) return VMOWN_EBADSLOT;
    struct vmown_slot *s = slot_of(cb, me);
    if (atomic_load_explicit(&s->state, RELAXED) != VMOWN_SLOT_RUNNING) return VMOWN_EBUSY;
    atomic_store_explicit(&s->priority, priority, RELAXED);
    return 0;
}

/* ---- idle workers ----
 *
 * Parking joins the idle stack and releases the VM in one critical section,
 * so a worker is never both unfindable and unowning: whoever looks at the
 * stack under the lock sees it either owning or parked.
 *
 * A parked worker leaves the stack in one of three ways, each under the lock:
 *   activation (heartbeat): the owner word is CAS'd from the unowned word the
 *     heartbeat saw at two ticks to the worker's index, state := GRANTED;
 *   unpark: state := RUNNING (woken without the VM);
 *   its own timeout or signal: it unlinks itself while still PARKED.
 * The first two post its semaphore after unlocking; the third finds its state
 * changed if it lost the race, and then takes the post that is on its way.
 *
 * The design reserves the owner word (-1) while the heartbeat picks a worker;
 * here the pick happens under the lock *before* the CAS, so there is nothing
 * to reserve: the CAS either installs the chosen worker or fails because
 * somebody took the VM, and the worker stays parked. */

static int idle_unlink_locked(vmown_cb *cb, uint32_t me) {
    uint32_t prev;
    int rc = list_unlink_locked(cb, &cb->b->idle_head, offsetof(struct vmown_slot, idle_next), me, &prev);
    if (rc == 0) atomic_fetch_sub_explicit(&cb->b->idle_count, 1, RELAXED);
    return rc;
}

static int park(vmown_cb *cb, uint32_t me, int64_t timeout_ns, bool owning);
static int park_and_settle(vmown_cb *cb, uint32_t me, int64_t timeout_ns, bool owning);

int vmown_park(vmown_cb *cb, uint32_t me, int64_t timeout_ns) { return park_and_settle(cb, me, timeout_ns, true); }

int vmown_park_new(vmown_cb *cb, uint32_t me, int64_t timeout_ns) {
    return park_and_settle(cb, me, timeout_ns, false);
}

static int park_and_settle(vmown_cb *cb, uint32_t me, int64_t timeout_ns, bool owning) {
    if (unlikely(!valid_index(cb, me))) return VMOWN_EBADSLOT;
    int rc = park(cb, me, timeout_ns, owning);
    struct vmown_slot *s = slot_of(cb, me);
    if (atomic_load_explicit(&s->serving, RELAXED)) {
        /* Queued as a server (vmown__queue_idle), out of the queue now: its
         * own priority again.  Owning, it came through the queue as a waiter
         * does: counted as a slow own, so that every acquisition is an own
         * or an activation. */
        if (rc == 1) bump(&s->slow_owns);
        atomic_store_explicit(&s->priority, atomic_load_explicit(&s->saved_priority, RELAXED), RELAXED);
        atomic_store_explicit(&s->serving, 0, RELAXED);
        atomic_fetch_sub_explicit(&cb->b->servers_out, 1, RELAXED);
    }
    return rc;
}

static int park(vmown_cb *cb, uint32_t me, int64_t timeout_ns, bool owning) {
    struct vmown__block *b = cb->b;
    struct vmown_slot *s = slot_of(cb, me);
    uint64_t w = owning ? my_word(cb, me) : atomic_load_explicit(&b->owner_word, RELAXED);
    if (owning ? VMOWN__OWNER(w) != (int32_t)me : VMOWN__HOLDER(w) == (int32_t)me) return VMOWN_ENOTOWNER;
    if (!owning && atomic_load_explicit(&s->state, RELAXED) != VMOWN_SLOT_RUNNING) return VMOWN_EBADSLOT;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    uint32_t head = 0;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    atomic_store_explicit(&s->idle_next, atomic_load_explicit(&b->idle_head, RELAXED), RELAXED);
    atomic_store_explicit(&b->idle_head, me, RELAXED);
    atomic_fetch_add_explicit(&b->idle_count, 1, RELAXED);
    atomic_store_explicit(&s->state, VMOWN_SLOT_PARKED, RELAXED);
    if (!owning) {
        unlock_block(cb);
        goto wait;
    }
    rc = pop_head_locked(cb, &head);
    /* Counted before the release: whoever owns next sees the counts. */
    bump(&s->disowns);
    if (head) bump(&s->hand_offs);
    /* Caution: after this store another thread may run VM code. */
    atomic_store_explicit(&b->owner_word, VMOWN__WORD(VMOWN__EPOCH(w) + 1, head), SEQ_CST);
    unlock_block(cb);
    if (rc < 0) return rc;
    if (head) {
        widen();
        post(cb, head);
    }
    /* No waiter can be stranded: one that queues after the unlock finds the
     * VM unowned under the lock and takes it itself. */
wait:;
    int interruptible = 1;
    unsigned strays = 0;
    for (;;) {
        rc = vmown__sem_wait(&s->sem, deadline);
        uint32_t st = atomic_load_explicit(&s->state, ACQUIRE);
        if (rc == 0) {
            if (st == VMOWN_SLOT_GRANTED) break;
            if (st == VMOWN_SLOT_RUNNING) return 0;  /* unparked */
            if (++strays > MAX_STRAY_POSTS) { mark_broken(cb); return VMOWN_EBROKEN; }
            continue;                                 /* a stray post */
        }
        if (!interruptible) continue;
        int lrc = lock_block(cb);
        if (lrc < 0) return lrc;
        if (atomic_load_explicit(&s->state, RELAXED) == VMOWN_SLOT_PARKED) {
            lrc = idle_unlink_locked(cb, me);
            atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
            unlock_block(cb);
            bump(&s->interrupts);
            return lrc < 0 ? lrc : rc;
        }
        bool queued = atomic_load_explicit(&s->state, RELAXED) == VMOWN_SLOT_WAITING;
        unlock_block(cb);
        if (queued) {
            /* Queued by the heartbeat (vmown__queue_idle): a waiter now,
             * which waits like any other, its timeout no longer applying. */
            rc = await_grant(cb, me, -1, 0);
            return rc < 0 ? rc : 1;
        }
        /* Activated or unparked meanwhile: that post is on its way. */
        deadline = -1;
        interruptible = 0;
    }
    /* Activated (a hard grant), or granted from the queue, perhaps softly. */
    if ((rc = settle_grant(cb, me)) < 0) return rc;
    if (rc == 0) {
        rc = await_grant(cb, me, -1, 0);  /* robbed and queued again */
        return rc < 0 ? rc : 1;
    }
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELAXED);
    bump(&s->waits);
    return 1;
}

int vmown_unpark(vmown_cb *cb, uint32_t target) {
    if (target != 0 && !valid_index(cb, target)) return VMOWN_EBADSLOT;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if (target == 0 && (rc = read_link(cb, &cb->b->idle_head, &target)) < 0) goto done;
    if (target == 0 || atomic_load_explicit(&slot_of(cb, target)->state, RELAXED) != VMOWN_SLOT_PARKED) {
        rc = 0;
        goto done;
    }
    if ((rc = idle_unlink_locked(cb, target)) < 0) goto done;
    atomic_store_explicit(&slot_of(cb, target)->state, VMOWN_SLOT_RUNNING, RELEASE);
    unlock_block(cb);
    post(cb, target);
    return (int)target;
done:
    unlock_block(cb);
    return rc;
}

int vmown__queue_idle(vmown_cb *cb) {
    uint32_t target, granted = 0;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if ((rc = read_link(cb, &cb->b->idle_head, &target)) < 0 || target == 0) goto done;
    /* Off the idle stack and into the queue in one critical section: whoever
     * looks under the lock finds it in exactly one of them. */
    struct vmown_slot *s = slot_of(cb, target);
    if ((rc = idle_unlink_locked(cb, target)) < 0) goto done;
    /* Behind every other waiter: a thread back from a callout carries a
     * process already under way. */
    atomic_store_explicit(&s->saved_priority, atomic_load_explicit(&s->priority, RELAXED), RELAXED);
    atomic_store_explicit(&s->priority, INT32_MIN, RELAXED);
    atomic_store_explicit(&s->serving, 1, RELAXED);
    atomic_fetch_add_explicit(&cb->b->servers_out, 1, RELAXED);
    if ((rc = enqueue_locked(cb, target)) < 0) goto done;
    /* enqueue_locked counted it in `attention` (seq_cst) before this load of
     * the owner word: an owner releasing meanwhile sees the waiter (and hands
     * off or kicks, blocking on the lock until we are done), or we see the VM
     * unowned and grant it here. */
    rc = grant_head_locked(cb, &granted);
done:
    unlock_block(cb);
    post_granted(cb, granted);
    return rc < 0 ? rc : (int)target;
}

int vmown__activate(vmown_cb *cb, uint64_t expected) {
    struct vmown__block *b = cb->b;
    uint32_t worker;
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    if ((rc = read_link(cb, &b->idle_head, &worker)) < 0 || worker == 0) {
        unlock_block(cb);
        if (rc == 0) atomic_fetch_add_explicit(&b->starved, 1, RELAXED);
        return rc;
    }
    if (!atomic_compare_exchange_strong_explicit(&b->owner_word, &expected,
                                                 VMOWN__WORD(VMOWN__EPOCH(expected), worker), SEQ_CST, RELAXED)) {
        unlock_block(cb);
        return 0;  /* somebody took the VM since the tick looked */
    }
    rc = idle_unlink_locked(cb, worker);
    atomic_store_explicit(&slot_of(cb, worker)->state, VMOWN_SLOT_GRANTED, RELAXED);
    unlock_block(cb);
    if (rc < 0) return rc;
    widen();
    post(cb, worker);
    atomic_fetch_add_explicit(&b->activations, 1, RELAXED);
    return 1;
}

void vmown_set_work(vmown_cb *cb, uint64_t runnable, int64_t next_timer_ns) {
    atomic_store_explicit(&cb->b->work[1], runnable, RELAXED);
    atomic_store_explicit(&cb->b->next_timer_ns, next_timer_ns, RELAXED);
}

/* ---- observers ---- */

uint64_t vmown_owner_word(const vmown_cb *cb) { return atomic_load_explicit(&cb->b->owner_word, ACQUIRE); }
/* A pending soft grant reads as its holder, as a hard grant names its waiter
 * before it wakes. */
int32_t vmown_owner(const vmown_cb *cb) { return VMOWN__HOLDER(vmown_owner_word(cb)); }
uint32_t vmown_epoch(const vmown_cb *cb) { return VMOWN__EPOCH(vmown_owner_word(cb)); }
uint32_t vmown_waiters(const vmown_cb *cb) {
    return (uint32_t)(atomic_load_explicit(&cb->b->attention, RELAXED) & VMOWN__WAITERS_MASK);
}
const uint32_t *vmown_waiters_word(const vmown_cb *cb) {
    /* The low half of `attention` (VMOWN__WAITERS_MASK) in this byte order. */
    const uint32_t *halves = (const uint32_t *)(const void *)&cb->b->attention;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return halves + 1;
#else
    return halves;
#endif
}

uint64_t *vmown_work_words(vmown_cb *cb) {
    /* An _Atomic uint64_t has the layout of a uint64_t; the owner is its one
     * writer, and an aligned 64-bit store is atomic on every target built for. */
    return (uint64_t *)(void *)cb->b->work;
}

uint32_t vmown_nslots(const vmown_cb *cb) { return cb->nslots; }
uint32_t vmown_slots_in_use(const vmown_cb *cb) { return atomic_load_explicit(&cb->b->in_use, RELAXED); }

int vmown_counters_read(const vmown_cb *cb, vmown_counters *out) {
    *out = cb->b->folded;
    out->reaped = atomic_load_explicit(&cb->b->reaped, RELAXED);
    for (uint32_t i = 1; i <= cb->nslots; i++) {
        const struct vmown_slot *s = &cb->b->slots[i];
        if (atomic_load_explicit(&s->state, RELAXED) == VMOWN_SLOT_FREE) continue;
        out->fast_owns += atomic_load_explicit(&s->fast_owns, RELAXED);
        out->slow_owns += atomic_load_explicit(&s->slow_owns, RELAXED);
        out->waits += atomic_load_explicit(&s->waits, RELAXED);
        out->hand_offs += atomic_load_explicit(&s->hand_offs, RELAXED);
        out->disowns += atomic_load_explicit(&s->disowns, RELAXED);
        out->interrupts += atomic_load_explicit(&s->interrupts, RELAXED);
        out->soft_grants += atomic_load_explicit(&s->soft_grants, RELAXED);
        out->steals += atomic_load_explicit(&s->steals, RELAXED);
        out->robberies += atomic_load_explicit(&s->robberies, RELAXED);
        out->lazy_disowns += atomic_load_explicit(&s->lazy_disowns, RELAXED);
    }
    return 0;
}

int vmown_slot_read(const vmown_cb *cb, uint32_t i, vmown_slot_info *out) {
    if (!valid_index(cb, i)) return VMOWN_EBADSLOT;
    const struct vmown_slot *s = &cb->b->slots[i];
    *out = (vmown_slot_info){
        .state = atomic_load_explicit(&s->state, RELAXED),
        .pid = atomic_load_explicit(&s->pid, RELAXED),
        .tid = atomic_load_explicit(&s->tid, RELAXED),
        .priority = atomic_load_explicit(&s->priority, RELAXED),
        .start_time = atomic_load_explicit(&s->start_time, RELAXED),
        .callout = atomic_load_explicit(&s->callout, RELAXED),
        .callout_tick = atomic_load_explicit(&s->callout_tick, RELAXED),
        .next = atomic_load_explicit(&s->next, RELAXED),
        .generation = atomic_load_explicit(&s->generation, RELAXED),
        .lazy_out = (uint32_t)(atomic_load_explicit(&s->lazy_seq, ACQUIRE) & 1),
    };
    return 0;
}

int vmown_queue_read(vmown_cb *cb, uint32_t *out, uint32_t cap) {
    int rc = lock_block(cb);
    if (rc < 0) return rc;
    uint32_t cur, n = 0;
    if ((rc = read_link(cb, &cb->b->head, &cur)) < 0) goto done;
    while (cur && n < cap) {
        if (n > cb->nslots) { mark_broken(cb); rc = VMOWN_EBROKEN; goto done; }
        out[n++] = cur;
        if ((rc = read_link(cb, &slot_of(cb, cur)->next, &cur)) < 0) goto done;
    }
    rc = (int)n;
done:
    unlock_block(cb);
    return rc;
}
