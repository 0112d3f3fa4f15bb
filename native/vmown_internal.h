/* vmown_internal.h -- layout of the control block and the OS layer.
 *
 * Only the C core includes this.  Every field that lives in shared memory is
 * an atomic: another thread or process may read or write it at any moment, and
 * anything read back is treated as untrusted (bounds-checked before use).
 */
#ifndef VMOWN_INTERNAL_H
#define VMOWN_INTERNAL_H

#include "vmown.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>

#define VMOWN__CACHE_LINE 64

/* "VMOWN" + word size + a byte that reads 0x01 only in the writer's byte
 * order: a block written by a machine of another word size or endianness
 * fails the magic check. */
#define VMOWN__MAGIC (0x000000004E574F4D56ull | ((uint64_t)sizeof(void *) << 40) | (1ull << 48))
#define VMOWN__LAYOUT_VERSION 6u

enum { VMOWN__INITIALIZING = 1, VMOWN__READY = 2, VMOWN__BROKEN = 3 };

/* A semaphore in shared memory, the core's own (os_linux.c): posts not yet
 * taken, and the threads asleep (or about to sleep) on `count`.  A count
 * above VMOWN__SEM_MAX is no count (a peer wrote over it): the block is
 * broken.  Never a sem_t: glibc aborts on some values of one. */
#define VMOWN__SEM_MAX (1u << 24)
typedef struct {
    _Atomic uint32_t count;
    _Atomic uint32_t waiters;
} vmown__sem;

/* The block's lock (os_linux.c): word 0 free, else the holder's pid with
 * bit 31 set once somebody may sleep on it (any other value: broken). */
typedef struct {
    _Atomic uint32_t word;
    _Atomic uint32_t reserved;
} vmown__lock_word;

#define VMOWN__OWNER(word) ((int32_t)(uint32_t)(word))
#define VMOWN__EPOCH(word) ((uint32_t)((word) >> 32))
#define VMOWN__WORD(epoch, owner) (((uint64_t)(uint32_t)(epoch) << 32) | (uint32_t)(int32_t)(owner))
/* A soft grant (grants.c): the owner field holds PENDING | slot while the
 * slot has been given the VM but has not claimed it yet.  Such a word is
 * owned (not 0) and names no valid slot (indices are < 2^20), so every test
 * "OWNER(w) == me" fails for it; VMOWN__HOLDER reads the slot it names. */
#define VMOWN__PENDING 0x40000000u
#define VMOWN__IS_PENDING(word) (((uint32_t)(word) & 0xc0000000u) == VMOWN__PENDING)
/* A revocation (grants.c, "Lazy callouts"): the owner field holds
 * REVOKING | slot while the heartbeat decides whether that slot, out in a
 * lazy callout, loses the VM.  Owned, like a pending word; only the slot
 * itself (taking it back) and the revoker may change it. */
#define VMOWN__REVOKING 0x20000000u
#define VMOWN__IS_REVOKING(word) (((uint32_t)(word) & 0xf0000000u) == VMOWN__REVOKING)
/* A function, not a macro: the word is read once (a macro given a load
 * would load it up to three times and mix the answers). */
static inline int32_t VMOWN__HOLDER(uint64_t word) {
    if (VMOWN__IS_PENDING(word)) return (int32_t)((uint32_t)word & ~VMOWN__PENDING);
    if (VMOWN__IS_REVOKING(word)) return (int32_t)((uint32_t)word & ~VMOWN__REVOKING);
    return VMOWN__OWNER(word);
}

/* waiters_and_hb_asleep word: the count of queued threads in the low 32 bits.  The upper
 * bits are for the heartbeat (asleep, work pending); the disown fast path
 * reads this one word after its release store. */
#define VMOWN__WAITERS_MASK 0xffffffffull
#define VMOWN__HB_ASLEEP (1ull << 32) /* the heartbeat sleeps on hb_sem */

/* The callout hints' counts (callout.c, "Hints"): the eager callouts a
 * revocation buys a function, and the hand-over callouts a long one buys.
 * Here for the tests that bound them. */
#define VMOWN__EAGER_AFTER_REVOCATION 64
#define VMOWN__BLOCKS_HINT 8

/* The counters each slot keeps, in the order of vmown_counters (vmown.h),
 * whose last field, reaped, is the block's own.  The one list: the slot's
 * fields, registration's reset, folding, reading and the names that
 * vmown_counter_name gives Python are made from it. */
#define VMOWN__SLOT_COUNTERS(X) \
    X(fast_owns) X(slow_owns) X(waits) X(hand_offs) X(disowns) X(interrupts) \
    X(soft_grants) X(steals) X(robberies) X(lazy_disowns)

struct vmown_header {
    _Atomic uint64_t magic;
    _Atomic uint32_t version;
    _Atomic uint32_t header_size;   /* sizeof(struct vmown_vm) up to the slots */
    _Atomic uint32_t slot_size;     /* sizeof(struct vmown_slot) */
    _Atomic uint32_t nslots;
    _Atomic uint64_t total_size;    /* vmown_block_size(nslots) */
    _Atomic uint32_t state;         /* VMOWN__INITIALIZING -> READY (-> BROKEN) */
    _Atomic uint32_t sem_size;      /* sizeof(vmown__sem), checked */
    _Atomic uint32_t lock_size;     /* sizeof(vmown__lock_word), checked */
    _Atomic int32_t creator_pid;
};

/* One per thread.  Invariant: only the slot's own thread writes callout,
 * callout_tick and the counters; state, next and ticket change under the
 * control block's lock (or by the slot's thread while it is RUNNING). */
struct vmown_slot {
    vmown__sem sem;                 /* one post per grant */
    _Atomic uint32_t state;         /* VMOWN_SLOT_* */
    _Atomic uint32_t next;          /* queue link, 0 = end; under lock */
    _Atomic int32_t priority;
    _Atomic uint32_t generation;
    _Atomic int32_t pid;
    _Atomic int32_t tid;
    _Atomic uint64_t start_time;    /* clock ticks since boot, for pid reuse */
    _Atomic uint64_t ticket;        /* arrival order in the queue */
    _Atomic uint64_t callout;
    _Atomic uint64_t callout_tick;
    _Atomic uint32_t idle_next;     /* idle stack link, 0 = end; under lock */
    _Atomic uint32_t robbed;        /* soft grants taken back from it in this wait; under lock */
    _Atomic int64_t robbed_since_ns; /* CLOCK_MONOTONIC of its first robbery in this wait; under lock */
    /* The pending word this slot's last soft grant stored: only a word equal
     * to it may be stolen back by this slot.  Its own thread only. */
    _Atomic uint64_t soft_word;
    /* Queued by the heartbeat from the idle stack (a server): it waits behind
     * every other waiter (priority INT32_MIN) until its park returns, which
     * restores saved_priority.  Under lock. */
    _Atomic uint32_t serving;
    _Atomic int32_t saved_priority;
    /* Lazy callouts (grants.c): bumped by its own thread as a lazy
     * callout goes out (odd) and comes back (even); read by the heartbeat. */
    _Atomic uint64_t lazy_seq;
    /* counters, written only by the slot's thread (relaxed load + store) */
#define VMOWN__COUNTER_FIELD(name) _Atomic uint64_t name;
    VMOWN__SLOT_COUNTERS(VMOWN__COUNTER_FIELD)
#undef VMOWN__COUNTER_FIELD
} __attribute__((aligned(VMOWN__CACHE_LINE)));

/* The shared control block: header, hot words, lock, queue, slot table. */
struct vmown__block {
    struct vmown_header hdr;
    /* The owner word sits alone in its cache line: it is the hot word. */
    _Atomic uint64_t owner_word __attribute__((aligned(VMOWN__CACHE_LINE)));
    /* Read by every disown: alone in its line, so heartbeat ticks and
     * published work do not knock it out of the disowner's cache. */
    _Atomic uint64_t waiters_and_hb_asleep __attribute__((aligned(VMOWN__CACHE_LINE)));
    /* Work that waits if the VM is left unowned: written by the owner with
     * plain stores before it releases, read by the heartbeat. */
    /* work[VMOWN_WORK_TAKEN]: processes taken off the run queue so far (the heartbeat sees
     * the queue served); work[VMOWN_WORK_RUNNABLE]: processes runnable (vmown_set_work).  The
     * owner writes both in place too (vmown_work_words). */
    _Atomic uint64_t work[2] __attribute__((aligned(VMOWN__CACHE_LINE)));
    _Atomic int64_t next_timer_ns;  /* CLOCK_MONOTONIC; 0 = no timer */
    /* Written by heartbeats. */
    _Atomic uint64_t ticks __attribute__((aligned(VMOWN__CACHE_LINE)));
    _Atomic uint64_t activations, starved, hb_sleeps;
    _Atomic uint64_t servers;       /* idle workers queued for a stalled run queue */
    _Atomic uint64_t revocations;   /* lazy callouts whose VM the heartbeat took */
    _Atomic uint64_t called_off;    /* revocations called off: the callout was back */
    _Atomic uint64_t relays;        /* servers queued by a relay (idle.c) */
    _Atomic uint64_t hand_overs;    /* callouts that handed the VM to a parked worker (grants.c) */
    /* Servers queued (vmown__queue_idle) whose park has not returned yet:
     * the heartbeat tops them up to SERVERS.  Changed under the lock, or by
     * the server itself as its park returns. */
    _Atomic uint32_t servers_out;
    vmown__sem hb_sem;              /* a sleeping heartbeat waits here */
    /* Everything below is protected by `lock` unless it says otherwise. */
    vmown__lock_word lock __attribute__((aligned(VMOWN__CACHE_LINE)));
    _Atomic uint32_t head, tail;    /* wait queue, slot indices, 0 = empty */
    /* The slot woken by a soft grant that has not settled yet (claimed, or
     * back in the queue or owning after a robbery), 0 = none.  Set under the
     * lock; cleared under the lock, or by the claimant itself (CAS) right
     * after its claim.  Invariant: at most one soft grant is unsettled. */
    _Atomic uint32_t claimant;
    _Atomic uint64_t next_ticket;
    _Atomic uint32_t idle_head;     /* idle stack of parked workers (LIFO) */
    _Atomic uint32_t idle_count;
    _Atomic uint32_t alloc_hint;
    _Atomic uint32_t in_use;        /* registered slots */
    vmown_counters folded;          /* counters of slots given back */
    _Atomic uint64_t reaped;        /* slots freed because their process died */
    struct vmown_slot slots[]       /* slots[0] unused: index 0 means "none" */
        __attribute__((aligned(VMOWN__CACHE_LINE)));
};

/* The process-local handle on a block: trusted copies of what bounds every
 * index read back from shared memory. */
struct vmown_vm {
    struct vmown__block *block;
    size_t len;
    uint32_t nslots;
    /* this process's heartbeat on the block, if any */
    pthread_t hb_thread;
    bool hb_running;
    uint32_t hb_hz;
    _Atomic int hb_stop;
    _Atomic int32_t hb_tid;
    /* Lazy callouts (grants.c).  lazy_ok: this process's heartbeat runs
     * and can revoke them (membarrier registered); lazy: callouts of this
     * process's threads may go out lazily (cleared as the heartbeat stops). */
    _Atomic int lazy_ok, lazy;
    bool eager;                     /* vmown_heartbeat_set_lazy(vm, 0) was called */
    _Atomic bool no_servers;        /* vmown_heartbeat_set_servers(vm, 0) was called */
    int32_t hb_pid;                 /* the process of that heartbeat */
    /* This process's worker pool (workers.c), or NULL; read by the heartbeat. */
    struct vmown__pool *_Atomic pool;
};

/* Stops and frees the worker pool of vm (workers.c); false, freeing nothing,
 * while a worker lives. */
bool vmown__workers_free(vmown_vm *vm);

/* The core (idle.c, grants.c) for the heartbeat and callout.c. */
int vmown__activate(vmown_vm *vm, uint64_t expected_word);
/* Move the most recently parked worker from the idle stack into the wait
 * queue (granting it the VM at once if unowned); returns its slot, 0 if none
 * is parked.  Its vmown_park returns 1 once it owns the VM. */
int vmown__queue_idle(vmown_vm *vm);
/* Disown for a callout (callout.c): lazily if this process's heartbeat can
 * revoke it and the caller does not ask for `eager` (returns 1), else with a
 * soft grant to the head waiter (returns 0); a negative code if the caller
 * does not own the VM or is out in a callout already.  The caller asks for
 * `eager` whenever it found a thread queued (it reads the waiter count
 * before the call). */
int vmown__callout_disown(vmown_vm *vm, uint32_t slot, uint64_t callout, bool eager);
/* Disown for a callout known to block (callout.c's hints): hand the VM to a
 * parked worker now if work waits and nobody is queued, else as an eager
 * vmown__callout_disown.  Returns 0, or a negative code. */
int vmown__callout_hand_over(vmown_vm *vm, uint32_t slot, uint64_t callout);
/* Back from a lazy callout: 0 if the caller owns the VM again (no locked
 * instruction unless a revocation is under way), 1 if it was revoked and
 * must own the VM the ordinary way.  Idempotent: a second call after 1
 * returns 1 again. */
int vmown__lazy_return(vmown_vm *vm, uint32_t slot);
/* Heartbeat: the seq of the lazy callout the owner named by `word` is out in
 * (odd), or 0 if it is not out in one or cannot be revoked from here. */
uint64_t vmown__lazy_out(vmown_vm *vm, uint64_t word);
/* Heartbeat: take the VM from an owner out in lazy callout `seq` since it
 * read `word`; hand it to the head waiter, else (if `work`) a parked worker,
 * else leave it unowned.  1 if revoked, 0 if the callout was back (called
 * off) or the word moved. */
int vmown__revoke(vmown_vm *vm, uint64_t word, uint64_t seq, bool work);
/* Wake this block's heartbeat if it sleeps (owner.c): the heartbeat sleeps
 * on the core's hb_sem, so the core wakes it without calling up. */
void vmown__wake_heartbeat(vmown_vm *vm);
/* block.c: mark the block broken for good.  A broken block grants nothing
 * again, so the marking that changes the state wakes every thread asleep on
 * the block (each slot's semaphore, the heartbeat's): each, woken, sees the
 * mark and returns VMOWN_EBROKEN instead of sleeping for a grant nobody can
 * give. */
void vmown__mark_broken(vmown_vm *vm);
/* vmown_unregister without the unbinding (block.c); lifecycle.c adds it. */
int vmown__unregister(vmown_vm *vm, uint32_t slot);
/* Unbind the calling thread if it is bound to (vm, slot): callout.c. */
void vmown__unbind_if(vmown_vm *vm, uint32_t slot);

/* OS layer (os_linux.c): everything that a port to another OS rewrites. */
/* Semaphores and the block's lock are futex words of the core's own, checked
 * at every use: no value a peer writes can make them abort or hang past the
 * caller's deadline (os_linux.c says how). */
int vmown__sem_init(vmown__sem *sem);
void vmown__sem_destroy(vmown__sem *sem);
/* 0, or VMOWN_EBROKEN for a count no semaphore holds (the caller marks the
 * block broken). */
int vmown__sem_post(vmown__sem *sem);
/* 0 when posted, VMOWN_EINTR, VMOWN_ETIMEDOUT (deadline_ns is CLOCK_MONOTONIC,
 * < 0 for none), VMOWN_EBROKEN. */
int vmown__sem_wait(vmown__sem *sem, int64_t deadline_ns);
int vmown__lock_init(vmown__lock_word *lock);
/* 0, or 1 when the previous holder died holding it (the caller repairs what
 * it protects: the lock is held either way), VMOWN_ETIMEDOUT at deadline_ns
 * (CLOCK_MONOTONIC, < 0 none), VMOWN_ESTUCK after stuck_ns of waiting (a
 * stopped holder; counted in rounds too, so not when this process itself
 * was stopped meanwhile), VMOWN_EBROKEN (not a lock word). */
int vmown__lock(vmown__lock_word *lock, int64_t deadline_ns, int64_t stuck_ns);
void vmown__unlock(vmown__lock_word *lock);
int64_t vmown__now_ns(void);
int32_t vmown__gettid(void);
uint64_t vmown__process_start_time(int32_t pid);
bool vmown__process_alive(int32_t pid, uint64_t start_time);
void vmown__cpu_relax(void);
void vmown__sleep_until(int64_t deadline_ns);
/* Start a thread with every signal blocked (they belong to the program). */
int vmown__thread_start(pthread_t *thread, void *(*fn)(void *), void *arg);
/* 0 or a negative code. */
int vmown__thread_join(pthread_t thread);
pthread_t vmown__thread_self(void);
/* Process-private mutex and condition variable (the worker pool); a failure
 * that cannot happen on valid memory is fatal.  The condition variable runs
 * on the clock of vmown__now_ns: vmown__cond_wait_until returns 0 when
 * signalled, VMOWN_ETIMEDOUT at deadline_ns, or a negative code. */
void vmown__mutex_init(pthread_mutex_t *mu);
void vmown__mutex_destroy(pthread_mutex_t *mu);
void vmown__mutex_lock(pthread_mutex_t *mu);
void vmown__mutex_unlock(pthread_mutex_t *mu);
void vmown__cond_init(pthread_cond_t *cond);
void vmown__cond_destroy(pthread_cond_t *cond);
void vmown__cond_broadcast(pthread_cond_t *cond);
int vmown__cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t deadline_ns);
/* Run install once per process (pthread_once), and fn in the child after a fork. */
void vmown__at_fork_child_once(pthread_once_t *once, void (*install)(void));
void vmown__at_fork_child(void (*fn)(void));
/* In a new pool worker: block the program's asynchronous signals only, and
 * name the thread (at most 15 characters). */
void vmown__worker_thread_setup(const char *name);
/* Name the calling thread (at most 15 characters). */
void vmown__thread_name(const char *name);
void vmown__thread_yield(void);
/* Asymmetric fences (membarrier(2)).  register: 0, or -errno if the kernel
 * cannot (then callouts stay eager).  vmown__membarrier: a full memory
 * barrier on every thread of this process that runs now; the others pass
 * one at their next context switch.  Registered first; fatal if it fails. */
int vmown__membarrier_register(void);
void vmown__membarrier(void);
/* Stop the whole process (SIGSTOP), for the debug stop points. */
void vmown__stop_self(void);
/* Timer precision of the calling thread (the heartbeat's ticks). */
void vmown__set_timer_slack_ns(unsigned long ns);

/* A failure of an OS primitive that cannot fail: abort naming it. */
_Noreturn void vmown__fatal(const char *what, int err);

/* ---- arena ---- */

/* "VMARN" + word size + a byte 0x01 in the writer's byte order, as
 * VMOWN__MAGIC: a file written by another word size or endianness fails. */
#define VMOWN__ARENA_MAGIC (0x4E52414D56ull | ((uint64_t)sizeof(void *) << 40) | (1ull << 48))
#define VMOWN__ARENA_VERSION 1u
#define VMOWN__ARENA_PEERS 128

enum { VMOWN__ARENA_INITIALIZING = 1, VMOWN__ARENA_READY = 2 };

/* A process that maps the arena.  who: pid in bits 0-31, low 32 bits of its
 * start time in bits 32-63, 0 = free entry.  Invariant: mapped_size is raised
 * before the process maps more and lowered only after it unmapped; both
 * change under the header lock. */
struct vmown__arena_peer {
    _Atomic uint64_t who;
    _Atomic uint64_t mapped_size;   /* data bytes, a multiple of page_size */
};

/* The header page of an arena.  The first 16 bytes (magic, version, state)
 * keep their place in every layout version. */
struct vmown__arena_header {
    _Atomic uint64_t magic;
    _Atomic uint32_t version;
    _Atomic uint32_t state;         /* INITIALIZING -> READY (release) */
    _Atomic uint32_t header_size;   /* sizeof(struct vmown__arena_header) */
    _Atomic uint32_t npeers;        /* VMOWN__ARENA_PEERS */
    _Atomic uint64_t page_size;     /* bytes; data starts at this offset */
    _Atomic uint64_t size;          /* data bytes, multiple of page_size; under lock */
    _Atomic uint64_t allocated;     /* data bytes handed out by alloc; under lock */
    _Atomic uint64_t lock;          /* who-word of the holder, 0 = free */
    _Atomic uint64_t creator;       /* who-word of the creator */
    _Atomic uint64_t creator_start_time;  /* clock ticks since boot */
    _Atomic uint32_t flags;         /* VMOWN_ARENA_HUGE */
    _Atomic uint32_t reserved;
    struct vmown__arena_peer peers[VMOWN__ARENA_PEERS];
};

/* The process-local handle: trusted copies of what bounds every access. */
struct vmown_arena {
    char *base;                     /* header page; data at base + page */
    size_t reserved_len;            /* page + max_size + guard page */
    uint64_t page;
    uint64_t max_size;              /* data bytes the reservation can hold */
    _Atomic uint64_t mapped;        /* data bytes mapped read/write; under the header lock */
    int fd;                         /* -1: anonymous */
    int32_t pid;                    /* process the handle belongs to (fork) */
    int32_t peer;                   /* its entry in the peer table, -1 = none */
    uint32_t flags;
    int64_t timeout_ns;             /* bound on lock waits, < 0 = none */
};

struct vmown__file_status {
    uint64_t length;
    uint32_t uid;
    uint32_t mode;                  /* permission bits */
    bool regular;
};

/* OS layer for arenas (os_linux.c).  Return 0 or -errno unless noted. */
int vmown__file_create(const char *path, uint32_t mode, int *fd_out);
int vmown__file_open(const char *path, int writable, int *fd_out);
int vmown__file_stat(int fd, struct vmown__file_status *out);
int vmown__file_resize(int fd, uint64_t length);
/* Bytes read (short only at the end of the file), or -errno. */
int vmown__file_read(int fd, void *buf, size_t len, uint64_t offset);
void vmown__file_close(int fd);
int vmown__file_unlink(const char *path);
uint32_t vmown__euid(void);
/* PROT_NONE MAP_SHARED of fd (or anonymous when fd < 0); at `address` with
 * MAP_FIXED_NOREPLACE when not NULL: VMOWN_EARENA_ADDRINUSE if occupied,
 * VMOWN_EARENA_ADDRESS if the kernel put it elsewhere; VMOWN_EARENA_NOHUGE. */
int vmown__map_reserve(int fd, size_t len, void *address, int huge, void **out);
int vmown__map_protect(void *addr, size_t len, int writable);
int vmown__map_populate(void *addr, size_t len);
int vmown__map_discard(void *addr, size_t len);
/* Bytes, 0 when the system has no huge pages. */
uint64_t vmown__huge_page_size(void);
/* Whether pid runs and (if start_low32 != 0) started at that time. */
void vmown__sleep_ns(int64_t ns);

/* ---- channel ---- */

/* "VMCHN" + word size + a byte 0x01 in the writer's byte order, as
 * VMOWN__MAGIC: a channel written by another word size or endianness fails. */
#define VMOWN__CHANNEL_MAGIC (0x4E48434D56ull | ((uint64_t)sizeof(void *) << 40) | (1ull << 48))
#define VMOWN__CHANNEL_VERSION 1u

enum { VMOWN__CHANNEL_INITIALIZING = 1, VMOWN__CHANNEL_READY = 2 };
enum { VMOWN__CHANNEL_CLOSED = 1, VMOWN__CHANNEL_BROKEN = 2 };  /* bits of `flags` */

/* A futex word that one kind of waiter sleeps on.  Bit 0: somebody sleeps
 * (or is about to); bits 1-31: bumped by every wake.  A sleeper sets bit 0
 * (seq_cst RMW), re-checks its condition, and sleeps while the word still
 * holds the value it set.  A waker changes the condition (seq_cst), then
 * loads the word; only if bit 0 is set does it CAS word -> word + 1 (clears
 * the bit, bumps the count) and wake every sleeper.  A sleeper that died
 * leaves at most one needless wake behind: the bit heals itself. */
struct vmown__channel_wait {
    _Atomic uint32_t event;
    _Atomic uint32_t reserved;
    _Atomic uint64_t wakes;         /* wake calls made */
} __attribute__((aligned(VMOWN__CACHE_LINE)));

/* One side (senders or receivers): its lock and what the holder keeps, in
 * one cache line that only that side writes. */
struct vmown__channel_side {
    _Atomic uint64_t holder;        /* who-word (pid | start << 32) of the holder, 0 = free */
    _Atomic uint64_t seen;          /* the other side's position at the last look; under the lock */
    _Atomic uint64_t count;         /* messages sent / received; under the lock */
    _Atomic uint64_t sleeps;        /* waits for room / data that slept */
    _Atomic uint64_t takeovers;     /* locks taken over from a dead holder */
    _Atomic uint32_t lock_event;    /* lock waiters sleep here: the protocol of vmown__channel_wait */
} __attribute__((aligned(VMOWN__CACHE_LINE)));

/* The shared channel: header, the two sides, their positions, the waits,
 * then the ring.  Positions are byte counts since the channel was made
 * (multiples of 8); a position's byte in the ring is at pos & (capacity-1). */
struct vmown__channel {
    _Atomic uint64_t magic;
    _Atomic uint32_t version;
    _Atomic uint32_t state;         /* INITIALIZING -> READY (release) */
    _Atomic uint32_t header_size;   /* offsetof(ring) */
    _Atomic uint32_t flags;         /* CLOSED | BROKEN; bits are only ever set */
    _Atomic uint64_t capacity;      /* ring bytes, a power of two */
    _Atomic uint64_t max_message;   /* bytes */
    _Atomic uint64_t creator;       /* who-word of the creator */
    struct vmown__channel_side send;
    _Atomic uint64_t tail __attribute__((aligned(VMOWN__CACHE_LINE)));  /* published; under send.holder */
    struct vmown__channel_side recv;
    _Atomic uint64_t head __attribute__((aligned(VMOWN__CACHE_LINE)));  /* consumed; under recv.holder */
    struct vmown__channel_wait data;   /* receivers wait for data here */
    struct vmown__channel_wait room;   /* senders wait for room here */
    char ring[] __attribute__((aligned(VMOWN__CACHE_LINE)));
};

/* The process-local handle: trusted copies of everything that bounds an
 * access, made once at init/attach. */
struct vmown_channel {
    struct vmown__channel *s;
    char *ring;
    uint64_t capacity;
    uint64_t mask;                  /* capacity - 1 */
    uint64_t max_message;
    _Atomic int64_t spin_ns;
    /* Adaptive spinning, per kind of wait ([0] room, [1] data): spins in a
     * row that found nothing, and a count of waits to pick the probes. */
    _Atomic uint32_t spin_misses[2];
    _Atomic uint32_t spin_waits[2];
};

/* OS layer for channels (os_linux.c): futexes on 32-bit words of shared
 * memory, shared between processes (never FUTEX_PRIVATE_FLAG). */
/* Sleep while *word == expected, until woken, a signal, or deadline_ns
 * (CLOCK_MONOTONIC, < 0: none).  0 when woken or the word differed (the
 * caller re-checks), VMOWN_EINTR, VMOWN_ETIMEDOUT, or -errno. */
int vmown__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns);
/* Wake up to `count` sleepers of word; returns how many were woken. */
int vmown__futex_wake(_Atomic uint32_t *word, int count);

#endif /* VMOWN_INTERNAL_H */
