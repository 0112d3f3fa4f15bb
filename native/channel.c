/* channel.c -- a bounded channel of messages between threads and processes.
 *
 * Notes about the implementation
 * ------------------------------
 * Three kinds of object: the ring (capacity bytes, a power of two, holding
 * length-prefixed records), the two sides (senders, receivers: a lock word
 * and what its holder keeps, one cache line each), and the positions `tail`
 * (bytes ever published) and `head` (bytes ever consumed), each alone in its
 * line.  A record is an 8-byte word (length in bits 0-31, bits 32-63 the
 * record's position / 8 as a check) and the payload, padded to 8 bytes; it
 * may wrap around the end of the ring (the word never does).
 *
 * Rejected: a slot ring with per-slot sequence numbers (Vyukov's MPMC queue:
 * fixed-size slots waste the ring on small messages, and a producer that
 * dies between claiming a slot and filling it leaves a hole that nobody can
 * tell from a slow producer); a lock-free byte ring with reserve/commit
 * (the same hole, and out-of-order commits); a pthread mutex (a peer that
 * scribbles on it can hang pthread_mutex_lock for ever).  Chosen: one lock
 * word per side, claimed by CAS 0 -> who (pid | start time << 32), so that
 * between the side's lock holder and the other side's, the ring is a
 * single-producer single-consumer queue.  Uncontended, a message costs each
 * side one CAS, a memcpy, one seq_cst store of its position, a CAS to
 * unlock, and a load of the other side's futex word: no system call.
 *
 * Send, under the send lock:
 *   1. if CLOSED or BROKEN, refuse;
 *   2. room = capacity - (tail - head), with `head` as last seen (send.seen),
 *      reloaded (acquire) only when that looks too small;
 *   3. write the record at tail, then store tail += size (seq_cst): the
 *      record is published by this one store;
 *   4. unlock; if bit 0 of data.event is set, a receiver sleeps: wake.
 * Receive is the mirror image under the recv lock (reads the record, checks
 * it, copies the payload out, stores head += size, wakes room sleepers).
 * A holder that dies at any instruction leaves both sides consistent, since
 * each position changes in one store: a sender that dies in send leaves its
 * record unpublished (it is overwritten by the next sender: the message is
 * discarded, and that send never returned); a receiver that dies in recv
 * either had not stored head (the next receiver gets the message) or had
 * (the message went with it).  Nothing needs repair, so a waiter for a lock
 * whose holder is dead simply takes it over (CAS dead-who -> my-who).
 *
 * Sleeping (struct vmown__channel_wait in vmown_internal.h): a waiter spins
 * up to spin_ns (the handle's, 20 us by default: a peer's answer from
 * Python arrives well within it, and on two cores longer spins only steal
 * the peer's time), then sleeps on a futex word.  Why no wake-up is lost (a
 * store-load pair, all four seq_cst):
 *   waker:   store tail (or head, or flags) ; load event, test bit 0
 *   sleeper: event |= 1                     ; load tail (its condition)
 * Either the waker sees the bit and clears it by CAS (and wakes everyone),
 * changing the word the sleeper will sleep on, or the sleeper sees the new
 * condition and does not sleep.  Wakes go to every sleeper: the one bit
 * cannot count them, and a count would stay too high for ever after a
 * sleeper died.  A sleep lasts one slice at most (WAIT_SLICE_NS,
 * LOCK_SLICE_NS); at its end a lock waiter checks whether the holder's
 * process (pid and start time) is still alive, and the call returns
 * VMOWN_EINTR as a signal would: a signal that arrives while the thread is
 * not inside the futex call interrupts nothing, and the caller must get a
 * chance to run its handler.  A waiter leaving on a timeout or a signal
 * first tries once more, so a wake it absorbed is never lost.
 *
 * Spinning pays only while the peer runs on another core.  When spins keep
 * finding nothing -- the peer shares this core with us or another busy
 * process (spinning then only delays it), or the channel is just quiet --
 * a handle stops spinning after SPIN_MISS_LIMIT fruitless spins in a row and
 * sleeps at once, trying a spin again every SPIN_PROBE_EVERY waits: a busy
 * machine then gets a pipe's latency (a futex wake-up), not the spin's
 * budget added to it at every hop.
 * While spinning, a receiver looks for data every SPIN_STRIDE_DATA pauses (its
 * wait is a round trip's latency); a sender that found the ring full looks
 * only every SPIN_STRIDE_ROOM (the receivers have plenty to do, and each
 * look takes the line of `head` from the receiver that stores it next).
 * It waits for just the room it needs: waiting for more would outlast the
 * spin and put it to sleep, and a wake-up costs ~50 us on a VM while the
 * receivers drain the ring.  After a record is published (consumed), the
 * lines of the next one are prefetched, so that their trip between the
 * cores overlaps the caller's own work.
 *
 * Close takes the send lock and sets CLOSED under it: every send that
 * returned 0 published before, so a receiver that sees CLOSED (acquire) and
 * then an empty ring has seen every message there will ever be.
 *
 * try_send / try_recv are the first pass of send / recv with the side lock
 * tried once: VMOWN_EAGAIN ("not now", nothing done) for a held lock, a full
 * or an empty ring.  They are for callers that hold a lock of their own and
 * must not wait under it: vmown._channel_ext calls them with the GIL held,
 * where a wait would stall every Python thread of the process, among them
 * perhaps the very peer that was to make the room or send the message.
 *
 * Untrusted shared memory: the handle keeps its own copies of capacity and
 * max_message (checked at attach); every index into the ring is masked;
 * positions must be multiples of 8 with 0 <= tail - head <= capacity; a
 * record's check word, length (<= max_message) and size (<= tail - head)
 * are read once and checked before anything is copied.  A failed check
 * marks the channel BROKEN (VMOWN_ECHAN_CORRUPT for everybody) and wakes all
 * sleepers.  Waits are bounded by the caller's timeout and re-check in
 * slices, so a hostile peer can make calls fail or time out, or deliver
 * garbage bytes within max_message, but never make them touch memory
 * outside the channel or hang past their timeout.
 *
 * Lock order: a thread holds at most one side's lock, never across a wait.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"
#include "vmown_shorthands.h"

#include <errno.h>
#include <limits.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MIN_CAPACITY 64ull
#define MAX_CAPACITY (1ull << 40)
#define RECORD_WORD 8ull
#define DEFAULT_SPIN_NS 20000
#define SPIN_STRIDE_DATA 2           /* pauses (~27 ns each here) between looks for data */
#define SPIN_STRIDE_ROOM 32          /* ... and for room */
#define SPIN_MISS_LIMIT 4            /* fruitless spins in a row, then waits sleep at once... */
#define SPIN_PROBE_EVERY 16          /* ... except every 16th, which spins to see if it pays again */
#define LOCK_SPINS 200               /* tries with a pause between, before sleeping (~ a few us) */
#define LOCK_SLICE_NS 10000000       /* 10 ms: how often a lock waiter checks the holder is alive */
#define WAIT_SLICE_NS 50000000       /* 50 ms: the longest sleep before returning VMOWN_EINTR */

#define WHO(pid, start) (((uint64_t)(uint32_t)(start) << 32) | (uint32_t)(int32_t)(pid))
#define WHO_PID(w) ((int32_t)(uint32_t)(w))
#define WHO_START(w) ((uint32_t)((w) >> 32))

#define HEADER_SIZE offsetof(struct vmown__channel, ring)
_Static_assert(HEADER_SIZE % VMOWN__CACHE_LINE == 0, "the ring starts on a cache line");
/* The offsets tests and tools rely on (vmown/_channel.py _HEADER_OFFSETS). */
_Static_assert(offsetof(struct vmown__channel, flags) == 20, "channel header layout");
_Static_assert(offsetof(struct vmown__channel, send.holder) == 64, "channel header layout");
_Static_assert(offsetof(struct vmown__channel, tail) == 128, "channel header layout");
_Static_assert(offsetof(struct vmown__channel, recv.holder) == 192, "channel header layout");
_Static_assert(offsetof(struct vmown__channel, head) == 256, "channel header layout");
_Static_assert(offsetof(struct vmown__channel, data.event) == 320, "channel header layout");
_Static_assert(offsetof(struct vmown__channel, room.event) == 384, "channel header layout");
_Static_assert(HEADER_SIZE == 448, "channel header layout");

static inline uint64_t record_size(uint64_t len) { return RECORD_WORD + ((len + 7) & ~7ull); }
static inline uint32_t check_word(uint64_t pos) { return (uint32_t)(pos >> 3); }

/* ---- process identity: cached, forgotten in a forked child ---- */

static _Atomic uint64_t self_who;
static pthread_once_t atfork_once = PTHREAD_ONCE_INIT;

static void forget_self(void) { atomic_store_explicit(&self_who, 0, RELAXED); }
static void install_atfork(void) { vmown__at_fork_child(forget_self); }

static uint64_t learn_self(void) {
    vmown__at_fork_child_once(&atfork_once, install_atfork);  /* before caching: a fork then resets it */
    int32_t pid = (int32_t)getpid();
    uint64_t who = WHO(pid, vmown__process_start_time(pid));
    atomic_store_explicit(&self_who, who, RELAXED);
    return who;
}

static inline uint64_t me(void) {
    uint64_t who = atomic_load_explicit(&self_who, RELAXED);
    return likely(who) ? who : learn_self();
}

/* ---- debug ---- */

static _Atomic int debug_stop_point;

void vmown_channel_debug_set_stop(int point) { atomic_store(&debug_stop_point, point); }

static inline void debug_stop(int point) {
    if (unlikely(atomic_load_explicit(&debug_stop_point, RELAXED) == point)) vmown__stop_self();
}

/* ---- deadlines, fixed at the first wait ---- */

typedef struct {
    int64_t timeout_ns;  /* < 0: none */
    int64_t deadline_ns;
    bool fixed;
} budget;

static int64_t deadline(budget *b) {
    if (b->timeout_ns < 0) return -1;
    if (!b->fixed) {
        b->deadline_ns = vmown__now_ns() + b->timeout_ns;
        b->fixed = true;
    }
    return b->deadline_ns;
}

/* ---- futex words ---- */

static void wake(_Atomic uint32_t *event, _Atomic uint64_t *wakes) {
    uint32_t v = atomic_load_explicit(event, SEQ_CST);
    while (v & 1) {
        if (atomic_compare_exchange_weak_explicit(event, &v, v + 1, SEQ_CST, RELAXED)) {
            if (wakes) atomic_fetch_add_explicit(wakes, 1, RELAXED);
            vmown__futex_wake(event, INT_MAX);
            return;
        }
    }
}

/* Announce a sleeper; returns the value to sleep on. */
static inline uint32_t prepare_sleep(_Atomic uint32_t *event) {
    return atomic_fetch_or_explicit(event, 1, SEQ_CST) | 1;
}

/* Sleep on event until woken or `until`; 1 when the slice ran out before
 * the caller's deadline (look again), else vmown__futex_wait's result. */
static int sleep_on(_Atomic uint32_t *event, uint32_t expected, int64_t now, int64_t slice_ns, int64_t dl) {
    int64_t until = now + slice_ns;
    bool sliced = dl < 0 || until < dl;
    int rc = vmown__futex_wait(event, expected, sliced ? until : dl);
    return rc == VMOWN_ETIMEDOUT && sliced ? 1 : rc;
}

static int corrupt(vmown_channel *ch) {
    struct vmown__channel *s = ch->s;
    atomic_fetch_or_explicit(&s->flags, VMOWN__CHANNEL_BROKEN, SEQ_CST);
    wake(&s->data.event, &s->data.wakes);
    wake(&s->room.event, &s->room.wakes);
    wake(&s->send.lock_event, NULL);
    wake(&s->recv.lock_event, NULL);
    return VMOWN_ECHAN_CORRUPT;
}

/* ---- the side locks ---- */

static int lock_slow(struct vmown__channel_side *side, uint64_t self, budget *b) {
    for (;;) {
        for (int i = 0; i < LOCK_SPINS; i++) {
            uint64_t holder = atomic_load_explicit(&side->holder, RELAXED);
            if (holder == 0 &&
                atomic_compare_exchange_strong_explicit(&side->holder, &holder, self, ACQUIRE, RELAXED))
                return 0;
            vmown__cpu_relax();
        }
        uint32_t expected = prepare_sleep(&side->lock_event);
        uint64_t holder = 0;
        if (atomic_compare_exchange_strong_explicit(&side->holder, &holder, self, SEQ_CST, RELAXED)) return 0;
        int64_t now = vmown__now_ns(), dl = deadline(b);
        if (dl >= 0 && now >= dl) return VMOWN_ETIMEDOUT;
        int rc = sleep_on(&side->lock_event, expected, now, LOCK_SLICE_NS, dl);
        if (rc == 1) {
            /* A whole slice held: is the holder's process still alive?
             * (holder == self: another thread of this process.) */
            holder = atomic_load_explicit(&side->holder, SEQ_CST);
            if (holder != 0 && holder != self && !vmown__process_alive(WHO_PID(holder), WHO_START(holder)) &&
                atomic_compare_exchange_strong_explicit(&side->holder, &holder, self, SEQ_CST, RELAXED)) {
                atomic_fetch_add_explicit(&side->takeovers, 1, RELAXED);
                return 0;  /* every step of a holder left the side consistent: nothing to repair */
            }
            return VMOWN_EINTR;  /* see await(): let the caller look for signals */
        }
        if (rc < 0 && rc != VMOWN_ETIMEDOUT) return rc;  /* a signal: nothing done yet */
    }
}

static inline bool try_lock_side(struct vmown__channel_side *side, uint64_t self) {
    uint64_t free_ = 0;
    return atomic_compare_exchange_strong_explicit(&side->holder, &free_, self, ACQUIRE, RELAXED);
}

static inline int lock_side(struct vmown__channel_side *side, budget *b) {
    uint64_t self = me();
    if (likely(try_lock_side(side, self))) return 0;
    return lock_slow(side, self, b);
}

static inline void unlock_side(struct vmown__channel_side *side) {
    uint64_t self = me();
    /* seq_cst: pairs with a lock waiter's `lock_event |= 1` before its CAS.
     * A CAS, not a store: a lock taken over from us (never while we live,
     * unless a peer lies) is not ours to free. */
    atomic_compare_exchange_strong_explicit(&side->holder, &self, 0, SEQ_CST, RELAXED);
    if (unlikely(atomic_load_explicit(&side->lock_event, SEQ_CST) & 1)) wake(&side->lock_event, NULL);
}

/* ---- the ring ---- */

static inline void ring_write(vmown_channel *ch, uint64_t pos, const char *src, uint64_t n) {
    uint64_t i = pos & ch->mask, first = ch->capacity - i;
    if (likely(n <= first)) {
        memcpy(ch->ring + i, src, n);
    } else {
        memcpy(ch->ring + i, src, first);
        memcpy(ch->ring, src + first, n - first);
    }
}

static inline void ring_read(vmown_channel *ch, uint64_t pos, char *dst, uint64_t n) {
    uint64_t i = pos & ch->mask, first = ch->capacity - i;
    if (likely(n <= first)) {
        memcpy(dst, ch->ring + i, n);
    } else {
        memcpy(dst, ch->ring + i, first);
        memcpy(dst + first, ch->ring, n - first);
    }
}

/* Positions are valid when both are multiples of 8 and 0 <= tail - head <= capacity. */
static inline bool positions_valid(const vmown_channel *ch, uint64_t head, uint64_t tail) {
    return !((head | tail) & 7) && tail - head <= ch->capacity;
}

/* Under the send lock: 1 appended, 0 no room, or an error. */
static inline int append_locked(vmown_channel *ch, const char *data, uint64_t len, uint64_t size) {
    struct vmown__channel *s = ch->s;
    uint32_t flags = atomic_load_explicit(&s->flags, ACQUIRE);
    if (unlikely(flags)) return flags & VMOWN__CHANNEL_BROKEN ? VMOWN_ECHAN_CORRUPT : VMOWN_ECHAN_CLOSED;
    uint64_t tail = atomic_load_explicit(&s->tail, RELAXED);
    uint64_t head = atomic_load_explicit(&s->send.seen, RELAXED);
    if (unlikely(!positions_valid(ch, head, tail) || ch->capacity - (tail - head) < size)) {
        head = atomic_load_explicit(&s->head, ACQUIRE);  /* pairs with recv's store of head */
        if (!positions_valid(ch, head, tail)) return corrupt(ch);
        atomic_store_explicit(&s->send.seen, head, RELAXED);
        if (ch->capacity - (tail - head) < size) return 0;
    }
    uint64_t word = len | (uint64_t)check_word(tail) << 32;
    __atomic_store_n((uint64_t *)(ch->ring + (tail & ch->mask)), word, __ATOMIC_RELAXED);
    debug_stop(VMOWN_CHANNEL_STOP_IN_SEND);  /* Caution: a half-written record, not yet published */
    if (len) ring_write(ch, tail + RECORD_WORD, data, len);  /* data may be NULL when len is 0 */
    atomic_store_explicit(&s->send.count, atomic_load_explicit(&s->send.count, RELAXED) + 1, RELAXED);
    /* Publish.  seq_cst: pairs with a sleeping receiver's `data.event |= 1`. */
    atomic_store_explicit(&s->tail, tail + size, SEQ_CST);
    /* Ask for the next record's lines now (if known free: else a receiver
     * is reading them), so that they travel from the receivers' caches while
     * the caller is busy elsewhere. */
    if (tail + size + 2 * VMOWN__CACHE_LINE - head <= ch->capacity) {
        __builtin_prefetch(ch->ring + ((tail + size) & ch->mask), 1);
        __builtin_prefetch(ch->ring + ((tail + size + VMOWN__CACHE_LINE) & ch->mask), 1);
    }
    return 1;
}

/* Under the recv lock: 1 taken (*len_out), 0 empty, or an error. */
static inline int take_locked(vmown_channel *ch, vmown_channel_port *port, uint64_t *len_out) {
    struct vmown__channel *s = ch->s;
    uint64_t head = atomic_load_explicit(&s->head, RELAXED);
    uint64_t tail = atomic_load_explicit(&s->recv.seen, RELAXED);
    if (tail == head || unlikely(!positions_valid(ch, head, tail))) {
        tail = atomic_load_explicit(&s->tail, ACQUIRE);  /* pairs with send's store of tail */
        if (!positions_valid(ch, head, tail)) return corrupt(ch);
        atomic_store_explicit(&s->recv.seen, tail, RELAXED);
        if (tail == head) return 0;
    }
    /* Read the record's word once; everything below uses this copy. */
    uint64_t word = __atomic_load_n((uint64_t *)(ch->ring + (head & ch->mask)), __ATOMIC_RELAXED);
    uint64_t len = (uint32_t)word, size = record_size(len);
    if (unlikely((uint32_t)(word >> 32) != check_word(head) || len > ch->max_message || size > tail - head))
        return corrupt(ch);
    if (unlikely(len > port->cap)) {
        port->need = len;
        return VMOWN_ECHAN_SMALLBUF;
    }
    ring_read(ch, head + RECORD_WORD, port->buf, len);
    debug_stop(VMOWN_CHANNEL_STOP_IN_RECV);  /* Caution: copied out, not yet consumed */
    atomic_store_explicit(&s->recv.count, atomic_load_explicit(&s->recv.count, RELAXED) + 1, RELAXED);
    /* Consume.  seq_cst: pairs with a sleeping sender's `room.event |= 1`. */
    atomic_store_explicit(&s->head, head + size, SEQ_CST);
    if (head + size != tail) {  /* the next record is there: fetch its lines while the caller works */
        __builtin_prefetch(ch->ring + ((head + size) & ch->mask));
        __builtin_prefetch(ch->ring + ((head + size + VMOWN__CACHE_LINE) & ch->mask));
    }
    *len_out = len;
    return 1;
}

/* After a record is published (consumed): wake the receivers (senders) if one sleeps. */
static inline void published(struct vmown__channel *s) {
    if (unlikely(atomic_load_explicit(&s->data.event, SEQ_CST) & 1)) wake(&s->data.event, &s->data.wakes);
}

static inline void consumed(struct vmown__channel *s) {
    if (unlikely(atomic_load_explicit(&s->room.event, SEQ_CST) & 1)) wake(&s->room.event, &s->room.wakes);
}

/* ---- waiting for data or room, without a lock ---- */

static inline bool ready(vmown_channel *ch, bool for_data, uint64_t size) {
    struct vmown__channel *s = ch->s;
    if (atomic_load_explicit(&s->flags, SEQ_CST) & (VMOWN__CHANNEL_CLOSED | VMOWN__CHANNEL_BROKEN)) return true;
    uint64_t tail = atomic_load_explicit(&s->tail, SEQ_CST), head = atomic_load_explicit(&s->head, SEQ_CST);
    if (for_data) return tail != head;
    uint64_t used = tail - head;
    return used > ch->capacity || ch->capacity - used >= size;  /* corrupt: let the locked attempt say so */
}

/* Wait until the condition may hold: 0 (the caller looks again),
 * VMOWN_ETIMEDOUT, VMOWN_EINTR, or -errno.  Spins only if `spin`. */
static int await(vmown_channel *ch, bool for_data, uint64_t size, budget *b, bool spin) {
    struct vmown__channel *s = ch->s;
    struct vmown__channel_wait *w = for_data ? &s->data : &s->room;
    if (b->timeout_ns == 0) return VMOWN_ETIMEDOUT;
    int64_t spin_ns = atomic_load_explicit(&ch->spin_ns, RELAXED);
    _Atomic uint32_t *misses = &ch->spin_misses[for_data];
    if (spin && spin_ns > 0 &&
        (atomic_load_explicit(misses, RELAXED) < SPIN_MISS_LIMIT ||
         atomic_fetch_add_explicit(&ch->spin_waits[for_data], 1, RELAXED) % SPIN_PROBE_EVERY == 0)) {
        int64_t end = vmown__now_ns() + spin_ns, dl = deadline(b);
        if (dl >= 0 && dl < end) end = dl;
        int stride = for_data ? SPIN_STRIDE_DATA : SPIN_STRIDE_ROOM;
        for (uint32_t i = 1;; i++) {
            if (ready(ch, for_data, size)) {
                atomic_store_explicit(misses, 0, RELAXED);
                return 0;
            }
            for (int k = 0; k < stride; k++) vmown__cpu_relax();
            if ((i & 7) == 0 && vmown__now_ns() >= end) break;
        }
        uint32_t m = atomic_load_explicit(misses, RELAXED);
        if (m < SPIN_MISS_LIMIT) atomic_store_explicit(misses, m + 1, RELAXED);
    }
    uint32_t expected = prepare_sleep(&w->event);
    if (ready(ch, for_data, size)) return 0;
    int64_t now = vmown__now_ns(), dl = deadline(b);
    if (dl >= 0 && now >= dl) return VMOWN_ETIMEDOUT;
    atomic_fetch_add_explicit(for_data ? &s->recv.sleeps : &s->send.sleeps, 1, RELAXED);
    int rc = sleep_on(&w->event, expected, now, WAIT_SLICE_NS, dl);
    /* A slice asleep without a wake returns VMOWN_EINTR too: a signal that
     * arrived while this thread was not inside the futex call (spinning, or
     * between two slices) interrupted nothing, and its handler -- Python's
     * KeyboardInterrupt -- runs only once the call returns. */
    return rc == 1 ? VMOWN_EINTR : rc;
}

/* ---- the public calls ---- */

/* After the first attempt: has the deadline passed?  (Every loop looks, so
 * that values a hostile peer keeps changing cannot keep a call past it.) */
static inline bool expired(const budget *b) {
    return b->fixed && b->deadline_ns >= 0 && vmown__now_ns() >= b->deadline_ns;
}

static int send_impl(vmown_channel *ch, const char *data, uint64_t len, int64_t timeout_ns) {
    if (unlikely(!ch || (!data && len))) return VMOWN_EINVAL;
    if (unlikely(len > ch->max_message)) return VMOWN_ECHAN_TOOBIG;
    struct vmown__channel *s = ch->s;
    uint64_t size = record_size(len);
    budget b = {timeout_ns, 0, false};
    int give_up = 0;  /* set: the wait ended in this error; one last try, then return it */
    for (bool first = true;; first = false) {
        if (!first && !give_up && expired(&b)) give_up = VMOWN_ETIMEDOUT;
        int rc = lock_side(&s->send, &b);
        if (unlikely(rc < 0)) return give_up ? give_up : rc;
        rc = append_locked(ch, data, len, size);
        unlock_side(&s->send);
        if (likely(rc == 1)) {
            published(s);
            return 0;
        }
        if (rc < 0) return rc;
        if (give_up) return give_up;
        rc = await(ch, false, size, &b, first);
        if (rc < 0) give_up = rc;
    }
}

int vmown_channel_send(vmown_channel *ch, const char *data, uint64_t len) { return send_impl(ch, data, len, -1); }

int vmown_channel_send_timed(vmown_channel *ch, const char *data, uint64_t len, int64_t timeout_ns) {
    return send_impl(ch, data, len, timeout_ns);
}

static int64_t recv_impl(vmown_channel_port *port, int64_t timeout_ns) {
    vmown_channel *ch = port ? port->ch : NULL;
    if (unlikely(!ch || (!port->buf && port->cap))) return VMOWN_EINVAL;
    struct vmown__channel *s = ch->s;
    budget b = {timeout_ns, 0, false};
    int give_up = 0;
    for (bool first = true;; first = false) {
        uint64_t len = 0;
        if (!first && !give_up && expired(&b)) give_up = VMOWN_ETIMEDOUT;
        int rc = lock_side(&s->recv, &b);
        if (unlikely(rc < 0)) return give_up ? give_up : rc;
        rc = take_locked(ch, port, &len);
        unlock_side(&s->recv);
        if (likely(rc == 1)) {
            consumed(s);
            return (int64_t)len;
        }
        if (rc < 0) return rc;
        uint32_t flags = atomic_load_explicit(&s->flags, ACQUIRE);
        if (flags & VMOWN__CHANNEL_BROKEN) return VMOWN_ECHAN_CORRUPT;
        if (flags & VMOWN__CHANNEL_CLOSED) {
            /* Closed under the send lock: after this acquire load, tail is final. */
            if (atomic_load_explicit(&s->tail, ACQUIRE) == atomic_load_explicit(&s->head, ACQUIRE))
                return VMOWN_ECHAN_CLOSED;
            if (give_up) return give_up;
            continue;  /* drain what is left */
        }
        if (give_up) return give_up;
        rc = await(ch, true, 0, &b, first);
        if (rc < 0) give_up = rc;
    }
}

int64_t vmown_channel_recv(vmown_channel_port *port) { return recv_impl(port, -1); }

int64_t vmown_channel_recv_timed(vmown_channel_port *port, int64_t timeout_ns) {
    return recv_impl(port, timeout_ns);
}

/* The first attempt of send_impl / recv_impl, with a lock that is tried
 * once: for callers that must not wait while they hold a lock of their own
 * (vmown._channel_ext holds the GIL).  Nothing here spins or sleeps. */
int vmown_channel_try_send(vmown_channel *ch, const char *data, uint64_t len) {
    if (unlikely(!ch || (!data && len))) return VMOWN_EINVAL;
    if (unlikely(len > ch->max_message)) return VMOWN_ECHAN_TOOBIG;
    struct vmown__channel *s = ch->s;
    if (unlikely(!try_lock_side(&s->send, me()))) return VMOWN_EAGAIN;
    int rc = append_locked(ch, data, len, record_size(len));
    unlock_side(&s->send);
    if (likely(rc == 1)) {
        published(s);
        return 0;
    }
    return rc == 0 ? VMOWN_EAGAIN : rc;
}

int64_t vmown_channel_try_recv(vmown_channel_port *port) {
    vmown_channel *ch = port ? port->ch : NULL;
    if (unlikely(!ch || (!port->buf && port->cap))) return VMOWN_EINVAL;
    struct vmown__channel *s = ch->s;
    if (unlikely(!try_lock_side(&s->recv, me()))) return VMOWN_EAGAIN;
    uint64_t len = 0;
    int rc = take_locked(ch, port, &len);
    unlock_side(&s->recv);
    if (likely(rc == 1)) {
        consumed(s);
        return (int64_t)len;
    }
    if (rc < 0) return rc;
    uint32_t flags = atomic_load_explicit(&s->flags, ACQUIRE);  /* as recv_impl */
    if (flags & VMOWN__CHANNEL_BROKEN) return VMOWN_ECHAN_CORRUPT;
    if ((flags & VMOWN__CHANNEL_CLOSED) &&
        atomic_load_explicit(&s->tail, ACQUIRE) == atomic_load_explicit(&s->head, ACQUIRE))
        return VMOWN_ECHAN_CLOSED;
    return VMOWN_EAGAIN;
}

int vmown_channel_close(vmown_channel *ch, int64_t timeout_ns) {
    if (!ch) return VMOWN_EINVAL;
    struct vmown__channel *s = ch->s;
    budget b = {timeout_ns, 0, false};
    int rc = lock_side(&s->send, &b);
    if (rc < 0) return rc;
    atomic_fetch_or_explicit(&s->flags, VMOWN__CHANNEL_CLOSED, SEQ_CST);
    unlock_side(&s->send);
    wake(&s->data.event, &s->data.wakes);
    wake(&s->room.event, &s->room.wakes);
    return 0;
}

/* ---- making handles ---- */

uint32_t vmown_channel_layout_version(void) { return VMOWN__CHANNEL_VERSION; }

static const vmown_channel_table api_table = {
    .version = VMOWN_CHANNEL_API_VERSION,
    .try_send = vmown_channel_try_send,
    .try_recv = vmown_channel_try_recv,
};

const vmown_channel_table *vmown_channel_api(void) { return &api_table; }

uint64_t vmown_channel_size(uint64_t capacity) {
    if (capacity < MIN_CAPACITY || capacity > MAX_CAPACITY || (capacity & (capacity - 1))) return 0;
    return HEADER_SIZE + capacity;
}

static bool max_message_valid(uint64_t capacity, uint64_t max_message) {
    return max_message >= 1 && max_message <= capacity - RECORD_WORD && max_message <= UINT32_MAX;
}

static int make_handle(struct vmown__channel *s, uint64_t capacity, uint64_t max_message, vmown_channel **out) {
    vmown_channel *ch = calloc(1, sizeof *ch);
    if (!ch) return -ENOMEM;
    ch->s = s;
    ch->ring = s->ring;
    ch->capacity = capacity;
    ch->mask = capacity - 1;
    ch->max_message = max_message;
    atomic_init(&ch->spin_ns, DEFAULT_SPIN_NS);
    *out = ch;
    return 0;
}

int vmown_channel_init(void *mem, uint64_t len, uint64_t capacity, uint64_t max_message, vmown_channel **out) {
    if (!mem || !out || (uintptr_t)mem % VMOWN__CACHE_LINE) return VMOWN_EINVAL;
    uint64_t size = vmown_channel_size(capacity);
    if (size == 0 || !max_message_valid(capacity, max_message)) return VMOWN_EINVAL;
    if (len < size) return VMOWN_ECHAN_SIZES;
    struct vmown__channel *s = mem;
    /* Phase 1: nobody attaches to a half-written header. */
    atomic_store_explicit(&s->state, VMOWN__CHANNEL_INITIALIZING, SEQ_CST);
    atomic_store_explicit(&s->magic, 0, SEQ_CST);
    size_t from = offsetof(struct vmown__channel, header_size);
    memset((char *)s + from, 0, HEADER_SIZE - from);
    atomic_store_explicit(&s->header_size, (uint32_t)HEADER_SIZE, RELAXED);
    atomic_store_explicit(&s->capacity, capacity, RELAXED);
    atomic_store_explicit(&s->max_message, max_message, RELAXED);
    atomic_store_explicit(&s->creator, me(), RELAXED);
    atomic_store_explicit(&s->version, VMOWN__CHANNEL_VERSION, RELAXED);
    atomic_store_explicit(&s->magic, VMOWN__CHANNEL_MAGIC, RELAXED);
    int rc = make_handle(s, capacity, max_message, out);
    /* Phase 2: publish. */
    if (rc == 0) atomic_store_explicit(&s->state, VMOWN__CHANNEL_READY, RELEASE);
    return rc;
}

int vmown_channel_attach(void *mem, uint64_t len, vmown_channel **out) {
    if (!mem || !out || (uintptr_t)mem % VMOWN__CACHE_LINE) return VMOWN_EINVAL;
    if (len < HEADER_SIZE) return VMOWN_ECHAN_SIZES;
    struct vmown__channel *s = mem;
    /* Every header field read once, state first (pairs with READY's release). */
    uint32_t state = atomic_load_explicit(&s->state, ACQUIRE);
    uint64_t magic = atomic_load_explicit(&s->magic, RELAXED);
    uint32_t version = atomic_load_explicit(&s->version, RELAXED);
    uint32_t header_size = atomic_load_explicit(&s->header_size, RELAXED);
    uint64_t capacity = atomic_load_explicit(&s->capacity, RELAXED);
    uint64_t max_message = atomic_load_explicit(&s->max_message, RELAXED);
    if (magic == 0 && (state == 0 || state == VMOWN__CHANNEL_INITIALIZING)) return VMOWN_ECHAN_NOTREADY;
    if (magic != VMOWN__CHANNEL_MAGIC) return VMOWN_ECHAN_BADMAGIC;
    if (version != VMOWN__CHANNEL_VERSION) return VMOWN_ECHAN_VERSION;
    if (state == VMOWN__CHANNEL_INITIALIZING) return VMOWN_ECHAN_NOTREADY;
    if (state != VMOWN__CHANNEL_READY) return VMOWN_ECHAN_CORRUPT;
    uint64_t size = vmown_channel_size(capacity);
    if (header_size != HEADER_SIZE || size == 0 || !max_message_valid(capacity, max_message))
        return VMOWN_ECHAN_SIZES;
    if (size > len) return VMOWN_ECHAN_SIZES;
    return make_handle(s, capacity, max_message, out);
}

void vmown_channel_detach(vmown_channel *ch) { free(ch); }

/* ---- observers ---- */

uint64_t vmown_channel_capacity(const vmown_channel *ch) { return ch ? ch->capacity : 0; }

uint64_t vmown_channel_max_message(const vmown_channel *ch) { return ch ? ch->max_message : 0; }

void vmown_channel_set_spin_ns(vmown_channel *ch, int64_t ns) {
    if (ch) atomic_store_explicit(&ch->spin_ns, ns < 0 ? 0 : ns, RELAXED);
}

int64_t vmown_channel_spin_ns(const vmown_channel *ch) {
    return ch ? atomic_load_explicit(&ch->spin_ns, RELAXED) : 0;
}

int vmown_channel_stats_read(vmown_channel *ch, vmown_channel_stats *out) {
    if (!ch || !out) return VMOWN_EINVAL;
    struct vmown__channel *s = ch->s;
    memset(out, 0, sizeof *out);
    out->capacity = ch->capacity;
    out->max_message = ch->max_message;
    /* received before sent: a message is counted sent before it can be taken. */
    out->received = atomic_load_explicit(&s->recv.count, ACQUIRE);
    out->sent = atomic_load_explicit(&s->send.count, ACQUIRE);
    out->messages = out->sent >= out->received ? out->sent - out->received : 0;
    if (out->messages > ch->capacity / RECORD_WORD) out->messages = ch->capacity / RECORD_WORD;  /* corrupt counts */
    uint64_t head = atomic_load_explicit(&s->head, ACQUIRE), tail = atomic_load_explicit(&s->tail, ACQUIRE);
    out->used = tail - head <= ch->capacity ? tail - head : ch->capacity;
    out->send_sleeps = atomic_load_explicit(&s->send.sleeps, RELAXED);
    out->recv_sleeps = atomic_load_explicit(&s->recv.sleeps, RELAXED);
    out->wakes = atomic_load_explicit(&s->data.wakes, RELAXED) + atomic_load_explicit(&s->room.wakes, RELAXED);
    out->takeovers =
        atomic_load_explicit(&s->send.takeovers, RELAXED) + atomic_load_explicit(&s->recv.takeovers, RELAXED);
    uint32_t flags = atomic_load_explicit(&s->flags, ACQUIRE);
    out->closed = (flags & VMOWN__CHANNEL_CLOSED) != 0;
    out->broken = (flags & VMOWN__CHANNEL_BROKEN) != 0;
    out->send_holder = WHO_PID(atomic_load_explicit(&s->send.holder, RELAXED));
    out->recv_holder = WHO_PID(atomic_load_explicit(&s->recv.holder, RELAXED));
    return 0;
}
