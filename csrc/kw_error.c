/*
 * Error tables. Every error that the module returns is built here, with one
 * metatable whose __tostring gives a single readable line. The API key is
 * redacted here, so this is the one place to audit for leaks into errors.
 */
#include <stdarg.h>
#include <stdio.h>
#include <string.h>

#include "kw.h"

#define KW_MIN_REDACTED_KEY 6

int kw_argerror(lua_State *L, int arg, const char *fname, const char *argname,
                const char *fmt, ...)
{
  va_list ap;
  const char *detail;

  va_start(ap, fmt);
  detail = lua_pushvfstring(L, fmt, ap);
  va_end(ap);
  return luaL_error(L, "bad argument #%d (%s) to '%s' (%s)", arg, argname,
                    fname, detail);
}

/*
 * Appends at most max bytes of text as one printable line: runs of white
 * space become one space and other control or non-ASCII bytes become '?'.
 */
void kw_sanitise(luaL_Buffer *b, const char *text, size_t len, size_t max)
{
  size_t i;
  size_t out = 0;
  int in_space = 0;

  for (i = 0; i < len && out < max; i++) {
    unsigned char c = (unsigned char)text[i];

    if (c == ' ' || c == '\t' || c == '\r' || c == '\n') {
      if (!in_space && out > 0) {
        luaL_addchar(b, ' ');
        out++;
      }
      in_space = 1;
      continue;
    }
    in_space = 0;
    luaL_addchar(b, (c >= 0x20 && c < 0x7f) ? (char)c : '?');
    out++;
  }
  if (i < len)
    luaL_addstring(b, "...");
}

/* Pushes text with every occurrence of the client's API key replaced by ***. */
void kw_redact(lua_State *L, const kw_client *client, const char *text, size_t len)
{
  const char *key = client != NULL ? kw_client_key(client) : NULL;
  size_t key_len = key != NULL ? strlen(key) : 0;
  luaL_Buffer b;
  size_t i = 0;

  /* A key of a few bytes would mangle every message and hides no secret. */
  if (key_len < KW_MIN_REDACTED_KEY) {
    lua_pushlstring(L, text, len);
    return;
  }
  luaL_buffinit(L, &b);
  while (i < len) {
    if (len - i >= key_len && memcmp(text + i, key, key_len) == 0) {
      luaL_addstring(&b, "***");
      i += key_len;
    } else {
      luaL_addchar(&b, text[i]);
      i++;
    }
  }
  luaL_pushresult(&b);
}

static void set_redacted(lua_State *L, const kw_client *client,
                         const char *field, const char *text)
{
  if (text == NULL)
    return;
  kw_redact(L, client, text, strlen(text));
  lua_setfield(L, -2, field);
}

int kw_error_push(lua_State *L, const kw_client *client, const kw_error_info *info)
{
  lua_createtable(L, 0, 8);
  lua_pushstring(L, info->kind);
  lua_setfield(L, -2, "kind");
  set_redacted(L, client, "message", info->message);
  set_redacted(L, client, "hint", info->hint);
  set_redacted(L, client, "id", info->id);
  if (info->status > 0) {
    kw_pushinteger(L, info->status);
    lua_setfield(L, -2, "status");
  }
  lua_pushboolean(L, info->retryable);
  lua_setfield(L, -2, "retryable");
  if (info->retry_after >= 0) {
    lua_pushnumber(L, info->retry_after);
    lua_setfield(L, -2, "retry_after");
  }
  if (info->excerpt != NULL && info->excerpt_len > 0) {
    /* Redacted before the cut, so that no start of a key cut in two shows. */
    luaL_Buffer b;
    size_t n;
    const char *redacted;

    kw_redact(L, client, info->excerpt, info->excerpt_len);
    redacted = lua_tolstring(L, -1, &n);
    luaL_buffinit(L, &b);
    kw_sanitise(&b, redacted, n, KW_EXCERPT_LENGTH);
    luaL_pushresult(&b);
    lua_remove(L, -2);
    lua_setfield(L, -2, "body");
  }
  kw_setmetatable(L, KW_ERROR_MT);
  return 1;
}

int kw_error_return(lua_State *L, const kw_client *client, const kw_error_info *info)
{
  lua_pushnil(L);
  kw_error_push(L, client, info);
  return 2;
}

/* __tostring: "kore_workflow: <message>; <hint>". */
static int error_tostring(lua_State *L)
{
  luaL_Buffer b;

  luaL_checktype(L, 1, LUA_TTABLE);
  luaL_buffinit(L, &b);
  luaL_addstring(&b, "kore_workflow: ");
  lua_getfield(L, 1, "message");
  if (lua_type(L, -1) == LUA_TSTRING)
    luaL_addvalue(&b);
  else {
    lua_pop(L, 1);
    luaL_addstring(&b, "unknown error");
  }
  lua_getfield(L, 1, "hint");
  if (lua_type(L, -1) == LUA_TSTRING) {
    luaL_addstring(&b, "; ");
    luaL_addvalue(&b);
  } else {
    lua_pop(L, 1);
  }
  luaL_pushresult(&b);
  return 1;
}

/*
 * core.new_error(fields [, client]): builds an error table from Lua, for
 * errors found in the Lua layer (a job that failed, a deadline). Strings are
 * redacted with the client's key when a client is given.
 */
int kw_error_new_lua(lua_State *L)
{
  static const char *const redacted[] = { "message", "hint", "id", "body", NULL };
  const kw_client *client = NULL;
  int i;

  luaL_checktype(L, 1, LUA_TTABLE);
  if (!lua_isnoneornil(L, 2))
    client = kw_client_check(L, 2);
  lua_getfield(L, 1, "kind");
  if (lua_type(L, -1) != LUA_TSTRING)
    kw_argerror(L, 1, "new_error", "fields", "field 'kind' must be a string");
  lua_getfield(L, 1, "message");
  if (lua_type(L, -1) != LUA_TSTRING)
    kw_argerror(L, 1, "new_error", "fields", "field 'message' must be a string");
  lua_pop(L, 2);

  lua_newtable(L);
  lua_pushnil(L);
  while (lua_next(L, 1) != 0) {
    lua_pushvalue(L, -2);
    lua_insert(L, -2);
    lua_rawset(L, -4);
  }
  for (i = 0; redacted[i] != NULL; i++) {
    size_t n;
    const char *s;

    lua_getfield(L, -1, redacted[i]);
    s = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &n) : NULL;
    if (s != NULL && client != NULL) {
      kw_redact(L, client, s, n);
      lua_setfield(L, -3, redacted[i]);
    }
    lua_pop(L, 1);
  }
  lua_getfield(L, -1, "retryable");
  if (lua_isnil(L, -1)) {
    lua_pushboolean(L, 0);
    lua_setfield(L, -3, "retryable");
  }
  lua_pop(L, 1);
  kw_setmetatable(L, KW_ERROR_MT);
  return 1;
}

void kw_error_register(lua_State *L)
{
  if (luaL_newmetatable(L, KW_ERROR_MT)) {
    lua_pushcfunction(L, error_tostring);
    lua_setfield(L, -2, "__tostring");
    lua_pushliteral(L, "kore_workflow.error");
    lua_setfield(L, -2, "__name");
  }
  lua_pop(L, 1);
}
