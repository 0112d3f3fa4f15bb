/* block.c -- a block's set-up, attaching to it, registering threads, and
 * reading it (observers and statistics).
 *
 * Every field that lives in shared memory is untrusted when read back: the
 * process-local handle (vmown_vm) keeps trusted copies of the sizes that bound
 * every index.
 */
#define _GNU_SOURCE
#include "vmown_core.h"

#include <errno.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static size_t header_size(void) { return offsetof(struct vmown__block, slots); }

uint32_t vmown_layout_version(void) { return VMOWN__LAYOUT_VERSION; }

void vmown_layout_read(vmown_layout *out) {
    *out = (vmown_layout){
        .owner_word = offsetof(struct vmown__block, owner_word),
        .waiters_and_hb_asleep = offsetof(struct vmown__block, waiters_and_hb_asleep),
        .lock = offsetof(struct vmown__block, lock),
        .lock_size = sizeof(vmown__lock_word),
        .queue_head = offsetof(struct vmown__block, head),
        .queue_tail = offsetof(struct vmown__block, tail),
        .idle_head = offsetof(struct vmown__block, idle_head),
        .slots = offsetof(struct vmown__block, slots),
        .slot_size = sizeof(struct vmown_slot),
        .slot_state = offsetof(struct vmown_slot, state),
        .slot_next = offsetof(struct vmown_slot, next),
        .slot_pid = offsetof(struct vmown_slot, pid),
        .slot_sem = offsetof(struct vmown_slot, sem),
        .sem_size = sizeof(vmown__sem),
    };
}

size_t vmown_block_size(uint32_t nslots) {
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

/* ---- public ---- */

int vmown_vm_init(void *mem, size_t len, uint32_t nslots, vmown_vm **out) {
    size_t page = vmown_page_size();
    if (!mem || !out || (uintptr_t)mem % page || nslots == 0 || nslots > VMOWN__MAX_SLOTS ||
        len < vmown_block_size(nslots))
        return VMOWN_EINVAL;
    vmown_vm *vm = malloc(sizeof *vm);
    if (!vm) return -ENOMEM;
    struct vmown__block *b = mem;
    /* Phase 1: INITIALIZING first, so that an attacher never reads a
     * half-written header as ready. */
    atomic_store_explicit(&b->hdr.state, VMOWN__INITIALIZING, SEQ_CST);
    memset((char *)mem + sizeof b->hdr, 0, vmown_block_size(nslots) - sizeof b->hdr);
    int rc = vmown__lock_init(&b->lock);
    if (rc == 0) rc = vmown__sem_init(&b->hb_sem);
    if (rc < 0) { free(vm); return rc; }
    atomic_store_explicit(&b->hdr.magic, VMOWN__MAGIC, RELAXED);
    atomic_store_explicit(&b->hdr.version, VMOWN__LAYOUT_VERSION, RELAXED);
    atomic_store_explicit(&b->hdr.header_size, (uint32_t)header_size(), RELAXED);
    atomic_store_explicit(&b->hdr.slot_size, (uint32_t)sizeof(struct vmown_slot), RELAXED);
    atomic_store_explicit(&b->hdr.nslots, nslots, RELAXED);
    atomic_store_explicit(&b->hdr.total_size, vmown_block_size(nslots), RELAXED);
    atomic_store_explicit(&b->hdr.sem_size, (uint32_t)sizeof(vmown__sem), RELAXED);
    atomic_store_explicit(&b->hdr.lock_size, (uint32_t)sizeof(vmown__lock_word), RELAXED);
    atomic_store_explicit(&b->hdr.creator_pid, (int32_t)getpid(), RELAXED);
    /* Phase 2: publish. */
    atomic_store_explicit(&b->hdr.state, VMOWN__READY, RELEASE);
    *vm = (vmown_vm){.block = b, .len = len, .nslots = nslots};
    *out = vm;
    return 0;
}

int vmown_vm_attach(void *mem, size_t len, vmown_vm **out) {
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
        atomic_load_explicit(&b->hdr.sem_size, RELAXED) != sizeof(vmown__sem) ||
        atomic_load_explicit(&b->hdr.lock_size, RELAXED) != sizeof(vmown__lock_word) || nslots == 0 ||
        nslots > VMOWN__MAX_SLOTS || total != vmown_block_size(nslots) || total > len)
        return VMOWN_ESIZES;
    vmown_vm *vm = malloc(sizeof *vm);
    if (!vm) return -ENOMEM;
    *vm = (vmown_vm){.block = b, .len = len, .nslots = nslots};
    *out = vm;
    return 0;
}

int vmown_register(vmown_vm *vm) { return vmown_register_timed(vm, -1); }

int vmown_register_timed(vmown_vm *vm, int64_t timeout_ns) {
    struct vmown__block *b = vm->block;
    int32_t pid;
    uint64_t start_time;
    identity(&pid, &start_time);
    int rc = vmown__lock_block_until(vm, timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns);
    if (rc < 0) return rc;
    uint32_t hint = atomic_load_explicit(&b->alloc_hint, RELAXED) % vm->nslots, found = 0;
    for (uint32_t k = 0; k < vm->nslots && !found; k++) {
        uint32_t i = 1 + (hint + k) % vm->nslots;
        if (atomic_load_explicit(&slot_of(vm, i)->state, RELAXED) == VMOWN_SLOT_FREE) found = i;
    }
    if (!found) {
        /* Full: slots of processes that died in a callout are reclaimable. */
        uint32_t granted;
        rc = vmown__reap_dead_locked(vm, &granted);
        vmown__post_granted(vm, granted);  /* posting under the lock: rare, and safe */
        if (rc > 0) {
            for (uint32_t i = 1; i <= vm->nslots && !found; i++)
                if (atomic_load_explicit(&slot_of(vm, i)->state, RELAXED) == VMOWN_SLOT_FREE) found = i;
        }
        if (!found) {
            unlock_block(vm);
            return rc < 0 ? rc : VMOWN_ENOSLOTS;
        }
    }
    struct vmown_slot *s = slot_of(vm, found);
    rc = vmown__sem_init(&s->sem);
    if (rc < 0) {
        unlock_block(vm);
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
#define RESET(name) atomic_store_explicit(&s->name, 0, RELAXED);
    VMOWN__SLOT_COUNTERS(RESET)
#undef RESET
    atomic_store_explicit(&s->state, VMOWN_SLOT_RUNNING, RELEASE);
    atomic_store_explicit(&b->alloc_hint, found, RELAXED);
    atomic_fetch_add_explicit(&b->in_use, 1, RELAXED);
    unlock_block(vm);
    return (int)found;
}

int vmown__unregister(vmown_vm *vm, uint32_t me) {
    if (!valid_index(vm, me)) return VMOWN_EBADSLOT;
    struct vmown__block *b = vm->block;
    struct vmown_slot *s = slot_of(vm, me);
    uint32_t st = atomic_load_explicit(&s->state, ACQUIRE);
    if (st == VMOWN_SLOT_FREE || atomic_load_explicit(&s->pid, RELAXED) != (int32_t)getpid())
        return VMOWN_EBADSLOT;
    if (st != VMOWN_SLOT_RUNNING && st != VMOWN_SLOT_LEFT && st != VMOWN_SLOT_LEFT_IDLE) return VMOWN_EBUSY;
    if (VMOWN__HOLDER(atomic_load_explicit(&b->owner_word, ACQUIRE)) == (int32_t)me) {
        int rc = vmown_disown(vm, me, 0);
        if (rc < 0) return rc;
    }
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    if ((rc = vmown__unlink_left_locked(vm, me)) < 0) {  /* it left a list and is still linked there */
        unlock_block(vm);
        return rc;
    }
    vmown__fold_counters_locked(vm, s);
    vmown__sem_destroy(&s->sem);
    atomic_store_explicit(&s->state, VMOWN_SLOT_FREE, RELEASE);
    atomic_fetch_sub_explicit(&b->in_use, 1, RELAXED);
    unlock_block(vm);
    return 0;
}

/* ---- observers ---- */

uint64_t vmown_owner_word(const vmown_vm *vm) { return atomic_load_explicit(&vm->block->owner_word, ACQUIRE); }
/* A pending soft grant reads as its holder, as a hard grant names its waiter
 * before it wakes. */
int32_t vmown_owner(const vmown_vm *vm) { return VMOWN__HOLDER(vmown_owner_word(vm)); }
uint32_t vmown_epoch(const vmown_vm *vm) { return VMOWN__EPOCH(vmown_owner_word(vm)); }
uint32_t vmown_waiters(const vmown_vm *vm) {
    return (uint32_t)(atomic_load_explicit(&vm->block->waiters_and_hb_asleep, RELAXED) & VMOWN__WAITERS_MASK);
}
void vmown__mark_broken(vmown_vm *vm) {
    struct vmown__block *b = vm->block;
    uint32_t ready = VMOWN__READY;
    if (!atomic_compare_exchange_strong_explicit(&b->hdr.state, &ready, VMOWN__BROKEN, memory_order_acq_rel, ACQUIRE)) {
        atomic_store_explicit(&b->hdr.state, VMOWN__BROKEN, RELEASE);
        return;  /* marked before (or never ready): its marking woke the sleepers */
    }
    /* Wake every thread asleep on the block.  A post to a semaphore a peer
     * wrote over fails: that one is left. */
    for (uint32_t i = 1; i <= vm->nslots; i++) (void)vmown__sem_post(&b->slots[i].sem);
    (void)vmown__sem_post(&b->hb_sem);
}

int vmown_broken(const vmown_vm *vm) { return is_broken(vm); }
const uint32_t *vmown_waiters_word(const vmown_vm *vm) {
    /* The low half of `waiters_and_hb_asleep` (VMOWN__WAITERS_MASK) in this byte order. */
    const uint32_t *halves = (const uint32_t *)(const void *)&vm->block->waiters_and_hb_asleep;
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    return halves + 1;
#else
    return halves;
#endif
}

uint64_t *vmown_work_words(vmown_vm *vm) {
    /* An _Atomic uint64_t has the layout of a uint64_t; the owner is its one
     * writer, and an aligned 64-bit store is atomic on every target built for. */
    return (uint64_t *)(void *)vm->block->work;
}

uint32_t vmown_nslots(const vmown_vm *vm) { return vm->nslots; }
uint32_t vmown_slots_in_use(const vmown_vm *vm) { return atomic_load_explicit(&vm->block->in_use, RELAXED); }

/* vmown_counters is the slots' counters, then reaped: checked here, so that
 * a counter added to one list and not the other does not compile. */
#define NAME(name) #name,
static const char *const counter_names[] = {VMOWN__SLOT_COUNTERS(NAME) "reaped"};
#undef NAME
_Static_assert(sizeof(vmown_counters) == sizeof counter_names / sizeof *counter_names * sizeof(uint64_t),
               "vmown_counters and VMOWN__SLOT_COUNTERS differ");
#define AT(name) +1
_Static_assert(offsetof(vmown_counters, reaped) == (0 VMOWN__SLOT_COUNTERS(AT)) * sizeof(uint64_t),
               "reaped is not the last counter");
#undef AT

uint32_t vmown_counter_count(void) { return sizeof counter_names / sizeof *counter_names; }

const char *vmown_counter_name(uint32_t i) { return i < vmown_counter_count() ? counter_names[i] : NULL; }

static const char *const slot_state_names[] = {
    [VMOWN_SLOT_FREE] = "free",       [VMOWN_SLOT_RUNNING] = "running", [VMOWN_SLOT_WAITING] = "waiting",
    [VMOWN_SLOT_GRANTED] = "granted", [VMOWN_SLOT_PARKED] = "parked",   [VMOWN_SLOT_LEFT] = "left",
    [VMOWN_SLOT_LEFT_IDLE] = "left_idle",
};
_Static_assert(sizeof slot_state_names / sizeof *slot_state_names == VMOWN_SLOT_LEFT_IDLE + 1,
               "a slot state without a name");

uint32_t vmown_slot_state_count(void) { return sizeof slot_state_names / sizeof *slot_state_names; }

const char *vmown_slot_state_name(uint32_t i) { return i < vmown_slot_state_count() ? slot_state_names[i] : NULL; }

int vmown_counters_read(const vmown_vm *vm, vmown_counters *out) {
    *out = vm->block->folded;
    out->reaped = atomic_load_explicit(&vm->block->reaped, RELAXED);
    for (uint32_t i = 1; i <= vm->nslots; i++) {
        const struct vmown_slot *s = &vm->block->slots[i];
        if (atomic_load_explicit(&s->state, RELAXED) == VMOWN_SLOT_FREE) continue;
#define ADD(name) out->name += atomic_load_explicit(&s->name, RELAXED);
        VMOWN__SLOT_COUNTERS(ADD)
#undef ADD
    }
    return 0;
}

int vmown_slot_read(const vmown_vm *vm, uint32_t i, vmown_slot_info *out) {
    if (!valid_index(vm, i)) return VMOWN_EBADSLOT;
    const struct vmown_slot *s = &vm->block->slots[i];
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

/* Under the lock, so it unlinks the slots that left by themselves as it
 * meets them: what it returns is what a grant would choose from. */
int vmown_queue_read(vmown_vm *vm, uint32_t *out, uint32_t cap) {
    int rc = vmown__lock_block(vm);
    if (rc < 0) return rc;
    uint32_t cur, next, n = 0;
    if ((rc = vmown__read_link(vm, &vm->block->head, &cur)) < 0) goto done;
    for (uint32_t steps = 0; cur && n < cap; steps++) {
        if (steps > vm->nslots) { mark_broken(vm); rc = VMOWN_EBROKEN; goto done; }
        if ((rc = vmown__read_link(vm, &slot_of(vm, cur)->next, &next)) < 0) goto done;
        if (atomic_load_explicit(&slot_of(vm, cur)->state, RELAXED) == VMOWN_SLOT_LEFT) {
            if ((rc = vmown__unlink_left_locked(vm, cur)) < 0) goto done;
        } else {
            out[n++] = cur;
        }
        cur = next;
    }
    rc = (int)n;
done:
    unlock_block(vm);
    return rc;
}
