/* os_linux.c -- every OS call of the vmown core, in one file.
 *
 * A port to another OS rewrites this file and nothing else.  What the rest of
 * the core assumes from here:
 *   - semaphores that live in shared memory and work across processes
 *     (POSIX unnamed semaphores with pshared = 1; futex-based in glibc, so a
 *     post before the wait is remembered and never lost);
 *   - a lock that lives in shared memory and that the kernel releases when its
 *     holder dies (a robust, process-shared pthread mutex: the next locker gets
 *     EOWNERDEAD and repairs the state it protects);
 *   - anonymous MAP_SHARED memory, shared with children across fork.
 * Waits return on signals (EINTR) so that the caller can run its handlers.
 */
#define _GNU_SOURCE
#include "vmown_internal.h"

#include <errno.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

_Noreturn void vmown__fatal(const char *what, int err) {
    fprintf(stderr, "vmown: fatal: %s failed: %s\n", what, strerror(err));
    abort();
}

int vmown__sem_init(sem_t *sem) {
    if (sem_init(sem, /*pshared=*/1, 0) != 0) return -errno;
    return 0;
}

void vmown__sem_destroy(sem_t *sem) { (void)sem_destroy(sem); }

void vmown__sem_post(sem_t *sem) {
    int saved = errno;
    if (sem_post(sem) != 0) vmown__fatal("sem_post", errno);
    errno = saved;
}

int vmown__sem_wait(sem_t *sem, int64_t deadline_ns) {
    int saved = errno, rc;
    if (deadline_ns < 0) {
        rc = sem_wait(sem);
    } else {
        struct timespec ts = {.tv_sec = deadline_ns / 1000000000,
                              .tv_nsec = deadline_ns % 1000000000};
        rc = sem_clockwait(sem, CLOCK_MONOTONIC, &ts);
    }
    int err = rc == 0 ? 0 : errno;
    errno = saved;
    if (rc == 0) return 0;
    if (err == EINTR) return VMOWN_EINTR;
    if (err == ETIMEDOUT) return VMOWN_ETIMEDOUT;
    vmown__fatal("sem_wait", err);
}

int vmown__lock_init(pthread_mutex_t *lock) {
    pthread_mutexattr_t attr;
    int rc = pthread_mutexattr_init(&attr);
    if (rc == 0) rc = pthread_mutexattr_setpshared(&attr, PTHREAD_PROCESS_SHARED);
    if (rc == 0) rc = pthread_mutexattr_setrobust(&attr, PTHREAD_MUTEX_ROBUST);
    if (rc == 0) rc = pthread_mutex_init(lock, &attr);
    pthread_mutexattr_destroy(&attr);
    return -rc;
}

int vmown__lock(pthread_mutex_t *lock) {
    int saved = errno;
    int rc = pthread_mutex_lock(lock);
    errno = saved;
    if (rc == 0) return 0;
    if (rc == EOWNERDEAD) return 1;
    if (rc == ENOTRECOVERABLE) return VMOWN_EBROKEN;
    return -rc;
}

void vmown__lock_consistent(pthread_mutex_t *lock) {
    int rc = pthread_mutex_consistent(lock);
    if (rc != 0) vmown__fatal("pthread_mutex_consistent", rc);
}

void vmown__unlock(pthread_mutex_t *lock) {
    int rc = pthread_mutex_unlock(lock);
    if (rc != 0) vmown__fatal("pthread_mutex_unlock", rc);
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

int vmown_map_anonymous(size_t len, void **out) {
    void *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) return -errno;
    *out = p;
    return 0;
}

int vmown_unmap(void *addr, size_t len) { return munmap(addr, len) == 0 ? 0 : -errno; }

size_t vmown_page_size(void) { return (size_t)sysconf(_SC_PAGESIZE); }
