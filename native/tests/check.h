/* check.h -- what the C test programs of the core share.
 *
 * CHECK(cond, format, ...): on failure, print "<program>: FAILED: <message>
 * (file:line)" and exit 1.  wait_for(cond, what): poll cond every ms for up
 * to 10 s, then CHECK it.  The including file defines TEST_NAME first.
 */
#ifndef VMOWN_TESTS_CHECK_H
#define VMOWN_TESTS_CHECK_H

#include <stdio.h>
#include <stdlib.h>
#include <unistd.h>

#define CHECK(cond, ...)                                       \
    do {                                                       \
        if (!(cond)) {                                         \
            fprintf(stderr, TEST_NAME ": FAILED: " __VA_ARGS__); \
            fprintf(stderr, " (%s:%d)\n", __FILE__, __LINE__); \
            exit(1);                                           \
        }                                                      \
    } while (0)

static inline void wait_for(int (*cond)(void), const char *what) {
    for (int i = 0; i < 10000 && !cond(); i++) usleep(1000);
    CHECK(cond(), "timed out waiting for %s", what);
}

#endif
