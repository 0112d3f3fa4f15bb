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
 * threads of several processes.  See owner.c and grants.c for the protocol notes.
 *
 * Conventions (libuv-like): `vmown_` names are public, `vmown__` internal;
 * functions return 0 (or a non-negative result) on success and a negative code
 * on failure: either -errno for a failed OS call or one of VMOWN_E* below.
 * Nothing here prints.
 *
 * The block between the two cdef markers is fed to cffi (vmown/_build.py,
 * with VMOWN_EXTERN taken out), so it keeps to what cffi's C parser accepts:
 * no #include, no macros with expressions.
 *
 * As a C library (libvmown, the Makefile; docs/C-API.md says how an
 * interpreter embeds it) only the functions marked VMOWN_EXTERN are
 * exported: the core is compiled with -fvisibility=hidden.
 */
#ifndef VMOWN_H
#define VMOWN_H

#include <stddef.h>
#include <stdint.h>

/* The version of this header; vmown_version() says that of the library
 * linked.  The shared library's SONAME carries the major version
 * (libvmown.so.MAJOR).  MAJOR changes with an incompatible C API;
 * vmown_layout_version() is the separate number of the shared memory's
 * layout, checked by vmown_vm_attach. */
#define VMOWN_VERSION_MAJOR 0
#define VMOWN_VERSION_MINOR 1
#define VMOWN_VERSION_PATCH 0
#define VMOWN_VERSION_HEX ((VMOWN_VERSION_MAJOR << 16) | (VMOWN_VERSION_MINOR << 8) | VMOWN_VERSION_PATCH)

/* Marks the public functions: exported from libvmown.so.  A build that
 * wants them hidden (the Python extension, which exports none) defines it
 * empty. */
#ifndef VMOWN_EXTERN
#if defined(__GNUC__) && __GNUC__ >= 4
#define VMOWN_EXTERN __attribute__((visibility("default")))
#else
#define VMOWN_EXTERN
#endif
#endif

#ifdef __cplusplus
extern "C" {
#endif

/* cdef-begin */

/* The library's version: VMOWN_VERSION_HEX of the header it was built with
 * (compare with the header's to catch a program run against another
 * libvmown), and as "MAJOR.MINOR.PATCH". */
VMOWN_EXTERN unsigned int vmown_version(void);
VMOWN_EXTERN const char *vmown_version_string(void);

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
    VMOWN_EINVAL = -1013,     /* bad argument */
    VMOWN_ESTUCK = -1014,     /* the block's lock was held far too long */
    VMOWN_EAGAIN = -1015      /* still queued: a slice of the wait passed;
                                 channel try_send / try_recv: not now, nothing done */
};

/* Slot states (vmown_slot_info.state). */
enum {
    VMOWN_SLOT_FREE = 0,      /* unused, may be claimed */
    VMOWN_SLOT_RUNNING = 1,   /* registered; owns the VM or is in a callout */
    VMOWN_SLOT_WAITING = 2,   /* queued for ownership, asleep on its semaphore */
    VMOWN_SLOT_GRANTED = 3,   /* dequeued and given the VM; wake-up in flight */
    VMOWN_SLOT_PARKED = 4,    /* an idle worker on the idle stack, asleep */
    VMOWN_SLOT_LEFT = 5,      /* left the wait queue by itself (timeout, signal) and
                                 runs; still linked there until a holder of the
                                 block's lock unlinks it */
    VMOWN_SLOT_LEFT_IDLE = 6  /* the same for the idle stack */
};

/* Wait flags for vmown_own_wait. */
enum {
    VMOWN_WAIT_INTERRUPTIBLE = 1, /* return VMOWN_EINTR when a signal arrives */
    VMOWN_WAIT_SLICES = 2         /* return VMOWN_EAGAIN after each 50 ms slice,
                                     still queued: see vmown_own_resume */
};

/* Owner word: bits 0-31 the owner (0 = unowned, >0 = slot index,
 * 0x40000000 | slot = a soft grant to slot not claimed yet, 0x20000000 | slot
 * = REVOKING: the heartbeat is deciding whether slot, out in a lazy callout,
 * loses the VM; vmown_owner reports slot for both), bits 32-63 the ownership
 * epoch, bumped by every release.  Packing both into one word makes a release one atomic
 * store and lets an observer tell "unowned all along" from "owned and
 * released again" by comparing two reads of a single word. */
/* A process-local handle on a control block (made by vmown_vm_init or
 * vmown_vm_attach, freed by vmown_vm_detach; the memory stays the caller's). */
typedef struct vmown_vm vmown_vm;

/* Totals of the whole block: folded counters of departed slots plus the live
 * slots' own counters (each slot counts its own events without atomics RMW). */
typedef struct {
    uint64_t fast_owns;    /* own() that won the CAS without the lock */
    uint64_t slow_owns;    /* own() that took the lock (waited or not), and parked
                              workers given the VM through the queue */
    uint64_t waits;        /* own() or yield that slept on a semaphore */
    uint64_t hand_offs;    /* releases that gave the VM straight to a waiter */
    uint64_t disowns;      /* disown() calls */
    uint64_t interrupts;   /* waits left because of a signal or timeout */
    uint64_t soft_grants;  /* callout disowns that woke a waiter with a soft grant */
    uint64_t steals;       /* soft grants taken back by their granter before the claim */
    uint64_t robberies;    /* waiters that woke to a grant taken back (and queued again) */
    uint64_t lazy_disowns; /* callout disowns that kept the owner word (grants.c, "Lazy callouts") */
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
    uint32_t lazy_out;     /* 1 while out in a lazy callout: the owner word still
                              names it (grants.c, "Lazy callouts") */
} vmown_slot_info;

/* Size in bytes (a multiple of the page size) of a block with nslots slots. */
VMOWN_EXTERN size_t vmown_block_size(uint32_t nslots);

/* Initialise a block in len bytes of zeroed or reused page-aligned memory.
 * Two-phase: the state word reads INITIALIZING until everything else is
 * written, then READY with release ordering. */
VMOWN_EXTERN int vmown_vm_init(void *mem, size_t len, uint32_t nslots, vmown_vm **out);

/* Check a block made elsewhere (another process, a file) and return it.
 * Every header field is read once and checked against len and this build. */
VMOWN_EXTERN int vmown_vm_attach(void *mem, size_t len, vmown_vm **out);
VMOWN_EXTERN void vmown_vm_detach(vmown_vm *vm);

/* Claim a free slot for the calling thread; returns its index (>= 1). */
VMOWN_EXTERN int vmown_register(vmown_vm *vm);
/* The same, waiting at most timeout_ns (< 0: no limit) for the block's lock:
 * VMOWN_ETIMEDOUT after it. */
VMOWN_EXTERN int vmown_register_timed(vmown_vm *vm, int64_t timeout_ns);
/* Give a slot back.  A slot that owns the VM releases it first; a slot that is
 * queued is refused with VMOWN_EBUSY. */
VMOWN_EXTERN int vmown_unregister(vmown_vm *vm, uint32_t slot);

/* Release the VM: hand it to the head waiter if there is one, else store 0.
 * Always a hard, FIFO hand-off; only vmown_callout_begin makes soft grants.
 * `callout` tags what the caller is about to do (0 = nothing in particular). */
VMOWN_EXTERN int vmown_disown(vmown_vm *vm, uint32_t slot, uint64_t callout);
/* Take the VM, waiting as long as it takes (signals are not reported). */
VMOWN_EXTERN int vmown_own(vmown_vm *vm, uint32_t slot);
/* Take the VM; timeout_ns < 0 waits forever.  With VMOWN_WAIT_INTERRUPTIBLE a
 * signal makes it return VMOWN_EINTR; a timeout returns VMOWN_ETIMEDOUT.  In
 * both cases the slot has left the queue and does not own the VM. */
VMOWN_EXTERN int vmown_own_wait(vmown_vm *vm, uint32_t slot, int64_t timeout_ns, int flags);
/* Go on waiting after VMOWN_EAGAIN, the slot still queued; deadline_ns is
 * CLOCK_MONOTONIC (vmown_now_ns), < 0 for none.  Why slices: a signal whose
 * handler runs between two sleeps interrupts neither; returning to the
 * caller at every slice lets it run its pending handlers (Python does at the
 * next bytecode boundary) so that no Ctrl-C waits for the VM. */
VMOWN_EXTERN int vmown_own_resume(vmown_vm *vm, uint32_t slot, int64_t deadline_ns, int flags);
/* Leave the queue after VMOWN_EAGAIN.  Returns 0 (not owning), or 1 if the
 * VM was handed over meanwhile: the caller owns it and must release it. */
VMOWN_EXTERN int vmown_own_cancel(vmown_vm *vm, uint32_t slot);
/* Take the VM only if nobody owns it: 1 taken, 0 not, negative on error. */
VMOWN_EXTERN int vmown_try_own(vmown_vm *vm, uint32_t slot);
/* The owner gives the VM to the head waiter and queues for it again: returns
 * 1 after getting it back, 0 if nobody waited or the block's lock was not to
 * be had by the deadline (nothing happened: the caller still owns the VM), or
 * an error (VMOWN_EINTR / VMOWN_ETIMEDOUT: the caller no longer owns the VM). */
VMOWN_EXTERN int vmown_yield(vmown_vm *vm, uint32_t slot, int64_t timeout_ns, int flags);

/* One-argument forms for callers that pay per argument (cffi dispatches a
 * one-argument call without building an argument tuple: half the cost).
 * A vmown_thread names a block and a registered slot; own waits forever and
 * is interruptible and sliced (VMOWN_EINTR, VMOWN_EAGAIN), disown records
 * no callout tag. */
typedef struct {
    vmown_vm *vm;
    uint32_t slot;
} vmown_thread;
VMOWN_EXTERN int vmown_thread_own(const vmown_thread *t);
VMOWN_EXTERN int vmown_thread_disown(const vmown_thread *t);

/* Set the queue priority of a slot (higher goes first, FIFO among equals). */
VMOWN_EXTERN int vmown_set_priority(vmown_vm *vm, uint32_t slot, int32_t priority);

/* The names of vmown_counters' fields, in order (i < vmown_counter_count();
 * NULL past the end), and of the slot states (indexed by VMOWN_SLOT_*):
 * the one list Python's statistics and `python -m vmown top` use. */
VMOWN_EXTERN uint32_t vmown_counter_count(void);
VMOWN_EXTERN const char *vmown_counter_name(uint32_t i);
VMOWN_EXTERN uint32_t vmown_slot_state_count(void);
VMOWN_EXTERN const char *vmown_slot_state_name(uint32_t i);

/* Observers: safe from any thread or process, no lock taken. */
VMOWN_EXTERN uint64_t vmown_owner_word(const vmown_vm *vm);
VMOWN_EXTERN int32_t vmown_owner(const vmown_vm *vm);
VMOWN_EXTERN uint32_t vmown_epoch(const vmown_vm *vm);
VMOWN_EXTERN uint32_t vmown_waiters(const vmown_vm *vm);
/* 1 if the block is marked broken for good (VMOWN_EBROKEN), else 0. */
VMOWN_EXTERN int vmown_broken(const vmown_vm *vm);
/* Where the count of queued threads lives, for reading it without a call:
 * from Python, a cffi call releases and retakes the GIL, and an owner that
 * does that at every scheduling point makes CPython's GIL hand-over (which
 * asks the holder to drop the GIL only after a whole switch interval without
 * any hand-over) starve a thread that waits for the GIL.  A plain load
 * through this pointer releases nothing.  Aligned 32-bit word: loads are
 * atomic; the value is a snapshot, as from vmown_waiters. */
VMOWN_EXTERN const uint32_t *vmown_waiters_word(const vmown_vm *vm);
/* Two words for the owner to write in place (plain stores through this
 * pointer, no call, nothing released), read by the heartbeat (heartbeat.c):
 * [VMOWN_WORK_TAKEN] processes taken off the run queue so far, bumped at
 * each; [VMOWN_WORK_RUNNABLE] processes runnable now, the word vmown_set_work
 * writes. */
enum { VMOWN_WORK_TAKEN = 0, VMOWN_WORK_RUNNABLE = 1 };
VMOWN_EXTERN uint64_t *vmown_work_words(vmown_vm *vm);
VMOWN_EXTERN uint32_t vmown_nslots(const vmown_vm *vm);
VMOWN_EXTERN uint32_t vmown_slots_in_use(const vmown_vm *vm);
VMOWN_EXTERN int vmown_counters_read(const vmown_vm *vm, vmown_counters *out);
VMOWN_EXTERN int vmown_slot_read(const vmown_vm *vm, uint32_t slot, vmown_slot_info *out);
/* Waiting slots in queue order; returns how many were written (<= cap). */
VMOWN_EXTERN int vmown_queue_read(vmown_vm *vm, uint32_t *out, uint32_t cap);

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
    uint64_t servers;       /* idle workers queued for the VM: run queue stalled */
    uint64_t revocations;   /* lazy callouts whose VM the heartbeat took (grants.c) */
    uint64_t called_off;    /* revocations called off because the callout was back */
    uint64_t relays;        /* servers queued ahead by a worker given the VM (idle.c, "Relays") */
    uint64_t hand_overs;    /* callouts of blocking functions that handed the VM to a parked worker */
    uint32_t lazy;          /* 1 while callouts of this process may go out lazily */
    uint32_t idle_workers;  /* workers parked now */
    uint32_t running;       /* 1 while this process's heartbeat runs */
    int32_t tid;            /* its thread id (for /proc and py-spy), 0 if none */
} vmown_heartbeat_stats;

/* Park the calling worker, which must own the VM: join the idle stack and
 * release the VM (to the head waiter, if any), in one step under the lock.
 * Returns 1 once given the VM (activated; also when the block's lock was not
 * to be had by the deadline: it never parked and still owns the VM, counted
 * as a disown and an own), 0 when
 * woken by vmown_unpark (not owning), VMOWN_ETIMEDOUT (not owning) after
 * timeout_ns (< 0: none). */
VMOWN_EXTERN int vmown_park(vmown_vm *vm, uint32_t slot, int64_t timeout_ns);
/* Park a worker that does not own the VM (a new one): join the idle stack and
 * wait, as vmown_park does after its release; same results.  A thread pool
 * can thus start workers without handing the VM to each.  VMOWN_ENOTOWNER if
 * the caller owns the VM (or holds a grant of it), VMOWN_EBADSLOT if its slot
 * is queued or parked already. */
VMOWN_EXTERN int vmown_park_new(vmown_vm *vm, uint32_t slot, int64_t timeout_ns);
/* Wake one parked worker (slot 0: the most recently parked) without giving
 * it the VM: its vmown_park returns 0.  Returns the slot woken, 0 if none. */
VMOWN_EXTERN int vmown_unpark(vmown_vm *vm, uint32_t slot);

/* ---- The worker pool (workers.c) ----
 *
 * Threads started in C that park on the idle stack without running any code
 * of the host language: a thread start costs the VM nothing, not even the
 * interpreter's lock.  The first time the heartbeat (or a release) gives a
 * pooled worker the VM, it calls entry(arg, slot) on its own thread, owning
 * the VM; entry serves and returns once it no longer owns.  The thread then
 * gives its slot back and exits.  A worker parked idle_timeout_ns without
 * being given the VM exits if another one is parked.  One pool per vmown_vm;
 * its threads have every signal blocked. */
typedef void (*vmown_worker_entry)(void *arg, uint32_t slot);

typedef struct {
    uint32_t live;        /* started and not yet exited */
    uint32_t high;        /* most live at once */
    uint32_t starting;    /* started, not yet parked */
    uint32_t wanted;      /* asked for, not yet started */
    uint64_t started;     /* threads started in all */
    uint64_t entered;     /* workers that were given the VM and called entry */
    uint64_t cap_hits;    /* asks cut short by max_workers */
    uint64_t failures;    /* thread starts or registrations the OS refused */
    int32_t last_error;   /* the last failure's negative errno or VMOWN_E*, 0 if none */
    uint32_t running;     /* 1 between vmown_workers_start and vmown_workers_stop */
} vmown_workers_stats;

/* Start the pool's spawner thread.  VMOWN_EBUSY if a pool runs already,
 * VMOWN_EINVAL for max_workers 0. */
VMOWN_EXTERN int vmown_workers_start(vmown_vm *vm, vmown_worker_entry entry, void *arg, uint32_t max_workers,
                                     int64_t idle_timeout_ns);
/* Ask for `want` workers parked or on their way, counting those parked now
 * (the spawner starts the rest, never past max_workers).  Cheap: a lock and
 * a post.  Returns cap_hits + failures so far (a caller that sees it grow
 * reads the stats and reports), or VMOWN_EINVAL without a running pool. */
VMOWN_EXTERN int64_t vmown_workers_want(vmown_vm *vm, uint32_t want);
/* No more starts: stop the spawner and make parked pooled workers leave
 * (each parked one is unparked: its vmown_park_new returns and it exits).
 * A worker in entry is not stopped: entry returns when the caller's own
 * protocol says so.  Idempotent. */
VMOWN_EXTERN int vmown_workers_stop(vmown_vm *vm);
/* Wait up to timeout_ns (< 0: no limit) for every pooled worker to exit,
 * joining them; returns how many still live (0: all joined).  After a
 * return of 0 the pool holds no thread and vmown_vm_detach may free it. */
VMOWN_EXTERN int vmown_workers_join(vmown_vm *vm, int64_t timeout_ns);
VMOWN_EXTERN int vmown_workers_read(const vmown_vm *vm, vmown_workers_stats *out);

/* Owner only, cheap (plain stores): what work waits if the VM is left
 * unowned.  runnable: processes ready to run; next_timer_ns: earliest timer
 * (CLOCK_MONOTONIC ns, 0 = none). */
VMOWN_EXTERN void vmown_set_work(vmown_vm *vm, uint64_t runnable, int64_t next_timer_ns);
/* CLOCK_MONOTONIC in ns, the heartbeat's clock. */
VMOWN_EXTERN int64_t vmown_now_ns(void);

VMOWN_EXTERN int vmown_heartbeat_start(vmown_vm *vm, uint32_t hz);
VMOWN_EXTERN int vmown_heartbeat_stop(vmown_vm *vm);
VMOWN_EXTERN int vmown_heartbeat_read(const vmown_vm *vm, vmown_heartbeat_stats *out);
/* Whether callouts of this process may go out lazily while its heartbeat
 * runs (on by default: grants.c, "Lazy callouts"); off makes every
 * callout release the owner word, as without a heartbeat.  Returns 1 if they
 * go lazily now (on, a heartbeat running, and the kernel able to revoke). */
VMOWN_EXTERN int vmown_heartbeat_set_lazy(vmown_vm *vm, int on);
/* Whether the heartbeat queues servers for this VM when its owner makes no
 * progress for a tick while work waits (on by default: heartbeat.c,
 * "Servers").  A front end with one queue of work that any thread serves as
 * well as the next (vmown.aio's loop) turns them off: a long callback gains
 * nothing from moving, and a lazy callout that blocks is revoked anyway. */
VMOWN_EXTERN int vmown_heartbeat_set_servers(vmown_vm *vm, int on);

/* ---- Callouts from C (callout.c) ---- */

/* Bind the calling thread to a block and its slot (vm NULL unbinds). */
VMOWN_EXTERN int vmown_bind_thread(vmown_vm *vm, uint32_t slot);
/* A function called by the callout path of this thread, owning the VM
 * again, when one of its callouts comes back to find that the VM was owned by
 * another thread meanwhile (its own had to wait, a revocation took it, or
 * the owner word's epoch moved).  A front end that keeps per-thread state
 * beside the VM (vmown.aio: asyncio's current task) puts it back there.  Per
 * thread; vmown_bind_thread clears it.  fn runs on the callout's thread
 * before the callout returns, without the GIL unless the caller held it. */
typedef void (*vmown_resume_fn)(void *arg, uint32_t slot);
VMOWN_EXTERN void vmown_bind_resume(vmown_resume_fn fn, void *arg);
/* Disown if this thread is bound and owns the VM; returns a token for
 * vmown_callout_end (0: nothing was disowned, the call is a plain call).
 * With this process's heartbeat running and nobody queued, the callout goes
 * out lazily: the owner word keeps naming the thread, its slot says it is
 * out, and the heartbeat revokes the VM if it stays out a whole tick while
 * somebody needs it (grants.c, "Lazy callouts"); callouts with the tag of
 * a revoked one are eager while somebody takes the VM during them, and
 * lazy again after 64 that nobody needed (callout.c, hints).  Otherwise a queued thread gets
 * a soft grant: end (or try_end) takes the VM back with one CAS if that
 * thread has not claimed it yet (grants.c). */
VMOWN_EXTERN uint32_t vmown_callout_begin(uint64_t tag);
/* Set in a token of an eager callout when somebody wants the VM
 * while the callout is out: the tag is known to block (it stayed out over a
 * tick lately; the disown handed the VM to a parked worker), or a thread
 * was queued (the disown gave it a soft grant).  A caller that can own the
 * VM again before it takes the GIL back should: the GIL's holder may be the
 * thread the VM went to. */
#define VMOWN_CALLOUT_WANTED 0x20000000u
/* Set in a token when the callout went out lazily (it kept the owner word):
 * if its end has to wait, the heartbeat revoked it. */
#define VMOWN_CALLOUT_LAZY 0x80000000u
/* Own again (waiting without the GIL if need be); errno is preserved.  If
 * the thread cannot own again (the block is broken: a peer wrote over it),
 * the end returns without owning and keeps the error for
 * vmown_callout_error: the thread must run no VM code, and the front end's
 * next operation on the block fails with the same error. */
VMOWN_EXTERN void vmown_callout_end(uint32_t token);
/* Own again only if that takes one CAS (nobody took the VM meanwhile):
 * returns 1 if this thread owns the VM again (or token is 0), 0 if it must
 * wait, with vmown_callout_end, best with the GIL released. */
VMOWN_EXTERN int vmown_callout_try_end(uint32_t token);
/* The error (a negative VMOWN_E* code) that kept this thread's last
 * vmown_callout_end from owning the VM again, and 0 from then on until the
 * next; 0 if there was none. */
VMOWN_EXTERN int vmown_callout_error(void);
/* vmown_callout_begin, never lazy: for a caller that takes the GIL back
 * between the call and its end (vmown.callout).  A lazy callout would hold
 * the VM while it waits for the GIL, and whoever holds the GIL could not
 * get the VM.  Its figures are left to the caller. */
VMOWN_EXTERN uint32_t vmown_callout_begin_eager(uint64_t tag);

/* Figures per tag of the callouts of vmown_callout_begin in this process,
 * since it started, over every VM (those of vmown_callout_begin_eager are
 * left to their caller to count).  tag 0: the callouts whose tag found no
 * row (there are 256), and those of tag 0.  calls: callouts that went out
 * (begin gave a token) and came back; handed_over: of these, the ones that
 * came back to find the VM taken and waited to own it again (revocations
 * included); revocations: lazy callouts the heartbeat took the VM from;
 * out_ns, longest_ns: time out of the VM, the wait to own it again
 * included, taken only while vmown_callout_timing is on. */
typedef struct {
    uint64_t tag;
    uint64_t calls, handed_over, revocations, out_ns, longest_ns;
} vmown_callout_stat;
/* Copies up to max rows (those with calls) into out; returns how many rows
 * there are (more than max: call again with a larger out; out may be NULL). */
VMOWN_EXTERN int vmown_callout_stats_read(vmown_callout_stat *out, int max);
/* Whether callouts of vmown_callout_begin are timed from now on (two clock
 * reads each; off by default), process-wide; returns whether they were. */
VMOWN_EXTERN int vmown_callout_timing(int on);

/* Fields are only ever appended (a reader of version 1 that knows fewer
 * fields still reads the ones it knows); the version changes only if a
 * field's meaning does. */
enum { VMOWN_CALLOUT_API_VERSION = 1 };
typedef struct {
    int version;
    uint32_t (*begin)(uint64_t tag);
    void (*end)(uint32_t token);
    int (*try_end)(uint32_t token);
    uint32_t (*begin_eager)(uint64_t tag);
    int (*error)(void);
} vmown_callout_table;
/* The table that generated wrappers in other modules are initialised with. */
VMOWN_EXTERN const vmown_callout_table *vmown_callout_api(void);

/* Where things are in a control block (byte offsets from its start), for
 * tools that read a block from outside and for tests that corrupt one. */
typedef struct {
    uint32_t owner_word, waiters_and_hb_asleep, lock, lock_size, queue_head, queue_tail, idle_head;
    uint32_t slots, slot_size, slot_state, slot_next, slot_pid, slot_sem, sem_size;
} vmown_layout;
VMOWN_EXTERN void vmown_layout_read(vmown_layout *out);

/* Layout version of the control block this build reads and writes; the
 * Python package checks it against its own at import. */
VMOWN_EXTERN uint32_t vmown_layout_version(void);

/* Free the slots of processes that died (pid gone, zombie, or recycled),
 * releasing the VM if one of them owned it.  Waiters do this by themselves
 * within 50 ms of a dead owner; returns how many slots were freed. */
VMOWN_EXTERN int vmown_reap(vmown_vm *vm);

/* Debug: stop the calling process (SIGSTOP) at a point of the protocol, so a
 * test can kill it exactly there.  Process-wide; VMOWN_DEBUG_STOP_NONE off. */
enum {
    VMOWN_DEBUG_STOP_NONE = 0,
    VMOWN_DEBUG_STOP_GRANTED = 1,  /* handed the VM, before taking it */
    VMOWN_DEBUG_STOP_IN_LOCK = 2,  /* inside the lock, queue half-updated */
    VMOWN_DEBUG_STOP_CLAIM = 3,    /* woken by a soft grant, before claiming it */
    VMOWN_DEBUG_STOP_BEFORE_POST = 4, /* a disown that handed the VM on, before its post */
    VMOWN_DEBUG_STOP_LEAVE = 5     /* a queued waiter past its deadline, before it leaves */
};
VMOWN_EXTERN void vmown_debug_set_stop(int point);

/* Debug: widen the race windows (between enqueueing and sleeping, between
 * storing a new owner and posting its semaphore, between a waiter's timeout
 * and its leaving, between a granter's look at a waiter and its grant) by
 * spinning this many nanoseconds with a yield.  Process-wide, 0 turns it off. */
VMOWN_EXTERN void vmown_debug_set_widen_ns(int64_t ns);

/* OS layer (os_linux.c): anonymous shared mappings for the default block. */
VMOWN_EXTERN int vmown_map_anonymous(size_t len, void **out);
VMOWN_EXTERN int vmown_unmap(void *addr, size_t len);
/* Replace the shared mapping at addr (len bytes, page-aligned) by a private
 * copy of its bytes, at the same address: for a forked child that holds a
 * copy of its parent's state and must not write the parent's memory. */
VMOWN_EXTERN int vmown_map_private(void *addr, size_t len);
VMOWN_EXTERN size_t vmown_page_size(void);

/* ---- Arena (arena.c) ---- */

/* A shared mapping: a header page, page-aligned data, a PROT_NONE guard.
 * Anonymous (shared with forked children) or a file (shared with whoever may
 * open it).  Offsets and sizes are of the data area; sizes are rounded up to
 * whole pages.  See arena.c for the protocol notes. */
enum {
    VMOWN_EARENA_BADMAGIC = -1100,    /* not an arena (bad magic: another format, word size, endianness) */
    VMOWN_EARENA_VERSION = -1101,     /* an arena of another layout version */
    VMOWN_EARENA_SIZES = -1102,       /* header sizes disagree with this build */
    VMOWN_EARENA_NOTREADY = -1103,    /* the header never became READY within the timeout */
    VMOWN_EARENA_TRUNCATED = -1104,   /* the file is shorter than its header says */
    VMOWN_EARENA_SYMLINK = -1105,     /* the path is a symbolic link */
    VMOWN_EARENA_NOTREGULAR = -1106,  /* the path is not a regular file */
    VMOWN_EARENA_OWNER = -1107,       /* the file belongs to another user */
    VMOWN_EARENA_MODE = -1108,        /* the file grants permissions not expected */
    VMOWN_EARENA_FULL = -1109,        /* alloc: not enough free data bytes */
    VMOWN_EARENA_BUSY = -1110,        /* shrink: a live peer maps more than the new size */
    VMOWN_EARENA_ALLOCATED = -1111,   /* shrink: below the bytes handed out by alloc */
    VMOWN_EARENA_ADDRINUSE = -1112,   /* the fixed address range is occupied */
    VMOWN_EARENA_ADDRESS = -1113,     /* the kernel did not honour the fixed address */
    VMOWN_EARENA_MAXSIZE = -1114,     /* beyond the size reserved by this handle */
    VMOWN_EARENA_NOHUGE = -1115,      /* huge pages unavailable */
    VMOWN_EARENA_RANGE = -1116,       /* offset + width beyond the mapped data */
    VMOWN_EARENA_ALIGN = -1117,       /* offset not a multiple of the width */
    VMOWN_EARENA_LOCKED = -1118,      /* a live peer held the header lock past the timeout */
    VMOWN_EARENA_PEERS = -1119,       /* the table of processes mapping the arena is full */
    VMOWN_EARENA_CORRUPT = -1120,     /* a header value is impossible */
    VMOWN_EARENA_OVERLAP = -1121,     /* reserve: the pages were handed out already */
    VMOWN_EARENA_CUT = -1122          /* the file was truncated under the live mapping */
};

/* Flags for vmown_arena_create / vmown_arena_open. */
enum {
    VMOWN_ARENA_POPULATE = 1,         /* prefault mapped pages (as MAP_POPULATE) */
    VMOWN_ARENA_HUGE = 2              /* MAP_HUGETLB (anonymous arenas only) */
};

/* Operations of vmown_arena_atomic; all sequentially consistent. */
enum {
    VMOWN_ARENA_LOAD = 0,
    VMOWN_ARENA_STORE = 1,
    VMOWN_ARENA_EXCHANGE = 2,
    VMOWN_ARENA_CAS = 3,              /* value = expected, desired = new */
    VMOWN_ARENA_FETCH_ADD = 4,        /* wraps modulo 2**(8*width) */
    VMOWN_ARENA_TEST_AND_SET = 5      /* store 1 */
};

typedef struct vmown_arena vmown_arena;

typedef struct {
    uint64_t size;                /* data bytes, as the header says (untrusted) */
    uint64_t mapped;              /* data bytes this handle maps (0 from probe) */
    uint64_t max_size;            /* data bytes this handle reserved (0 from probe) */
    uint64_t allocated;           /* data bytes handed out by alloc */
    uint64_t page_size;
    uint64_t creator_start_time;  /* clock ticks since boot */
    int32_t creator_pid;
    uint32_t state;               /* 1 initializing, 2 ready */
    uint32_t creator_alive;
    uint32_t live_peers;          /* processes mapping it now */
} vmown_arena_info;

/* Create an arena of `size` data bytes: a new file at `path` (O_CREAT|O_EXCL|
 * O_NOFOLLOW|O_CLOEXEC, permissions exactly `mode`), or anonymous shared
 * memory when path is NULL.  max_size: data bytes reserved so that growth
 * never moves the mapping (0: size for anonymous, 1 GiB for files).  address:
 * where the data area must start (MAP_FIXED_NOREPLACE), or NULL.  timeout_ns
 * bounds waits for the header lock (< 0: none). */
VMOWN_EXTERN int vmown_arena_create(const char *path, uint64_t size, uint64_t max_size, uint32_t mode,
                                    void *address, uint32_t flags, int64_t timeout_ns, vmown_arena **out);
/* Open an arena file: refuses a symlink, a non-regular file, another user's
 * file, permission bits outside allowed_mode; waits up to timeout_ns for a
 * header still being written; checks magic, version, sizes, file length. */
VMOWN_EXTERN int vmown_arena_open(const char *path, uint64_t max_size, uint32_t allowed_mode, void *address,
                                  uint32_t flags, int64_t timeout_ns, vmown_arena **out);
/* Unmap, give back the peer entry, close the file.  Nothing may touch the
 * memory any more. */
VMOWN_EXTERN int vmown_arena_close(vmown_arena *a);
/* In a forked child: take a peer entry of its own (done lazily otherwise). */
VMOWN_EXTERN int vmown_arena_adopt(vmown_arena *a);
VMOWN_EXTERN void *vmown_arena_data(const vmown_arena *a);
VMOWN_EXTERN int vmown_arena_fd(const vmown_arena *a);
/* Cheap reads for hot paths: data bytes mapped here; data bytes the header
 * says (untrusted: compare, never use as a bound; 0 if the file was cut
 * under the mapping, see vmown_arena_check). */
VMOWN_EXTERN uint64_t vmown_arena_mapped(const vmown_arena *a);
VMOWN_EXTERN uint64_t vmown_arena_size(const vmown_arena *a);
VMOWN_EXTERN int vmown_arena_info_read(vmown_arena *a, vmown_arena_info *out);
/* Map what the header says now (another process may have grown it). */
VMOWN_EXTERN int vmown_arena_refresh(vmown_arena *a);
VMOWN_EXTERN int vmown_arena_grow(vmown_arena *a, uint64_t new_size);
/* Refused with VMOWN_EARENA_BUSY while a live peer maps more than new_size. */
VMOWN_EXTERN int vmown_arena_shrink(vmown_arena *a, uint64_t new_size);
/* Hand out whole pages of the data area; *offset is where they start. */
VMOWN_EXTERN int vmown_arena_alloc(vmown_arena *a, uint64_t nbytes, uint64_t *offset);
/* Hand out the pages at [offset, offset + nbytes) (offset page-aligned):
 * VMOWN_EARENA_OVERLAP if any of them was handed out already (alloc hands
 * out pages in order: those below `allocated`), VMOWN_EARENA_FULL beyond the
 * size.  Pages skipped between `allocated` and offset are never handed out. */
VMOWN_EXTERN int vmown_arena_reserve(vmown_arena *a, uint64_t offset, uint64_t nbytes);
/* 0, or VMOWN_EARENA_CUT if the arena's file is now shorter than what this
 * handle maps (a peer truncated it: touching the lost pages raises SIGBUS).
 * Every arena operation checks this first; one fstat. */
VMOWN_EXTERN int vmown_arena_check(vmown_arena *a);
/* An atomic op on the 4- or 8-byte word at `offset`; *old gets the previous
 * value (0 for a store).  Returns 1 when a CAS swapped, else 0. */
VMOWN_EXTERN int vmown_arena_atomic(vmown_arena *a, uint32_t op, uint64_t offset, uint32_t width, uint64_t value,
                                    uint64_t desired, uint64_t *old);
/* Read an arena file's header without mapping it (find stale arenas). */
VMOWN_EXTERN int vmown_arena_probe(const char *path, vmown_arena_info *out);
/* The granularity of an arena made with these flags; 0: no huge pages. */
VMOWN_EXTERN uint64_t vmown_arena_page_size(uint32_t flags);
VMOWN_EXTERN uint32_t vmown_arena_layout_version(void);

/* ---- Channel (channel.c) ----
 *
 * A bounded byte channel between threads and processes, in shared memory
 * (an arena's pages, or any 64-byte-aligned shared mapping): senders append
 * length-prefixed records to a ring, receivers take them in order.  The
 * uncontended path is one compare-and-swap per side and no system call;
 * waits spin briefly, then sleep on a process-shared futex.  Every value read
 * back from the shared memory is bounds-checked: a corrupt channel gives
 * VMOWN_ECHAN_CORRUPT, never an access outside it.  See channel.c. */
enum {
    VMOWN_ECHAN_BADMAGIC = -1200,   /* the memory does not hold a channel */
    VMOWN_ECHAN_VERSION = -1201,    /* a channel of another layout version */
    VMOWN_ECHAN_SIZES = -1202,      /* sizes impossible, or larger than the memory given */
    VMOWN_ECHAN_NOTREADY = -1203,   /* the channel's header is still being written */
    VMOWN_ECHAN_CLOSED = -1204,     /* closed: send refused; recv found it empty */
    VMOWN_ECHAN_CORRUPT = -1205,    /* an impossible value in the ring: marked broken */
    VMOWN_ECHAN_TOOBIG = -1206,     /* message longer than max_message */
    VMOWN_ECHAN_SMALLBUF = -1207    /* the next message does not fit the buffer (port.need says its length) */
};

/* Debug stop points (vmown_channel_debug_set_stop): SIGSTOP the calling
 * process there, so that a test can kill it holding a side's lock. */
enum {
    VMOWN_CHANNEL_STOP_NONE = 0,
    VMOWN_CHANNEL_STOP_IN_SEND = 1,  /* send lock held, record half written, not published */
    VMOWN_CHANNEL_STOP_IN_RECV = 2   /* recv lock held, record copied out, not yet consumed */
};

/* A process-local handle on a channel (vmown_channel_init / _attach; freed by
 * vmown_channel_detach, which leaves the shared memory as it is). */
typedef struct vmown_channel vmown_channel;

/* Where a receiving thread wants messages copied: one per thread, so that
 * recv is a one-argument call.  need: set on VMOWN_ECHAN_SMALLBUF to the
 * length of the message that did not fit (it stays in the channel). */
typedef struct {
    vmown_channel *ch;
    char *buf;
    uint64_t cap;
    uint64_t need;
} vmown_channel_port;

typedef struct {
    uint64_t capacity;      /* ring bytes (a power of two) */
    uint64_t max_message;   /* bytes */
    uint64_t used;          /* ring bytes holding messages now (record headers included) */
    uint64_t messages;      /* messages waiting now */
    uint64_t sent;          /* messages ever published */
    uint64_t received;      /* messages ever taken */
    uint64_t send_sleeps;   /* sends that slept because the ring was full */
    uint64_t recv_sleeps;   /* receives that slept because it was empty */
    uint64_t wakes;         /* futex wake calls made (a waker found a sleeper) */
    uint64_t takeovers;     /* side locks taken from a dead holder */
    uint32_t closed;
    uint32_t broken;
    int32_t send_holder;    /* pid holding the send lock now, 0 if none */
    int32_t recv_holder;    /* pid holding the recv lock now, 0 if none */
} vmown_channel_stats;

/* Bytes of memory a channel with a ring of `capacity` bytes takes; capacity
 * must be a power of two from 64 to 2**40 (else 0). */
VMOWN_EXTERN uint64_t vmown_channel_size(uint64_t capacity);
/* Make a channel in `len` bytes at `mem` (64-byte aligned; whatever it held
 * is overwritten).  max_message: 1 .. capacity - 8, and below 2**32.
 * Two-phase: READY is stored with release after everything else. */
VMOWN_EXTERN int vmown_channel_init(void *mem, uint64_t len, uint64_t capacity, uint64_t max_message,
                                    vmown_channel **out);
/* Check a channel made elsewhere (another process) and return a handle. */
VMOWN_EXTERN int vmown_channel_attach(void *mem, uint64_t len, vmown_channel **out);
VMOWN_EXTERN void vmown_channel_detach(vmown_channel *ch);

/* Append one message.  send waits for room (spinning first, then asleep);
 * send_timed waits at most timeout_ns (0: not at all, < 0: for ever).  0,
 * or VMOWN_ECHAN_CLOSED, _TOOBIG, _CORRUPT, VMOWN_ETIMEDOUT, VMOWN_EINTR.
 * On every error nothing was sent.  VMOWN_EINTR comes when a signal
 * interrupts the sleep and also after each 50 ms asleep (a signal may have
 * arrived between two sleeps): run handlers, then call again. */
VMOWN_EXTERN int vmown_channel_send(vmown_channel *ch, const char *data, uint64_t len);
VMOWN_EXTERN int vmown_channel_send_timed(vmown_channel *ch, const char *data, uint64_t len, int64_t timeout_ns);
/* Take the oldest message into port->buf; returns its length, or
 * VMOWN_ECHAN_CLOSED (closed and drained), _SMALLBUF, _CORRUPT,
 * VMOWN_ETIMEDOUT, VMOWN_EINTR (as for send).  On every error nothing was
 * taken. */
VMOWN_EXTERN int64_t vmown_channel_recv(vmown_channel_port *port);
VMOWN_EXTERN int64_t vmown_channel_recv_timed(vmown_channel_port *port, int64_t timeout_ns);
/* Close for every process: later sends fail, receivers drain what is left
 * and then get VMOWN_ECHAN_CLOSED; every sleeper is woken.  Every send that
 * returned 0 before is received.  timeout_ns bounds the wait for the send
 * lock (VMOWN_EINTR as for send).  Closing twice is harmless. */
VMOWN_EXTERN int vmown_channel_close(vmown_channel *ch, int64_t timeout_ns);
/* One attempt that never waits: no spin, no sleep, no system call unless a
 * peer sleeps and must be woken; a busy side lock counts as "not now".
 * try_send returns 0 (sent), VMOWN_EAGAIN (nothing sent: the ring is full or
 * the send lock is held), or an error as for send.  try_recv returns the
 * message's length (taken), VMOWN_EAGAIN (nothing taken: empty, or the recv
 * lock is held), or an error as for recv (VMOWN_ECHAN_CLOSED when closed and
 * drained).  For callers that hold a lock of their own, such as Python's GIL:
 * on VMOWN_EAGAIN they let it go and make the blocking call. */
VMOWN_EXTERN int vmown_channel_try_send(vmown_channel *ch, const char *data, uint64_t len);
VMOWN_EXTERN int64_t vmown_channel_try_recv(vmown_channel_port *port);
VMOWN_EXTERN int vmown_channel_stats_read(vmown_channel *ch, vmown_channel_stats *out);
VMOWN_EXTERN uint64_t vmown_channel_capacity(const vmown_channel *ch);
VMOWN_EXTERN uint64_t vmown_channel_max_message(const vmown_channel *ch);
/* This handle's spin before sleeping, in ns (default 20000; 0: sleep at once). */
VMOWN_EXTERN void vmown_channel_set_spin_ns(vmown_channel *ch, int64_t ns);
VMOWN_EXTERN int64_t vmown_channel_spin_ns(const vmown_channel *ch);
VMOWN_EXTERN uint32_t vmown_channel_layout_version(void);
/* The table that other extension modules (vmown._channel_ext) call the
 * channel through, so that the process holds one copy of the core; checked
 * by version when they are bound. */
enum { VMOWN_CHANNEL_API_VERSION = 1 };
typedef struct {
    int version;
    int (*try_send)(vmown_channel *ch, const char *data, uint64_t len);
    int64_t (*try_recv)(vmown_channel_port *port);
} vmown_channel_table;
VMOWN_EXTERN const vmown_channel_table *vmown_channel_api(void);
/* Process-wide; VMOWN_CHANNEL_STOP_NONE turns it off. */
VMOWN_EXTERN void vmown_channel_debug_set_stop(int point);

/* cdef-end */

#ifdef __cplusplus
}
#endif
#endif /* VMOWN_H */
