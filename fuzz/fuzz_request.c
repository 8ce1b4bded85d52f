/*
 * Fuzz target: the Lua arguments of an API call, built into a request by
 * kw_request_prepare without performing it. It covers the id check and the
 * id's escaping into the URL (curl_easy_escape), the JSON body's field check
 * and encoding, the per-call options and the header lines.
 *
 * Checked for every input that prepare accepts: the URL is the client's base
 * URL, the endpoint's path and the escaped id, which decodes back to the id
 * passed. Every header line is printable, the body decodes to exactly the
 * fields passed, and the limits are in range. For every input that prepare
 * rejects, the error is a string that does not contain the API key.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwf.h"

/*
 * NOTE: kw_request.c escapes the id into the URL with strlen and opens the
 * upload path as a C string, so an id or path that contains a NUL byte is
 * used only up to that byte. import("a-1\0x", ...) is sent to workflow a-1. Until
 * kw_request_prepare rejects such arguments, this target accepts an id or
 * path cut at its first NUL, even one cut to nothing (status("\0x") asks for
 * /api/public/dock-status/); build with -DKWF_STRICT_NUL=1 to require the
 * whole value.
 */
#ifndef KWF_STRICT_NUL
#define KWF_STRICT_NUL 0
#endif

static kwf_env *env;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  env = kwf_setup();
  return 0;
}

/* Returns the length of the value as the core is expected to use it. */
static size_t used_length(const char *value, size_t len)
{
  if (KWF_STRICT_NUL)
    return len;
  return strnlen(value, len);
}

static int is_unreserved(unsigned char c)
{
  return (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
         c == '-' || c == '.' || c == '_' || c == '~';
}

static int is_hex(unsigned char c)
{
  return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'f') || (c >= 'A' && c <= 'F');
}

static void check_url(lua_State *L, const kw_request *req, int id_arg)
{
  const kw_endpoint *ep = req->endpoint;
  const char *base = req->client->base_url;
  size_t base_len = strlen(base);
  size_t prefix_len = strlen(ep->path_prefix);
  const char *path;
  const char *segment;
  size_t path_len, suffix_len, segment_len, i, id_len;
  const char *id;
  char *decoded;
  int decoded_len = 0;

  if (strncmp(req->url, base, base_len) != 0)
    kwf_fail("the URL starts with the client's base URL", req->url, strlen(req->url));
  path = req->url + base_len;
  if (strcmp(path, req->path) != 0)
    kwf_fail("the URL's path is the request's path", req->path, strlen(req->path));
  if (strncmp(path, ep->path_prefix, prefix_len) != 0)
    kwf_fail("the path starts with the endpoint's prefix", path, strlen(path));
  if (ep->path_suffix == NULL) {
    if (path[prefix_len] != '\0')
      kwf_fail("a path without an id is the prefix alone", path, strlen(path));
    return;
  }

  path_len = strlen(path);
  suffix_len = strlen(ep->path_suffix);
  if (path_len < prefix_len + suffix_len ||
      strcmp(path + path_len - suffix_len, ep->path_suffix) != 0)
    kwf_fail("the path ends with the endpoint's suffix", path, path_len);
  segment = path + prefix_len;
  segment_len = path_len - prefix_len - suffix_len;

  /* check_id leaves the id as a string in its argument slot, numbers converted. */
  id = lua_tolstring(L, id_arg, &id_len);
  if (id == NULL)
    kwf_fail("an accepted id is a string after prepare", NULL, 0);
  id_len = used_length(id, id_len);
  if (segment_len == 0 && id_len > 0)
    kwf_fail("the id segment is not empty", path, path_len);
  for (i = 0; i < segment_len; i++) {
    unsigned char c = (unsigned char)segment[i];

    if (c == '%' && i + 2 < segment_len && is_hex((unsigned char)segment[i + 1]) &&
        is_hex((unsigned char)segment[i + 2])) {
      i += 2;
      continue;
    }
    if (!is_unreserved(c))
      kwf_fail("the id segment holds only unreserved characters and %XX escapes",
               segment, segment_len);
  }
  if ((segment_len == 1 && segment[0] == '.') ||
      (segment_len == 2 && segment[0] == '.' && segment[1] == '.'))
    kwf_fail("the id segment is not a relative path segment", segment, segment_len);

  if (segment_len == 0)
    return;
  decoded = curl_easy_unescape(NULL, segment, (int)segment_len, &decoded_len);
  if (decoded == NULL)
    kwf_fail("the id segment can be unescaped", segment, segment_len);
  if ((size_t)decoded_len != id_len || memcmp(decoded, id, id_len) != 0) {
    curl_free(decoded);
    kwf_fail("the id segment decodes to the id given", segment, segment_len);
  }
  curl_free(decoded);
}

static void check_headers(const kw_request *req)
{
  const struct curl_slist *line;
  const char *expected_key = "x-api-key: " KWF_KEY;

  if (req->headers == NULL || strcmp(req->headers->data, expected_key) != 0)
    kwf_fail("the first header line sends the client's key", NULL, 0);
  for (line = req->headers; line != NULL; line = line->next)
    if (!kwf_printable(line->data, strlen(line->data)))
      kwf_fail("every header line is printable", line->data, strlen(line->data));
}

/* Decodes req->body with the client's codec and compares it with the fields of the table at body_arg. */
static void check_body(lua_State *L, const kw_request *req, int body_arg)
{
  const kw_endpoint *ep = req->endpoint;
  const char *const *f;
  int decoded, fields = 0, listed = 0;

  if (req->body == NULL || req->body_len == 0 || req->body[0] != '{')
    kwf_fail("the JSON body is an object", req->body, req->body ? req->body_len : 0);
  lua_rawgeti(L, LUA_REGISTRYINDEX, env->codec_ref);
  lua_getfield(L, -1, "decode");
  lua_pushlstring(L, req->body, req->body_len);
  if (lua_pcall(L, 1, 1, 0) != LUA_OK || lua_type(L, -1) != LUA_TTABLE)
    kwf_fail("the JSON body decodes to a table", req->body, req->body_len);
  decoded = lua_gettop(L);

  lua_pushnil(L);
  while (lua_next(L, decoded) != 0) {
    fields++;
    lua_pop(L, 1);
  }
  for (f = ep->required; *f != NULL; f++) {
    size_t sent_len, given_len;
    const char *sent, *given;

    lua_getfield(L, decoded, *f);
    lua_getfield(L, body_arg, *f);
    sent = lua_tolstring(L, -2, &sent_len);
    given = lua_tolstring(L, -1, &given_len);
    if (lua_type(L, -2) != LUA_TSTRING || lua_type(L, -1) != LUA_TSTRING ||
        sent_len != given_len || memcmp(sent, given, sent_len) != 0)
      kwf_fail("each required field is sent as given", *f, strlen(*f));
    listed++;
    lua_pop(L, 2);
  }
  for (f = ep->optional; *f != NULL; f++) {
    lua_getfield(L, decoded, *f);
    if (!lua_isnil(L, -1)) {
      lua_getfield(L, body_arg, *f);
      if (!lua_rawequal(L, -1, -2))
        kwf_fail("each optional field is sent as given", *f, strlen(*f));
      listed++;
      lua_pop(L, 1);
    }
    lua_pop(L, 1);
  }
  if (fields != listed)
    kwf_fail("the body holds only the endpoint's fields", req->body, req->body_len);
  lua_pop(L, 2);
}

/* Fails unless actual is the string option name of the table at options, or fallback when it is absent. */
static void check_string_option(lua_State *L, int options, const char *name,
                                const char *fallback, const char *actual)
{
  const char *expected = fallback;
  size_t len = strlen(fallback);

  if (lua_type(L, options) == LUA_TTABLE) {
    lua_getfield(L, options, name);
    if (lua_type(L, -1) == LUA_TSTRING) {
      expected = lua_tolstring(L, -1, &len);
      len = used_length(expected, len);
    }
  }
  if (actual == NULL || strlen(actual) != len || memcmp(actual, expected, len) != 0)
    kwf_fail("the upload form carries the option given", name, strlen(name));
  if (lua_type(L, options) == LUA_TTABLE)
    lua_pop(L, 1);
}

static void check_upload(lua_State *L, const kw_request *req, int path_arg, int options)
{
  size_t len;
  const char *path = lua_tolstring(L, path_arg, &len);
  const char *base;

  len = used_length(path, len);
  if (req->file_path == NULL || strlen(req->file_path) != len ||
      memcmp(req->file_path, path, len) != 0)
    kwf_fail("the upload reads the path given", req->file_path,
             req->file_path ? strlen(req->file_path) : 0);
  base = strrchr(req->file_path, '/');
  check_string_option(L, options, "context", "bulkImport", req->file_context);
  check_string_option(L, options, "filename", base != NULL ? base + 1 : req->file_path,
                      req->file_name);
  if (req->mime == NULL)
    kwf_fail("an accepted upload has its form built", NULL, 0);
}

static void check_limits(const kw_request *req)
{
  const kw_limits *limits = &req->limits;

  if (limits->connect_timeout_ms < 1 || limits->timeout_ms < 0 ||
      limits->stall_timeout_ms < 1 || limits->max_response < 1 ||
      req->response.limit != limits->max_response)
    kwf_fail("the call's limits are in range", NULL, 0);
}

/*
 * Upvalue 1: the endpoint; upvalue 2: the client handle. Arguments: those of
 * the API call. Prepares the request as the bound call would, then checks it.
 */
static int prepare_and_check(lua_State *L)
{
  const kw_endpoint *ep = lua_touserdata(L, lua_upvalueindex(1));
  int arity = (ep->path_suffix != NULL) + (ep->body != KW_BODY_NONE) + 1;
  int client_index;
  kw_request *req;
  int pushed;

  lua_settop(L, arity);
  lua_pushvalue(L, lua_upvalueindex(2));
  client_index = lua_gettop(L);
  req = kw_request_new(L, client_index, ep);
  pushed = kw_request_prepare(L, req, 1);
  if (pushed != 0) {
    if (pushed != 2 || !lua_isnil(L, -2) || lua_type(L, -1) != LUA_TTABLE)
      kwf_fail("a local failure returns nil and an error table", NULL, 0);
    lua_getfield(L, -1, "kind");
    if (lua_type(L, -1) != LUA_TSTRING || strcmp(lua_tostring(L, -1), "file") != 0)
      kwf_fail("a local failure of an upload is of kind file", NULL, 0);
    lua_pop(L, 1);
    return 2;
  }

  check_url(L, req, 1);
  check_headers(req);
  check_limits(req);
  if (ep->body == KW_BODY_JSON)
    check_body(L, req, 2);
  if (ep->body == KW_BODY_FILE)
    check_upload(L, req, 1, 2);
  return 0;
}

/* Pushes a table of body fields, most of them strings, for the import call. */
static void push_body(lua_State *L, kwf_input *in, const kw_endpoint *ep)
{
  const char *const *f;
  unsigned shape = kwf_byte(in);

  lua_newtable(L);
  for (f = ep->required; *f != NULL; f++) {
    unsigned choice = kwf_byte(in) % 8;

    if (choice == 0)
      continue;
    if (choice == 1)
      kwf_push_value(L, in, 1);
    else
      kwf_push_bytes(L, in, 512);
    lua_setfield(L, -2, *f);
  }
  if (shape % 8 == 0) {
    kwf_push_word(L, in);
    kwf_push_value(L, in, 1);
    if (lua_isnil(L, -2))
      lua_pop(L, 2);
    else
      lua_rawset(L, -3);
  }
}

/* Pushes an options table with the per-call options set to edge values, or nil. */
static void push_options(lua_State *L, kwf_input *in)
{
  static const char *const names[] = {
    "connect_timeout", "timeout", "stall_timeout", "max_response", "context", "filename", NULL
  };
  unsigned present = kwf_byte(in);
  int i;

  if (present == 0) {
    lua_pushnil(L);
    return;
  }
  if (present == 1) {
    kwf_push_value(L, in, 1);
    return;
  }
  lua_newtable(L);
  for (i = 0; names[i] != NULL; i++) {
    if (!(present & (1u << i)))
      continue;
    if (i < 4 && kwf_byte(in) % 2 == 0)
      lua_pushnumber(L, (double)kwf_uint(in, 4) / (double)(1 + kwf_byte(in)));
    else
      kwf_push_value(L, in, 1);
    lua_setfield(L, -2, names[i]);
  }
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  lua_State *L = env->L;
  kwf_input in = { data, size, 0 };
  int base = lua_gettop(L);
  const kw_endpoint *ep = &kw_endpoints[kwf_byte(&in) % 3];
  int nargs = 0;
  int key_given;

  kwf_key_pushed = 0;
  lua_pushlightuserdata(L, (void *)ep);
  lua_rawgeti(L, LUA_REGISTRYINDEX, env->client_ref);
  lua_pushcclosure(L, prepare_and_check, 2);

  if (ep->path_suffix != NULL) {
    if (kwf_byte(&in) % 4 != 0)
      kwf_push_bytes(L, &in, 1100);
    else
      kwf_push_value(L, &in, 0);
    nargs++;
  }
  if (ep->body == KW_BODY_JSON) {
    if (kwf_byte(&in) % 4 != 0)
      push_body(L, &in, ep);
    else
      kwf_push_value(L, &in, 0);
    nargs++;
  } else if (ep->body == KW_BODY_FILE) {
    unsigned choice = kwf_byte(&in) % 4;

    /* The path is never one the fuzzer chose: a file that does not exist, or the harness's own. */
    if (choice == 0) {
      lua_pushstring(L, env->tmp_file);
    } else if (choice == 1) {
      kwf_push_value(L, &in, 0);
    } else {
      lua_pushliteral(L, "/kwf-nonexistent/");
      kwf_push_bytes(L, &in, 512);
      lua_concat(L, 2);
    }
    nargs++;
  }
  push_options(L, &in);
  nargs++;

  key_given = kwf_key_pushed || kwf_contains((const char *)data, size, KWF_KEY);
  if (lua_pcall(L, nargs, LUA_MULTRET, 0) != LUA_OK) {
    size_t len;
    const char *message = lua_tolstring(L, -1, &len);

    if (message == NULL)
      kwf_fail("an argument error is a string", NULL, 0);
    if (!key_given && kwf_contains(message, len, KWF_KEY))
      kwf_fail("an argument error does not contain the API key", message, len);
  }
  kwf_finish(L, base);
  return 0;
}
