/* version.c -- which libvmown this is (vmown.h, VMOWN_VERSION_*).
 *
 * Compiled into the library, so that a program can compare the version it
 * was built against (the header's macros) with the one it runs against, as
 * libuv's uv_version does.  The string is made from the three numbers, so
 * they are the one statement of the version.
 */
#include "vmown.h"

#define STRINGIFY_(n) #n
#define STRINGIFY(n) STRINGIFY_(n)

unsigned int vmown_version(void) { return VMOWN_VERSION_HEX; }

const char *vmown_version_string(void) {
    return STRINGIFY(VMOWN_VERSION_MAJOR) "." STRINGIFY(VMOWN_VERSION_MINOR) "." STRINGIFY(VMOWN_VERSION_PATCH);
}
