/* liveness_test.c -- vmown__process_alive: who counts as dead.
 * A live child is alive with its own start time and dead with any other (a
 * recycled pid); once killed it is dead as a zombie and after being reaped. */
#define _GNU_SOURCE
#include "../vmown_internal.h"

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

int main(void) {
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
