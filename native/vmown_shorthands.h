/* vmown_shorthands.h -- branch hints and memory-order names, for every C file. */
#ifndef VMOWN_SHORTHANDS_H
#define VMOWN_SHORTHANDS_H

#include <stdatomic.h>

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)

#define RELAXED memory_order_relaxed
#define ACQUIRE memory_order_acquire
#define RELEASE memory_order_release
#define SEQ_CST memory_order_seq_cst

#endif
