/*
 * JSON through the client's codec: a private lua-cjson instance, or vim.json
 * inside Neovim. The codec is a Lua table { encode, decode, null } held in the
 * registry; it is always called under lua_pcall, so a codec error becomes a
 * message for an error table and never unwinds through C code that owns memory.
 */
#include <math.h>

#include "kw.h"

#define KW_MAX_EXACT_INTEGER 9007199254740992.0 /* 2^53 */

void kw_json_push_codec(lua_State *L, const kw_client *client)
{
  lua_rawgeti(L, LUA_REGISTRYINDEX, client->codec_ref);
}

/* Calls codec[fn] on the value at the top under lua_pcall; returns 0 on failure. */
static int call_codec(lua_State *L, int codec_index, const char *fn)
{
  lua_getfield(L, codec_index, fn);
  lua_insert(L, -2);
  if (lua_pcall(L, 1, 1, 0) != 0) {
    if (lua_type(L, -1) != LUA_TSTRING) {
      lua_pop(L, 1);
      lua_pushstring(L, "the JSON codec failed without a message");
    }
    return 0;
  }
  return 1;
}

/* Pushes the JSON text of the value at value_index; on failure pushes a message and returns 0. */
int kw_json_encode(lua_State *L, int codec_index, int value_index)
{
  codec_index = kw_absindex(L, codec_index);
  lua_pushvalue(L, value_index);
  if (!call_codec(L, codec_index, "encode"))
    return 0;
  if (lua_type(L, -1) != LUA_TSTRING) {
    lua_pop(L, 1);
    lua_pushstring(L, "the JSON codec returned no text");
    return 0;
  }
  return 1;
}

/* Pushes the decoded value of text; on failure pushes a message and returns 0. */
int kw_json_decode(lua_State *L, int codec_index, const char *text, size_t len)
{
  codec_index = kw_absindex(L, codec_index);
  lua_pushlstring(L, text, len);
  return call_codec(L, codec_index, "decode");
}

static void normalise_value(lua_State *L, int null_index, int depth);

static void normalise_table(lua_State *L, int table_index, int null_index, int depth)
{
  luaL_checkstack(L, 4, "JSON value nested too deeply");
  lua_pushnil(L);
  while (lua_next(L, table_index) != 0) {
    if (lua_rawequal(L, -1, null_index)) {
      lua_pop(L, 1);
      lua_pushvalue(L, -1);
      lua_pushnil(L);
      lua_rawset(L, table_index);
      continue;
    }
    if (lua_type(L, -1) == LUA_TTABLE) {
      normalise_value(L, null_index, depth + 1);
      lua_pop(L, 1);
      continue;
    }
#if LUA_VERSION_NUM >= 503
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number n = lua_tonumber(L, -1);

      if (n == floor(n) && fabs(n) <= KW_MAX_EXACT_INTEGER) {
        lua_pushvalue(L, -2);
        lua_pushinteger(L, (lua_Integer)n);
        lua_rawset(L, table_index);
      }
    }
#endif
    lua_pop(L, 1);
  }
}

static void normalise_value(lua_State *L, int null_index, int depth)
{
  if (lua_type(L, -1) == LUA_TTABLE && depth < 2000)
    normalise_table(L, kw_absindex(L, -1), null_index, depth);
}

/*
 * Replaces JSON null by nil and, on Lua 5.3 and later, integral floats up to
 * 2^53 by integers, in place and at every depth of the value at value_index.
 */
void kw_json_normalise(lua_State *L, int codec_index, int value_index)
{
  value_index = kw_absindex(L, value_index);
  lua_getfield(L, codec_index, "null");
  lua_pushvalue(L, value_index);
  normalise_value(L, kw_absindex(L, -2), 0);
  lua_pop(L, 2);
}
