/*
 * One HTTP transfer of an API call.
 *
 * A request is a userdata that owns every piece of C memory of the transfer
 * (URL, header list, body copy, MIME handle, response buffer), so a Lua error
 * raised at any point while it is being built leaks nothing: __gc frees it.
 * The libcurl callbacks only append bytes to the response buffer and never
 * touch the Lua state, so no Lua error or yield can cross libcurl frames.
 *
 * Building (kw_request_prepare), setting up an easy handle
 * (kw_request_setup_easy) and turning the finished transfer into a result
 * (kw_request_push_result) are separate steps: the blocking call performs the
 * handle with curl_easy_perform, and a stepped call can add the same handle
 * to a multi handle instead.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <time.h>

#include "kw.h"

#define KW_MAX_EXACT_INTEGER 9007199254740992.0 /* 2^53 */

void kw_buf_init(kw_buf *buf, size_t limit)
{
  buf->data = NULL;
  buf->len = 0;
  buf->cap = 0;
  buf->limit = limit;
  buf->overflowed = 0;
}

/* Appends n bytes; returns 0, and sets overflowed, when that would pass the limit. */
int kw_buf_append(kw_buf *buf, const char *bytes, size_t n)
{
  if (n == 0)
    return 1;
  if (n > buf->limit - buf->len) {
    buf->overflowed = 1;
    return 0;
  }
  if (buf->len + n > buf->cap) {
    size_t cap = buf->cap > 0 ? buf->cap : 1024;
    char *data;

    while (cap < buf->len + n)
      cap *= 2;
    if (cap > buf->limit)
      cap = buf->limit;
    data = realloc(buf->data, cap);
    if (data == NULL)
      return 0;
    buf->data = data;
    buf->cap = cap;
  }
  memcpy(buf->data + buf->len, bytes, n);
  buf->len += n;
  return 1;
}

void kw_buf_free(kw_buf *buf)
{
  free(buf->data);
  kw_buf_init(buf, buf->limit);
}

static void request_release(kw_request *req)
{
  free(req->url);
  free(req->path);
  free(req->id);
  curl_slist_free_all(req->headers);
  free(req->body);
  free(req->file_path);
  free(req->file_context);
  free(req->file_name);
  curl_mime_free(req->mime);
  free(req->content_type);
  free(req->content_encoding);
  free(req->location);
  kw_body_release(req);
  kw_buf_free(&req->response);
  kw_buf_free(&req->log);
  req->url = req->path = req->id = NULL;
  req->headers = NULL;
  req->body = req->file_path = req->file_context = req->file_name = NULL;
  req->mime = NULL;
  req->content_type = req->content_encoding = req->location = NULL;
}

static int request_gc(lua_State *L)
{
  kw_request *req = luaL_checkudata(L, 1, KW_REQUEST_MT);

  kw_multi_detach(req);
  if (req->client_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, req->client_ref);
    req->client_ref = LUA_NOREF;
  }
  request_release(req);
  return 0;
}

void kw_request_register(lua_State *L)
{
  if (luaL_newmetatable(L, KW_REQUEST_MT)) {
    lua_pushcfunction(L, request_gc);
    lua_setfield(L, -2, "__gc");
  }
  lua_pop(L, 1);
}

static void request_init(kw_request *req, kw_client *client, const kw_endpoint *endpoint)
{
  memset(req, 0, sizeof(*req));
  req->endpoint = endpoint;
  req->client = client;
  req->client_ref = LUA_NOREF;
  req->state = KW_REQUEST_BUILT;
  req->send_key = 1;
  req->range_length = -1;
  kw_buf_init(&req->response, client->max_response);
  kw_log_init(req);
}

/* Pushes a new, empty request userdata for endpoint on the client at client_index. */
kw_request *kw_request_new(lua_State *L, int client_index,
                           const kw_endpoint *endpoint)
{
  kw_client *client = kw_client_check(L, client_index);
  kw_request *req = lua_newuserdata(L, sizeof(*req));

  request_init(req, client, endpoint);
  kw_setmetatable(L, KW_REQUEST_MT);
  return req;
}

/*
 * Pushes an empty request for a blocking call: the client's spare request
 * when it has one, otherwise a new one. The spare leaves the client's slot
 * while a call uses it, so a call made from inside another (by a logger, for
 * example) gets a request of its own. A call that raises an error never
 * gives the spare back, and the garbage collector frees it.
 */
kw_request *kw_request_acquire(lua_State *L, int client_index, const kw_endpoint *endpoint)
{
  kw_client *client = kw_client_check(L, client_index);
  kw_request *req;

  lua_rawgeti(L, LUA_REGISTRYINDEX, client->spare_ref);
  req = lua_type(L, -1) == LUA_TUSERDATA ? lua_touserdata(L, -1) : NULL;
  if (req == NULL) {
    lua_pop(L, 1);
    return kw_request_new(L, client_index, endpoint);
  }
  lua_pushboolean(L, 0);
  lua_rawseti(L, LUA_REGISTRYINDEX, client->spare_ref);
  request_init(req, client, endpoint);
  return req;
}

/* Frees the memory the finished request at request_index owns and keeps it as the client's spare. */
void kw_request_recycle(lua_State *L, kw_request *req, int request_index)
{
  request_release(req);
  lua_pushvalue(L, request_index);
  lua_rawseti(L, LUA_REGISTRYINDEX, req->client->spare_ref);
}

static char *dup_or_raise(lua_State *L, const char *s, size_t n)
{
  char *copy = malloc(n + 1);

  if (copy == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  memcpy(copy, s, n);
  copy[n] = '\0';
  return copy;
}

static void add_header(lua_State *L, kw_request *req, const char *line)
{
  struct curl_slist *list = curl_slist_append(req->headers, line);

  if (list == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  req->headers = list;
}

/* The argument name of an id in messages, such as "dock status id"; built only for errors. */
static const char *id_argname(lua_State *L, const kw_endpoint *ep)
{
  return lua_pushfstring(L, "%s id", ep->id_label);
}

/*
 * Reads the id argument: a string, or for some calls an integral number of
 * at most 2^53. Empty, ".", ".." and over-long ids are rejected because no
 * server path segment can name them safely.
 */
static void check_id(lua_State *L, kw_request *req, int arg, const char *fname)
{
  const kw_endpoint *ep = req->endpoint;
  size_t len;
  const char *id;

  if (lua_type(L, arg) == LUA_TNUMBER && (ep->flags & KW_ID_ACCEPTS_NUMBER)) {
    lua_Number n = lua_tonumber(L, arg);

    if (n != floor(n) || fabs(n) > KW_MAX_EXACT_INTEGER)
      kw_argerror(L, arg, fname, id_argname(L, ep),
                  "number %f is not an integer exactly representable as a "
                  "double (at most 2^53); pass the id as a string", n);
    {
      char text[32];

      snprintf(text, sizeof(text), "%.0f", (double)n);
      lua_pushstring(L, text);
      lua_replace(L, arg);
    }
  } else if (lua_type(L, arg) != LUA_TSTRING) {
    kw_argerror(L, arg, fname, id_argname(L, ep), "string expected, got %s",
                luaL_typename(L, arg));
  }
  id = lua_tolstring(L, arg, &len);
  if (len == 0)
    kw_argerror(L, arg, fname, id_argname(L, ep), "must not be empty");
  if (memchr(id, '\0', len) != NULL)
    kw_argerror(L, arg, fname, id_argname(L, ep), "must not contain a NUL byte");
  if (strcmp(id, ".") == 0 || strcmp(id, "..") == 0)
    kw_argerror(L, arg, fname, id_argname(L, ep),
                "'%s' is not a valid id because it is a relative path segment", id);
  if (len > KW_MAX_ID_LENGTH)
    kw_argerror(L, arg, fname, id_argname(L, ep), "longer than %d bytes", KW_MAX_ID_LENGTH);
  req->id = dup_or_raise(L, id, len);
}

/*
 * Sets req->path to the endpoint's path around the escaped id (or the bare
 * path when escaped is NULL) and req->url to the base URL, path and query.
 * Returns 0 when out of memory; whatever was allocated is owned by req.
 */
static int join_url(kw_request *req, const char *escaped)
{
  const kw_endpoint *ep = req->endpoint;
  const char *base = req->client->base_url;
  const char *suffix = escaped != NULL ? ep->path_suffix : "";
  const char *query = req->query != NULL ? req->query : "";
  size_t prefix_len = strlen(ep->path_prefix);
  size_t id_len = escaped != NULL ? strlen(escaped) : 0;
  size_t suffix_len = strlen(suffix);
  size_t path_len = prefix_len + id_len + suffix_len;
  size_t base_len = strlen(base);
  size_t query_len = strlen(query);
  char *path = malloc(path_len + 1);
  char *url;

  if (path == NULL)
    return 0;
  memcpy(path, ep->path_prefix, prefix_len);
  if (id_len > 0)
    memcpy(path + prefix_len, escaped, id_len);
  memcpy(path + prefix_len + id_len, suffix, suffix_len + 1);
  req->path = path;
  url = malloc(base_len + path_len + query_len + 1);
  if (url == NULL)
    return 0;
  memcpy(url, base, base_len);
  memcpy(url + base_len, path, path_len);
  memcpy(url + base_len + path_len, query, query_len + 1);
  req->url = url;
  return 1;
}

static void build_url(lua_State *L, kw_request *req)
{
  if (!join_url(req, NULL))
    luaL_error(L, "kore_workflow: out of memory");
}

/*
 * Writes id into out percent-encoded as one path segment: every byte but
 * the unreserved ones (RFC 3986: letters, digits, "-", ".", "_", "~") as %XX
 * in upper case, as curl_easy_escape does, without its allocations.
 */
static void escape_segment(const char *id, char *out)
{
  static const char hex[] = "0123456789ABCDEF";
  const unsigned char *p;

  for (p = (const unsigned char *)id; *p != '\0'; p++) {
    if ((*p >= 'a' && *p <= 'z') || (*p >= 'A' && *p <= 'Z') || (*p >= '0' && *p <= '9') ||
        *p == '-' || *p == '.' || *p == '_' || *p == '~') {
      *out++ = (char)*p;
    } else {
      *out++ = '%';
      *out++ = hex[*p >> 4];
      *out++ = hex[*p & 15];
    }
  }
  *out = '\0';
}

static void escape_id(lua_State *L, kw_request *req)
{
  /* check_id keeps ids to KW_MAX_ID_LENGTH bytes, each at most 3 escaped. */
  char escaped[3 * KW_MAX_ID_LENGTH + 1];

  escape_segment(req->id, escaped);
  if (!join_url(req, escaped))
    luaL_error(L, "kore_workflow: out of memory");
}

static int field_listed(const char *const *fields, const char *name)
{
  for (; *fields != NULL; fields++)
    if (strcmp(*fields, name) == 0)
      return 1;
  return 0;
}

static void list_fields(luaL_Buffer *b, const kw_endpoint *ep)
{
  const char *const *lists[2];
  int i, first = 1;

  lists[0] = ep->required;
  lists[1] = ep->optional;
  for (i = 0; i < 2; i++) {
    const char *const *f;

    for (f = lists[i]; *f != NULL; f++) {
      if (!first)
        luaL_addstring(b, ", ");
      luaL_addstring(b, *f);
      first = 0;
    }
  }
}

/*
 * Checks the body table at arg against the endpoint's fields and pushes a
 * fresh table holding only those fields, so a caller's other fields or a
 * metatable never reach the encoder.
 */
static void check_json_fields(lua_State *L, kw_request *req, int arg, const char *fname)
{
  const kw_endpoint *ep = req->endpoint;
  const char *const *f;

  if (lua_type(L, arg) != LUA_TTABLE)
    kw_argerror(L, arg, fname, "fields", "table expected, got %s",
                luaL_typename(L, arg));
  lua_pushnil(L);
  while (lua_next(L, arg) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING ||
        (!field_listed(ep->required, lua_tostring(L, -1)) &&
         !field_listed(ep->optional, lua_tostring(L, -1)))) {
      luaL_Buffer b;

      luaL_buffinit(L, &b);
      list_fields(&b, ep);
      luaL_pushresult(&b);
      kw_argerror(L, arg, fname, "fields", "unknown field '%s'; the fields are %s",
                  lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2)
                                                 : luaL_typename(L, -2),
                  lua_tostring(L, -1));
    }
  }

  lua_newtable(L);
  for (f = ep->required; *f != NULL; f++) {
    lua_getfield(L, arg, *f);
    if (lua_isnil(L, -1))
      kw_argerror(L, arg, fname, "fields", "required field '%s' is missing", *f);
    if (lua_type(L, -1) != LUA_TSTRING)
      kw_argerror(L, arg, fname, "fields", "field '%s' must be a string, got %s",
                  *f, luaL_typename(L, -1));
    if (kw_rawlen(L, -1) == 0)
      kw_argerror(L, arg, fname, "fields", "field '%s' must not be empty", *f);
    lua_setfield(L, -2, *f);
  }
  for (f = ep->optional; *f != NULL; f++) {
    lua_getfield(L, arg, *f);
    if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TSTRING)
      kw_argerror(L, arg, fname, "fields", "field '%s' must be a string, got %s",
                  *f, luaL_typename(L, -1));
    lua_setfield(L, -2, *f);
  }
}

static long option_ms(lua_State *L, int opts, const char *name, long fallback,
                      const char *fname, int zero_allowed)
{
  lua_Number seconds;

  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return fallback;
  }
  if (lua_type(L, -1) != LUA_TNUMBER)
    kw_argerror(L, opts, fname, "options", "option '%s' must be a number of seconds, got %s",
                name, luaL_typename(L, -1));
  seconds = lua_tonumber(L, -1);
  lua_pop(L, 1);
  if (!(seconds > 0 || (zero_allowed && seconds == 0)) || seconds > 86400.0 * 365)
    kw_argerror(L, opts, fname, "options",
                "option '%s' must be a finite number of seconds above 0, got %f",
                name, seconds);
  if (seconds < 0.001)
    return 1;
  return (long)ceil(seconds * 1000.0);
}

/* Reads the per-call options table at arg (or nothing) into req->limits. */
static void read_options(lua_State *L, kw_request *req, int arg, const char *fname)
{
  kw_client *client = req->client;
  kw_limits *limits = &req->limits;
  kw_body_kind body = req->endpoint->body;
  /* Transfers of files have no overall limit, only the stall limit. */
  long default_timeout = body == KW_BODY_FILE || body == KW_BODY_CHUNK || body == KW_BODY_DATA ||
                         body == KW_BODY_DOWNLOAD ? 0 : client->timeout_ms;

  limits->connect_timeout_ms = client->connect_timeout_ms;
  limits->timeout_ms = default_timeout;
  limits->stall_timeout_ms = client->stall_timeout_ms;
  limits->max_response = client->max_response;
  if (lua_isnoneornil(L, arg))
    return;
  if (lua_type(L, arg) != LUA_TTABLE)
    kw_argerror(L, arg, fname, "options", "table expected, got %s",
                luaL_typename(L, arg));
  limits->connect_timeout_ms = option_ms(L, arg, "connect_timeout",
                                         limits->connect_timeout_ms, fname, 0);
  limits->timeout_ms = option_ms(L, arg, "timeout", limits->timeout_ms, fname, 0);
  limits->stall_timeout_ms = option_ms(L, arg, "stall_timeout",
                                       limits->stall_timeout_ms, fname, 0);
  lua_getfield(L, arg, "max_response");
  if (!lua_isnil(L, -1)) {
    lua_Number n = lua_tonumber(L, -1);

    if (lua_type(L, -1) != LUA_TNUMBER || !(n >= 1) || n > 1e12)
      kw_argerror(L, arg, fname, "options",
                  "option 'max_response' must be a number of bytes above 0");
    limits->max_response = (size_t)n;
  }
  lua_pop(L, 1);
  req->response.limit = limits->max_response;
}

static void read_upload_options(lua_State *L, kw_request *req, int arg, const char *fname)
{
  const char *context = "bulkImport";
  const char *name = NULL;
  const char *base;

  if (lua_type(L, arg) == LUA_TTABLE) {
    lua_getfield(L, arg, "context");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TSTRING || kw_rawlen(L, -1) == 0 ||
          memchr(lua_tostring(L, -1), '\0', kw_rawlen(L, -1)) != NULL)
        kw_argerror(L, arg, fname, "options", "option 'context' must be a non-empty string "
                    "without NUL bytes");
      context = lua_tostring(L, -1);
    }
    lua_getfield(L, arg, "filename");
    if (!lua_isnil(L, -1)) {
      if (lua_type(L, -1) != LUA_TSTRING || kw_rawlen(L, -1) == 0 ||
          memchr(lua_tostring(L, -1), '\0', kw_rawlen(L, -1)) != NULL)
        kw_argerror(L, arg, fname, "options", "option 'filename' must be a non-empty string "
                    "without NUL bytes");
      name = lua_tostring(L, -1);
    }
  }
  req->file_context = dup_or_raise(L, context, strlen(context));
  if (name == NULL && req->file_path == NULL) {
    if (lua_type(L, arg) == LUA_TTABLE)
      lua_pop(L, 2);
    return;
  }
  if (name == NULL) {
    base = strrchr(req->file_path, '/');
    name = base != NULL ? base + 1 : req->file_path;
  }
  req->file_name = dup_or_raise(L, name, strlen(name));
  if (lua_type(L, arg) == LUA_TTABLE)
    lua_pop(L, 2);
}

static int file_error(lua_State *L, kw_request *req, const char *problem)
{
  kw_error_info info;
  const char *message = lua_pushfstring(L, "cannot upload file '%s': %s",
                                        req->file_path, problem);

  memset(&info, 0, sizeof(info));
  info.kind = "file";
  info.message = message;
  info.hint = "check the path and that the file is readable";
  info.id = req->file_path;
  info.retry_after = -1;
  return kw_error_return(L, req->client, &info);
}

/* Checks that the file exists and builds the multipart form streamed from it. */
static int prepare_upload(lua_State *L, kw_request *req)
{
  struct stat st;
  curl_mimepart *part;
  FILE *probe;

  if (stat(req->file_path, &st) != 0)
    return file_error(L, req, strerror(errno));
  if (!S_ISREG(st.st_mode))
    return file_error(L, req, "not a regular file");
  probe = fopen(req->file_path, "rb");
  if (probe == NULL)
    return file_error(L, req, strerror(errno));
  fclose(probe);

  req->mime = curl_mime_init(req->client->easy);
  if (req->mime == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  part = curl_mime_addpart(req->mime);
  if (part == NULL || curl_mime_name(part, "file") != CURLE_OK ||
      curl_mime_filedata(part, req->file_path) != CURLE_OK ||
      curl_mime_filename(part, req->file_name) != CURLE_OK)
    luaL_error(L, "kore_workflow: cannot build the upload form for '%s'", req->file_path);
  part = curl_mime_addpart(req->mime);
  if (part == NULL || curl_mime_name(part, "fileContext") != CURLE_OK ||
      curl_mime_data(part, req->file_context, CURL_ZERO_TERMINATED) != CURLE_OK)
    luaL_error(L, "kore_workflow: cannot build the upload form for '%s'", req->file_path);
  return 0;
}

static void prepare_json_body(lua_State *L, kw_request *req, int fields)
{
  size_t n;
  const char *text;

  kw_json_push_codec(L, req->client);
  if (!kw_json_encode(L, -1, fields))
    luaL_error(L, "kore_workflow: cannot encode the request body as JSON: %s",
               lua_tostring(L, -1));
  text = lua_tolstring(L, -1, &n);
  req->body = dup_or_raise(L, text, n);
  req->body_len = n;
  lua_pop(L, 2);
}

/*
 * Reads the Lua arguments of the call, starting at first_arg, into the
 * request. Wrong arguments raise; a local runtime failure (a file that
 * cannot be read) pushes nil, err and returns 2; success returns 0.
 */
int kw_request_prepare(lua_State *L, kw_request *req, int first_arg)
{
  const kw_endpoint *ep = req->endpoint;
  const char *fname = ep->qualified;
  int arg = first_arg;
  int fields = 0;
  int fields_arg = 0;
  int data_arg = 0;

  if (ep->body == KW_BODY_DOWNLOAD) {
    if (kw_body_prepare_download(L, req, arg, arg + 1, fname) != 0)
      return 2;
    arg += 2;
  }
  if (ep->path_suffix != NULL) {
    check_id(L, req, arg, fname);
    arg++;
  }
  if (ep->fields != NULL) {
    kw_body_check_fields(L, req, arg, fname);
    fields = lua_gettop(L);
    fields_arg = arg;
    arg++;
  } else if (ep->body == KW_BODY_JSON) {
    check_json_fields(L, req, arg, fname);
    fields = lua_gettop(L);
    arg++;
  } else if (ep->body == KW_BODY_FILE) {
    size_t n;
    const char *path;

    if (lua_type(L, arg) != LUA_TSTRING || kw_rawlen(L, arg) == 0)
      kw_argerror(L, arg, fname, "path", "non-empty string expected, got %s",
                  luaL_typename(L, arg));
    path = lua_tolstring(L, arg, &n);
    if (memchr(path, '\0', n) != NULL)
      kw_argerror(L, arg, fname, "path", "must not contain a NUL byte");
    req->file_path = dup_or_raise(L, path, n);
    req->id = dup_or_raise(L, path, n);
    arg++;
  } else if (ep->body == KW_BODY_DATA) {
    data_arg = arg;
    arg += 2;
  }
  read_options(L, req, arg, fname);
  if (ep->body == KW_BODY_FILE || ep->body == KW_BODY_DATA)
    read_upload_options(L, req, arg, fname);
  if (ep->body == KW_BODY_DATA)
    kw_body_prepare_data(L, req, data_arg, data_arg + 1, fname);

  if (ep->body == KW_BODY_DOWNLOAD)
    ;
  else if (ep->path_suffix != NULL)
    escape_id(L, req);
  else
    build_url(L, req);

  /* Calls without a body send the client's plain_headers; the others build their own. */
  if (ep->body != KW_BODY_NONE) {
    if (req->send_key)
      add_header(L, req, req->client->api_key_header);
    add_header(L, req, req->client->user_agent);
    if (ep->body != KW_BODY_DOWNLOAD)
      add_header(L, req, "Accept: application/json");
  }
  if (ep->body == KW_BODY_JSON) {
    add_header(L, req, "Content-Type: application/json");
    prepare_json_body(L, req, fields);
  }
  if (ep->body == KW_BODY_FILE || ep->body == KW_BODY_CHUNK || ep->body == KW_BODY_DATA)
    add_header(L, req, "Expect:");
  if (ep->body == KW_BODY_FILE && prepare_upload(L, req) != 0)
    return 2;
  if (ep->body == KW_BODY_CHUNK && kw_body_prepare_chunk(L, req, fields_arg) != 0)
    return 2;
  return 0;
}

static size_t on_body(char *data, size_t size, size_t count, void *userdata)
{
  kw_request *req = userdata;
  size_t n = size * count;

  if (!kw_buf_append(&req->response, data, n))
    return 0;
  return n;
}

static long long monotonic_ms(void)
{
  struct timespec now;

  clock_gettime(CLOCK_MONOTONIC, &now);
  return (long long)now.tv_sec * 1000 + now.tv_nsec / 1000000;
}

/*
 * CURLOPT_XFERINFOFUNCTION: aborts the transfer once no byte has moved in
 * either direction for the stall limit. libcurl's own low-speed check
 * averages over a window of several seconds, so a stall after some bytes
 * had moved was noticed seconds late.
 */
static int on_progress(void *userdata, curl_off_t dltotal, curl_off_t dlnow,
                       curl_off_t ultotal, curl_off_t ulnow)
{
  kw_request *req = userdata;
  long long moved = (long long)dlnow + (long long)ulnow;
  long long now = monotonic_ms();

  (void)dltotal;
  (void)ultotal;
  if (moved != req->progress_bytes) {
    req->progress_bytes = moved;
    req->progress_at_ms = now;
    return 0;
  }
  if (now - req->progress_at_ms >= req->limits.stall_timeout_ms) {
    req->stalled = 1;
    return 1;
  }
  return 0;
}

/*
 * Points easy at the request's URL. The client's own handle gets the
 * client's parsed base URL with this request's path and query, so libcurl
 * does not parse the whole URL again for every call. Other handles, and
 * downloads from links, get the URL as text.
 */
static void set_target(kw_request *req, CURL *easy)
{
  kw_client *client = req->client;

  /*
   * Only a URL without percent-escapes takes this way, which covers every id
   * the service issues. libcurl would write the escapes of a path set as a
   * part in lower case, and a path given as a relative URL costs as much to
   * parse as the whole URL.
   */
  if (easy == client->easy && req->endpoint->body != KW_BODY_DOWNLOAD &&
      strchr(req->url, '%') == NULL &&
      curl_url_set(client->url, CURLUPART_PATH, req->path, 0) == CURLUE_OK &&
      curl_url_set(client->url, CURLUPART_QUERY, req->query != NULL ? req->query + 1 : NULL,
                   0) == CURLUE_OK) {
    curl_easy_setopt(easy, CURLOPT_CURLU, client->url);
    return;
  }
  curl_easy_setopt(easy, CURLOPT_CURLU, NULL);
  curl_easy_setopt(easy, CURLOPT_URL, req->url);
}

/* The options that point into the request, set for every transfer. */
static void set_request_pointers(kw_request *req, CURL *easy)
{
  set_target(req, easy);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, req->errbuf);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER,
                   req->headers != NULL ? req->headers : req->client->plain_headers);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, req);
  curl_easy_setopt(easy, CURLOPT_XFERINFODATA, req);
  if (req->client->verbose)
    curl_easy_setopt(easy, CURLOPT_DEBUGDATA, req);
}

static int same_limits(const kw_limits *a, const kw_limits *b)
{
  return a->connect_timeout_ms == b->connect_timeout_ms && a->timeout_ms == b->timeout_ms &&
         a->stall_timeout_ms == b->stall_timeout_ms && a->max_response == b->max_response;
}

/*
 * Sets every option of the transfer on easy, and the handle keeps its
 * connections. When a call without a request body has the endpoint and
 * limits of the previous transfer on the client's own handle, every other
 * option is already in place, so only the options pointing into the request
 * are set again. Any other call resets the handle and sets all of them.
 */
void kw_request_setup_easy(kw_request *req, CURL *easy)
{
  kw_client *client = req->client;
  const kw_limits *limits = &req->limits;
  int reusable = easy == client->easy && req->endpoint->body == KW_BODY_NONE;

  req->errbuf[0] = '\0';
  req->progress_bytes = -1;
  req->stalled = 0;
  if (reusable && client->easy_endpoint == req->endpoint &&
      same_limits(&client->easy_limits, limits)) {
    set_request_pointers(req, easy);
    return;
  }

  curl_easy_reset(easy);
  set_request_pointers(req, easy);
  curl_easy_setopt(easy, CURLOPT_PROTOCOLS_STR, "http,https");
  curl_easy_setopt(easy, CURLOPT_PATH_AS_IS, 1L);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);
  curl_easy_setopt(easy, CURLOPT_FOLLOWLOCATION, 0L);
  curl_easy_setopt(easy, CURLOPT_TCP_KEEPALIVE, 1L);
  if (req->endpoint->body == KW_BODY_DOWNLOAD) {
    /* A download is written as it arrives, so libcurl decodes whatever coding it was sent in. */
    curl_easy_setopt(easy, CURLOPT_ACCEPT_ENCODING, "");
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, kw_body_on_download);
  } else {
    curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
    curl_easy_setopt(easy, CURLOPT_MAXFILESIZE_LARGE, (curl_off_t)limits->max_response);
  }
  if (client->insecure) {
    /* Only the client option named insecure gets here; creating such a client logs a warning. */
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 0L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 0L);
  } else {
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYPEER, 1L);
    curl_easy_setopt(easy, CURLOPT_SSL_VERIFYHOST, 2L);
  }
  if (client->verbose) {
    curl_easy_setopt(easy, CURLOPT_DEBUGFUNCTION, kw_log_on_debug);
    curl_easy_setopt(easy, CURLOPT_VERBOSE, 1L);
  }
  if (client->ca_file != NULL)
    curl_easy_setopt(easy, CURLOPT_CAINFO, client->ca_file);
  /* A download link may name another host, whose proxy libcurl looks up itself. */
  if (req->endpoint->body != KW_BODY_DOWNLOAD) {
    curl_easy_setopt(easy, CURLOPT_PROXY, client->proxy);
    curl_easy_setopt(easy, CURLOPT_NOPROXY, client->no_proxy);
  }
  curl_easy_setopt(easy, CURLOPT_CONNECTTIMEOUT_MS, limits->connect_timeout_ms);
  if (limits->timeout_ms > 0)
    curl_easy_setopt(easy, CURLOPT_TIMEOUT_MS, limits->timeout_ms);
  /*
   * The stall check runs in the progress callback. With an overall limit no
   * longer than the stall limit, the overall limit always ends a stalled
   * transfer first, so the callback is left out.
   */
  if (limits->timeout_ms == 0 || limits->stall_timeout_ms < limits->timeout_ms) {
    curl_easy_setopt(easy, CURLOPT_XFERINFOFUNCTION, on_progress);
    curl_easy_setopt(easy, CURLOPT_NOPROGRESS, 0L);
  }

  if (req->endpoint->body == KW_BODY_JSON) {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, req->body);
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)req->body_len);
  } else if (req->mime != NULL) {
    curl_easy_setopt(easy, CURLOPT_MIMEPOST, req->mime);
  } else if (strcmp(req->endpoint->method, "POST") == 0) {
    curl_easy_setopt(easy, CURLOPT_POSTFIELDS, "");
    curl_easy_setopt(easy, CURLOPT_POSTFIELDSIZE_LARGE, (curl_off_t)0);
  }

  /*
   * A request that is not safe to resend always gets a new connection:
   * libcurl silently resends a request whose reused connection turned out
   * dead, and that must never happen to an import whose bytes may have
   * reached the server.
   */
  if (!(req->endpoint->flags & KW_IDEMPOTENT))
    curl_easy_setopt(easy, CURLOPT_FRESH_CONNECT, 1L);

  if (easy == client->easy) {
    client->easy_endpoint = reusable ? req->endpoint : NULL;
    client->easy_limits = *limits;
  }
}

static char *dup_optional(const char *s)
{
  return s != NULL ? strdup(s) : NULL;
}

/* Copies what the result needs out of the finished transfer on easy. */
void kw_request_collect(kw_request *req, CURL *easy, CURLcode code)
{
  char *text = NULL;
  curl_off_t value = 0;

  req->code = code;
  curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &req->status);
  if (curl_easy_getinfo(easy, CURLINFO_CONTENT_TYPE, &text) == CURLE_OK)
    req->content_type = dup_optional(text);
  if (req->endpoint->body != KW_BODY_DOWNLOAD) {
    struct curl_header *header = NULL;

    if (curl_easy_header(easy, "Content-Encoding", 0, CURLH_HEADER, -1, &header) == CURLHE_OK)
      req->content_encoding = dup_optional(header->value);
  }
  text = NULL;
  if (curl_easy_getinfo(easy, CURLINFO_REDIRECT_URL, &text) == CURLE_OK)
    req->location = dup_optional(text);
  req->retry_after = -1;
  if (curl_easy_getinfo(easy, CURLINFO_RETRY_AFTER, &value) == CURLE_OK && value > 0)
    req->retry_after = value;
  value = 0;
  curl_easy_getinfo(easy, CURLINFO_PRETRANSFER_TIME_T, &value);
  req->request_sent = value > 0;
  req->performed = 1;
}

/* Performs the request on the client's easy handle, reusing its connections. */
void kw_request_perform(kw_request *req)
{
  CURL *easy = req->client->easy;
  CURLcode code;

  kw_request_setup_easy(req, easy);
  code = curl_easy_perform(easy);
  kw_request_collect(req, easy, code);
  curl_easy_setopt(easy, CURLOPT_ERRORBUFFER, NULL);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, NULL);
  curl_easy_setopt(easy, CURLOPT_DEBUGDATA, NULL);
}
