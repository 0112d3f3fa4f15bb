/* check.h -- what the C test programs of the core share.
 *
 * CHECK(cond, format, ...): on failure, print "<program>: FAILED: <message>
 * (file:line)" and exit 1.  wait_for(cond, what): poll cond every ms for up
 * to 10 s, then CHECK it.  make_block(nslots): a control block for nslots
 * threads in an anonymous shared mapping; free_block(vm) detaches and
 * unmaps it.  The including file defines TEST_NAME first.
 */
#ifndef VMOWN_TESTS_CHECK_H
#define VMOWN_TESTS_CHECK_H

#include "../vmown.h"

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

/* The one block a program has at a time (make_block ... free_block). */
static void *block_mem;
static size_t block_len;

static inline vmown_vm *make_block(uint32_t nslots) {
    block_len = vmown_block_size(nslots);
    vmown_vm *vm = NULL;
    CHECK(vmown_map_anonymous(block_len, &block_mem) == 0 && vmown_vm_init(block_mem, block_len, nslots, &vm) == 0,
          "make block");
    return vm;
}

static inline void free_block(vmown_vm *vm) {
    vmown_vm_detach(vm);
    vmown_unmap(block_mem, block_len);
}

#endif
