#ifndef LUNBRIDGE_CALLOCATIONCOUNTER_H
#define LUNBRIDGE_CALLOCATIONCOUNTER_H

#include <stdint.h>

/// Counts heap allocations of the whole process (benchmarks only). Linking this target
/// interposes malloc, calloc, realloc, free, posix_memalign, aligned_alloc and memalign;
/// each forwards to glibc's __libc_* entry points. Counters are process-wide and updated
/// with relaxed atomics, so read them from one thread while nothing else allocates.

/// Sets the allocation and byte counters to zero.
void lb_alloc_reset(void);
/// Allocations (malloc, calloc, posix_memalign, aligned_alloc, memalign, and realloc
/// calls that get a new block: a NULL pointer or a changed address) since the last reset.
uint64_t lb_alloc_count(void);
/// Bytes requested by those allocations since the last reset.
uint64_t lb_alloc_bytes(void);

#endif
