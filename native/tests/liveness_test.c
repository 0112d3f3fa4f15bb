/* liveness_test.c -- vmown__process_alive: who counts as dead.
 * A live child is alive with its own start time and dead with any other (a
 * recycled pid); once killed it is dead as a zombie and after being reaped.
 * And the lock's other verdict, stuck: a holder that never lets go is stuck
 * after stuck_ns; a process stopped while one of its threads waited for
 * the lock (SIGSTOP, a profiler's ptrace) is not, when it resumes. */
#define _GNU_SOURCE
#include "../vmown_internal.h"

#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

#define CHECK(cond, what)                                                \
    do {                                                                 \
        if (!(cond)) {                                                   \
            fprintf(stderr, "liveness_test: FAILED: %s\n", what);        \
            exit(1);                                                     \
        }                                                                \
    } while (0)

static vmown__lock_word lock;
static _Atomic int lock_rc = 99;

static void *wait_for_lock(void *stuck_ns) {
    int rc = vmown__lock(&lock, -1, (int64_t)(intptr_t)stuck_ns);
    atomic_store(&lock_rc, rc);
    if (rc == 0) vmown__unlock(&lock);
    return NULL;
}

/* A child whose main thread holds the lock while a thread waits for it
 * (stuck_ns 1 s: 100 rounds); the parent stops the child for 1.5 s, then
 * lets it go on; the holder lets go after 20 more sleeps of 5 ms (100 ms,
 * a few times that on a loaded machine: far fewer than the rounds left).
 * Exit 0 if the waiter got the lock. */
static void stopped_while_waiting(void) {
    int ready[2];
    CHECK(pipe(ready) == 0, "pipe");
    pid_t child = fork();
    if (child == 0) {
        vmown__lock_init(&lock);
        if (vmown__lock(&lock, -1, 0) != 0) _exit(3);
        pthread_t waiter;
        if (pthread_create(&waiter, NULL, wait_for_lock, (void *)(intptr_t)1000000000) != 0) _exit(4);
        usleep(50000);  /* the waiter is in its wait */
        if (write(ready[1], "r", 1) != 1) _exit(5);
        usleep(200000);  /* stopped in here */
        for (int i = 0; i < 20; i++) usleep(5000);
        vmown__unlock(&lock);
        pthread_join(waiter, NULL);
        _exit(atomic_load(&lock_rc) == 0 ? 0 : atomic_load(&lock_rc) == VMOWN_ESTUCK ? 2 : 6);
    }
    char c;
    CHECK(read(ready[0], &c, 1) == 1, "the child is ready");
    kill(child, SIGSTOP);
    usleep(1500000);
    kill(child, SIGCONT);
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) != 2, "a process stopped while waiting took its own holder for stuck");
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "the stopped waiter did not get the lock");
}

/* A holder that never lets go: the waiter is told after stuck_ns. */
static void held_for_good(void) {
    vmown__lock_init(&lock);
    CHECK(vmown__lock(&lock, -1, 0) == 0, "taking the lock");
    pthread_t waiter;
    int64_t start = vmown__now_ns();
    CHECK(pthread_create(&waiter, NULL, wait_for_lock, (void *)(intptr_t)100000000) == 0, "pthread_create");
    pthread_join(waiter, NULL);
    CHECK(atomic_load(&lock_rc) == VMOWN_ESTUCK, "a lock held for good was not stuck");
    CHECK(vmown__now_ns() - start >= 100000000, "stuck before stuck_ns");
    vmown__unlock(&lock);
}

int main(void) {
    stopped_while_waiting();
    held_for_good();
    pid_t child = fork();
    if (child == 0) {
        pause();
        _exit(0);
    }
    uint64_t start = vmown__process_start_time(child);
    CHECK(start != 0, "start time of a live child");
    CHECK(vmown__process_alive(child, start), "live child with its start time");
    CHECK(vmown__process_alive(child, 0), "live child, start time unknown");
    CHECK(!vmown__process_alive(child, start + 1), "a recycled pid (other start time) passed for alive");
    CHECK(vmown__process_alive(getpid(), vmown__process_start_time(getpid())), "this process");
    kill(child, SIGKILL);
    for (int i = 0; i < 1000 && vmown__process_alive(child, start); i++) usleep(1000);
    CHECK(!vmown__process_alive(child, start), "a zombie counts as dead");
    waitpid(child, NULL, 0);
    CHECK(!vmown__process_alive(child, start), "a reaped child counts as dead");
    CHECK(!vmown__process_alive(0, 0) && !vmown__process_alive(-1, 0), "pid <= 0 is never alive");
    printf("liveness_test: all passed\n");
    return 0;
}
