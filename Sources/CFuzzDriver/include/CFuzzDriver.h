#ifndef LUNBRIDGE_CFUZZDRIVER_H
#define LUNBRIDGE_CFUZZDRIVER_H
#include <stddef.h>
#include <stdint.h>

// libFuzzer's driver (compiler-rt's FuzzerDriver.cpp), linked by -sanitize=fuzzer. The
// fuzz binary's own main calls it, since SwiftPM gives an executable's entry point its
// own name and libFuzzer's main would never run.
int LLVMFuzzerRunDriver(int *argc, char ***argv, int (*callback)(const uint8_t *data, size_t size));

#endif
