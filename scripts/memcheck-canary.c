/*
 * A Lua C module with planted memory errors, loaded by scripts/test-asan and
 * scripts/test-valgrind to check that their tool and settings report each
 * kind of error and fail the run before the specs are trusted to be clean.
 */
#include <limits.h>
#include <stdlib.h>
#include <string.h>

#include <lauxlib.h>
#include <lua.h>

/* Reads one byte past the end of an 8-byte heap block. */
static int heap_overflow(lua_State *L)
{
  char *block = malloc(8);
  volatile char *bytes = block;
  int past_end;

  memset(block, 'x', 8);
  past_end = bytes[8];
  free(block);
  lua_pushinteger(L, past_end);
  return 1;
}

/* Adds the argument to INT_MAX in int arithmetic, which overflows for 1 or more. */
static int signed_overflow(lua_State *L)
{
  volatile int base = INT_MAX;
  int addend = (int)luaL_checkinteger(L, 1);

  lua_pushinteger(L, base + addend);
  return 1;
}

/* Allocates n bytes and drops the only pointer to them. */
static int leak(lua_State *L)
{
  size_t n = (size_t)luaL_checkinteger(L, 1);
  char *volatile block = malloc(n);

  memset(block, 'x', n);
  block = NULL;
  return 0;
}

__attribute__((visibility("default")))
int luaopen_memcheck_canary(lua_State *L)
{
  static const luaL_Reg functions[] = {
    { "heap_overflow", heap_overflow },
    { "signed_overflow", signed_overflow },
    { "leak", leak },
    { NULL, NULL }
  };

#if LUA_VERSION_NUM >= 502
  luaL_newlib(L, functions);
#else
  lua_newtable(L);
  luaL_register(L, NULL, functions);
#endif
  return 1;
}
