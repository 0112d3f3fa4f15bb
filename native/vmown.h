/* vmown.h -- the one public header of the vmown C core.
 *
 * vmown lets many OS threads share one "VM" of which exactly one thread, the
 * owner, runs VM code.  A thread about to call blocking C code *disowns* the VM
 * (one atomic store) and keeps running on its own stack; on return it *owns* it
 * again (one compare-and-swap).  Threads that return while another thread owns
 * the VM queue up (FIFO, or by priority) and sleep on their own process-shared
 * semaphore until an owner hands the VM over.
 *
 * Everything lives in a *control block* in caller-provided, page-aligned memory
 * (never in C globals), so the block can sit in a shared mapping and be used by
 * threads of several processes.  See ownership.c for the protocol notes.
 *
 * Conventions (libuv-like): `vmown_` names are public, `vmown__` internal;
 * functions return 0 (or a non-negative result) on success and a negative code
 * on failure: either -errno for a failed OS call or one of VMOWN_E* below.
 * Nothing here prints.
 *
 * The block between the two cdef markers is fed to cffi verbatim, so it keeps
 * to what cffi's C parser accepts: no #include, no macros with expressions.
 */
#ifndef VMOWN_H
#define VMOWN_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin */

/* Error codes (negative returns). OS failures are returned as -errno. */
enum {
    VMOWN_ENOTOWNER = -1001,  /* the caller does not own the VM */
    VMOWN_EALREADY = -1002,   /* the caller already owns the VM */
    VMOWN_ENOSLOTS = -1003,   /* every slot of the control block is in use */
    VMOWN_EBADSLOT = -1004,   /* slot index out of range or not registered */
    VMOWN_EBADMAGIC = -1005,  /* memory does not start with a vmown header */
    VMOWN_EVERSION = -1006,   /* header of another layout version */
    VMOWN_ESIZES = -1007,     /* header sizes disagree with this build or memory */
    VMOWN_ENOTREADY = -1008,  /* header still INITIALIZING */
    VMOWN_EBROKEN = -1009,    /* control block marked broken for good */
    VMOWN_EINTR = -1010,      /* wait interrupted by a signal; not queued now */
    VMOWN_ETIMEDOUT = -1011,  /* wait timed out; not queued now */
    VMOWN_EBUSY = -1012,      /* slot still owns, waits or is in use */
    VMOWN_EINVAL = -1013      /* bad argument */
};

/* Slot states (vmown_slot_info.state). */
enum {
    VMOWN_SLOT_FREE = 0,      /* unused, may be claimed */
    VMOWN_SLOT_RUNNING = 1,   /* registered; owns the VM or is in a callout */
    VMOWN_SLOT_WAITING = 2,   /* queued for ownership, asleep on its semaphore */
    VMOWN_SLOT_GRANTED = 3,   /* dequeued and given the VM; wake-up in flight */
    VMOWN_SLOT_PARKED = 4     /* an idle worker on the idle stack, asleep */
};

/* Wait flags for vmown_own_wait. */
enum {
    VMOWN_WAIT_INTERRUPTIBLE = 1  /* return VMOWN_EINTR when a signal arrives */
};

/* Owner word: bits 0-31 the owner (int32: 0 = unowned, >0 = slot index,
 * -1 = reserved during a hand-over), bits 32-63 the ownership epoch, bumped
 * by every release.  Packing both into one word makes a release one atomic
 * store and lets an observer tell "unowned all along" from "owned and
 * released again" by comparing two reads of a single word. */
/* A process-local handle on a control block (made by vmown_cb_init or
 * vmown_cb_attach, freed by vmown_cb_detach; the memory stays the caller's). */
typedef struct vmown_cb vmown_cb;

/* Totals of the whole block: folded counters of departed slots plus the live
 * slots' own counters (each slot counts its own events without atomics RMW). */
typedef struct {
    uint64_t fast_owns;    /* own() that won the CAS without the lock */
    uint64_t slow_owns;    /* own() that took the lock (waited or not) */
    uint64_t waits;        /* own() or yield that slept on a semaphore */
    uint64_t hand_offs;    /* releases that gave the VM straight to a waiter */
    uint64_t disowns;      /* disown() calls */
    uint64_t interrupts;   /* waits left because of a signal or timeout */
    uint64_t reaped;       /* slots freed because their process died */
} vmown_counters;

typedef struct {
    uint32_t state;        /* VMOWN_SLOT_* */
    int32_t pid;
    int32_t tid;
    int32_t priority;
    uint64_t start_time;   /* process start time, kernel clock ticks since boot */
    uint64_t callout;      /* tag of the callout it is in (0 = none) */
    uint64_t callout_tick; /* heartbeat tick at which it disowned */
    uint32_t next;         /* queue link */
    uint32_t generation;   /* bumped at each registration */
} vmown_slot_info;

/* Size in bytes (a multiple of the page size) of a block with nslots slots. */
size_t vmown_cb_size(uint32_t nslots);

/* Initialise a block in len bytes of zeroed or reused page-aligned memory.
 * Two-phase: the state word reads INITIALIZING until everything else is
 * written, then READY with release ordering. */
int vmown_cb_init(void *mem, size_t len, uint32_t nslots, vmown_cb **out);

/* Check a block made elsewhere (another process, a file) and return it.
 * Every header field is read once and checked against len and this build. */
int vmown_cb_attach(void *mem, size_t len, vmown_cb **out);
void vmown_cb_detach(vmown_cb *cb);

/* Claim a free slot for the calling thread; returns its index (>= 1). */
int vmown_register(vmown_cb *cb);
/* Give a slot back.  A slot that owns the VM releases it first; a slot that is
 * queued is refused with VMOWN_EBUSY. */
int vmown_unregister(vmown_cb *cb, uint32_t slot);

/* Release the VM: hand it to the head waiter if there is one, else store 0.
 * `callout` tags what the caller is about to do (0 = nothing in particular). */
int vmown_disown(vmown_cb *cb, uint32_t slot, uint64_t callout);
/* Take the VM, waiting as long as it takes (signals are not reported). */
int vmown_own(vmown_cb *cb, uint32_t slot);
/* Take the VM; timeout_ns < 0 waits forever.  With VMOWN_WAIT_INTERRUPTIBLE a
 * signal makes it return VMOWN_EINTR; a timeout returns VMOWN_ETIMEDOUT.  In
 * both cases the slot has left the queue and does not own the VM. */
int vmown_own_wait(vmown_cb *cb, uint32_t slot, int64_t timeout_ns, int flags);
/* Take the VM only if nobody owns it: 1 taken, 0 not, negative on error. */
int vmown_try_own(vmown_cb *cb, uint32_t slot);
/* The owner gives the VM to the head waiter and queues for it again: returns
 * 1 after getting it back, 0 if nobody waited (nothing happened), or an error
 * (VMOWN_EINTR / VMOWN_ETIMEDOUT: the caller no longer owns the VM). */
int vmown_yield(vmown_cb *cb, uint32_t slot, int64_t timeout_ns, int flags);

/* One-argument forms for callers that pay per argument (cffi dispatches a
 * one-argument call without building an argument tuple: half the cost).
 * A vmown_thread names a block and a registered slot; own waits forever and
 * is interruptible (VMOWN_EINTR), disown records no callout tag. */
typedef struct {
    vmown_cb *cb;
    uint32_t slot;
} vmown_thread;
int vmown_thread_own(const vmown_thread *t);
int vmown_thread_disown(const vmown_thread *t);

/* Set the queue priority of a slot (higher goes first, FIFO among equals). */
int vmown_set_priority(vmown_cb *cb, uint32_t slot, int32_t priority);

/* Observers: safe from any thread or process, no lock taken. */
uint64_t vmown_owner_word(const vmown_cb *cb);
int32_t vmown_owner(const vmown_cb *cb);
uint32_t vmown_epoch(const vmown_cb *cb);
uint32_t vmown_waiters(const vmown_cb *cb);
uint32_t vmown_nslots(const vmown_cb *cb);
uint32_t vmown_slots_in_use(const vmown_cb *cb);
int vmown_counters_read(const vmown_cb *cb, vmown_counters *out);
int vmown_slot_read(const vmown_cb *cb, uint32_t slot, vmown_slot_info *out);
/* Waiting slots in queue order; returns how many were written (<= cap). */
int vmown_queue_read(vmown_cb *cb, uint32_t *out, uint32_t cap);

/* ---- Workers and the heartbeat (heartbeat.c) ----
 *
 * A worker is a registered thread that can run the scheduler.  When it has
 * nothing to run it parks: it releases the VM and sleeps on its semaphore,
 * on the block's idle stack.  The heartbeat (one thread per process, default
 * 1000 Hz) activates a parked worker when the VM has been unowned for a whole
 * tick while work waits: a runnable process, or a timer that is due.  The
 * owner publishes both with vmown_set_work.  While nothing changes (no
 * callout in flight) the heartbeat stops ticking and sleeps until the next
 * disown, or until the next published timer. */

typedef struct {
    uint64_t ticks;         /* heartbeat ticks since the block was made */
    uint64_t activations;   /* idle workers given the VM by the heartbeat */
    uint64_t starved;       /* ticks that found work but no idle worker */
    uint64_t sleeps;        /* times the heartbeat stopped ticking */
    uint32_t idle_workers;  /* workers parked now */
    uint32_t running;       /* 1 while this process's heartbeat runs */
    int32_t tid;            /* its thread id (for /proc and py-spy), 0 if none */
} vmown_heartbeat_stats;

/* Park the calling worker, which must own the VM: join the idle stack and
 * release the VM (to the head waiter, if any), in one step under the lock.
 * Returns 1 once given the VM (activated), 0 when woken by vmown_unpark
 * (not owning), VMOWN_ETIMEDOUT (not owning) after timeout_ns (< 0: none). */
int vmown_park(vmown_cb *cb, uint32_t slot, int64_t timeout_ns);
/* Wake one parked worker (slot 0: the most recently parked) without giving
 * it the VM: its vmown_park returns 0.  Returns the slot woken, 0 if none. */
int vmown_unpark(vmown_cb *cb, uint32_t slot);

/* Owner only, cheap (plain stores): what work waits if the VM is left
 * unowned.  runnable: processes ready to run; next_timer_ns: earliest timer
 * (CLOCK_MONOTONIC ns, 0 = none). */
void vmown_set_work(vmown_cb *cb, uint64_t runnable, int64_t next_timer_ns);
/* CLOCK_MONOTONIC in ns, the heartbeat's clock. */
int64_t vmown_now_ns(void);

int vmown_heartbeat_start(vmown_cb *cb, uint32_t hz);
int vmown_heartbeat_stop(vmown_cb *cb);
int vmown_heartbeat_read(const vmown_cb *cb, vmown_heartbeat_stats *out);

/* ---- Callouts from C (callout.c) ---- */

/* Bind the calling thread to a block and its slot (cb NULL unbinds). */
int vmown_bind_thread(vmown_cb *cb, uint32_t slot);
/* Disown if this thread is bound and owns the VM; returns a token for
 * vmown_callout_end (0: nothing was disowned, the call is a plain call). */
uint32_t vmown_callout_begin(uint64_t tag);
/* Own again (waiting without the GIL if need be); errno is preserved.  A
 * failure here cannot be reported to the caller and aborts, naming it. */
void vmown_callout_end(uint32_t token);

enum { VMOWN_CALLOUT_API_VERSION = 1 };
typedef struct {
    int version;
    uint32_t (*begin)(uint64_t tag);
    void (*end)(uint32_t token);
} vmown_callout_table;
/* The table that generated wrappers in other modules are initialised with. */
const vmown_callout_table *vmown_callout_api(void);

/* Layout version of the control block this build reads and writes; the
 * Python package checks it against its own at import. */
uint32_t vmown_layout_version(void);

/* Free the slots of processes that died (pid gone, zombie, or recycled),
 * releasing the VM if one of them owned it.  Waiters do this by themselves
 * within 50 ms of a dead owner; returns how many slots were freed. */
int vmown_reap(vmown_cb *cb);

/* Debug: stop the calling process (SIGSTOP) at a point of the protocol, so a
 * test can kill it exactly there.  Process-wide; VMOWN_DEBUG_STOP_NONE off. */
enum {
    VMOWN_DEBUG_STOP_NONE = 0,
    VMOWN_DEBUG_STOP_GRANTED = 1,  /* handed the VM, before taking it */
    VMOWN_DEBUG_STOP_IN_LOCK = 2   /* inside the lock, queue half-updated */
};
void vmown_debug_set_stop(int point);

/* Debug: widen the race windows (between enqueueing and sleeping, between
 * storing a new owner and posting its semaphore) by spinning this many
 * nanoseconds with a yield.  Process-wide, 0 turns it off. */
void vmown_debug_set_widen_ns(int64_t ns);

/* OS layer (os_linux.c): anonymous shared mappings for the default block. */
int vmown_map_anonymous(size_t len, void **out);
int vmown_unmap(void *addr, size_t len);
size_t vmown_page_size(void);

/* cdef-end */

#ifdef __cplusplus
}
#endif
#endif /* VMOWN_H */
