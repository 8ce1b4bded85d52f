/*
 * Fuzz target: the options of core.new_client, above all the API key that
 * set_api_key in kw_core.c turns into the x-api-key header line, and the
 * host that set_base_url reduces to an origin.
 *
 * Checked for every client that is created: the header line is
 * "x-api-key: " followed by the key with surrounding white space trimmed,
 * and contains no control character (CR and LF above all). The base URL is
 * an http or https origin with no user, query, fragment or path, and
 * tostring(client) names the base URL alone. For every key that is
 * rejected, the error does not contain it.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwf.h"

static kwf_env *env;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  env = kwf_setup();
  return 0;
}

static int ignore_log(lua_State *L)
{
  (void)L;
  return 0;
}

static int is_space(char c)
{
  return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

static void check_key_header(const kw_client *client, const char *key, size_t key_len)
{
  static const char prefix[] = "x-api-key: ";
  const char *header = client->api_key_header;
  size_t start = 0, end = key_len, i;

  while (start < end && is_space(key[start]))
    start++;
  while (end > start && is_space(key[end - 1]))
    end--;
  if (header == NULL || strncmp(header, prefix, sizeof(prefix) - 1) != 0)
    kwf_fail("the key header line starts with x-api-key", header, header ? strlen(header) : 0);
  /* Bytes from 0x80 up are obs-text, which a header value may carry. */
  for (i = 0; header[i] != '\0'; i++)
    if ((unsigned char)header[i] < 0x20 || header[i] == 0x7f)
      kwf_fail("the key header line holds no control character", header, strlen(header));
  if (strlen(header) - (sizeof(prefix) - 1) != end - start ||
      memcmp(header + sizeof(prefix) - 1, key + start, end - start) != 0)
    kwf_fail("the header carries the key given, trimmed", header, strlen(header));
  if (kw_client_key(client) == NULL || strcmp(kw_client_key(client), header + sizeof(prefix) - 1) != 0)
    kwf_fail("kw_client_key returns the key of the header line", NULL, 0);
}

static void check_base_url(const char *base_url)
{
  size_t len = strlen(base_url);
  size_t i;
  CURLU *url;
  char *part = NULL;

  if (strncmp(base_url, "http://", 7) != 0 && strncmp(base_url, "https://", 8) != 0)
    kwf_fail("the base URL is http or https", base_url, len);
  if (len == 0 || base_url[len - 1] == '/')
    kwf_fail("the base URL has no trailing slash", base_url, len);
  for (i = 0; i < len; i++)
    if ((unsigned char)base_url[i] < 0x20 || base_url[i] == 0x7f)
      kwf_fail("the base URL holds no control character", base_url, len);

  url = curl_url();
  if (url == NULL || curl_url_set(url, CURLUPART_URL, base_url, 0) != CURLUE_OK)
    kwf_fail("the base URL parses", base_url, len);
  if (curl_url_get(url, CURLUPART_USER, &part, 0) == CURLUE_OK ||
      curl_url_get(url, CURLUPART_PASSWORD, &part, 0) == CURLUE_OK ||
      curl_url_get(url, CURLUPART_QUERY, &part, 0) == CURLUE_OK ||
      curl_url_get(url, CURLUPART_FRAGMENT, &part, 0) == CURLUE_OK)
    kwf_fail("the base URL has no user, password, query or fragment", base_url, len);
  if (curl_url_get(url, CURLUPART_PATH, &part, 0) == CURLUE_OK) {
    if (strcmp(part, "/") != 0 && strcmp(part, "") != 0)
      kwf_fail("the base URL has no path", base_url, len);
    curl_free(part);
  }
  curl_url_cleanup(url);
}

/* Arguments: the options table. Creates the client and checks it. */
static int create_and_check(lua_State *L)
{
  size_t key_len = 0;
  const char *key;
  kw_client *client;
  const char *text;
  size_t text_len;

  lua_rawgeti(L, LUA_REGISTRYINDEX, env->core_ref);
  lua_getfield(L, -1, "new_client");
  lua_pushvalue(L, 1);
  lua_rawgeti(L, LUA_REGISTRYINDEX, env->codec_ref);
  lua_call(L, 2, 1);

  client = luaL_testudata(L, -1, KW_CLIENT_MT);
  if (client == NULL || client->easy == NULL)
    kwf_fail("new_client returns an open client handle", NULL, 0);
  lua_getfield(L, 1, "api_key");
  if (lua_type(L, -1) != LUA_TSTRING)
    kwf_fail("a client is created only with a string key", NULL, 0);
  key = lua_tolstring(L, -1, &key_len);
  check_key_header(client, key, key_len);
  check_base_url(client->base_url);
  lua_pop(L, 1);

  /* tostring names the base URL and nothing else, so the key cannot show. */
  text = luaL_tolstring(L, -1, &text_len);
  lua_pushfstring(L, "kore_workflow.client (%s)", client->base_url);
  if (!lua_rawequal(L, -1, -2))
    kwf_fail("tostring(client) names the base URL alone", text, text_len);
  lua_pop(L, 2);

  lua_getfield(L, -1, "close");
  lua_pushvalue(L, -2);
  lua_call(L, 1, 0);
  if (client->easy != NULL || client->api_key_header != NULL)
    kwf_fail("close releases the handle and the key", NULL, 0);
  return 0;
}

static void push_host(lua_State *L, kwf_input *in)
{
  switch (kwf_byte(in) % 8) {
  case 0:
    lua_pushliteral(L, "https://127.0.0.1:8443");
    break;
  case 1:
    kwf_push_bytes(L, in, 300);
    break;
  case 2:
    lua_pushliteral(L, "http://");
    kwf_push_bytes(L, in, 300);
    lua_concat(L, 2);
    break;
  case 3:
    kwf_push_value(L, in, 1);
    break;
  default:
    lua_pushliteral(L, KWF_HOST);
    break;
  }
}

static void push_key(lua_State *L, kwf_input *in)
{
  unsigned choice = kwf_byte(in) % 8;

  if (choice == 0) {
    kwf_push_value(L, in, 1);
    return;
  }
  kwf_push_bytes(L, in, 600);
  if (choice == 1) {
    /* White space on both sides, as a key read from a file may have. */
    lua_pushliteral(L, " \t");
    lua_insert(L, -2);
    lua_pushliteral(L, "\r\n");
    lua_concat(L, 3);
  }
}

/* Pushes the options table: host and api_key, and other options as the input chooses. */
static void push_options(lua_State *L, kwf_input *in)
{
  static const char *const numbers[] = { "connect_timeout", "timeout", "stall_timeout", "max_response" };
  unsigned extras = kwf_byte(in);
  int i;

  lua_newtable(L);
  push_host(L, in);
  lua_setfield(L, -2, "host");
  push_key(L, in);
  lua_setfield(L, -2, "api_key");
  for (i = 0; i < 4; i++) {
    if (!(extras & (1u << i)))
      continue;
    if (kwf_byte(in) % 2 == 0)
      lua_pushnumber(L, (double)kwf_uint(in, 5) / (double)(1 + kwf_byte(in)));
    else
      kwf_push_value(L, in, 1);
    lua_setfield(L, -2, numbers[i]);
  }
  if (extras & 0x10) {
    /* Never a path the fuzzer chose, which could name a device or a FIFO. */
    if (kwf_byte(in) % 2 == 0) {
      lua_pushstring(L, env->tmp_file);
    } else {
      lua_pushliteral(L, "/kwf-nonexistent/");
      kwf_push_bytes(L, in, 100);
      lua_concat(L, 2);
    }
    lua_setfield(L, -2, "ca_file");
  }
  if (extras & 0x20) {
    kwf_push_value(L, in, 1);
    lua_setfield(L, -2, "verbose");
  }
  if (extras & 0x40) {
    kwf_push_value(L, in, 1);
    lua_setfield(L, -2, "insecure");
  }
  /* A logger that does nothing, unless the input picks another value. */
  if (extras & 0x80)
    kwf_push_value(L, in, 1);
  else
    lua_pushcfunction(L, ignore_log);
  lua_setfield(L, -2, "logger");
  if (kwf_byte(in) % 16 == 0) {
    kwf_push_word(L, in);
    kwf_push_value(L, in, 1);
    if (lua_isnil(L, -2))
      lua_pop(L, 2);
    else
      lua_rawset(L, -3);
  }
}

/* True when the key has a byte other than the white space that set_api_key trims. */
static int has_content(const char *key, size_t len)
{
  size_t i;

  for (i = 0; i < len; i++)
    if (!is_space(key[i]))
      return 1;
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  lua_State *L = env->L;
  kwf_input in = { data, size, 0 };
  int base = lua_gettop(L);
  int options;

  kwf_key_pushed = 0;
  push_options(L, &in);
  options = lua_gettop(L);
  lua_pushcfunction(L, create_and_check);
  lua_pushvalue(L, options);
  if (lua_pcall(L, 1, 0, 0) != LUA_OK) {
    size_t message_len, key_len;
    const char *message = lua_tolstring(L, -1, &message_len);
    const char *key;

    if (message == NULL)
      kwf_fail("a rejected option raises a string", NULL, 0);
    lua_getfield(L, options, "api_key");
    key = lua_type(L, -1) == LUA_TSTRING ? lua_tolstring(L, -1, &key_len) : NULL;
    if (key != NULL && has_content(key, key_len) &&
        strncmp(message, "bad argument #1 (api_key)", 25) == 0) {
      size_t i;

      /* kwf_contains stops at a NUL: compare the whole key byte by byte. */
      for (i = 0; i + key_len <= message_len; i++)
        if (memcmp(message + i, key, key_len) == 0)
          kwf_fail("an api_key error does not contain the key", message, message_len);
    }
  }
  kwf_finish(L, base);
  return 0;
}
