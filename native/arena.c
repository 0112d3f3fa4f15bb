/* arena.c -- shared-memory arenas: a header page, page-aligned data, a guard.
 *
 * Notes about the implementation
 * ------------------------------
 * An arena is one mapping, anonymous (shared with forked children) or of a
 * file (shared with any process that may open it).  P is the page size (the
 * huge page size for a huge-page arena):
 *
 *   base          base+P            base+P+mapped     base+P+max   base+2P+max
 *   | header (RW) | data (RW) ...   | not yet (NONE)  | guard (NONE) |
 *
 * The whole range is reserved once, PROT_NONE, as a mapping of the file (or of
 * anonymous shared memory) itself; growing mprotects more of it read/write,
 * so the mapping never moves and memoryviews and stored addresses stay valid.
 * File pages past the end of the file are never made accessible: the length
 * is checked with fstat before each mprotect, so nothing maps what does not
 * exist and no access through this code raises SIGBUS.
 *
 * Rejected: mremap to grow (moves the mapping under live views and under
 * addresses other code keeps); MAP_FIXED over a separate reservation (one
 * slip clobbers a mapping we do not own; a caller's `address` is honoured with
 * MAP_FIXED_NOREPLACE and checked); a pthread mutex in the header to serialise
 * resizes (a peer that scribbles on it can hang pthread_mutex_lock for ever).
 *
 * Two-phase publish: create stores state INITIALIZING (seq_cst) first, then
 * fills the header, then stores READY with release.  open reads the header
 * (pread, no mapping yet) until READY with a bounded wait; an all-zero header
 * or a file shorter than a page counts as "being created" during that wait.
 * After mapping, state is loaded with acquire before any other field.
 *
 * The header lock is one word holding the holder's who-word (pid in bits
 * 0-31, low 32 bits of its start time in 32-63); acquired by CAS 0 -> me,
 * waits are bounded by the handle's timeout, and a holder whose process is
 * gone (kill(pid, 0), /proc/PID/stat start time) is taken over.  Each update
 * under it keeps this invariant after every single step, so a holder that
 * dies anywhere leaves nothing to repair:
 *
 *   Invariant: file length >= P + max(size, mapped_size of every live peer).
 *
 *   grow:   1. ftruncate up  2. raise my peer entry  3. mprotect RW  4. store size
 *   open/refresh: 1. check the length  2. raise my entry  3. mprotect RW
 *   shrink: 1. refuse if a live peer's entry or `allocated` exceeds the new
 *              size  2. store size  3. discard + mprotect NONE my tail
 *           4. lower my entry  5. ftruncate down
 *   alloc:  allocated += n, bounded by size.
 *
 * Entries are raised before mapping and lowered only after unmapping, always
 * under the lock, so a shrinker holding the lock sees every byte that every
 * live peer can touch.  A forked child takes its own entry (adopt).
 *
 * Untrusted shared memory: every header word is read once into a local and
 * checked against this build, the file's length and this handle's own
 * reservation before it sizes a mapping or bounds an access; loops are
 * bounded.  A hostile peer with write access can still: truncate the file
 * under our mapping (every operation here checks the length first and
 * reports VMOWN_EARENA_CUT; an access through the caller's own pointers, or
 * a truncation between check and access, raises SIGBUS), hold the lock or fake
 * live entries (operations time out or are refused, never hang), corrupt
 * `allocated`/`size` (clear errors), and of course write any data bytes.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"
#include "vmown_shorthands.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define MAX_DATA (1ull << 44)              /* 16 TiB: bounds every size read back */
#define DEFAULT_FILE_RESERVE (1ull << 30)  /* address range (not memory) per file arena */
#define LOCK_SPINS 64
#define POLL_NS 500000                     /* 0.5 ms between looks at a held lock or header */

#define WHO(pid, start) (((uint64_t)(uint32_t)(start) << 32) | (uint32_t)(int32_t)(pid))
#define WHO_PID(w) ((int32_t)(uint32_t)(w))
#define WHO_START(w) ((uint32_t)((w) >> 32))

/* The offsets tests and tools rely on (vmown/_arena.py _HEADER_OFFSETS). */
_Static_assert(offsetof(struct vmown__arena_header, state) == 12, "arena header layout");
_Static_assert(offsetof(struct vmown__arena_header, size) == 32, "arena header layout");
_Static_assert(offsetof(struct vmown__arena_header, peers) == 80, "arena header layout");
_Static_assert(sizeof(struct vmown__arena_header) <= 4096, "arena header fits a page");

/* One read of an untrusted header: every field once, state first. */
struct fields {
    uint64_t magic, page_size, size, allocated, creator, creator_start_time;
    uint32_t version, state, header_size, npeers;
};

static inline struct vmown__arena_header *hdr(const vmown_arena *a) { return (void *)a->base; }
static inline char *data(const vmown_arena *a) { return a->base + a->page; }
static inline uint64_t round_up(uint64_t n, uint64_t page) { return (n + page - 1) / page * page; }

/* ---- identity and liveness ---- */

static _Atomic int32_t cached_pid;
static _Atomic uint64_t cached_start_time;

static uint64_t start_time_of_me(int32_t pid) {
    if (atomic_load_explicit(&cached_pid, ACQUIRE) != pid) {
        atomic_store_explicit(&cached_start_time, vmown__process_start_time(pid), RELAXED);
        atomic_store_explicit(&cached_pid, pid, RELEASE);
    }
    return atomic_load_explicit(&cached_start_time, RELAXED);
}

static uint64_t me(void) {
    int32_t pid = (int32_t)getpid();
    return WHO(pid, start_time_of_me(pid));
}

static bool alive(uint64_t who) {
    if (who == 0) return false;
    if (who == me()) return true;
    return vmown__process_alive(WHO_PID(who), WHO_START(who));
}

/* ---- the header ---- */

static void read_fields(const struct vmown__arena_header *h, struct fields *f) {
    f->state = atomic_load_explicit(&h->state, ACQUIRE);  /* pairs with READY's release */
    f->magic = atomic_load_explicit(&h->magic, RELAXED);
    f->version = atomic_load_explicit(&h->version, RELAXED);
    f->header_size = atomic_load_explicit(&h->header_size, RELAXED);
    f->npeers = atomic_load_explicit(&h->npeers, RELAXED);
    f->page_size = atomic_load_explicit(&h->page_size, RELAXED);
    f->size = atomic_load_explicit(&h->size, RELAXED);
    f->allocated = atomic_load_explicit(&h->allocated, RELAXED);
    f->creator = atomic_load_explicit(&h->creator, RELAXED);
    f->creator_start_time = atomic_load_explicit(&h->creator_start_time, RELAXED);
}

/* 0 for a valid, READY header; VMOWN_EARENA_NOTREADY while it may still be
 * being written; else the first thing wrong.  file_length: UINT64_MAX when
 * there is no file. */
static int check_fields(const struct fields *f, uint64_t page, uint64_t file_length) {
    if (f->magic == 0 && (f->state == 0 || f->state == VMOWN__ARENA_INITIALIZING)) return VMOWN_EARENA_NOTREADY;
    if (f->magic != VMOWN__ARENA_MAGIC) return VMOWN_EARENA_BADMAGIC;
    if (f->version != VMOWN__ARENA_VERSION) return VMOWN_EARENA_VERSION;
    if (f->state == VMOWN__ARENA_INITIALIZING) return VMOWN_EARENA_NOTREADY;
    if (f->state != VMOWN__ARENA_READY) return VMOWN_EARENA_CORRUPT;
    if (f->header_size != sizeof(struct vmown__arena_header) || f->npeers != VMOWN__ARENA_PEERS ||
        f->page_size != page)
        return VMOWN_EARENA_SIZES;
    if (f->size == 0 || f->size % page || f->size > MAX_DATA || f->allocated > f->size || f->allocated % page)
        return VMOWN_EARENA_SIZES;
    if (file_length < page + f->size) return VMOWN_EARENA_TRUNCATED;
    return 0;
}

/* The current data size, read once and checked. */
static int read_size(vmown_arena *a, uint64_t *out) {
    uint64_t size = atomic_load_explicit(&hdr(a)->size, ACQUIRE);
    if (size == 0 || size % a->page || size > MAX_DATA) return VMOWN_EARENA_CORRUPT;
    *out = size;
    return 0;
}

static int file_length(int fd, uint64_t *out) {
    struct vmown__file_status st;
    int rc = vmown__file_stat(fd, &st);
    if (rc == 0) *out = st.length;
    return rc;
}

/* ---- the header lock ---- */

static int lock_header(vmown_arena *a) {
    struct vmown__arena_header *h = hdr(a);
    uint64_t self = me();
    int64_t deadline = a->timeout_ns < 0 ? -1 : vmown__now_ns() + a->timeout_ns;
    for (uint32_t round = 0;; round++) {
        uint64_t holder = 0;
        if (atomic_compare_exchange_strong_explicit(&h->lock, &holder, self, ACQUIRE, RELAXED)) return 0;
        if (round < LOCK_SPINS) {
            vmown__thread_yield();
            continue;
        }
        /* The holder died inside an update: each step kept the invariant, so
         * take over as is.  (holder == self: another thread of this process.) */
        if (holder != self && !alive(holder) &&
            atomic_compare_exchange_strong_explicit(&h->lock, &holder, self, ACQUIRE, RELAXED))
            return 0;
        if (deadline >= 0 && vmown__now_ns() >= deadline) return VMOWN_EARENA_LOCKED;
        vmown__sleep_ns(POLL_NS);
    }
}

static void unlock_header(vmown_arena *a) {
    uint64_t self = me();
    atomic_compare_exchange_strong_explicit(&hdr(a)->lock, &self, 0, RELEASE, RELAXED);
}

/* ---- the peer table (under the lock) ---- */

/* Record that this handle maps `mapped` data bytes, claiming an entry (a free
 * one, else one of a dead process) if it has none. */
static int record_mapped(vmown_arena *a, uint64_t mapped) {
    struct vmown__arena_header *h = hdr(a);
    uint64_t self = me();
    int32_t i = a->peer;
    if (i < 0 || atomic_load_explicit(&h->peers[i].who, RELAXED) != self) {
        i = -1;
        for (int32_t k = 0; k < VMOWN__ARENA_PEERS && i < 0; k++)
            if (atomic_load_explicit(&h->peers[k].who, RELAXED) == 0) i = k;
        for (int32_t k = 0; k < VMOWN__ARENA_PEERS && i < 0; k++)
            if (!alive(atomic_load_explicit(&h->peers[k].who, RELAXED))) i = k;
        if (i < 0) return VMOWN_EARENA_PEERS;
        a->peer = i;
    }
    atomic_store_explicit(&h->peers[i].mapped_size, mapped, RELAXED);
    atomic_store_explicit(&h->peers[i].who, self, RELEASE);
    return 0;
}

/* Map data bytes up to `target` (never down). */
static int map_to(vmown_arena *a, uint64_t target) {
    uint64_t mapped = atomic_load_explicit(&a->mapped, RELAXED), length = 0;
    if (target <= mapped) return 0;
    if (target > a->max_size) return VMOWN_EARENA_MAXSIZE;
    int rc;
    if (a->fd >= 0) {
        if ((rc = file_length(a->fd, &length)) < 0) return rc;
        if (length < a->page + target) return VMOWN_EARENA_TRUNCATED;
    }
    if ((rc = record_mapped(a, target)) < 0) return rc;
    if ((rc = vmown__map_protect(data(a) + mapped, target - mapped, 1)) < 0) {
        record_mapped(a, mapped);
        return rc;
    }
    atomic_store_explicit(&a->mapped, target, RELEASE);
    if (a->flags & VMOWN_ARENA_POPULATE) return vmown__map_populate(data(a) + mapped, target - mapped);
    return 0;
}

/* Unmap data bytes beyond `target`; anonymous pages are given back. */
static int unmap_to(vmown_arena *a, uint64_t target) {
    uint64_t mapped = atomic_load_explicit(&a->mapped, RELAXED);
    if (target >= mapped) return 0;
    char *tail = data(a) + target;
    /* Zero what a later grow will expose again: a file does it by truncation. */
    if (a->fd < 0 && vmown__map_discard(tail, mapped - target) < 0) memset(tail, 0, mapped - target);
    atomic_store_explicit(&a->mapped, target, RELEASE);
    int rc = vmown__map_protect(tail, mapped - target, 0);
    int rc2 = record_mapped(a, target);
    return rc < 0 ? rc : rc2;
}

/* After fork: the child maps what its parent did and needs its own entry. */
static int adopted(vmown_arena *a) {
    int32_t pid = (int32_t)getpid();
    if (a->pid == pid) return 0;
    a->pid = pid;
    a->peer = -1;
    int rc = lock_header(a);
    if (rc < 0) return rc;
    rc = record_mapped(a, atomic_load_explicit(&a->mapped, RELAXED));
    unlock_header(a);
    return rc;
}

/* ---- making handles ---- */

static int round_sizes(uint64_t page, uint64_t size, uint64_t max_size, uint64_t floor, uint64_t *max_out) {
    if (size == 0 || size > MAX_DATA || max_size > MAX_DATA) return VMOWN_EINVAL;
    size = round_up(size, page);
    uint64_t max = max_size ? round_up(max_size, page) : size > floor ? size : round_up(floor, page);
    if (max < size) return VMOWN_EARENA_MAXSIZE;
    *max_out = max;
    return 0;
}

/* Reserve P + max + P bytes (PROT_NONE) and open the header page. */
static int reserve(int fd, uint64_t page, uint64_t max, void *address, uint32_t flags, int64_t timeout_ns,
                   vmown_arena **out) {
    if (address && ((uintptr_t)address % page || (uintptr_t)address < page)) return VMOWN_EINVAL;
    vmown_arena *a = calloc(1, sizeof *a);
    if (!a) return -ENOMEM;
    size_t len = page + max + page;
    void *base;
    int rc = vmown__map_reserve(fd, len, address ? (char *)address - page : NULL, flags & VMOWN_ARENA_HUGE, &base);
    if (rc == 0 && (rc = vmown__map_protect(base, page, 1)) < 0) vmown_unmap(base, len);
    if (rc < 0) {
        free(a);
        return rc;
    }
    a->base = base;
    a->reserved_len = len;
    a->page = page;
    a->max_size = max;
    atomic_init(&a->mapped, 0);
    a->fd = fd;
    a->pid = (int32_t)getpid();
    a->peer = -1;
    a->flags = flags;
    a->timeout_ns = timeout_ns;
    *out = a;
    return 0;
}

uint64_t vmown_arena_page_size(uint32_t flags) {
    return flags & VMOWN_ARENA_HUGE ? vmown__huge_page_size() : vmown_page_size();
}

uint32_t vmown_arena_layout_version(void) { return VMOWN__ARENA_VERSION; }

int vmown_arena_create(const char *path, uint64_t size, uint64_t max_size, uint32_t mode, void *address,
                       uint32_t flags, int64_t timeout_ns, vmown_arena **out) {
    if (!out || (mode & ~0777u) || (path && (flags & VMOWN_ARENA_HUGE))) return VMOWN_EINVAL;
    uint64_t page = vmown_arena_page_size(flags), max;
    if (page == 0) return VMOWN_EARENA_NOHUGE;
    int rc = round_sizes(page, size, max_size, path ? DEFAULT_FILE_RESERVE : 0, &max);
    if (rc < 0) return rc;
    size = round_up(size, page);
    int fd = -1;
    if (path && (rc = vmown__file_create(path, mode, &fd)) < 0) return rc;
    vmown_arena *a = NULL;
    if (fd >= 0) rc = vmown__file_resize(fd, page + size);
    if (rc == 0) rc = reserve(fd, page, max, address, flags, timeout_ns, &a);
    if (rc == 0) {
        struct vmown__arena_header *h = hdr(a);
        uint64_t self = me();
        /* Phase 1: nobody reads a half-written header as ready. */
        atomic_store_explicit(&h->state, VMOWN__ARENA_INITIALIZING, SEQ_CST);
        /* The creator before the magic: find_stale never sees ours without it. */
        atomic_store_explicit(&h->creator, self, RELAXED);
        atomic_store_explicit(&h->creator_start_time, start_time_of_me(WHO_PID(self)), RELAXED);
        atomic_store_explicit(&h->magic, VMOWN__ARENA_MAGIC, RELEASE);
        atomic_store_explicit(&h->version, VMOWN__ARENA_VERSION, RELAXED);
        atomic_store_explicit(&h->header_size, (uint32_t)sizeof *h, RELAXED);
        atomic_store_explicit(&h->npeers, VMOWN__ARENA_PEERS, RELAXED);
        atomic_store_explicit(&h->page_size, page, RELAXED);
        atomic_store_explicit(&h->size, size, RELAXED);
        atomic_store_explicit(&h->allocated, 0, RELAXED);
        atomic_store_explicit(&h->lock, 0, RELAXED);
        atomic_store_explicit(&h->flags, flags & VMOWN_ARENA_HUGE, RELAXED);
        rc = map_to(a, size);
        /* Phase 2: publish. */
        if (rc == 0) atomic_store_explicit(&h->state, VMOWN__ARENA_READY, RELEASE);
    }
    if (rc < 0) {
        if (a) vmown_arena_close(a);
        else if (fd >= 0) vmown__file_close(fd);
        if (fd >= 0) vmown__file_unlink(path);  /* ours: made with O_EXCL just now */
        return rc;
    }
    *out = a;
    return 0;
}

/* Read the header with pread until it is READY or the deadline passes. */
static int wait_ready(int fd, uint64_t page, int64_t timeout_ns, struct fields *f) {
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    for (;;) {
        struct vmown__arena_header copy;
        uint64_t length = 0;
        memset(&copy, 0, sizeof copy);
        int rc = file_length(fd, &length);
        if (rc == 0) rc = vmown__file_read(fd, &copy, sizeof copy, 0);
        if (rc < 0) return rc;
        read_fields(&copy, f);
        rc = check_fields(f, page, length);
        bool short_file = length < page;
        bool creating = rc == VMOWN_EARENA_NOTREADY ||
                        (short_file && (f->magic == 0 || f->magic == VMOWN__ARENA_MAGIC));
        if (!creating) return rc;
        if (deadline >= 0 && vmown__now_ns() >= deadline)
            return short_file ? VMOWN_EARENA_TRUNCATED : VMOWN_EARENA_NOTREADY;
        vmown__sleep_ns(POLL_NS);
    }
}

int vmown_arena_open(const char *path, uint64_t max_size, uint32_t allowed_mode, void *address, uint32_t flags,
                     int64_t timeout_ns, vmown_arena **out) {
    if (!path || !out || (allowed_mode & ~0777u) || (flags & VMOWN_ARENA_HUGE)) return VMOWN_EINVAL;
    uint64_t page = vmown_page_size(), max = 0, size = 0, length = 0;
    int fd;
    int rc = vmown__file_open(path, 1, &fd);
    if (rc == -ELOOP) return VMOWN_EARENA_SYMLINK;
    if (rc == -EISDIR || rc == -ENXIO) return VMOWN_EARENA_NOTREGULAR;
    if (rc < 0) return rc;
    struct vmown__file_status st;
    struct fields f;
    vmown_arena *a = NULL;
    rc = vmown__file_stat(fd, &st);
    if (rc == 0 && !st.regular) rc = VMOWN_EARENA_NOTREGULAR;
    if (rc == 0 && st.uid != vmown__euid()) rc = VMOWN_EARENA_OWNER;
    /* 07777: setuid, setgid and sticky bits are never allowed (allowed_mode <= 0777). */
    if (rc == 0 && (st.mode & 07777 & ~allowed_mode)) rc = VMOWN_EARENA_MODE;
    if (rc == 0) rc = wait_ready(fd, page, timeout_ns, &f);
    if (rc == 0) rc = round_sizes(page, f.size, max_size, DEFAULT_FILE_RESERVE, &max);
    if (rc == 0) rc = reserve(fd, page, max, address, flags, timeout_ns, &a);
    if (rc == 0) {
        /* Mapped now: check again what the mapping says, then map the data. */
        read_fields(hdr(a), &f);
        if ((rc = file_length(fd, &length)) == 0) rc = check_fields(&f, page, length);
        if (rc == VMOWN_EARENA_NOTREADY) rc = VMOWN_EARENA_CORRUPT;  /* was READY a moment ago */
        if (rc == 0 && (rc = lock_header(a)) == 0) {
            if ((rc = read_size(a, &size)) == 0) rc = map_to(a, size);
            unlock_header(a);
        }
    }
    if (rc < 0) {
        if (a) vmown_arena_close(a);
        else vmown__file_close(fd);
        return rc;
    }
    *out = a;
    return 0;
}

/* A peer may ftruncate the file under our mapping; touching a page past the
 * new end raises SIGBUS.  Checked (one fstat) before every access this file
 * makes, so the operations report VMOWN_EARENA_CUT instead.  A truncation
 * between the check and the access still faults: only the peer can prevent
 * that (arena.c notes, and the README's Hardening section say why no SIGBUS
 * handler is installed). */
static int intact(vmown_arena *a, uint64_t bytes) {
    if (a->fd < 0) return 0;  /* anonymous memory cannot be truncated */
    uint64_t length = 0;
    int rc = file_length(a->fd, &length);
    if (rc < 0) return rc;
    return length < a->page + bytes ? VMOWN_EARENA_CUT : 0;
}

int vmown_arena_check(vmown_arena *a) {
    return a ? intact(a, atomic_load_explicit(&a->mapped, ACQUIRE)) : VMOWN_EINVAL;
}

int vmown_arena_close(vmown_arena *a) {
    if (!a) return 0;
    /* Callers stop touching the memory before this: the entry goes first
     * (unless the header page is gone with a truncated file). */
    uint64_t self = me();
    if (a->pid == WHO_PID(self) && a->peer >= 0 && intact(a, 0) == 0)
        atomic_compare_exchange_strong_explicit(&hdr(a)->peers[a->peer].who, &self, 0, RELEASE, RELAXED);
    int rc = vmown_unmap(a->base, a->reserved_len);
    if (a->fd >= 0) vmown__file_close(a->fd);
    free(a);
    return rc;
}

int vmown_arena_adopt(vmown_arena *a) {
    int rc = a ? intact(a, 0) : VMOWN_EINVAL;
    return rc < 0 ? rc : adopted(a);
}

void *vmown_arena_data(const vmown_arena *a) { return data(a); }

int vmown_arena_fd(const vmown_arena *a) { return a->fd; }

uint64_t vmown_arena_mapped(const vmown_arena *a) { return atomic_load_explicit(&a->mapped, ACQUIRE); }

uint64_t vmown_arena_size(const vmown_arena *a) {
    if (intact((vmown_arena *)a, 0) < 0) return 0;
    return atomic_load_explicit(&hdr(a)->size, ACQUIRE);
}

/* ---- resizing and allocation ---- */

/* Lock, after making sure a forked child has its own peer entry. */
static int begin(vmown_arena *a) {
    int rc = vmown_arena_check(a);
    if (rc == 0) rc = adopted(a);
    return rc < 0 ? rc : lock_header(a);
}

int vmown_arena_refresh(vmown_arena *a) {
    uint64_t size;
    int rc = begin(a);
    if (rc < 0) return rc;
    if ((rc = read_size(a, &size)) == 0) rc = map_to(a, size < a->max_size ? size : a->max_size);
    unlock_header(a);
    return rc == 0 && size > a->max_size ? VMOWN_EARENA_MAXSIZE : rc;
}

int vmown_arena_grow(vmown_arena *a, uint64_t new_size) {
    if (new_size == 0 || new_size > MAX_DATA) return VMOWN_EINVAL;
    new_size = round_up(new_size, a->page);
    if (new_size > a->max_size) return VMOWN_EARENA_MAXSIZE;
    uint64_t size = 0, length = 0;
    int rc = begin(a);
    if (rc < 0) return rc;
    if ((rc = read_size(a, &size)) == 0 && new_size > size) {
        if (a->fd >= 0 && (rc = file_length(a->fd, &length)) == 0 && length < a->page + new_size)
            rc = vmown__file_resize(a->fd, a->page + new_size);
        if (rc == 0 && (rc = map_to(a, new_size)) == 0) atomic_store_explicit(&hdr(a)->size, new_size, RELEASE);
    } else if (rc == 0) {
        rc = map_to(a, size < a->max_size ? size : a->max_size);  /* a peer grew it further */
    }
    unlock_header(a);
    return rc;
}

int vmown_arena_shrink(vmown_arena *a, uint64_t new_size) {
    if (new_size == 0 || new_size > MAX_DATA) return VMOWN_EINVAL;
    new_size = round_up(new_size, a->page);
    struct vmown__arena_header *h = hdr(a);
    uint64_t size;
    int rc = begin(a);
    if (rc < 0) return rc;
    if ((rc = read_size(a, &size)) < 0 || new_size >= size) {
        unlock_header(a);
        return rc < 0 ? rc : new_size == size ? 0 : VMOWN_EINVAL;
    }
    /* Map all of it first, so that the discard below reaches every page. */
    if ((rc = map_to(a, size)) == 0 && atomic_load_explicit(&h->allocated, RELAXED) > new_size)
        rc = VMOWN_EARENA_ALLOCATED;
    for (int32_t i = 0; rc == 0 && i < VMOWN__ARENA_PEERS; i++) {
        if (i == a->peer) continue;
        uint64_t who = atomic_load_explicit(&h->peers[i].who, ACQUIRE);
        if (who == 0 || atomic_load_explicit(&h->peers[i].mapped_size, RELAXED) <= new_size) continue;
        if (alive(who)) rc = VMOWN_EARENA_BUSY;
        else atomic_compare_exchange_strong_explicit(&h->peers[i].who, &who, 0, RELAXED, RELAXED);
    }
    if (rc == 0) {
        atomic_store_explicit(&h->size, new_size, RELEASE);
        rc = unmap_to(a, new_size);
        if (rc == 0 && a->fd >= 0) rc = vmown__file_resize(a->fd, a->page + new_size);
    }
    unlock_header(a);
    return rc;
}

int vmown_arena_alloc(vmown_arena *a, uint64_t nbytes, uint64_t *offset) {
    if (!offset || nbytes == 0 || nbytes > MAX_DATA) return VMOWN_EINVAL;
    uint64_t need = round_up(nbytes, a->page), size;
    struct vmown__arena_header *h = hdr(a);
    int rc = begin(a);
    if (rc < 0) return rc;
    if ((rc = read_size(a, &size)) == 0) {
        uint64_t top = atomic_load_explicit(&h->allocated, RELAXED);
        if (top > size || top % a->page) rc = VMOWN_EARENA_CORRUPT;
        else if (need > size - top) rc = VMOWN_EARENA_FULL;
        else {
            atomic_store_explicit(&h->allocated, top + need, RELEASE);
            *offset = top;
            /* Best effort: make the new block reachable here at once. */
            (void)map_to(a, size < a->max_size ? size : a->max_size);
        }
    }
    unlock_header(a);
    return rc;
}

int vmown_arena_reserve(vmown_arena *a, uint64_t offset, uint64_t nbytes) {
    if (!a || nbytes == 0 || nbytes > MAX_DATA || offset > MAX_DATA || offset % a->page) return VMOWN_EINVAL;
    uint64_t need = round_up(nbytes, a->page), size;
    struct vmown__arena_header *h = hdr(a);
    int rc = begin(a);
    if (rc < 0) return rc;
    if ((rc = read_size(a, &size)) == 0) {
        uint64_t top = atomic_load_explicit(&h->allocated, RELAXED);
        if (top > size || top % a->page) rc = VMOWN_EARENA_CORRUPT;
        else if (offset < top) rc = VMOWN_EARENA_OVERLAP;
        else if (offset > size || need > size - offset) rc = VMOWN_EARENA_FULL;
        else atomic_store_explicit(&h->allocated, offset + need, RELEASE);
    }
    unlock_header(a);
    return rc;
}

/* ---- atomics on data words ---- */

#define ATOMIC_OP(T)                                                                                 \
    do {                                                                                             \
        T *w = (T *)(data(a) + offset), expected = (T)value;                                        \
        switch (op) {                                                                                \
        case VMOWN_ARENA_LOAD: *old = __atomic_load_n(w, __ATOMIC_SEQ_CST); break;                   \
        case VMOWN_ARENA_STORE: *old = 0; __atomic_store_n(w, (T)value, __ATOMIC_SEQ_CST); break;    \
        case VMOWN_ARENA_EXCHANGE: *old = __atomic_exchange_n(w, (T)value, __ATOMIC_SEQ_CST); break; \
        case VMOWN_ARENA_CAS:                                                                        \
            swapped = __atomic_compare_exchange_n(w, &expected, (T)desired, 0, __ATOMIC_SEQ_CST,     \
                                                  __ATOMIC_SEQ_CST);                                 \
            *old = expected;                                                                         \
            break;                                                                                   \
        case VMOWN_ARENA_FETCH_ADD: *old = __atomic_fetch_add(w, (T)value, __ATOMIC_SEQ_CST); break; \
        default: *old = __atomic_exchange_n(w, (T)1, __ATOMIC_SEQ_CST); break; /* test-and-set */    \
        }                                                                                            \
    } while (0)

int vmown_arena_atomic(vmown_arena *a, uint32_t op, uint64_t offset, uint32_t width, uint64_t value,
                       uint64_t desired, uint64_t *old) {
    if (!a || !old || (width != 4 && width != 8) || op > VMOWN_ARENA_TEST_AND_SET) return VMOWN_EINVAL;
    if (offset % width) return VMOWN_EARENA_ALIGN;
    uint64_t mapped = atomic_load_explicit(&a->mapped, ACQUIRE);
    if (offset >= mapped || mapped - offset < width) return VMOWN_EARENA_RANGE;
    int rc = intact(a, offset + width);
    if (rc < 0) return rc;
    bool swapped = false;
    if (width == 8) ATOMIC_OP(uint64_t);
    else ATOMIC_OP(uint32_t);
    return swapped;
}

/* ---- observers ---- */

static void fill_info(const struct fields *f, const struct vmown__arena_header *h, vmown_arena_info *out) {
    memset(out, 0, sizeof *out);
    out->size = f->size;
    out->allocated = f->allocated;
    out->page_size = f->page_size;
    out->state = f->state;
    out->creator_pid = WHO_PID(f->creator);
    out->creator_start_time = f->creator_start_time;
    out->creator_alive = alive(f->creator);
    for (uint32_t i = 0; i < VMOWN__ARENA_PEERS; i++)
        out->live_peers += alive(atomic_load_explicit(&h->peers[i].who, RELAXED));
}

int vmown_arena_info_read(vmown_arena *a, vmown_arena_info *out) {
    int rc = intact(a, 0);
    if (rc < 0) return rc;
    struct fields f;
    read_fields(hdr(a), &f);
    fill_info(&f, hdr(a), out);
    out->mapped = atomic_load_explicit(&a->mapped, ACQUIRE);
    out->max_size = a->max_size;
    return 0;
}

int vmown_arena_probe(const char *path, vmown_arena_info *out) {
    if (!path || !out) return VMOWN_EINVAL;
    int fd;
    int rc = vmown__file_open(path, 0, &fd);
    if (rc == -ELOOP) return VMOWN_EARENA_SYMLINK;
    if (rc < 0) return rc;
    struct vmown__file_status st;
    struct vmown__arena_header copy;
    memset(&copy, 0, sizeof copy);
    if ((rc = vmown__file_stat(fd, &st)) == 0 && !st.regular) rc = VMOWN_EARENA_NOTREGULAR;
    if (rc == 0) rc = vmown__file_read(fd, &copy, sizeof copy, 0);
    vmown__file_close(fd);
    if (rc < 0) return rc;
    struct fields f;
    read_fields(&copy, &f);
    if (f.magic != VMOWN__ARENA_MAGIC) return VMOWN_EARENA_BADMAGIC;
    if (f.version != VMOWN__ARENA_VERSION) return VMOWN_EARENA_VERSION;
    fill_info(&f, &copy, out);
    return 0;
}
