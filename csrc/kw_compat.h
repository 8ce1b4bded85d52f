/*
 * Compatibility shims between Lua 5.1 (and LuaJIT 2.1), 5.2, 5.3 and 5.4.
 *
 * Every shim carries the kw_ prefix so that nothing here can collide with a
 * function of the Lua API or of another module linked into the same host.
 */
#ifndef KW_COMPAT_H
#define KW_COMPAT_H

#include <lua.h>
#include <lauxlib.h>

#if LUA_VERSION_NUM >= 502
#define kw_rawlen(L, i) lua_rawlen((L), (i))
#define kw_setfuncs(L, l, nup) luaL_setfuncs((L), (l), (nup))
#else
#define kw_rawlen(L, i) lua_objlen((L), (i))
void kw_setfuncs(lua_State *L, const luaL_Reg *l, int nup);
#endif

#if LUA_VERSION_NUM >= 503
#define kw_isinteger(L, i) lua_isinteger((L), (i))
#else
#define kw_isinteger(L, i) 0
#endif

/* Turns a relative stack index into an absolute one. */
#define kw_absindex(L, i) \
  ((i) > 0 || (i) <= LUA_REGISTRYINDEX ? (i) : lua_gettop(L) + (i) + 1)

/* Sets the metatable registered under tname on the value at the top. */
#define kw_setmetatable(L, tname) \
  (luaL_getmetatable((L), (tname)), lua_setmetatable((L), -2))

/* Creates a fresh table holding the functions of l. */
#define kw_newlib(L, l) \
  (lua_createtable((L), 0, (int)(sizeof(l) / sizeof((l)[0]) - 1)), \
   kw_setfuncs((L), (l), 0))

/* Pushes an integral value as a Lua integer where the Lua has integers. */
void kw_pushinteger(lua_State *L, long long n);

/* Returns the version of the Lua running this module, such as "Lua 5.4". */
const char *kw_lua_version(lua_State *L);

#endif
