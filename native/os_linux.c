/* os_linux.c -- every OS call of the vmown core, in one file.
 *
 * A port to another OS rewrites this file and nothing else.  What the rest of
 * the core assumes from here:
 *   - semaphores that live in shared memory and work across processes (a
 *     post before the wait is remembered and never lost), and a lock there
 *     whose holder's death is found by the next locker (which repairs the
 *     state it protects): both built here on futex words whose every value
 *     is checked (see "semaphores and the block's lock" below), since a
 *     peer may write anything into them;
 *   - anonymous MAP_SHARED memory, shared with children across fork.
 * Waits return on signals (EINTR) so that the caller can run its handlers.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"

#include <errno.h>
#include <linux/membarrier.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

void vmown__worker_thread_setup(const char *name) {
    /* Signals that belong to the program stay blocked, so that the kernel
     * delivers them to the main thread (where Python runs handlers) and a
     * callout on a worker sees no stray EINTR; faults (SIGSEGV, ...) and the
     * rest are delivered as on any thread. */
    static const int program_signals[] = {SIGINT,  SIGTERM, SIGHUP,  SIGQUIT, SIGUSR1,
                                          SIGUSR2, SIGALRM, SIGCHLD, SIGWINCH};
    sigset_t set;
    sigemptyset(&set);
    for (size_t i = 0; i < sizeof program_signals / sizeof *program_signals; i++) sigaddset(&set, program_signals[i]);
    pthread_sigmask(SIG_SETMASK, &set, NULL);
    vmown__thread_name(name);
}

void vmown__thread_name(const char *name) {
    (void)pthread_setname_np(pthread_self(), name);  /* for ps, top, gdb and the tests */
}

_Noreturn void vmown__fatal(const char *what, int err) {
    fprintf(stderr, "vmown: fatal: %s failed: %s\n", what, strerror(err));
    abort();
}

int64_t vmown__now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

int32_t vmown__gettid(void) { return (int32_t)syscall(SYS_gettid); }

/* Field 22 of /proc/PID/stat: start time in clock ticks since boot.  With the
 * pid it names a process for good: a recycled pid has a later start time.
 * Returns 0 when the process does not exist (or /proc cannot be read). */
uint64_t vmown__process_start_time(int32_t pid) {
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return 0;
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    /* comm (field 2) may hold spaces and parentheses: skip to the last ')'. */
    char *p = strrchr(buf, ')');
    if (!p) return 0;
    int field = 2;
    for (; *p && field < 22; p++)
        if (*p == ' ') field++;
    return strtoull(p, NULL, 10);
}

/* Whether the process (pid, start_time) still runs.  Dead: no such pid, a
 * zombie (it can hold nothing any more), or a pid recycled by a process that
 * started later.  A pid of another user answers EPERM: alive.  Only the low
 * 32 bits of the start time are compared (what fits beside a pid in one
 * atomic word); start_time 0 (unknown) skips the recycling check. */
bool vmown__process_alive(int32_t pid, uint64_t start_time) {
    if (pid <= 0) return false;
    int saved = errno;
    bool exists = kill(pid, 0) == 0 || errno == EPERM;
    errno = saved;
    if (!exists) return false;
    char path[64], buf[1024];
    snprintf(path, sizeof path, "/proc/%d/stat", (int)pid);
    FILE *f = fopen(path, "re");
    if (!f) return true;  /* no /proc: trust kill */
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = '\0';
    char *p = strrchr(buf, ')');
    if (!p || p[1] != ' ') return true;
    char state = p[2];
    if (state == 'Z' || state == 'X' || state == 'x') return false;
    return (uint32_t)start_time == 0 || (uint32_t)vmown__process_start_time(pid) == (uint32_t)start_time;
}

void vmown__cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

void vmown__thread_yield(void) { sched_yield(); }

void vmown__stop_self(void) { raise(SIGSTOP); }

/* The heavy side of an asymmetric fence: membarrier(2) makes every running
 * thread of this process execute a full barrier (an IPI to each CPU that
 * runs one; a thread not running passes a barrier at its context switch).
 * The light side, in the threads, is only a compiler barrier.  Private
 * expedited: registered once per process, ~1 us per call here.  A port uses
 * FlushProcessWriteBuffers (Windows) or what the platform has; without one,
 * vmown__membarrier_register fails and callouts stay eager. */
int vmown__membarrier_register(void) {
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_REGISTER_PRIVATE_EXPEDITED, 0, 0) != 0) return -errno;
    return 0;
}

void vmown__membarrier(void) {
    if (syscall(__NR_membarrier, MEMBARRIER_CMD_PRIVATE_EXPEDITED, 0, 0) != 0) vmown__fatal("membarrier", errno);
}

void vmown__set_timer_slack_ns(unsigned long ns) { (void)prctl(PR_SET_TIMERSLACK, ns, 0, 0, 0); }

void vmown__sleep_until(int64_t deadline_ns) {
    int saved = errno;
    struct timespec ts = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    while (clock_nanosleep(CLOCK_MONOTONIC, TIMER_ABSTIME, &ts, NULL) == EINTR) {
    }
    errno = saved;
}

int vmown__thread_start(pthread_t *thread, void *(*fn)(void *), void *arg) {
    sigset_t all, old;
    sigfillset(&all);
    pthread_sigmask(SIG_SETMASK, &all, &old);
    int rc = pthread_create(thread, NULL, fn, arg);
    pthread_sigmask(SIG_SETMASK, &old, NULL);
    return -rc;
}

int vmown__thread_join(pthread_t thread) { return -pthread_join(thread, NULL); }

pthread_t vmown__thread_self(void) { return pthread_self(); }

void vmown__mutex_init(pthread_mutex_t *mu) {
    int rc = pthread_mutex_init(mu, NULL);
    if (rc != 0) vmown__fatal("pthread_mutex_init", rc);
}

void vmown__mutex_destroy(pthread_mutex_t *mu) { (void)pthread_mutex_destroy(mu); }

void vmown__mutex_lock(pthread_mutex_t *mu) {
    int rc = pthread_mutex_lock(mu);
    if (rc != 0) vmown__fatal("pthread_mutex_lock", rc);
}

void vmown__mutex_unlock(pthread_mutex_t *mu) {
    int rc = pthread_mutex_unlock(mu);
    if (rc != 0) vmown__fatal("pthread_mutex_unlock", rc);
}

void vmown__cond_init(pthread_cond_t *cond) {
    pthread_condattr_t attr;
    pthread_condattr_init(&attr);
    pthread_condattr_setclock(&attr, CLOCK_MONOTONIC);  /* the clock of vmown__now_ns */
    int rc = pthread_cond_init(cond, &attr);
    pthread_condattr_destroy(&attr);
    if (rc != 0) vmown__fatal("pthread_cond_init", rc);
}

void vmown__cond_destroy(pthread_cond_t *cond) { (void)pthread_cond_destroy(cond); }

void vmown__cond_broadcast(pthread_cond_t *cond) { (void)pthread_cond_broadcast(cond); }

int vmown__cond_wait_until(pthread_cond_t *cond, pthread_mutex_t *mu, int64_t deadline_ns) {
    struct timespec ts = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    int saved = errno, rc = pthread_cond_timedwait(cond, mu, &ts);
    errno = saved;
    return rc == 0 ? 0 : rc == ETIMEDOUT ? VMOWN_ETIMEDOUT : -rc;
}

void vmown__at_fork_child_once(pthread_once_t *once, void (*install)(void)) { (void)pthread_once(once, install); }

void vmown__at_fork_child(void (*fn)(void)) { (void)pthread_atfork(NULL, NULL, fn); }

int vmown_map_anonymous(size_t len, void **out) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -errno;
    *out = p;
    return 0;
}

int vmown_unmap(void *addr, size_t len) { return munmap(addr, len) == 0 ? 0 : -errno; }

int vmown_map_private(void *addr, size_t len) {
    void *copy = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (copy == MAP_FAILED) return -errno;
    memcpy(copy, addr, len);
    /* One step: addr never reads as unmapped, and the shared pages go. */
    if (mremap(copy, len, len, MREMAP_MAYMOVE | MREMAP_FIXED, addr) == MAP_FAILED) {
        int err = errno;
        munmap(copy, len);
        return -err;
    }
    return 0;
}

size_t vmown_page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }

/* ---- arena: files and mappings ---- */
/* What arena.c assumes from here: O_NOFOLLOW on the last path component and
 * exclusive creation; fstat's owner, mode and length; ftruncate that extends
 * with zeros; a MAP_SHARED mapping (of a file, or anonymous) that may reach
 * past the end of the file while PROT_NONE, and mprotect on parts of it;
 * MAP_FIXED_NOREPLACE (Linux 4.17; older kernels take it as a hint, which is
 * detected); MADV_POPULATE_WRITE (Linux 5.14, else pages are touched);
 * kill(pid, 0) and /proc/PID/stat for liveness (one pid namespace). */
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>

#ifndef MAP_FIXED_NOREPLACE
#define MAP_FIXED_NOREPLACE 0x100000
#endif
#ifndef MADV_POPULATE_WRITE
#define MADV_POPULATE_WRITE 23
#endif

int vmown__file_create(const char *path, uint32_t mode, int *fd_out) {
    /* Owner bits only until the fchmod: never more than asked, whatever the umask. */
    int fd = open(path, O_RDWR | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600);
    if (fd < 0) return -errno;
    if (fchmod(fd, (mode_t)mode) != 0) {
        int err = errno;
        close(fd);
        unlink(path);
        return -err;
    }
    *fd_out = fd;
    return 0;
}

int vmown__file_open(const char *path, int writable, int *fd_out) {
    /* O_NONBLOCK: a FIFO in the way must not block the open (fstat refuses it). */
    int fd = open(path, (writable ? O_RDWR : O_RDONLY) | O_NOFOLLOW | O_CLOEXEC | O_NONBLOCK | O_NOCTTY);
    if (fd < 0) return -errno;
    *fd_out = fd;
    return 0;
}

int vmown__file_stat(int fd, struct vmown__file_status *out) {
    struct stat st;
    if (fstat(fd, &st) != 0) return -errno;
    out->length = st.st_size < 0 ? 0 : (uint64_t)st.st_size;
    out->uid = (uint32_t)st.st_uid;
    out->mode = (uint32_t)st.st_mode & 07777;
    out->regular = S_ISREG(st.st_mode);
    return 0;
}

int vmown__file_resize(int fd, uint64_t length) {
    int rc;
    do rc = ftruncate(fd, (off_t)length);
    while (rc != 0 && errno == EINTR);
    return rc == 0 ? 0 : -errno;
}

int vmown__file_read(int fd, void *buf, size_t len, uint64_t offset) {
    size_t got = 0;
    while (got < len) {
        ssize_t n = pread(fd, (char *)buf + got, len - got, (off_t)(offset + got));
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return -errno;
        if (n == 0) break;
        got += (size_t)n;
    }
    return (int)got;
}

void vmown__file_close(int fd) {
    int saved = errno;
    close(fd);
    errno = saved;
}

int vmown__file_unlink(const char *path) { return unlink(path) == 0 ? 0 : -errno; }

uint32_t vmown__euid(void) { return (uint32_t)geteuid(); }

int vmown__map_reserve(int fd, size_t len, void *address, int huge, void **out) {
    int flags = MAP_SHARED | (fd < 0 ? MAP_ANONYMOUS : 0) | (huge ? MAP_HUGETLB : 0) |
                (address ? MAP_FIXED_NOREPLACE : 0);
    void *p = mmap(address, len, PROT_NONE, flags, fd, 0);
    if (p == MAP_FAILED) {
        int err = errno;
        if (address && err == EEXIST) return VMOWN_EARENA_ADDRINUSE;
        if (huge && (err == ENOMEM || err == EINVAL || err == ENOENT)) return VMOWN_EARENA_NOHUGE;
        return -err;
    }
    if (address && p != address) {  /* a kernel without MAP_FIXED_NOREPLACE took a hint */
        munmap(p, len);
        return VMOWN_EARENA_ADDRESS;
    }
    *out = p;
    return 0;
}

int vmown__map_protect(void *addr, size_t len, int writable) {
    if (len == 0) return 0;
    return mprotect(addr, len, writable ? PROT_READ | PROT_WRITE : PROT_NONE) == 0 ? 0 : -errno;
}

int vmown__map_populate(void *addr, size_t len) {
    if (len == 0 || madvise(addr, len, MADV_POPULATE_WRITE) == 0) return 0;
    if (errno != EINVAL) return -errno;
    size_t page = vmown_page_size();  /* before Linux 5.14: touch every page */
    for (size_t off = 0; off < len; off += page) (void)*(volatile char *)((char *)addr + off);
    return 0;
}

int vmown__map_discard(void *addr, size_t len) {
    if (len == 0) return 0;
    return madvise(addr, len, MADV_REMOVE) == 0 ? 0 : -errno;
}

uint64_t vmown__huge_page_size(void) {
    char line[256];
    unsigned long long kib = 0;
    FILE *f = fopen("/proc/meminfo", "re");
    if (!f) return 0;
    while (fgets(line, sizeof line, f))
        if (sscanf(line, "Hugepagesize: %llu kB", &kib) == 1) break;
    fclose(f);
    return (uint64_t)kib * 1024;
}

void vmown__sleep_ns(int64_t ns) {
    int saved = errno;
    struct timespec ts = {.tv_sec = ns / 1000000000, .tv_nsec = ns % 1000000000};
    nanosleep(&ts, NULL);
    errno = saved;
}

/* ---- channel: futex waits ---- */
/* What channel.c assumes from here: FUTEX_WAIT_BITSET with an absolute
 * CLOCK_MONOTONIC deadline and FUTEX_WAKE on 32-bit words of a MAP_SHARED
 * mapping, keyed by the memory (not the address), so they work across
 * processes that map it at different addresses.  A wait returns on a signal
 * (EINTR is not restarted) so that the caller can run its handlers. */
#include <limits.h>
#include <linux/futex.h>

int vmown__futex_wait(_Atomic uint32_t *word, uint32_t expected, int64_t deadline_ns) {
    int saved = errno;
    struct timespec ts = {.tv_sec = deadline_ns / 1000000000, .tv_nsec = deadline_ns % 1000000000};
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAIT_BITSET, expected, deadline_ns < 0 ? NULL : &ts,
                      NULL, FUTEX_BITSET_MATCH_ANY);
    int err = rc == 0 ? 0 : errno;
    errno = saved;
    if (rc == 0 || err == EAGAIN) return 0;
    if (err == EINTR) return VMOWN_EINTR;
    if (err == ETIMEDOUT) return VMOWN_ETIMEDOUT;
    return -err;
}

int vmown__futex_wake(_Atomic uint32_t *word, int count) {
    int saved = errno;
    long rc = syscall(SYS_futex, (uint32_t *)word, FUTEX_WAKE, count < 1 ? INT_MAX : count, NULL, NULL, 0);
    if (rc < 0) vmown__fatal("futex wake", errno);
    errno = saved;
    return (int)rc;
}

/* ---- semaphores and the block's lock: futex words ----
 * What the core assumes from here, for the control block: every word of it
 * can be written by a peer (a bug, a hostile process), so nothing here may
 * abort, hang past the caller's deadline, or write outside the word on any
 * value.  glibc's sem_t and pthread_mutex_t do not promise that (a sem_t
 * holding 0xffffffff made sem_wait abort: "The futex facility returned an
 * unexpected error code"), so both are built here on bare futex words whose
 * values are checked before use; an impossible value is VMOWN_EBROKEN and the
 * caller marks the block broken.
 *
 * Semaphore: `count` is the number of posts not yet taken (<= VMOWN__SEM_MAX);
 * `waiters` counts the threads about to sleep or asleep on `count`.
 *   post: count += 1 (seq_cst RMW); if waiters != 0: FUTEX_WAKE(count, 1)
 *   wait: waiters += 1 (seq_cst RMW); loop { take one if count > 0, else
 *         FUTEX_WAIT(count, 0, deadline) }; waiters -= 1
 * The RMW of each side comes before its load of the other's word (a Dekker
 * pair): a poster that reads waiters == 0 has its count seen by the waiter's
 * load that follows the waiter's increment, and FUTEX_WAIT sleeps only while
 * count still reads 0.  A post is never lost; a stray wake costs a loop.
 *
 * Lock: `word` is 0 when free, else the holder's pid, with LOCK_SLEEPERS set
 * once somebody may sleep on it.  The pid is in the word itself, stored by
 * the acquiring CAS, so there is no instruction at which a holder can die
 * and leave a lock that names nobody (a separate holder field, stored after
 * the CAS, left one: a peer SIGKILLed there wedged the block).  A waiter
 * looks at the holder's process before its first sleep (kill(pid, 0)) and
 * every LOCK_POLL_NS after (zombies count as dead); dead -> it takes the
 * lock over (CAS dead pid -> its own) and returns 1, for the caller to
 * repair what the lock protects, as EOWNERDEAD of a robust mutex did.  A
 * word whose pid part is 0 or above any pid (2^22 on Linux), or with the
 * spare bit set, is no lock: VMOWN_EBROKEN.  Threads of one process exclude
 * each other all the same (the CAS needs 0); a holder's pid recycled by a
 * new process passes for alive: waiters end with VMOWN_ESTUCK, after
 * stuck_ns of waiting and as many rounds of LOCK_POLL_NS (a process stopped
 * for a while is not stuck when it resumes).  Waits end at the caller's
 * deadline (VMOWN_ETIMEDOUT), never later than a round. */

#define LOCK_SPINS 100
#define LOCK_POLL_NS 10000000   /* 10 ms between looks at the holder's process */

#define LOCK_SLEEPERS 0x80000000u
#define LOCK_SPARE 0x40000000u
#define LOCK_MAX_PID (1u << 22)  /* PID_MAX_LIMIT */

/* This process's pid, cached; forgotten in a forked child. */
static _Atomic uint32_t self_pid;
static pthread_once_t self_pid_once = PTHREAD_ONCE_INIT;
static void forget_self_pid(void) { atomic_store_explicit(&self_pid, 0, memory_order_relaxed); }
static void install_forget_self_pid(void) { (void)pthread_atfork(NULL, NULL, forget_self_pid); }

static uint32_t lock_self(void) {
    uint32_t pid = atomic_load_explicit(&self_pid, memory_order_relaxed);
    if (pid == 0) {
        (void)pthread_once(&self_pid_once, install_forget_self_pid);  /* before caching: a fork then resets it */
        pid = (uint32_t)getpid();
        atomic_store_explicit(&self_pid, pid, memory_order_relaxed);
    }
    return pid;
}

int vmown__sem_init(vmown__sem *sem) {
    atomic_store_explicit(&sem->count, 0, memory_order_relaxed);
    atomic_store_explicit(&sem->waiters, 0, memory_order_relaxed);
    return 0;
}

void vmown__sem_destroy(vmown__sem *sem) { (void)sem; }

int vmown__sem_post(vmown__sem *sem) {
    uint32_t c = atomic_load_explicit(&sem->count, memory_order_relaxed);
    do {
        if (c >= VMOWN__SEM_MAX) {
            (void)vmown__futex_wake(&sem->count, 0);  /* sleepers find the broken count at once */
            return VMOWN_EBROKEN;
        }
    } while (!atomic_compare_exchange_weak_explicit(&sem->count, &c, c + 1, memory_order_seq_cst,
                                                    memory_order_relaxed));
    if (atomic_load_explicit(&sem->waiters, memory_order_seq_cst) != 0) (void)vmown__futex_wake(&sem->count, 1);
    return 0;
}

/* Take one post if there is one: 1 taken, 0 none, VMOWN_EBROKEN. */
static int sem_take(vmown__sem *sem) {
    uint32_t c = atomic_load_explicit(&sem->count, memory_order_seq_cst);
    for (;;) {
        if (c > VMOWN__SEM_MAX) return VMOWN_EBROKEN;
        if (c == 0) return 0;
        if (atomic_compare_exchange_weak_explicit(&sem->count, &c, c - 1, memory_order_seq_cst,
                                                  memory_order_seq_cst))
            return 1;
    }
}

static void sem_leave(vmown__sem *sem) {
    uint32_t n = atomic_load_explicit(&sem->waiters, memory_order_relaxed);
    /* A corrupt count of waiters only costs wakes: never below 0. */
    while (n != 0 && !atomic_compare_exchange_weak_explicit(&sem->waiters, &n, n - 1, memory_order_relaxed,
                                                            memory_order_relaxed)) {
    }
}

int vmown__sem_wait(vmown__sem *sem, int64_t deadline_ns) {
    int rc = sem_take(sem);
    if (rc != 0) return rc < 0 ? rc : 0;
    atomic_fetch_add_explicit(&sem->waiters, 1, memory_order_seq_cst);
    for (;;) {
        if ((rc = sem_take(sem)) != 0) break;
        rc = vmown__futex_wait(&sem->count, 0, deadline_ns);
        if (rc == VMOWN_EINTR || rc == VMOWN_ETIMEDOUT) break;
        if (rc < 0) { rc = VMOWN_EBROKEN; break; }  /* EFAULT/EINVAL: not a usable word */
    }
    sem_leave(sem);
    return rc == 1 ? 0 : rc;
}

int vmown__lock_init(vmown__lock_word *lock) {
    atomic_store_explicit(&lock->word, 0, memory_order_relaxed);
    atomic_store_explicit(&lock->reserved, 0, memory_order_relaxed);
    return 0;
}

int vmown__lock(vmown__lock_word *lock, int64_t deadline_ns, int64_t stuck_ns) {
    const uint32_t me = lock_self();
    uint32_t c = 0;
    if (atomic_compare_exchange_strong_explicit(&lock->word, &c, me, memory_order_acquire, memory_order_relaxed))
        return 0;
    for (int i = 0; i < LOCK_SPINS; i++) {
        vmown__cpu_relax();
        c = 0;
        if (atomic_load_explicit(&lock->word, memory_order_relaxed) == 0 &&
            atomic_compare_exchange_weak_explicit(&lock->word, &c, me, memory_order_acquire, memory_order_relaxed))
            return 0;
    }
    int saved = errno, rc;
    int64_t now = vmown__now_ns(), stuck_at = now + stuck_ns, look_at = now;
    /* Stuck takes stuck_ns of waiting AND as many rounds of LOCK_POLL_NS:
     * a process stopped meanwhile (SIGSTOP, a debugger, a profiler's ptrace)
     * finds stuck_at passed when it resumes, with the holder about to
     * release, and must not take it for stuck. */
    int64_t rounds = 0, stuck_rounds = stuck_ns / LOCK_POLL_NS;
    bool first_look = true;
    for (;;) {
        c = atomic_load_explicit(&lock->word, memory_order_relaxed);
        if (c == 0) {
            /* Sleepers may remain: keep the bit, so that our unlock wakes one. */
            if (atomic_compare_exchange_weak_explicit(&lock->word, &c, me | LOCK_SLEEPERS, memory_order_acquire,
                                                      memory_order_relaxed)) {
                rc = 0;
                break;
            }
            continue;
        }
        uint32_t holder = c & ~LOCK_SLEEPERS;
        if ((c & LOCK_SPARE) || holder == 0 || holder >= LOCK_MAX_PID) {
            rc = VMOWN_EBROKEN;  /* not a lock word: left as found, for the caller to mark the block */
            break;
        }
        now = vmown__now_ns();
        if (now >= look_at) {
            rounds++;
            look_at = now + LOCK_POLL_NS;
            /* kill(pid, 0) first (cheap); /proc, which also sees zombies, at the later looks. */
            bool dead = holder != me && (first_look ? kill((pid_t)holder, 0) != 0 && errno == ESRCH
                                                    : !vmown__process_alive((int32_t)holder, 0));
            first_look = false;
            if (dead) {
                if (atomic_compare_exchange_strong_explicit(&lock->word, &c, me | LOCK_SLEEPERS,
                                                            memory_order_acquire, memory_order_relaxed)) {
                    rc = 1;  /* died holding it: taken over as it is */
                    break;
                }
                continue;
            }
        }
        if (deadline_ns >= 0 && now >= deadline_ns) { rc = VMOWN_ETIMEDOUT; break; }
        if (now >= stuck_at && rounds > stuck_rounds) { rc = VMOWN_ESTUCK; break; }
        if (!(c & LOCK_SLEEPERS) &&
            !atomic_compare_exchange_weak_explicit(&lock->word, &c, c | LOCK_SLEEPERS, memory_order_relaxed,
                                                   memory_order_relaxed))
            continue;
        int64_t until = look_at;
        if (deadline_ns >= 0 && deadline_ns < until) until = deadline_ns;
        rc = vmown__futex_wait(&lock->word, c | LOCK_SLEEPERS, until);
        if (rc < 0 && rc != VMOWN_EINTR && rc != VMOWN_ETIMEDOUT) { rc = VMOWN_EBROKEN; break; }
    }
    errno = saved;
    return rc;
}

void vmown__unlock(vmown__lock_word *lock) {
    if (atomic_exchange_explicit(&lock->word, 0, memory_order_release) & LOCK_SLEEPERS)
        (void)vmown__futex_wake(&lock->word, 1);
}
