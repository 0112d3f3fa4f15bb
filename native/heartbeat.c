/* heartbeat.c -- the thread that notices a callout staying out too long.
 *
 * Notes about the implementation
 * ------------------------------
 * A callout disowns the VM and, if short, owns it again with one CAS; nobody
 * else needs to know.  Only when it stays out do the other processes need
 * another thread.  The heartbeat decides that, as Go's sysmon retakes a P
 * from a goroutine stuck in a syscall.
 *
 * Each tick (a real thread on absolute CLOCK_MONOTONIC deadlines, 1000 Hz by
 * default; a late tick is skipped, never bunched) it reads the owner word W:
 *   - W equals the word read at the previous tick, first read at least one
 *     period ago (by the clock, not by ticks: ticks can be late), and
 *   - W's owner field is 0, and
 *   - work waits: a runnable process, or a timer that is due
 * then the VM has been unowned for at least one whole tick with work to do:
 * activate a parked worker (vmown__activate: CAS W -> that worker, post it).
 * Because every acquisition changes the owner field and every release bumps
 * the epoch, "W unchanged" cannot be fooled by an own + disown in between.
 * A pending soft grant (grants.c) is owned: its owner field is not 0, and
 * its claim or steal changes the word, so it never qualifies either.
 * Consequences: a call shorter than one tick never causes an activation (the
 * word it released differs from the word the previous tick saw, and it is
 * gone by the next); a call longer than two ticks always does.
 *
 * Servers: starting processes while the VM is busy.  An activation needs the
 * VM unowned for a whole tick; with threads coming back from callouts the VM
 * rarely is, and processes that wait in the run queue do not start.
 * So the heartbeat also reads work[VMOWN_WORK_TAKEN], the count of processes the owner has
 * taken off its run queue, and work[VMOWN_WORK_RUNNABLE], how many are runnable, and
 *   - slow: if fewer than SERVERS processes were taken off since the last
 *     tick, not counting those the servers took, while some are runnable and
 *     the VM is owned (its steps are long, or its thread is out in a lazy
 *     callout), it tops up the servers it keeps queued to min(runnable,
 *     depth), moving parked workers from the idle stack into the wait queue
 *     (vmown__queue_idle).  servers_out counts the queued ones whose park has
 *     not returned yet; `servers` minus servers_out, those that came out.  A
 *     run queue that moves fast (thousands of short steps a tick) gets none:
 *     its owner serves it.  Servers that each took a process and blocked in
 *     it say nothing of that: counted as progress, a tick in which the 8
 *     servers all started a process looks fast, none are queued, and the
 *     next process waits a whole tick for an activation.
 *   - depth starts at SERVERS; it doubles (up to MAX_SERVERS) after a tick
 *     that used up every server queued, and halves after one that used
 *     fewer than a quarter (docs/design-log.md).
 *   - after an activation, with more than one process runnable, it queues
 *     servers for the rest in the same way: every thread was out for a tick,
 *     more are likely to be soon.
 *   - each time it queues servers it asks this process's worker pool
 *     (workers.c), if any, for as many parked workers again.
 * Topping up every slow tick, rather than once when the queue stalls, is
 * what a run queue of long steps needs: each step that blocks in a callout
 * uses up a server to start the next process.
 * A server waits behind every other waiter (priority INT32_MIN: a thread back
 * from a callout carries a process already under way) and gets the VM from
 * the next disown: at once from a callout that blocks (a soft grant it
 * claims within its wake-up), within ~1 ms of being robbed by one that makes
 * short callouts (grants.c, S5).  It then runs at least one step
 * (vmown/_scheduler.py).  Queueing is not an activation: the counts of
 * activations keep their meaning (0 for calls under a tick, 1 for calls over
 * two), and a server never takes the VM from a short callout by itself.
 *
 * Lazy callouts (grants.c, "Lazy callouts").  A callout of this process
 * that found nobody waiting keeps the owner word and marks its slot instead
 * (lazy_seq odd).  The heartbeat reads that seq of the owner along with W:
 * unchanged for a whole tick, odd, and somebody waits (a queued thread, or
 * work as above), it revokes the VM (vmown__revoke) and hands it to the head
 * waiter, else to a parked worker (an activation), else leaves it unowned.
 * The same tick-long hysteresis as for an unowned W: a lazy callout under a
 * tick is never revoked.
 *
 * Sleeping when there is nothing to watch.  After QUIET_TICKS ticks with W
 * unchanged and nothing to do (no slow tick either), the heartbeat stops ticking:
 *   1. set HB_ASLEEP in `waiters_and_hb_asleep` (seq_cst);
 *   2. load the owner word (seq_cst); if it moved since the last tick, clear
 *      the bit and tick on;
 *   3. sleep on hb_sem, until the next published timer if the VM is unowned.
 * A disown stores the owner word (seq_cst) and then loads `waiters_and_hb_asleep`: it is
 * the store-load pair of owner.c again, so either the disown sees the bit
 * (and wakes the heartbeat: whoever clears the bit posts, so one post per
 * sleep) or the heartbeat sees the disown at step 2.  What breaks if step 2
 * moves before step 1: a disown between them would not see the bit and the
 * heartbeat would sleep through a callout that blocks.  A lazy callout
 * stores its seq with a plain store, then loads `waiters_and_hb_asleep`: step 2 is then
 * preceded by a membarrier and reads the owner's seq too.  A thread that
 * queues (an RMW of `waiters_and_hb_asleep`) wakes a sleeping heartbeat itself: with the
 * owner out lazily, only a revocation gets it the VM.  So the heartbeat may
 * sleep through a long lazy callout while nobody waits.
 *
 * Signals are blocked in the heartbeat thread: they belong to the program.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"

#include <unistd.h>

#define QUIET_TICKS 8
#ifndef SERVERS
#define SERVERS 8  /* idle workers kept queued while processes wait (see the notes) */
#endif
#ifndef MAX_SERVERS
#define MAX_SERVERS 64
#endif

/* Queue up to n parked workers for the VM; returns how many.  With a worker
 * pool in this process, ask it to have as many parked again for the next
 * round (workers.c: counting and a post; the spawner starts the threads). */
static unsigned queue_servers(vmown_vm *vm, unsigned n) {
    unsigned k = 0;
    while (k < n && vmown__queue_idle(vm) > 0) k++;
    if (k) atomic_fetch_add_explicit(&vm->block->servers, k, memory_order_relaxed);
    else atomic_fetch_add_explicit(&vm->block->starved, 1, memory_order_relaxed);
    if (n) (void)vmown_workers_want(vm, n);  /* VMOWN_EINVAL without a pool: nothing to do */
    return k;
}

static bool waiters(struct vmown__block *b) {
    return atomic_load_explicit(&b->waiters_and_hb_asleep, memory_order_seq_cst) & VMOWN__WAITERS_MASK;
}

static bool work_waits(struct vmown__block *b, int64_t now_ns) {
    if (atomic_load_explicit(&b->work[VMOWN_WORK_RUNNABLE], memory_order_relaxed)) return true;
    int64_t timer = atomic_load_explicit(&b->next_timer_ns, memory_order_relaxed);
    return timer != 0 && timer <= now_ns;
}

/* Steps 1-3 of the notes.  `seen`/`seen_seq` are the word and the owner's
 * lazy seq of the last tick; on return they hold what was read on waking,
 * which counts as a tick's observation: a disown that woke us happened before
 * it, so the VM has been unowned (or the callout out) at least since then. */
static void sleep_until_needed(vmown_vm *vm, uint64_t *seen, uint64_t *seen_seq) {
    struct vmown__block *b = vm->block;
    atomic_fetch_or_explicit(&b->waiters_and_hb_asleep, VMOWN__HB_ASLEEP, memory_order_seq_cst);
    if (atomic_load_explicit(&vm->lazy_ok, memory_order_relaxed)) vmown__membarrier();
    uint64_t w = atomic_load_explicit(&b->owner_word, memory_order_seq_cst);
    uint64_t seq = vmown__lazy_out(vm, w);
    /* After the membarrier: a thread that queued and then read the owner's
     * seq before the barrier reached the owner is counted by now. */
    if (w != *seen || seq != *seen_seq || (seq && waiters(b)) ||
        atomic_load_explicit(&vm->hb_stop, memory_order_relaxed)) {
        vmown__wake_heartbeat(vm);  /* clears the bit; a stray post is harmless */
        *seen = w;
        *seen_seq = seq;
        return;
    }
    atomic_fetch_add_explicit(&b->hb_sleeps, 1, memory_order_relaxed);
    int64_t timer = atomic_load_explicit(&b->next_timer_ns, memory_order_relaxed);
    int64_t deadline = (VMOWN__OWNER(w) == 0 || seq) && timer > 0 ? timer : -1;
    if (vmown__sem_wait(&b->hb_sem, deadline) == VMOWN_EBROKEN)  /* a peer wrote over it */
        vmown__mark_broken(vm);
    atomic_fetch_and_explicit(&b->waiters_and_hb_asleep, ~VMOWN__HB_ASLEEP, memory_order_seq_cst);
    *seen = atomic_load_explicit(&b->owner_word, memory_order_acquire);
    *seen_seq = vmown__lazy_out(vm, *seen);
}

/* The heartbeat's state from one tick to the next. */
struct tick {
    vmown_vm *vm;
    struct vmown__block *block;
    int64_t period, next;  /* ns; next: the deadline of the next tick */
    uint64_t seen, seen_seq;  /* the owner word and the owner's lazy seq at the last tick */
    int64_t seen_at;       /* when `seen` was first read */
    unsigned quiet;        /* ticks in a row with nothing to do */
    uint64_t served;       /* work[VMOWN_WORK_TAKEN] at the last tick */
    uint64_t servers_seen; /* b->servers at the last tick */
    uint32_t out_seen;     /* b->servers_out at the last tick */
    unsigned depth;        /* servers kept queued */
};

/* What one tick reads. */
struct observation {
    int64_t now;
    uint64_t w, seq, runnable;
    uint32_t out;  /* servers queued and not yet out of the queue */
    bool slow;
};

/* The progress baselines, read again after a start or a sleep. */
static void rebase(struct tick *t) {
    t->served = atomic_load_explicit(&t->block->work[VMOWN_WORK_TAKEN], memory_order_relaxed);
    t->servers_seen = atomic_load_explicit(&t->block->servers, memory_order_relaxed);
    t->out_seen = atomic_load_explicit(&t->block->servers_out, memory_order_relaxed);
}

static void observe(struct tick *t, struct observation *o) {
    struct vmown__block *b = t->block;
    o->now = vmown__now_ns();
    t->next += t->period;
    if (t->next <= o->now) t->next = o->now + t->period;  /* late: skip, never bunch */
    atomic_store_explicit(&b->ticks, atomic_load_explicit(&b->ticks, memory_order_relaxed) + 1,
                          memory_order_relaxed);
    o->w = atomic_load_explicit(&b->owner_word, memory_order_acquire);
    o->seq = vmown__lazy_out(t->vm, o->w);
    uint64_t progress = atomic_load_explicit(&b->work[VMOWN_WORK_TAKEN], memory_order_relaxed);
    o->runnable = atomic_load_explicit(&b->work[VMOWN_WORK_RUNNABLE], memory_order_relaxed);
    /* Servers that came out of the queue since the last tick: each took a
     * process off the run queue itself, which says nothing of how fast the
     * owners serve it. */
    uint64_t queued = atomic_load_explicit(&b->servers, memory_order_relaxed);
    o->out = atomic_load_explicit(&b->servers_out, memory_order_relaxed);
    uint64_t came = (queued - t->servers_seen) - (uint64_t)(int32_t)(o->out - t->out_seen);
    t->servers_seen = queued;
    t->out_seen = o->out;
    /* Slow: fewer than SERVERS processes taken off the run queue since the
     * last tick, other than by servers, while some wait and the VM is
     * owned. */
    uint64_t taken = progress - t->served;
    o->slow = o->runnable && VMOWN__OWNER(o->w) != 0 && taken - (came < taken ? came : taken) < SERVERS;
    t->served = progress;
    if (came >= t->depth && o->out == 0 && t->depth < MAX_SERVERS) t->depth *= 2;  /* all used up within a tick */
    else if (came < t->depth / 4 && t->depth > SERVERS) t->depth /= 2;
}

/* Slow: keep up to `depth` servers queued for the run queue. */
static void top_up(struct tick *t, const struct observation *o) {
    if (!o->slow || atomic_load_explicit(&t->vm->no_servers, memory_order_relaxed)) return;
    unsigned want = o->runnable < t->depth ? (unsigned)o->runnable : t->depth;
    if (o->out < want) (void)queue_servers(t->vm, want - o->out);
    t->quiet = 0;
}

/* The VM unowned, or its owner out in a lazy callout, for a whole tick while
 * somebody needs it: activate a parked worker, or revoke.  True if the tick
 * saw a change or acted. */
static bool hand_on(struct tick *t, const struct observation *o) {
    struct vmown__block *b = t->block;
    /* By time, not by tick count: a late tick followed by one on time can be
     * less than a period apart.  A tenth of a period of tolerance absorbs
     * timer jitter; a call of half a tick still never qualifies. */
    bool whole_tick = o->now - t->seen_at >= t->period - t->period / 10;
    unsigned rest = o->runnable - 1 < t->depth ? (unsigned)o->runnable - 1 : t->depth;
    if (o->w != t->seen || o->seq != t->seen_seq) {
        t->seen_at = o->now;
    } else if (VMOWN__OWNER(o->w) == 0 && work_waits(b, o->now)) {
        /* Evidence that every thread is out: more are likely to be soon.
         * Queue servers for the rest of the run queue. */
        if (whole_tick && vmown__activate(t->vm, o->w) > 0 && o->runnable > 1) (void)queue_servers(t->vm, rest);
    } else if (o->seq && (waiters(b) || work_waits(b, o->now))) {
        if (whole_tick && vmown__revoke(t->vm, o->w, o->seq, work_waits(b, o->now)) > 0 && o->runnable > 1)
            (void)queue_servers(t->vm, rest);
    } else {
        return false;
    }
    t->quiet = 0;
    return true;
}

/* QUIET_TICKS ticks with nothing to do: sleep until somebody needs us. */
static void sleep_if_quiet(struct tick *t, struct observation *o) {
    /* Slow keeps the heartbeat awake for the servers it tops up; without
     * servers (vmown_heartbeat_set_servers) a slow owner needs nothing of it
     * until a callout, whose begin wakes it. */
    bool servers = !atomic_load_explicit(&t->vm->no_servers, memory_order_relaxed);
    if ((o->slow && servers) || ++t->quiet < QUIET_TICKS) return;
    sleep_until_needed(t->vm, &o->w, &o->seq);
    t->quiet = 0;
    t->seen_at = vmown__now_ns();
    rebase(t);
    t->next = t->seen_at + t->period;
}

static void *heartbeat_main(void *arg) {
    vmown_vm *vm = arg;
    struct vmown__block *b = vm->block;
    struct tick t = {.vm = vm, .block = b, .period = 1000000000 / vm->hb_hz, .depth = SERVERS};
    t.next = vmown__now_ns() + t.period;
    t.seen = atomic_load_explicit(&b->owner_word, memory_order_acquire);
    t.seen_seq = vmown__lazy_out(vm, t.seen);  /* the owner's lazy callout, if out */
    t.seen_at = vmown__now_ns();
    rebase(&t);
    atomic_store(&vm->hb_tid, vmown__gettid());
    vmown__thread_name("vmown-heartbeat");
    vmown__set_timer_slack_ns(1000);  /* ticks on time: the default slack is 50 us */
    while (!atomic_load_explicit(&vm->hb_stop, memory_order_acquire)) {
        vmown__sleep_until(t.next);
        struct observation o;
        observe(&t, &o);
        top_up(&t, &o);
        if (!hand_on(&t, &o)) sleep_if_quiet(&t, &o);
        t.seen = o.w;
        t.seen_seq = o.seq;
    }
    /* Stopping: callouts are eager from now on; take the VM from a lazy one
     * that is out, so that nobody waits for its return.  A callout that read
     * the flag just before it was cleared, and goes out after this sweep,
     * keeps the VM until it returns, as it would with no heartbeat. */
    atomic_store_explicit(&vm->lazy, 0, memory_order_relaxed);
    if (atomic_load_explicit(&vm->lazy_ok, memory_order_relaxed)) {
        vmown__membarrier();
        uint64_t w = atomic_load_explicit(&b->owner_word, memory_order_acquire);
        uint64_t seq = vmown__lazy_out(vm, w);
        if (seq) (void)vmown__revoke(vm, w, seq, false);
    }
    return NULL;
}

int vmown_heartbeat_start(vmown_vm *vm, uint32_t hz) {
    if (hz == 0 || hz > 100000) return VMOWN_EINVAL;
    if (vm->hb_running) return VMOWN_EBUSY;
    vm->hb_hz = hz;
    vm->hb_pid = (int32_t)getpid();
    atomic_store(&vm->hb_stop, 0);
    atomic_store(&vm->hb_tid, 0);
    atomic_store(&vm->lazy_ok, vmown__membarrier_register() == 0);
    int rc = vmown__thread_start(&vm->hb_thread, heartbeat_main, vm);
    if (rc != 0) {
        atomic_store(&vm->lazy_ok, 0);
        return rc;
    }
    /* Its thread id, for vmown_heartbeat_read, is known once this returns. */
    while (atomic_load(&vm->hb_tid) == 0) vmown__sleep_ns(10000);
    vm->hb_running = true;
    atomic_store(&vm->lazy, atomic_load(&vm->lazy_ok) && !vm->eager);
    return 0;
}

int vmown_heartbeat_set_lazy(vmown_vm *vm, int on) {
    vm->eager = !on;
    if (!on) atomic_store(&vm->lazy, 0);
    else if (vm->hb_running) atomic_store(&vm->lazy, atomic_load(&vm->lazy_ok));
    return atomic_load(&vm->lazy);
}

int vmown_heartbeat_set_servers(vmown_vm *vm, int on) {
    atomic_store_explicit(&vm->no_servers, !on, memory_order_relaxed);
    return 0;
}

int vmown_heartbeat_stop(vmown_vm *vm) {
    if (!vm->hb_running) return 0;
    if (vm->hb_pid != (int32_t)getpid()) {
        /* A forked child's copy of the parent's handle: the heartbeat thread
         * is the parent's (joining it here waited for ever).  Only forget it;
         * without it no callout of this process may go out lazily. */
        vm->hb_running = false;
        atomic_store(&vm->lazy, 0);
        atomic_store(&vm->lazy_ok, 0);
        return 0;
    }
    atomic_store(&vm->hb_stop, 1);
    /* Posts only if it sleeps (or is about to: it sets the bit before it
     * checks hb_stop again), so no stray count is left in shared memory. */
    vmown__wake_heartbeat(vm);
    int rc = vmown__thread_join(vm->hb_thread);
    if (rc != 0) return rc;
    vm->hb_running = false;
    atomic_store(&vm->lazy_ok, 0);
    return 0;
}

int vmown_heartbeat_read(const vmown_vm *vm, vmown_heartbeat_stats *out) {
    const struct vmown__block *b = vm->block;
    *out = (vmown_heartbeat_stats){
        .ticks = atomic_load_explicit(&b->ticks, memory_order_relaxed),
        .activations = atomic_load_explicit(&b->activations, memory_order_relaxed),
        .starved = atomic_load_explicit(&b->starved, memory_order_relaxed),
        .sleeps = atomic_load_explicit(&b->hb_sleeps, memory_order_relaxed),
        .servers = atomic_load_explicit(&b->servers, memory_order_relaxed),
        .revocations = atomic_load_explicit(&b->revocations, memory_order_relaxed),
        .called_off = atomic_load_explicit(&b->called_off, memory_order_relaxed),
        .relays = atomic_load_explicit(&b->relays, memory_order_relaxed),
        .hand_overs = atomic_load_explicit(&b->hand_overs, memory_order_relaxed),
        .lazy = (uint32_t)atomic_load_explicit(&vm->lazy, memory_order_relaxed),
        .idle_workers = atomic_load_explicit(&b->idle_count, memory_order_relaxed),
        .running = vm->hb_running,
        .tid = vm->hb_running ? atomic_load(&vm->hb_tid) : 0,
    };
    return 0;
}

int64_t vmown_now_ns(void) { return vmown__now_ns(); }
