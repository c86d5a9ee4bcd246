// Interposes the allocator of the process that links this file, the way swift-nio's
// allocation-counting performance tests do (IntegrationTests/tests_04_performance): the
// symbols below take precedence over libc's in the dynamic link, and forward to glibc's
// __libc_* entry points, which are the real allocator and never call back into us.
// glibc only (musl has no __libc_malloc); the benchmark runs on Linux.

#include "CAllocationCounter.h"

#include <errno.h>
#include <stddef.h>
#include <stdint.h>

extern void *__libc_malloc(size_t size);
extern void *__libc_calloc(size_t nmemb, size_t size);
extern void *__libc_realloc(void *ptr, size_t size);
extern void __libc_free(void *ptr);
extern void *__libc_memalign(size_t alignment, size_t size);

static uint64_t lb_count = 0;
static uint64_t lb_bytes = 0;

static inline void lb_note(size_t size) {
  __atomic_fetch_add(&lb_count, 1, __ATOMIC_RELAXED);
  __atomic_fetch_add(&lb_bytes, (uint64_t)size, __ATOMIC_RELAXED);
}

void lb_alloc_reset(void) {
  __atomic_store_n(&lb_count, 0, __ATOMIC_RELAXED);
  __atomic_store_n(&lb_bytes, 0, __ATOMIC_RELAXED);
}

uint64_t lb_alloc_count(void) { return __atomic_load_n(&lb_count, __ATOMIC_RELAXED); }

uint64_t lb_alloc_bytes(void) { return __atomic_load_n(&lb_bytes, __ATOMIC_RELAXED); }

void *malloc(size_t size) {
  lb_note(size);
  return __libc_malloc(size);
}

void *calloc(size_t nmemb, size_t size) {
  lb_note(nmemb * size);
  return __libc_calloc(nmemb, size);
}

void *realloc(void *ptr, size_t size) {
  void *out = __libc_realloc(ptr, size);
  // Growing in place is not a new allocation; a moved or fresh block is.
  if (out != NULL && out != ptr) lb_note(size);
  return out;
}

void free(void *ptr) { __libc_free(ptr); }

static int lb_power_of_two(size_t x) { return x != 0 && (x & (x - 1)) == 0; }

int posix_memalign(void **memptr, size_t alignment, size_t size) {
  if (!lb_power_of_two(alignment) || alignment % sizeof(void *) != 0) return EINVAL;
  void *p = __libc_memalign(alignment, size);
  if (p == NULL) return ENOMEM;
  lb_note(size);
  *memptr = p;
  return 0;
}

void *aligned_alloc(size_t alignment, size_t size) {
  lb_note(size);
  return __libc_memalign(alignment, size);
}

void *memalign(size_t alignment, size_t size) {
  lb_note(size);
  return __libc_memalign(alignment, size);
}
