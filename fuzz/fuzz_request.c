/*
 * Fuzz target: the Lua arguments of an API call, built into a request by
 * kw_request_prepare without performing it. It covers the id check and the
 * id's escaping into the URL (curl_easy_escape), the JSON body's field
 * check and encoding, typed fields and the query string, the per-call
 * options, the upload forms and the header lines. Every endpoint is fuzzed
 * but files.download, which would write to a path the fuzzer chose.
 *
 * Checked for every input that prepare accepts: the URL is the client's base
 * URL, the endpoint's path and the escaped id, which decodes back to the id
 * passed. Every header line is printable, the body decodes to exactly the
 * fields passed, and the limits are in range. For every input that prepare
 * rejects, the error is a string that does not contain the API key.
 */
#include <limits.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwf.h"

/*
 * An id or path with a NUL byte used to be cut at that byte (status("d\0x")
 * asked for dock status d), until kw_request_prepare rejected them. Build
 * with -DKWF_STRICT_NUL=0 to accept such a cut, for a core from before.
 */
#ifndef KWF_STRICT_NUL
#define KWF_STRICT_NUL 1
#endif

/*
 * The context and filename upload options are rejected when they contain a
 * NUL byte, so the form must carry each option whole. Build with
 * -DKWF_STRICT_NUL_OPTIONS=0 to accept an option cut at its first NUL, for
 * a core from before that check.
 */
#ifndef KWF_STRICT_NUL_OPTIONS
#define KWF_STRICT_NUL_OPTIONS 1
#endif

/*
 * kw_body_prepare_chunk prints chunk_number from the double, with no int
 * cast, so this target passes any integer. Build with
 * -DKWF_ANY_CHUNK_NUMBER=0 to keep it within int, for a core that cast it.
 */
#ifndef KWF_ANY_CHUNK_NUMBER
#define KWF_ANY_CHUNK_NUMBER 1
#endif

/*
 * files.upload_data takes a filename option. Build with
 * -DKWF_DATA_FILENAME_OPTION=0 to leave it out, for a core that leaked the
 * option's copy.
 */
#ifndef KWF_DATA_FILENAME_OPTION
#define KWF_DATA_FILENAME_OPTION 1
#endif

static kwf_env *env;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  env = kwf_setup();
  return 0;
}

/* Returns the length of the value as the core is expected to use it: whole when strict, else up to a NUL. */
static size_t used_length(const char *value, size_t len, int strict)
{
  if (strict)
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

/* Checks that the URL ends with the request's query string, made of name=value pairs in URL-safe characters. */
static void check_query(const char *rest, const char *query)
{
  size_t i;

  if (query == NULL) {
    if (rest[0] != '\0')
      kwf_fail("a URL without query fields ends with its path", rest, strlen(rest));
    return;
  }
  if (strcmp(rest, query) != 0 || query[0] != '?')
    kwf_fail("the URL ends with the query string", rest, strlen(rest));
  for (i = 1; query[i] != '\0'; i++) {
    unsigned char c = (unsigned char)query[i];

    if (c == '%' && is_hex((unsigned char)query[i + 1]) && is_hex((unsigned char)query[i + 2])) {
      i += 2;
      continue;
    }
    if (!is_unreserved(c) && c != '=' && c != '&')
      kwf_fail("the query string holds only name=value pairs in URL-safe characters",
               query, strlen(query));
  }
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
  path_len = strlen(req->path);
  if (strncmp(path, req->path, path_len) != 0)
    kwf_fail("the URL's path is the request's path", req->path, path_len);
  check_query(path + path_len, req->query);
  if (strncmp(path, ep->path_prefix, prefix_len) != 0)
    kwf_fail("the path starts with the endpoint's prefix", path, strlen(path));
  if (ep->path_suffix == NULL) {
    if (req->path[prefix_len] != '\0')
      kwf_fail("a path without an id is the prefix alone", req->path, path_len);
    return;
  }

  path = req->path;
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
  id_len = used_length(id, id_len, KWF_STRICT_NUL);
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

/* Calls without a body send the client's shared header list, the others their own. */
static void check_headers(const kw_request *req)
{
  const struct curl_slist *headers = req->headers != NULL ? req->headers
                                                          : req->client->plain_headers;
  const struct curl_slist *line;
  const char *expected_key = "x-api-key: " KWF_KEY;

  if ((req->headers == NULL) != (req->endpoint->body == KW_BODY_NONE))
    kwf_fail("only calls without a body share the client's headers", NULL, 0);
  if (req->send_key && (headers == NULL || strcmp(headers->data, expected_key) != 0))
    kwf_fail("the first header line sends the client's key", NULL, 0);
  for (line = headers; line != NULL; line = line->next) {
    if (!kwf_printable(line->data, strlen(line->data)))
      kwf_fail("every header line is printable", line->data, strlen(line->data));
    if (!req->send_key && kwf_contains(line->data, strlen(line->data), KWF_KEY))
      kwf_fail("a request that must not send the key has no key header", NULL, 0);
  }
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
      len = used_length(expected, len, KWF_STRICT_NUL_OPTIONS);
    }
  }
  if (actual == NULL || strlen(actual) != len || memcmp(actual, expected, len) != 0)
    kwf_fail("the upload form carries the option given", name, strlen(name));
  if (lua_type(L, options) == LUA_TTABLE)
    lua_pop(L, 1);
}

/* Checks that the JSON body of a typed-field endpoint holds only body fields, each of its type. */
static void check_typed_body(lua_State *L, const kw_request *req)
{
  const kw_field *f;
  int decoded;

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
    int type = lua_type(L, -1);
    int found = 0;

    lua_pop(L, 1);
    for (f = req->endpoint->fields; f->name != NULL && lua_type(L, -1) == LUA_TSTRING; f++) {
      if (strcmp(f->json_name, lua_tostring(L, -1)) != 0 ||
          (f->flags & (KW_FIELD_QUERY | KW_FIELD_LOCAL)))
        continue;
      found = 1;
      if ((f->type == KW_STRING && type != LUA_TSTRING) ||
          (f->type == KW_INTEGER && type != LUA_TNUMBER) ||
          (f->type == KW_BOOLEAN && type != LUA_TBOOLEAN))
        kwf_fail("each body field is sent with its type", f->name, strlen(f->name));
    }
    if (!found)
      kwf_fail("the body holds only the endpoint's body fields", req->body, req->body_len);
  }
  lua_pop(L, 2);
}

static void check_upload(lua_State *L, const kw_request *req, int path_arg, int options)
{
  size_t len;
  const char *path = lua_tolstring(L, path_arg, &len);
  const char *base;

  len = used_length(path, len, KWF_STRICT_NUL);
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

/* The number of Lua arguments of the endpoint's call, as endpoint_arity in kw_core.c counts them. */
static int endpoint_arity(const kw_endpoint *ep)
{
  if (ep->body == KW_BODY_DOWNLOAD || ep->body == KW_BODY_DATA)
    return 3;
  return (ep->path_suffix != NULL) + (ep->body != KW_BODY_NONE || ep->fields != NULL) + 1;
}

/*
 * Upvalue 1: the endpoint; upvalue 2: the client handle. Arguments: those of
 * the API call. Prepares the request as the bound call would, then checks it.
 */
static int prepare_and_check(lua_State *L)
{
  const kw_endpoint *ep = lua_touserdata(L, lua_upvalueindex(1));
  int arity = endpoint_arity(ep);
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
  if (ep->body == KW_BODY_JSON && ep->fields == NULL)
    check_body(L, req, ep->path_suffix != NULL ? 2 : 1);
  if (ep->body == KW_BODY_JSON && ep->fields != NULL)
    check_typed_body(L, req);
  if (ep->body == KW_BODY_FILE)
    check_upload(L, req, 1, 2);
  if ((ep->body == KW_BODY_CHUNK || ep->body == KW_BODY_DATA) && req->mime == NULL)
    kwf_fail("an accepted upload has its form built", NULL, 0);
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

/* Pushes a path that is never one the fuzzer chose: a file that does not exist, or the harness's own. */
static void push_safe_path(lua_State *L, kwf_input *in)
{
  if (kwf_byte(in) % 2 == 0) {
    lua_pushstring(L, env->tmp_file);
    return;
  }
  lua_pushliteral(L, "/kwf-nonexistent/");
  kwf_push_bytes(L, in, 256);
  lua_concat(L, 2);
}

/* Pushes a table of typed fields, most of them of their field's type. */
static void push_typed_fields(lua_State *L, kwf_input *in, const kw_endpoint *ep)
{
  const kw_field *f;

  lua_newtable(L);
  for (f = ep->fields; f->name != NULL; f++) {
    unsigned choice = kwf_byte(in) % 8;

    if (choice == 0)
      continue;
    if (strcmp(f->name, "path") == 0)
      push_safe_path(L, in);
    else if (choice == 1 || f->type == KW_TABLE)
      kwf_push_value(L, in, 1);
    else if (f->type == KW_STRING)
      kwf_push_bytes(L, in, 512);
    else if (f->type == KW_BOOLEAN)
      lua_pushboolean(L, kwf_byte(in) & 1);
    else if (choice < 5)
      lua_pushinteger(L, (lua_Integer)(int8_t)kwf_byte(in));
    else
      kwf_push_value(L, in, 1);
    if (!KWF_ANY_CHUNK_NUMBER && strcmp(f->name, "chunk_number") == 0 &&
        lua_type(L, -1) == LUA_TNUMBER && !(fabs(lua_tonumber(L, -1)) <= INT_MAX)) {
      lua_pop(L, 1);
      lua_pushinteger(L, 1);
    }
    lua_setfield(L, -2, f->name);
  }
  if (kwf_byte(in) % 8 == 0) {
    kwf_push_word(L, in);
    kwf_push_value(L, in, 1);
    if (lua_isnil(L, -2))
      lua_pop(L, 2);
    else
      lua_rawset(L, -3);
  }
}

/* Pushes an options table with the per-call options set to edge values, or nil. */
static void push_options(lua_State *L, kwf_input *in, const kw_endpoint *ep)
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
    if (!KWF_DATA_FILENAME_OPTION && ep->body == KW_BODY_DATA && strcmp(names[i], "filename") == 0)
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
  const kw_endpoint *ep;
  int nargs = 0;
  int key_given;
  size_t count = 0;

  while (kw_endpoints[count].ns != NULL)
    count++;
  ep = &kw_endpoints[kwf_byte(&in) % count];
  if (ep->body == KW_BODY_DOWNLOAD)
    return 0;

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
  if (ep->fields != NULL) {
    if (kwf_byte(&in) % 4 != 0)
      push_typed_fields(L, &in, ep);
    else
      kwf_push_value(L, &in, 0);
    nargs++;
  } else if (ep->body == KW_BODY_JSON) {
    if (kwf_byte(&in) % 4 != 0)
      push_body(L, &in, ep);
    else
      kwf_push_value(L, &in, 0);
    nargs++;
  } else if (ep->body == KW_BODY_FILE) {
    if (kwf_byte(&in) % 4 == 1)
      kwf_push_value(L, &in, 0);
    else
      push_safe_path(L, &in);
    nargs++;
  } else if (ep->body == KW_BODY_DATA) {
    /* The file name, then the bytes. */
    kwf_push_bytes(L, &in, 256);
    if (kwf_byte(&in) % 8 == 0)
      kwf_push_value(L, &in, 0);
    else
      kwf_push_bytes(L, &in, 2048);
    nargs += 2;
  }
  push_options(L, &in, ep);
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
