// The commit of the build: `make build` (and every make target that builds) writes
// .build/buildinfo.h with LUNBRIDGE_COMMIT when HEAD changes; a plain `swift build`
// without it says "unknown".
#include "buildinfo.h"

#if __has_include("../../.build/buildinfo.h")
#include "../../.build/buildinfo.h"
#endif

#ifndef LUNBRIDGE_COMMIT
#define LUNBRIDGE_COMMIT "unknown"
#endif

const char *lunbridge_build_commit(void) { return LUNBRIDGE_COMMIT; }
