#ifndef LUNBRIDGE_BUILDINFO_H
#define LUNBRIDGE_BUILDINFO_H

/// The commit the binary was built from ("unknown" when built without make).
const char *lunbridge_build_commit(void);

#endif
