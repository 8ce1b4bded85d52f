#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include <lualib.h>

#include "kwf.h"

int luaopen_kore_workflow_core(lua_State *L);

unsigned kwf_byte(kwf_input *in)
{
  if (in->pos >= in->size)
    return 0;
  return in->data[in->pos++];
}

uint64_t kwf_uint(kwf_input *in, int bytes)
{
  uint64_t value = 0;
  int i;

  for (i = 0; i < bytes; i++)
    value |= (uint64_t)kwf_byte(in) << (8 * i);
  return value;
}

size_t kwf_length(kwf_input *in, size_t max)
{
  size_t n = kwf_byte(in);

  if (n >= 250)
    n = (size_t)kwf_uint(in, 2);
  return n < max ? n : max;
}

size_t kwf_bytes(kwf_input *in, size_t n, const uint8_t **out)
{
  size_t left = in->size - in->pos;

  if (n > left)
    n = left;
  *out = in->data + in->pos;
  in->pos += n;
  return n;
}

void kwf_push_bytes(lua_State *L, kwf_input *in, size_t max)
{
  const uint8_t *bytes;
  size_t n = kwf_bytes(in, kwf_length(in, max), &bytes);

  lua_pushlstring(L, (const char *)bytes, n);
}

/* Strings the C core compares against: field and option names, path segments, ids. */
static const char *const words[] = {
  "workflowDataFileId", "flowDataFileId", "envVariablesFileId",
  "connect_timeout", "timeout", "stall_timeout", "max_response",
  "context", "filename", "host", "api_key", "ca_file", "logger", "verbose",
  "insecure", "bulkImport", "", ".", "..", "%2e", "/", "a-00000000-0000-4000-8000-000000000001",
  "ds-1", "json", "application/json", " ", "\r\n", "\t", KWF_KEY, KWF_HOST,
  "https://127.0.0.1", "http://u:p@127.0.0.1", "http://127.0.0.1/path", "ftp://127.0.0.1",
};

int kwf_key_pushed = 0;

void kwf_push_word(lua_State *L, kwf_input *in)
{
  const char *word = words[kwf_byte(in) % (sizeof(words) / sizeof(words[0]))];

  if (strcmp(word, KWF_KEY) == 0)
    kwf_key_pushed = 1;
  lua_pushstring(L, word);
}

static const double edge_numbers[] = {
  0.0, -0.0, 1.0, -1.0, 0.5, 1e-4, 0.001, 9007199254740992.0, 9007199254740993.0,
  -9007199254740992.0, 31536000.0, 31536000.5, 31536001.0, 1e12, 1e12 + 1, 1e300,
  2147483647.0, 2147483648.0, 4294967296.0, 9.2233720368547758e18, -9.2233720368547758e18,
};

static int raise_from_index(lua_State *L)
{
  return luaL_error(L, "kwf: __index raised");
}

static int index_with_words(lua_State *L)
{
  const char *key = lua_tostring(L, 2);

  if (key == NULL)
    return 0;
  lua_pushfstring(L, "%s-value", key);
  return 1;
}

static void push_table(lua_State *L, kwf_input *in, int depth)
{
  size_t entries = kwf_byte(in) % 8;
  size_t i;

  lua_createtable(L, 0, (int)entries);
  for (i = 0; i < entries && in->pos < in->size; i++) {
    if (kwf_byte(in) % 4 != 0)
      kwf_push_word(L, in);
    else
      kwf_push_value(L, in, depth + 1);
    kwf_push_value(L, in, depth + 1);
    /* Lua rejects nil and NaN keys: drop such a pair. */
    if (lua_isnil(L, -2) || (lua_type(L, -2) == LUA_TNUMBER &&
                             lua_tonumber(L, -2) != lua_tonumber(L, -2)))
      lua_pop(L, 2);
    else
      lua_rawset(L, -3);
  }
}

void kwf_push_value(lua_State *L, kwf_input *in, int depth)
{
  unsigned kind = kwf_byte(in) % 14;

  luaL_checkstack(L, 8, "kwf: value nested too deeply");
  if (depth > 4 && kind >= 10)
    kind = 0;
  switch (kind) {
  case 0:
    lua_pushnil(L);
    break;
  case 1:
    lua_pushboolean(L, kwf_byte(in) & 1);
    break;
  case 2:
    lua_pushinteger(L, (lua_Integer)kwf_uint(in, 8));
    break;
  case 3: {
    uint64_t bits = kwf_uint(in, 8);
    double d;

    memcpy(&d, &bits, sizeof(d));
    lua_pushnumber(L, d);
    break;
  }
  case 4:
    lua_pushnumber(L, edge_numbers[kwf_byte(in) % (sizeof(edge_numbers) / sizeof(edge_numbers[0]))]);
    break;
  case 5: {
    static const double specials[] = { 1.0 / 0.0, -1.0 / 0.0, 0.0 / 0.0 };

    lua_pushnumber(L, specials[kwf_byte(in) % 3]);
    break;
  }
  case 6:
  case 7:
    kwf_push_bytes(L, in, 2048);
    break;
  case 8:
    kwf_push_word(L, in);
    break;
  case 9:
    lua_pushinteger(L, kwf_byte(in) & 1 ? LUA_MAXINTEGER : LUA_MININTEGER);
    break;
  case 10:
  case 11:
    push_table(L, in, depth);
    break;
  case 12:
    /* A table whose fields come from __index, or whose __index raises. */
    push_table(L, in, depth);
    lua_createtable(L, 0, 1);
    lua_pushcfunction(L, kwf_byte(in) & 1 ? raise_from_index : index_with_words);
    lua_setfield(L, -2, "__index");
    lua_setmetatable(L, -2);
    break;
  default:
    lua_pushcfunction(L, raise_from_index);
    break;
  }
}

void kwf_fail(const char *invariant, const char *detail, size_t detail_len)
{
  size_t i;

  fprintf(stderr, "kwf: invariant failed: %s\n  detail (%zu bytes): ", invariant, detail_len);
  for (i = 0; detail != NULL && i < detail_len && i < 400; i++) {
    unsigned char c = (unsigned char)detail[i];

    if (c >= 0x20 && c < 0x7f)
      fputc(c, stderr);
    else
      fprintf(stderr, "\\x%02x", c);
  }
  fputc('\n', stderr);
  abort();
}

int kwf_contains(const char *text, size_t len, const char *needle)
{
  size_t n = strlen(needle);
  size_t i;

  if (n == 0 || n > len)
    return n == 0;
  for (i = 0; i + n <= len; i++)
    if (memcmp(text + i, needle, n) == 0)
      return 1;
  return 0;
}

int kwf_printable(const char *text, size_t len)
{
  size_t i;

  for (i = 0; i < len; i++)
    if ((unsigned char)text[i] < 0x20 || (unsigned char)text[i] > 0x7e)
      return 0;
  return 1;
}

void kwf_finish(lua_State *L, int base)
{
  lua_settop(L, base);
  lua_gc(L, LUA_GCCOLLECT, 0);
}

/* Runs a chunk of Lua under the harness; setup errors end the process. */
static void run_lua(lua_State *L, const char *chunk, int results)
{
  if (luaL_loadstring(L, chunk) != LUA_OK || lua_pcall(L, 0, results, 0) != LUA_OK) {
    fprintf(stderr, "kwf: setup failed: %s\n", lua_tostring(L, -1));
    exit(2);
  }
}

static char tmp_file[] = "/tmp/kwf-upload-XXXXXX";

static void remove_tmp_file(void)
{
  unlink(tmp_file);
}

kwf_env *kwf_setup(void)
{
  static kwf_env env;
  lua_State *L;
  int fd;

  if (env.L != NULL)
    return &env;
  fd = mkstemp(tmp_file);
  if (fd < 0 || write(fd, "{}\n", 3) != 3 || close(fd) != 0) {
    perror("kwf: cannot create the upload file");
    exit(2);
  }
  atexit(remove_tmp_file);
  env.tmp_file = tmp_file;

  L = luaL_newstate();
  if (L == NULL) {
    fprintf(stderr, "kwf: cannot create a Lua state\n");
    exit(2);
  }
  luaL_openlibs(L);
  /*
   * The Lua layer comes from this checkout and lua-cjson from Debian's
   * package; the C core is linked into this program and found through
   * package.preload.
   */
  lua_pushfstring(L, "package.path = '%s/lua/?.lua;%s/lua/?/init.lua'\n"
                     "package.cpath = '%s/?.so'\n",
                  KWF_SOURCE_DIR, KWF_SOURCE_DIR, KWF_LUA_CMOD_DIR);
  run_lua(L, lua_tostring(L, -1), 0);
  lua_pop(L, 1);
  luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
  lua_pushcfunction(L, luaopen_kore_workflow_core);
  lua_setfield(L, -2, "kore_workflow.core");
  lua_pop(L, 1);

  run_lua(L, "return require('kore_workflow.core')", 1);
  env.core_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  run_lua(L, "local client = require('kore_workflow').client { host = '" KWF_HOST "',"
             " api_key = '" KWF_KEY "' }\n"
             "return client._handle, client._codec", 2);
  if (luaL_testudata(L, -2, KW_CLIENT_MT) == NULL || lua_type(L, -1) != LUA_TTABLE) {
    fprintf(stderr, "kwf: the client has no _handle userdata or no _codec table\n");
    exit(2);
  }
  env.codec_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  env.client_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  lua_gc(L, LUA_GCCOLLECT, 0);
  env.L = L;
  return &env;
}
