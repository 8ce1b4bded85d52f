#include "kw_compat.h"

#if LUA_VERSION_NUM < 502
void kw_setfuncs(lua_State *L, const luaL_Reg *l, int nup)
{
  luaL_checkstack(L, nup + 1, "too many upvalues");
  for (; l->name != NULL; l++) {
    int i;

    for (i = 0; i < nup; i++)
      lua_pushvalue(L, -nup);
    lua_pushcclosure(L, l->func, nup);
    lua_setfield(L, -(nup + 2), l->name);
  }
  lua_pop(L, nup);
}
#endif

void kw_pushinteger(lua_State *L, long long n)
{
#if LUA_VERSION_NUM >= 503
  lua_pushinteger(L, (lua_Integer)n);
#else
  lua_pushnumber(L, (lua_Number)n);
#endif
}

/*
 * LuaJIT is detected at run time by its "jit" table, so one build of the
 * module reports the right interpreter whichever one loaded it.
 */
const char *kw_lua_version(lua_State *L)
{
  const char *version = LUA_VERSION;

  lua_getglobal(L, "jit");
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_getfield(L, -1, "version");
    if (lua_type(L, -1) == LUA_TSTRING)
      version = lua_tostring(L, -1);
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  return version;
}
