// CRC32C for iSCSI header and data digests (RFC 7143 section 13.1: CRC32C,
// polynomial 0x1EDC6F41, reflected 0x82F63B78).
#include "CCRC32C.h"

#include <string.h>

static uint32_t table[8][256];
static int use_hw = -1;
static int detect(void);

// Filled once when the library loads, before any thread can call in.
__attribute__((constructor)) static void build_table(void) {
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = n;
    for (int k = 0; k < 8; k++) c = (c & 1) ? (c >> 1) ^ 0x82F63B78u : c >> 1;
    table[0][n] = c;
  }
  for (uint32_t n = 0; n < 256; n++) {
    uint32_t c = table[0][n];
    for (int t = 1; t < 8; t++) {
      c = table[0][c & 0xff] ^ (c >> 8);
      table[t][n] = c;
    }
  }
  use_hw = detect();
}

uint32_t lb_crc32c_update_portable(uint32_t crc, const void *data, size_t len) {
  const uint8_t *p = data;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
#if __BYTE_ORDER__ == __ORDER_BIG_ENDIAN__
    v = __builtin_bswap64(v);
#endif
    v ^= crc;
    crc = table[7][v & 0xff] ^ table[6][(v >> 8) & 0xff] ^ table[5][(v >> 16) & 0xff] ^
          table[4][(v >> 24) & 0xff] ^ table[3][(v >> 32) & 0xff] ^ table[2][(v >> 40) & 0xff] ^
          table[1][(v >> 48) & 0xff] ^ table[0][v >> 56];
    p += 8;
    len -= 8;
  }
  while (len--) crc = table[0][(crc ^ *p++) & 0xff] ^ (crc >> 8);
  return crc;
}

#if defined(__x86_64__)
#include <cpuid.h>

__attribute__((target("sse4.2"))) static uint32_t crc_hw(uint32_t crc, const void *data, size_t len) {
  const uint8_t *p = data;
  uint64_t c = crc;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    c = __builtin_ia32_crc32di(c, v);
    p += 8;
    len -= 8;
  }
  uint32_t c32 = (uint32_t)c;
  while (len--) c32 = __builtin_ia32_crc32qi(c32, *p++);
  return c32;
}

static int detect(void) {
  unsigned a, b, c, d;
  if (!__get_cpuid(1, &a, &b, &c, &d)) return 0;
  return (c & bit_SSE4_2) ? 1 : 0;
}
#elif defined(__aarch64__) && defined(__ARM_FEATURE_CRC32)
#include <arm_acle.h>
static uint32_t crc_hw(uint32_t crc, const void *data, size_t len) {
  const uint8_t *p = data;
  while (len >= 8) {
    uint64_t v;
    memcpy(&v, p, 8);
    crc = __crc32cd(crc, v);
    p += 8;
    len -= 8;
  }
  while (len--) crc = __crc32cb(crc, *p++);
  return crc;
}
static int detect(void) { return 1; }
#else
static uint32_t crc_hw(uint32_t crc, const void *data, size_t len) {
  return lb_crc32c_update_portable(crc, data, len);
}
static int detect(void) { return 0; }
#endif

int lb_crc32c_hardware(void) {
  return use_hw;
}

uint32_t lb_crc32c_update(uint32_t crc, const void *data, size_t len) {
  if (use_hw > 0) return crc_hw(crc, data, len);
  return lb_crc32c_update_portable(crc, data, len);
}
