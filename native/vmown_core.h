/* vmown_core.h -- what the files of the core (block.c, owner.c, grants.c,
 * idle.c, repair.c) share and nobody above them calls.
 *
 * Every function named *_locked runs under the block's lock.
 */
#ifndef VMOWN_CORE_H
#define VMOWN_CORE_H

#include "vmown_internal.h"
#include "vmown_shorthands.h"

#define VMOWN__MAX_SLOTS (1u << 20)
/* The lock is held for microseconds.  LOCK_TIMEOUT_NS bounds a wait for it
 * that has no deadline of its own (VMOWN_ESTUCK after it: a peer stopped
 * inside the lock).  LOCK_TRY_NS bounds the waits that may give up and leave
 * their work to the next lock holder: a release's hand-off, a kick, the
 * tidy-up after leaving the queue; and it is the least a yield or a park
 * waits for the lock, even with a deadline already passed. */
#define LOCK_TIMEOUT_NS 2000000000  /* 2 s */
#define LOCK_TRY_NS 5000000         /* 5 ms */
#define MAX_STRAY_POSTS 1000        /* in one wait: more means a corrupt semaphore */
#define SLICE_NS 50000000           /* 50 ms: a dead owner is found within one slice */

static inline void mark_broken(vmown_vm *vm) { vmown__mark_broken(vm); }

static inline bool is_broken(const vmown_vm *vm) {
    return atomic_load_explicit(&vm->block->hdr.state, ACQUIRE) == VMOWN__BROKEN;
}

/* Post a slot's semaphore; a failure can only come from corrupt memory. */
static inline void post(vmown_vm *vm, uint32_t slot) {
    if (vmown__sem_post(&vm->block->slots[slot].sem) != 0) mark_broken(vm);
}

/* The error of an operation that needs the VM, made by a thread that does
 * not own it: VMOWN_EBROKEN on a broken block (the end of a callout that
 * could not own again returns without owning, and the thread's next
 * operation says why), else VMOWN_ENOTOWNER. */
static inline int not_owner(const vmown_vm *vm) { return is_broken(vm) ? VMOWN_EBROKEN : VMOWN_ENOTOWNER; }

static inline void bump(_Atomic uint64_t *counter) {
    atomic_store_explicit(counter, atomic_load_explicit(counter, RELAXED) + 1, RELAXED);
}

static inline struct vmown_slot *slot_of(vmown_vm *vm, uint32_t i) { return &vm->block->slots[i]; }

static inline bool valid_index(const vmown_vm *vm, uint32_t i) { return i >= 1 && i <= vm->nslots; }

/* grants.c */
uint64_t vmown__settle_revoking(vmown_vm *vm, uint32_t me, uint64_t w);
int vmown__settle_grant(vmown_vm *vm, uint32_t me);

/* The owner word as seen by `me`, which runs VM code (grants.c, "Lazy
 * callouts"). */
static inline uint64_t my_word(vmown_vm *vm, uint32_t me) {
    uint64_t w = atomic_load_explicit(&vm->block->owner_word, RELAXED);
    return unlikely(VMOWN__OWNER(w) != (int32_t)me) ? vmown__settle_revoking(vm, me, w) : w;
}

/* owner.c: debug windows and stops (vmown_debug_set_widen_ns, _set_stop). */
void vmown__widen(void);
void vmown__debug_stop(int point);

/* owner.c: the wait queue.  A link read back is 0 or a valid index, else the
 * block is marked broken and a negative code returned. */
int vmown__read_link(vmown_vm *vm, _Atomic uint32_t *link, uint32_t *out);
int vmown__enqueue_locked(vmown_vm *vm, uint32_t me);
int vmown__requeue_locked(vmown_vm *vm, uint32_t me);
int vmown__list_unlink_locked(vmown_vm *vm, _Atomic uint32_t *head, size_t link, uint32_t me, uint32_t *prev);
int vmown__unlink_locked(vmown_vm *vm, uint32_t me);
int vmown__unlink_left_locked(vmown_vm *vm, uint32_t i);
void vmown__tidy_left(vmown_vm *vm, uint32_t me);
int vmown__drop_left_locked(vmown_vm *vm, uint32_t *head);
int vmown__reserve_head_locked(vmown_vm *vm, uint32_t *out);
int vmown__pop_head_locked(vmown_vm *vm, uint32_t *out);
int vmown__grant_head_locked(vmown_vm *vm, uint32_t *granted);
void vmown__post_granted(vmown_vm *vm, uint32_t granted);
int vmown__kick(vmown_vm *vm);
int vmown__after_queueing(vmown_vm *vm);
int vmown__await_grant(vmown_vm *vm, uint32_t me, int64_t deadline_ns, int flags);
/* soft: a callout's disown, which may give a soft grant (grants.c). */
int vmown__disown(vmown_vm *vm, uint32_t me, uint64_t callout, bool soft);

/* repair.c: take the block's lock, mending what a dead holder left.  _until
 * waits until deadline_ns at most (VMOWN_ETIMEDOUT; < 0: none); without a
 * deadline a stopped holder ends the wait after LOCK_TIMEOUT_NS
 * (VMOWN_ESTUCK).  Every wait of a caller with a deadline passes it, so that
 * a peer stopped inside the lock cannot keep the caller past it: own before
 * it queues and register (their caller's deadline), yield and park
 * (vmown__lock_deadline: a failure keeps the VM with the caller).  A queued
 * waiter, or a parked one, leaves without the lock (owner.c, "Leaving the
 * queue"); a release, a kick and the tidy-up after a leave wait LOCK_TRY_NS
 * and leave the rest to the next lock holder.  What still waits up to
 * LOCK_TIMEOUT_NS has no deadline to keep: unregister, set_priority of a
 * slot that left, the heartbeat's calls, unpark, a robbed claimant's
 * re-queue, reaping, the observers that read the queue. */
int vmown__lock_block(vmown_vm *vm);
int vmown__lock_block_until(vmown_vm *vm, int64_t deadline_ns);
/* The lock's deadline for a caller's deadline (< 0: none): that deadline,
 * but LOCK_TRY_NS from now at the soonest, so that a lock held for a moment
 * by a live peer does not fail a call whose deadline is now. */
static inline int64_t vmown__lock_deadline(int64_t deadline_ns) {
    if (deadline_ns < 0) return -1;
    int64_t soonest = vmown__now_ns() + LOCK_TRY_NS;
    return deadline_ns > soonest ? deadline_ns : soonest;
}
static inline void unlock_block(vmown_vm *vm) { vmown__unlock(&vm->block->lock); }
void vmown__fold_counters_locked(vmown_vm *vm, struct vmown_slot *s);
int vmown__reap_dead_locked(vmown_vm *vm, uint32_t *granted);
int vmown__check_owner(vmown_vm *vm);

/* idle.c: the idle stack.  _take: a parked worker (target, or 0 for the top)
 * off the stack by a CAS PARKED -> to; _push: onto it, PARKED. */
int vmown__idle_unlink_locked(vmown_vm *vm, uint32_t me);
int vmown__idle_take_locked(vmown_vm *vm, uint32_t target, uint32_t to, uint32_t *out);
int vmown__idle_push_locked(vmown_vm *vm, uint32_t me);

#endif
