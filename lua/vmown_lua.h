/* vmown_lua.h -- what a C module gives the Lua module `vmown` to thread.
 *
 * vmown.threaded(f) takes a full userdata with the metatable named
 * VMOWN_LUA_CFUNCTION whose block holds a `const vmown_lua_cfunction *`.
 * Its `call` runs without the VM: it must not touch any lua_State, since
 * another thread may be running Lua meanwhile.  The wrapper reads the Lua
 * arguments (integers) before, and pushes the result after, owning the VM.
 */
#ifndef VMOWN_LUA_H
#define VMOWN_LUA_H

#include <stdint.h>

#define VMOWN_LUA_CFUNCTION "vmown.cfunction"
#define VMOWN_LUA_MAX_ARGS 6

typedef struct {
    const char *name;
    /* The blocking call; errno after it is returned to Lua as a second result. */
    int64_t (*call)(const int64_t *args, int nargs);
} vmown_lua_cfunction;

#endif
