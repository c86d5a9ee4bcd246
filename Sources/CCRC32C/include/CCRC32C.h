#ifndef LUNBRIDGE_CCRC32C_H
#define LUNBRIDGE_CCRC32C_H

#include <stddef.h>
#include <stdint.h>

/// Extends a CRC32C (Castagnoli, reflected polynomial 0x82F63B78) over `len` bytes.
/// `crc` is the running, already-inverted register value: start with 0xFFFFFFFF and
/// invert the final result (RFC 7143 section 13 / RFC 3720 appendix B.4).
uint32_t lb_crc32c_update(uint32_t crc, const void *data, size_t len);

/// 1 when the SSE4.2 CRC32 instruction is used, 0 when the table fallback is.
int lb_crc32c_hardware(void);

/// The portable table-driven path, exposed so tests can compare both paths.
uint32_t lb_crc32c_update_portable(uint32_t crc, const void *data, size_t len);

#endif
