/* workers.c -- the worker pool: threads started and parked in C.
 *
 * Notes about the implementation
 * ------------------------------
 * The heartbeat can hand the VM only to a parked worker, so a program whose
 * callouts block needs a thread per blocked callout, started before it is
 * needed.  A thread started by the host language runs its own start-up code
 * under the interpreter's lock (CPython: the Thread bookkeeping, the new
 * thread's first frames), and the VM's owner holds that lock between its
 * callouts: each start then costs the VM a lock hand-over or two, at the
 * worst moment (docs/design-log.md).
 *
 * So the pool starts threads in C and parks them at once on the idle stack
 * (vmown_park_new), registered and bound but with no interpreter state.  A
 * worker enters the host language only when it is first given the VM
 * (entry(arg, slot)), that is when it is the one thread that may run VM
 * code, so its start-up competes with nobody.  Threads that are never given
 * the VM exit after idle_timeout_ns if another worker is parked (one spare
 * stays), without ever having entered.
 *
 * The spawner.  vmown_workers_want, called by the owner, only counts under
 * the pool's mutex and posts `wake`; the spawner thread does the
 * pthread_create (~30-60 us) off the VM.  Counting: live = started and not
 * exited; starting = started and not yet parked; wanted = asked and not yet
 * started.  An ask for `want` starts want - idle - starting - wanted more,
 * cut to max_workers - live - wanted (a cut counts as a cap hit).  Because
 * a worker leaves `starting` just before it parks, a start may be asked
 * twice for one need at most: a spare, never a shortage.
 *
 * Exiting.  Every worker thread is joinable: as its last act it pushes its
 * record on the `dead` list and signals `exited` under the mutex; the spawner
 * (at each wake) and vmown_workers_join reap the list with pthread_join, so
 * when join reports 0 live no pool thread touches the block any more and the
 * caller may free it.  Stopping: `stop` is set, the spawner exits, and join
 * unparks parked workers every round (a worker that was about to park when
 * one round went by is woken by the next).
 *
 * Signals: the spawner blocks them all; a worker unblocks all but those of
 * the program (SIGINT, SIGTERM, ...: vmown__worker_thread_setup), which the
 * kernel then delivers to the main thread, where Python runs its handlers.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"

#include <errno.h>
#include <stdlib.h>
#include <unistd.h>

#define JOIN_ROUND_NS 10000000  /* 10 ms between unpark rounds while joining */

struct worker {
    vmown_vm *vm;
    pthread_t thread;  /* set by the worker itself, under mu, as it exits */
    struct worker *next;
};

struct vmown__pool {
    pthread_mutex_t mu;
    pthread_cond_t exited;  /* broadcast as each worker exits */
    vmown__sem wake;        /* posted to wake the spawner */
    pthread_t spawner;
    vmown_worker_entry entry;
    void *arg;
    uint32_t max_workers;
    int64_t idle_timeout_ns;
    _Atomic int stop;
    _Atomic bool running;  /* written by the thread that starts and stops the pool */
    int32_t pid;           /* the process whose threads these are (fork) */
    /* under mu */
    uint32_t live, high, starting, wanted;
    uint64_t started, entered, cap_hits, failures;
    int32_t last_error;
    struct worker *dead;  /* exited, not yet joined */
};

static void fail_locked(struct vmown__pool *p, int err) {
    p->failures++;
    p->last_error = err;
}

static void *worker_main(void *arg) {
    struct worker *me = arg;
    vmown_vm *vm = me->vm;
    struct vmown__pool *p = vm->pool;
    vmown__worker_thread_setup("vmown-worker");
    int slot = vmown_register(vm);
    if (slot > 0) {
        (void)vmown_bind_thread(vm, (uint32_t)slot);
        vmown__mutex_lock(&p->mu);
        p->starting--;
        vmown__mutex_unlock(&p->mu);
        while (!atomic_load_explicit(&p->stop, memory_order_acquire)) {
            int rc = vmown_park_new(vm, (uint32_t)slot, p->idle_timeout_ns);
            if (rc == 1) {  /* given the VM */
                vmown__mutex_lock(&p->mu);
                p->entered++;
                vmown__mutex_unlock(&p->mu);
                p->entry(p->arg, (uint32_t)slot);
                break;
            }
            if (rc == VMOWN_ETIMEDOUT && atomic_load_explicit(&vm->block->idle_count, memory_order_relaxed) > 0)
                break;  /* surplus: another worker is parked */
            if (rc < 0 && rc != VMOWN_ETIMEDOUT && rc != VMOWN_EINTR) {
                vmown__mutex_lock(&p->mu);
                fail_locked(p, rc);
                vmown__mutex_unlock(&p->mu);
                break;
            }
        }
        (void)vmown_bind_thread(NULL, 0);
        (void)vmown__unregister(vm, (uint32_t)slot);  /* unbound just above */
    }
    vmown__mutex_lock(&p->mu);
    if (slot <= 0) {
        p->starting--;
        fail_locked(p, slot);
    }
    p->live--;
    me->thread = vmown__thread_self();
    me->next = p->dead;
    p->dead = me;
    vmown__cond_broadcast(&p->exited);
    vmown__mutex_unlock(&p->mu);
    return NULL;
}

/* Join the workers that have exited. */
static void reap(struct vmown__pool *p) {
    vmown__mutex_lock(&p->mu);
    struct worker *dead = p->dead;
    p->dead = NULL;
    vmown__mutex_unlock(&p->mu);
    while (dead) {
        struct worker *next = dead->next;
        (void)vmown__thread_join(dead->thread);
        free(dead);
        dead = next;
    }
}

static void *spawner_main(void *arg) {
    vmown_vm *vm = arg;
    struct vmown__pool *p = vm->pool;
    vmown__thread_name("vmown-spawner");
    for (;;) {
        (void)vmown__sem_wait(&p->wake, -1);
        reap(p);
        vmown__mutex_lock(&p->mu);
        while (p->wanted > 0 && !atomic_load_explicit(&p->stop, memory_order_relaxed)) {
            p->wanted--;
            struct worker *w = malloc(sizeof *w);
            if (!w) {
                fail_locked(p, -ENOMEM);
                p->wanted = 0;
                break;
            }
            *w = (struct worker){.vm = vm};
            p->live++;
            p->starting++;
            p->started++;
            if (p->live > p->high) p->high = p->live;
            vmown__mutex_unlock(&p->mu);
            pthread_t thread;
            int rc = vmown__thread_start(&thread, worker_main, w);
            vmown__mutex_lock(&p->mu);
            if (rc != 0) {  /* the OS refused a thread: try again at the next ask */
                p->live--;
                p->starting--;
                p->started--;
                fail_locked(p, rc);
                p->wanted = 0;
                free(w);
            }
        }
        bool stop = atomic_load_explicit(&p->stop, memory_order_relaxed);
        vmown__mutex_unlock(&p->mu);
        if (stop) return NULL;
    }
}

/* vm's pool if it is this process's.  A child forked while the pool ran
 * holds a copy of it: threads the child does not have, and a mutex copied in
 * whatever state one of them left it (held: a child that locked it waited
 * for ever).  The child never touches that copy: to it there is no pool, and
 * freeing forgets the copy (the child cannot free what its threads did not
 * allocate, and they never exit here). */
static struct vmown__pool *pool_here(const vmown_vm *vm) {
    struct vmown__pool *p = vm->pool;
    return p && p->pid == (int32_t)getpid() ? p : NULL;
}

/* Free a pool that holds no thread. */
static void destroy(struct vmown__pool *p) {
    vmown__sem_destroy(&p->wake);
    vmown__cond_destroy(&p->exited);
    vmown__mutex_destroy(&p->mu);
    free(p);
}

int vmown_workers_start(vmown_vm *vm, vmown_worker_entry entry, void *arg, uint32_t max_workers,
                        int64_t idle_timeout_ns) {
    if (!entry || max_workers == 0) return VMOWN_EINVAL;
    if (pool_here(vm) && vm->pool->running) return VMOWN_EBUSY;
    if (!vmown__workers_free(vm)) return VMOWN_EBUSY;  /* a stopped pool whose workers live */
    struct vmown__pool *p = calloc(1, sizeof *p);
    if (!p) return -ENOMEM;
    int rc = vmown__sem_init(&p->wake);
    if (rc < 0) {
        free(p);
        return rc;
    }
    vmown__mutex_init(&p->mu);
    vmown__cond_init(&p->exited);
    p->entry = entry;
    p->arg = arg;
    p->max_workers = max_workers;
    p->idle_timeout_ns = idle_timeout_ns;
    p->pid = (int32_t)getpid();
    vm->pool = p;
    rc = vmown__thread_start(&p->spawner, spawner_main, vm);
    if (rc != 0) {
        vm->pool = NULL;
        destroy(p);
        return rc;
    }
    p->running = true;
    return 0;
}

int64_t vmown_workers_want(vmown_vm *vm, uint32_t want) {
    struct vmown__pool *p = pool_here(vm);
    if (!p || !p->running) return VMOWN_EINVAL;
    uint32_t idle = atomic_load_explicit(&vm->block->idle_count, memory_order_relaxed);
    vmown__mutex_lock(&p->mu);
    int64_t need = (int64_t)want - idle - p->starting - p->wanted;
    if (need > 0) {
        int64_t room = (int64_t)p->max_workers - p->live - p->wanted;
        if (need > room) {
            need = room > 0 ? room : 0;
            p->cap_hits++;
        }
        p->wanted += (uint32_t)need;
    }
    int64_t shortfalls = (int64_t)(p->cap_hits + p->failures);
    vmown__mutex_unlock(&p->mu);
    if (need > 0) (void)vmown__sem_post(&p->wake);
    return shortfalls;
}

int vmown_workers_stop(vmown_vm *vm) {
    struct vmown__pool *p = pool_here(vm);
    if (!p || !p->running) return 0;
    atomic_store_explicit(&p->stop, 1, memory_order_release);
    (void)vmown__sem_post(&p->wake);
    int rc = vmown__thread_join(p->spawner);
    p->running = false;
    return rc;
}

int vmown_workers_join(vmown_vm *vm, int64_t timeout_ns) {
    struct vmown__pool *p = pool_here(vm);
    if (!p) return 0;
    int64_t deadline = timeout_ns < 0 ? -1 : vmown__now_ns() + timeout_ns;
    uint32_t live;
    for (;;) {
        while (vmown_unpark(vm, 0) > 0) {
        }
        int64_t now = vmown__now_ns();
        int64_t until = now + JOIN_ROUND_NS;
        if (deadline >= 0 && deadline < until) until = deadline;
        vmown__mutex_lock(&p->mu);
        while (p->live > 0 && vmown__cond_wait_until(&p->exited, &p->mu, until) == 0) {
        }
        live = p->live;
        vmown__mutex_unlock(&p->mu);
        reap(p);
        if (live == 0 || (deadline >= 0 && vmown__now_ns() >= deadline)) return (int)live;
    }
}

int vmown_workers_read(const vmown_vm *vm, vmown_workers_stats *out) {
    struct vmown__pool *p = pool_here(vm);
    *out = (vmown_workers_stats){0};
    if (!p) return 0;
    vmown__mutex_lock(&p->mu);
    *out = (vmown_workers_stats){
        .live = p->live,
        .high = p->high,
        .starting = p->starting,
        .wanted = p->wanted,
        .started = p->started,
        .entered = p->entered,
        .cap_hits = p->cap_hits,
        .failures = p->failures,
        .last_error = p->last_error,
        .running = p->running,
    };
    vmown__mutex_unlock(&p->mu);
    return 0;
}

bool vmown__workers_free(vmown_vm *vm) {
    struct vmown__pool *p = pool_here(vm);
    if (!p) {
        vm->pool = NULL;  /* none, or a forked parent's copy (pool_here) */
        return true;
    }
    (void)vmown_workers_stop(vm);
    vmown__mutex_lock(&p->mu);
    uint32_t live = p->live;
    vmown__mutex_unlock(&p->mu);
    if (live > 0) return false;  /* a worker still out in a callout: leave the pool (and the block) be */
    reap(p);
    vm->pool = NULL;
    destroy(p);
    return true;
}
