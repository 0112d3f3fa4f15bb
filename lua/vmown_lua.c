/* vmown_lua.c -- the Lua 5.4 module `vmown`: coroutines as processes, run
 * by whichever OS thread owns the VM (libvmown; docs/C-API.md).
 *
 * Notes about the implementation
 * ------------------------------
 * A lua_State may be used by any OS thread as long as one at a time: here,
 * the thread that owns the VM.  Three kinds of object:
 *   - process: a Lua coroutine, anchored in the registry (PROCS) from spawn
 *     to its end;
 *   - worker: an OS thread that owns the VM and runs the loop (serve): the
 *     thread that called vmown.run, and pooled workers started in C
 *     (vmown_workers_start with lua_worker as the entry);
 *   - struct run: the run queue, the timers, the count of live processes,
 *     touched only by the thread that owns the VM.
 *
 * vmown.threaded(cf) wraps a blocking C function (vmown_lua_cfunction): the
 * wrapper reads the integer arguments, publishes the work that waits
 * (vmown_set_work), and calls cf between vmown_callout_begin and _end, on
 * the coroutine's thread and stack.  If the call stays out a whole tick
 * while a process is runnable or a timer is due, the heartbeat takes the VM
 * (a lazy callout revoked, or an eager one's VM left unowned) and gives it
 * to a parked worker, which runs the other coroutines.  When the call is
 * back, callout_end waits for the VM; the owner sees the waiter at its next
 * scheduling point and parks, which hands the VM over.  The coroutine's step
 * then finishes on its own thread, and that thread serves on.
 *
 * The loop, at every scheduling point:
 *   1. the run is done (no live process, or an error): release and return;
 *   2. a thread waits for the VM (a callout back, a foreign callback): park,
 *      which hands it the VM in the same step (vmown_park);
 *   3. move due timers to the run queue; if nothing is runnable, publish
 *      the next timer and park until it (no polling);
 *   4. resume one coroutine; what it yields says what it waits for: SLEEP
 *      and a deadline (a timer), SUSPEND (another thread makes it runnable),
 *      anything else (runnable again at once).
 * A worker given the VM from the idle stack runs one step before it looks
 * at waiters, and asks the pool for spares (the heartbeat can only hand the
 * VM to a parked worker).
 *
 * Finishing.  The owner that finds no live process sets `done`; a pooled
 * worker then unparks the run thread (it is parked or queued: it does not
 * own the VM, and no coroutine of it is out) and releases.  The run thread
 * stops the heartbeat and the pool and joins the workers; a worker woken in
 * a park sees `done` and returns without the VM.
 *
 * A foreign thread calling back (vmown.call_from_foreign_thread): a plain
 * pthread, as a C library's callback thread, registers a slot, waits for
 * the VM (vmown_own), runs the Lua function on a Lua thread of its own,
 * makes the coroutine that waits for it runnable, and releases and
 * unregisters.  The callback runs to its end (it cannot yield: its thread
 * runs no loop) and may call threaded functions.
 */
#define _GNU_SOURCE
#include <vmown.h>

#include <errno.h>
#include <lauxlib.h>
#include <lua.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "vmown_lua.h"

#define NSLOTS 128
#define MAX_WORKERS 100
#define HEARTBEAT_HZ 1000
#define SPARES 8
#define IDLE_TIMEOUT_NS 2000000000LL
#define PROCS "vmown.procs"

static char SLEEP, SUSPEND;  /* addresses yielded as light userdata */

struct foreign;

struct timer {
    int64_t deadline_ns;
    lua_State *co;
};

struct run {
    vmown_vm *vm;
    void *mem;
    size_t len;
    uint32_t run_slot;
    _Atomic int done;  /* set by an owner; read after an unpark too */
    /* Owner only. */
    lua_State **queue;  /* ring of runnable coroutines */
    size_t head, count, cap;
    struct timer *timers;  /* unordered: a run has few */
    size_t ntimers, timers_cap;
    int64_t live;    /* processes spawned and not finished */
    int64_t steps;
    char *error;     /* the first error of a process */
    struct foreign *foreign;  /* foreign threads not joined yet */
};

static struct run *current;  /* written before any other thread starts, and after they are joined */
static _Thread_local uint32_t my_slot;

static void fatal(const char *what, int rc) {
    fprintf(stderr, "vmown (lua): fatal: %s failed: %d\n", what, rc);
    abort();
}

static void grow_timers(struct run *r) {
    size_t cap = r->timers_cap ? r->timers_cap * 2 : 64;
    struct timer *timers = realloc(r->timers, cap * sizeof *timers);
    if (!timers) fatal("realloc", -ENOMEM);
    r->timers = timers;
    r->timers_cap = cap;
}

/* ---- the run queue and the timers (owner only) ---- */

static void make_room(struct run *r) {
    if (r->count == r->cap) {
        size_t cap = r->cap ? r->cap * 2 : 64;
        lua_State **queue = malloc(cap * sizeof *queue);
        if (!queue) fatal("malloc", -ENOMEM);
        for (size_t i = 0; i < r->count; i++) queue[i] = r->queue[(r->head + i) % r->cap];
        free(r->queue);
        r->queue = queue;
        r->cap = cap;
        r->head = 0;
    }
}

static void make_runnable(struct run *r, lua_State *co) {
    make_room(r);
    r->queue[(r->head + r->count) % r->cap] = co;
    r->count++;
}

/* A timer's process goes first: it is due already, and behind processes
 * whose steps each block in a callout it would wait for one hand-over per
 * step (a ticker 3.3 ms late while 20 sleepers started, against ~0.1 ms). */
static void make_runnable_first(struct run *r, lua_State *co) {
    make_room(r);
    r->head = (r->head + r->cap - 1) % r->cap;
    r->queue[r->head] = co;
    r->count++;
}

static lua_State *next_runnable(struct run *r) {
    lua_State *co = r->queue[r->head];
    r->head = (r->head + 1) % r->cap;
    r->count--;
    return co;
}

static int64_t next_timer(const struct run *r) {
    int64_t next = 0;
    for (size_t i = 0; i < r->ntimers; i++)
        if (!next || r->timers[i].deadline_ns < next) next = r->timers[i].deadline_ns;
    return next;
}

static void due_timers(struct run *r, int64_t now) {
    for (size_t i = 0; i < r->ntimers;) {
        if (r->timers[i].deadline_ns <= now) {
            make_runnable_first(r, r->timers[i].co);
            r->timers[i] = r->timers[--r->ntimers];
        } else {
            i++;
        }
    }
}

/* What waits if the VM is left unowned, for the heartbeat: before every
 * release (park, callout, a foreign thread's disown) and at each step. */
static void publish(struct run *r) { vmown_set_work(r->vm, r->count, next_timer(r)); }

static void ensure_spares(struct run *r) {
    (void)vmown_workers_want(r->vm, r->count ? (r->count < SPARES ? (uint32_t)r->count : SPARES) : 1);
}

/* ---- processes ---- */

static void anchor(lua_State *L, lua_State *co, bool on) {
    lua_getfield(L, LUA_REGISTRYINDEX, PROCS);
    lua_pushthread(co);
    lua_xmove(co, L, 1);
    if (on) lua_pushboolean(L, 1);
    else lua_pushnil(L);
    lua_rawset(L, -3);
    lua_pop(L, 1);
}

/* Stack of L: function and arguments (n values) -> the new coroutine. */
static lua_State *spawn(lua_State *L, struct run *r, int n) {
    lua_State *co = lua_newthread(L);
    lua_insert(L, -n - 1);
    lua_xmove(L, co, n);
    anchor(L, co, true);
    r->live++;
    make_runnable(r, co);
    return co;
}

/* One step of co on the calling thread, which owns the VM. */
static void step(struct run *r, lua_State *co) {
    int nargs = lua_status(co) == LUA_OK ? lua_gettop(co) - 1 : 0;
    int nres = 0;
    int status = lua_resume(co, NULL, nargs, &nres);
    if (status == LUA_YIELD) {
        void *what = nres >= 1 ? lua_touserdata(co, -nres) : NULL;
        if (what == &SLEEP && r->ntimers == r->timers_cap) grow_timers(r);
        if (what == &SLEEP) r->timers[r->ntimers++] = (struct timer){lua_tointeger(co, -nres + 1), co};
        else if (what != &SUSPEND) make_runnable(r, co);
        lua_pop(co, nres);
        return;
    }
    if (status != LUA_OK && !r->error) {
        const char *msg = lua_tostring(co, -1);
        r->error = strdup(msg ? msg : "a vmown process raised an error object that is not a string");
    }
    lua_resetthread(co);
    anchor(co, co, false);
    if (--r->live == 0 || r->error) atomic_store(&r->done, 1);
}

/* ---- the loop ---- */

/* Park (releasing the VM to the head waiter, if any) and come back owning;
 * false if the run is done meanwhile (then not owning). */
static bool park(struct run *r, uint32_t me, int64_t timeout_ns) {
    publish(r);
    int rc = vmown_park(r->vm, me, timeout_ns);
    if (rc == 1) {
        ensure_spares(r);
        return true;
    }
    if (atomic_load(&r->done)) return false;
    /* unparked, or a timer is due: take the VM the ordinary way */
    if ((rc = vmown_own(r->vm, me)) != 0) fatal("vmown_own", rc);
    return true;
}

/* Serve on the calling thread, which owns the VM, until the run is done;
 * returns without the VM. */
static void serve(struct run *r, uint32_t me, bool first) {
    const uint32_t *waiters = vmown_waiters_word(r->vm);
    uint64_t *work = vmown_work_words(r->vm);
    for (;;) {
        if (atomic_load(&r->done)) {
            if (me != r->run_slot) (void)vmown_unpark(r->vm, r->run_slot);
            publish(r);
            int rc = vmown_disown(r->vm, me, 0);
            if (rc != 0) fatal("vmown_disown", rc);
            return;
        }
        int64_t now = vmown_now_ns();
        due_timers(r, now);
        if ((!first && __atomic_load_n(waiters, __ATOMIC_RELAXED) > 0) || r->count == 0) {
            /* With processes runnable the waiter that gets the VM runs them;
             * else wake for the next timer (the heartbeat activates a parked
             * worker for a due timer too, but only after a whole tick). */
            int64_t next = r->count ? 0 : next_timer(r);
            if (!park(r, me, next ? (next > now ? next - now : 0) : -1)) return;
            first = true;  /* given the VM: run a step before looking at waiters */
            continue;
        }
        first = false;
        lua_State *co = next_runnable(r);
        r->steps++;
        work[VMOWN_WORK_TAKEN]++;
        publish(r);
        step(r, co);
    }
}

/* The pool's entry (vmown_workers_start): a worker given the VM the first time. */
static void lua_worker(void *arg, uint32_t slot) {
    struct run *r = arg;
    my_slot = slot;
    ensure_spares(r);
    serve(r, slot, true);
    my_slot = 0;
}

/* ---- Lua functions ---- */

static struct run *in_run(lua_State *L) {
    if (!current || !my_slot) luaL_error(L, "vmown: only inside vmown.run()");
    return current;
}

static int l_spawn(lua_State *L) {
    struct run *r = in_run(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    spawn(L, r, lua_gettop(L));
    return 1;
}

static int l_sleep(lua_State *L) {
    in_run(L);
    double s = luaL_checknumber(L, 1);
    lua_pushlightuserdata(L, &SLEEP);
    lua_pushinteger(L, vmown_now_ns() + (s > 0 ? (int64_t)(s * 1e9) : 0));
    return lua_yield(L, 2);
}

static int l_checkpoint(lua_State *L) {
    in_run(L);
    return lua_yield(L, 0);
}

static int l_now(lua_State *L) {
    lua_pushnumber(L, (double)vmown_now_ns() / 1e9);
    return 1;
}

static int l_owns(lua_State *L) {
    lua_pushboolean(L, current && my_slot && vmown_owner(current->vm) == (int32_t)my_slot);
    return 1;
}

static int l_thread_id(lua_State *L) {
    lua_pushinteger(L, gettid());
    return 1;
}

static int call_threaded(lua_State *L) {
    const vmown_lua_cfunction *f = *(const vmown_lua_cfunction **)lua_touserdata(L, lua_upvalueindex(1));
    int n = lua_gettop(L);
    if (n > VMOWN_LUA_MAX_ARGS) return luaL_error(L, "vmown: %s: at most %d arguments", f->name, VMOWN_LUA_MAX_ARGS);
    int64_t args[VMOWN_LUA_MAX_ARGS];
    for (int i = 0; i < n; i++) args[i] = luaL_checkinteger(L, i + 1);
    if (current && my_slot) publish(current);
    uint32_t token = vmown_callout_begin((uint64_t)(uintptr_t)f->call);
    errno = 0;
    int64_t result = f->call(args, n);
    vmown_callout_end(token);  /* keeps errno */
    int broken = vmown_callout_error();  /* the end could not own the VM again: no Lua code may run on */
    if (broken) return luaL_error(L, "vmown: %s: owning the VM again after the call: error %d (the block is broken)",
                                  f->name, broken);
    lua_pushinteger(L, result);
    lua_pushinteger(L, errno);
    return 2;
}

static int l_threaded(lua_State *L) {
    luaL_checkudata(L, 1, VMOWN_LUA_CFUNCTION);
    lua_settop(L, 1);
    lua_pushcclosure(L, call_threaded, 1);
    return 1;
}

static int64_t c_usleep(const int64_t *args, int nargs) { return usleep(nargs > 0 ? (useconds_t)args[0] : 0); }

static const vmown_lua_cfunction usleep_cf = {"usleep", c_usleep};

/* A foreign thread that calls back into Lua. */
struct foreign {
    struct run *r;
    lua_State *th;       /* the Lua thread the callback runs on */
    lua_State *waiting;  /* the coroutine that waits for it */
    pthread_t thread;
    int nargs, status, nres;
    struct foreign **prev, *next;  /* in run.foreign, owner only */
};

static void *foreign_main(void *arg) {
    struct foreign *f = arg;
    struct run *r = f->r;
    usleep(2000);  /* as a library's thread that calls back later */
    int slot = vmown_register(r->vm);
    if (slot < 1) fatal("vmown_register (foreign thread)", slot);
    int rc = vmown_bind_thread(r->vm, (uint32_t)slot);
    if (rc == 0) rc = vmown_own(r->vm, (uint32_t)slot);
    if (rc != 0) fatal("vmown_own (foreign thread)", rc);
    my_slot = (uint32_t)slot;
    f->status = lua_pcall(f->th, f->nargs, LUA_MULTRET, 0);
    f->nres = lua_gettop(f->th);
    make_runnable(r, f->waiting);
    publish(r);
    my_slot = 0;
    if ((rc = vmown_disown(r->vm, (uint32_t)slot, 0)) != 0) fatal("vmown_disown (foreign thread)", rc);
    if ((rc = vmown_unregister(r->vm, (uint32_t)slot)) != 0) fatal("vmown_unregister (foreign thread)", rc);
    return NULL;
}

static int foreign_done(lua_State *L, int status, lua_KContext ctx) {
    (void)status;  /* LUA_YIELD: resumed by the scheduler */
    struct foreign *f = (struct foreign *)ctx;
    uint32_t token = vmown_callout_begin(0);  /* the thread is leaving: a join of microseconds */
    int rc = pthread_join(f->thread, NULL);
    vmown_callout_end(token);
    int broken = vmown_callout_error();
    *f->prev = f->next;
    if (f->next) f->next->prev = f->prev;
    if (rc != 0) return luaL_error(L, "vmown: joining the foreign thread: %s", strerror(rc));
    if (broken) return luaL_error(L, "vmown: owning the VM again after joining a foreign thread: error %d", broken);
    lua_xmove(f->th, L, f->nres);
    if (f->status != LUA_OK) return lua_error(L);
    return f->nres;
}

static int l_call_from_foreign_thread(lua_State *L) {
    struct run *r = in_run(L);
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (!lua_isyieldable(L)) return luaL_error(L, "vmown: call_from_foreign_thread only from a process");
    int n = lua_gettop(L);
    struct foreign *f = lua_newuserdatauv(L, sizeof *f, 0);  /* on L's stack until the continuation */
    *f = (struct foreign){.r = r, .waiting = L, .nargs = n - 1};
    f->th = lua_newthread(L);  /* anchored on L's stack too */
    for (int i = 1; i <= n; i++) lua_pushvalue(L, i);
    lua_xmove(L, f->th, n);
    int rc = pthread_create(&f->thread, NULL, foreign_main, f);
    if (rc != 0) return luaL_error(L, "vmown: starting a foreign thread: %s", strerror(rc));
    f->prev = &r->foreign;
    f->next = r->foreign;
    if (f->next) f->next->prev = &f->next;
    r->foreign = f;
    lua_pushlightuserdata(L, &SUSPEND);
    return lua_yieldk(L, 1, (lua_KContext)f, foreign_done);
}

static void check(lua_State *L, int rc, const char *what) {
    if (rc < 0) luaL_error(L, "vmown: %s failed: %d", what, rc);
}

static void stats_table(lua_State *L, struct run *r, int64_t elapsed_ns) {
    vmown_heartbeat_stats h;
    vmown_workers_stats w;
    vmown_counters c;
    vmown_heartbeat_read(r->vm, &h);
    vmown_workers_read(r->vm, &w);
    vmown_counters_read(r->vm, &c);
    lua_createtable(L, 0, 10);
#define FIELD(name, value) (lua_pushinteger(L, (lua_Integer)(value)), lua_setfield(L, -2, name))
    FIELD("elapsed_ns", elapsed_ns);
    FIELD("steps", r->steps);
    FIELD("activations", h.activations);
    FIELD("revocations", h.revocations);
    FIELD("starved", h.starved);
    FIELD("workers_started", w.started);
    FIELD("workers_entered", w.entered);
    FIELD("hand_offs", c.hand_offs);
    FIELD("lazy_disowns", c.lazy_disowns);
#undef FIELD
}

/* vmown.run(main, ...): main as the first process of a new VM; returns a
 * table of figures once no process is left, or raises a process's error. */
static int l_run(lua_State *L) {
    luaL_checktype(L, 1, LUA_TFUNCTION);
    if (current) return luaL_error(L, "vmown.run() cannot run inside vmown.run(); use vmown.spawn()");
    int64_t start = vmown_now_ns();
    struct run *r = calloc(1, sizeof *r);
    if (!r) return luaL_error(L, "vmown: out of memory");
    r->len = vmown_block_size(NSLOTS);
    int rc = vmown_map_anonymous(r->len, &r->mem);
    if (rc == 0) rc = vmown_vm_init(r->mem, r->len, NSLOTS, &r->vm);
    if (rc < 0) {
        free(r);
        check(L, rc, "making the control block");
    }
    lua_newtable(L);
    lua_setfield(L, LUA_REGISTRYINDEX, PROCS);
    int slot = vmown_register(r->vm);
    check(L, slot, "vmown_register");
    check(L, vmown_bind_thread(r->vm, (uint32_t)slot), "vmown_bind_thread");
    check(L, vmown_own(r->vm, (uint32_t)slot), "vmown_own");
    r->run_slot = my_slot = (uint32_t)slot;
    current = r;
    spawn(L, r, lua_gettop(L));
    lua_pop(L, 1);
    check(L, vmown_heartbeat_start(r->vm, HEARTBEAT_HZ), "vmown_heartbeat_start");
    check(L, vmown_workers_start(r->vm, lua_worker, r, MAX_WORKERS, IDLE_TIMEOUT_NS), "vmown_workers_start");
    ensure_spares(r);
    serve(r, (uint32_t)slot, true);
    /* Not owning; every process finished or the run failed. */
    (void)vmown_heartbeat_stop(r->vm);
    (void)vmown_workers_stop(r->vm);
    if (vmown_workers_join(r->vm, -1) != 0) fatal("vmown_workers_join", -1);
    /* A run that failed leaves the foreign threads of the processes still
     * waiting for them: each gets the VM (free now), calls back and leaves;
     * their userdata stays anchored on those processes' stacks (PROCS) until
     * the join. */
    for (struct foreign *f = r->foreign; f; f = f->next) (void)pthread_join(f->thread, NULL);
    stats_table(L, r, vmown_now_ns() - start);
    (void)vmown_unregister(r->vm, (uint32_t)slot);
    my_slot = 0;
    current = NULL;
    vmown_vm_detach(r->vm);
    (void)vmown_unmap(r->mem, r->len);
    char *error = r->error;
    free(r->queue);
    free(r->timers);
    free(r);
    lua_pushnil(L);
    lua_setfield(L, LUA_REGISTRYINDEX, PROCS);
    if (error) {
        lua_pushstring(L, error);
        free(error);
        return lua_error(L);
    }
    return 1;
}

static int l_version(lua_State *L) {
    lua_pushstring(L, vmown_version_string());
    return 1;
}

__attribute__((visibility("default"))) int luaopen_vmown(lua_State *L) {
    static const luaL_Reg functions[] = {
        {"run", l_run},
        {"spawn", l_spawn},
        {"sleep", l_sleep},
        {"checkpoint", l_checkpoint},
        {"now", l_now},
        {"owns", l_owns},
        {"thread_id", l_thread_id},
        {"threaded", l_threaded},
        {"call_from_foreign_thread", l_call_from_foreign_thread},
        {"version", l_version},
        {NULL, NULL},
    };
    if (vmown_version() >> 16 != VMOWN_VERSION_MAJOR)
        return luaL_error(L, "vmown: built for libvmown %d.x, loaded %s", VMOWN_VERSION_MAJOR, vmown_version_string());
    luaL_newlib(L, functions);
    luaL_newmetatable(L, VMOWN_LUA_CFUNCTION);
    lua_pop(L, 1);
    lua_createtable(L, 0, 1);
    const vmown_lua_cfunction **ud = lua_newuserdatauv(L, sizeof *ud, 0);
    *ud = &usleep_cf;
    luaL_setmetatable(L, VMOWN_LUA_CFUNCTION);
    lua_setfield(L, -2, "usleep");
    lua_setfield(L, -2, "c");
    return 1;
}
