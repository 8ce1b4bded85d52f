#include "kw_compat.h"

#ifdef KW_LUAJIT
#include <luajit.h>
#endif

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

const char *kw_lua_version(lua_State *L)
{
#ifdef KW_LUAJIT
  (void)L;
  return LUAJIT_VERSION;
#else
  (void)L;
  return LUA_VERSION;
#endif
}
