/*
 * Request bodies beyond a plain JSON object or a whole file: typed fields
 * (integers, booleans, tables, query parameters), a byte range of a file for
 * a chunk of an upload session, bytes given as a Lua string, and downloads
 * streamed into a file. Everything opened or allocated here is owned by the
 * request and released by kw_body_release, so a Lua error leaks nothing.
 */
#define _FILE_OFFSET_BITS 64

#include <errno.h>
#include <math.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "kw.h"

#define KW_MAX_EXACT_INTEGER 9007199254740992.0 /* 2^53 */

char *kw_strdup_or_raise(lua_State *L, const char *s, size_t n)
{
  char *copy = malloc(n + 1);

  if (copy == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  memcpy(copy, s, n);
  copy[n] = '\0';
  return copy;
}

static const char *type_name(kw_field_type type)
{
  switch (type) {
  case KW_STRING:
    return "a string";
  case KW_INTEGER:
    return "an integer";
  case KW_BOOLEAN:
    return "a boolean";
  default:
    return "a table";
  }
}

static int value_has_type(lua_State *L, int index, kw_field_type type)
{
  switch (type) {
  case KW_STRING:
    return lua_type(L, index) == LUA_TSTRING;
  case KW_BOOLEAN:
    return lua_type(L, index) == LUA_TBOOLEAN;
  case KW_TABLE:
    return lua_type(L, index) == LUA_TTABLE;
  default:
    if (lua_type(L, index) == LUA_TNUMBER) {
      lua_Number n = lua_tonumber(L, index);

      return n == floor(n) && fabs(n) <= KW_MAX_EXACT_INTEGER;
    }
    return 0;
  }
}

static const kw_field *find_field(const kw_field *fields, const char *name)
{
  for (; fields->name != NULL; fields++)
    if (strcmp(fields->name, name) == 0)
      return fields;
  return NULL;
}

static void raise_unknown_field(lua_State *L, const kw_endpoint *ep, int arg, const char *fname)
{
  const kw_field *f;
  luaL_Buffer b;

  luaL_buffinit(L, &b);
  for (f = ep->fields; f->name != NULL; f++) {
    if (f != ep->fields)
      luaL_addstring(&b, ", ");
    luaL_addstring(&b, f->name);
  }
  luaL_pushresult(&b);
  kw_argerror(L, arg, fname, "fields", "unknown field '%s'; the fields are %s",
              lua_type(L, -2) == LUA_TSTRING ? lua_tostring(L, -2) : luaL_typename(L, -2),
              lua_tostring(L, -1));
}

/* Appends name=value, percent-encoded, to req->query. */
static void append_query(lua_State *L, kw_request *req, const kw_field *f, int value)
{
  char *escaped;
  const char *text;
  const char *query;

  if (lua_type(L, value) == LUA_TBOOLEAN)
    text = lua_toboolean(L, value) ? "true" : "false";
  else
    text = lua_tostring(L, value);
  escaped = curl_easy_escape(NULL, text, (int)strlen(text));
  if (escaped == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  query = lua_pushfstring(L, "%s%s%s=%s", req->query != NULL ? req->query : "",
                          req->query != NULL ? "&" : "?", f->json_name, escaped);
  curl_free(escaped);
  free(req->query);
  req->query = NULL;
  req->query = kw_strdup_or_raise(L, query, strlen(query));
  lua_pop(L, 1);
}

/*
 * Checks the typed fields table at arg and pushes the JSON body table built
 * from the fields that go into the body. Query fields are stored in
 * req->query; local fields are only checked.
 */
void kw_body_check_fields(lua_State *L, kw_request *req, int arg, const char *fname)
{
  const kw_endpoint *ep = req->endpoint;
  const kw_field *f;
  int body;

  if (lua_isnoneornil(L, arg) && (ep->flags & KW_FIELDS_OPTIONAL)) {
    lua_newtable(L);
    return;
  }
  if (lua_type(L, arg) != LUA_TTABLE)
    kw_argerror(L, arg, fname, "fields", "table expected, got %s", luaL_typename(L, arg));
  lua_pushnil(L);
  while (lua_next(L, arg) != 0) {
    lua_pop(L, 1);
    if (lua_type(L, -1) != LUA_TSTRING || find_field(ep->fields, lua_tostring(L, -1)) == NULL)
      raise_unknown_field(L, ep, arg, fname);
  }

  lua_newtable(L);
  body = lua_gettop(L);
  for (f = ep->fields; f->name != NULL; f++) {
    lua_getfield(L, arg, f->name);
    if (lua_isnil(L, -1)) {
      if (f->flags & KW_FIELD_REQUIRED)
        kw_argerror(L, arg, fname, "fields", "required field '%s' is missing", f->name);
      lua_pop(L, 1);
      continue;
    }
    if (!value_has_type(L, -1, f->type))
      kw_argerror(L, arg, fname, "fields", "field '%s' must be %s, got %s", f->name,
                  type_name(f->type), luaL_typename(L, -1));
    if (f->type == KW_STRING && kw_rawlen(L, -1) == 0)
      kw_argerror(L, arg, fname, "fields", "field '%s' must not be empty", f->name);
    if (f->type == KW_INTEGER) {
      lua_Number n = lua_tonumber(L, -1);

      lua_pop(L, 1);
      kw_pushinteger(L, (long long)n);
    }
    if (f->flags & KW_FIELD_QUERY) {
      append_query(L, req, f, lua_gettop(L));
      lua_pop(L, 1);
      continue;
    }
    if (f->flags & KW_FIELD_LOCAL) {
      lua_pop(L, 1);
      continue;
    }
    lua_setfield(L, body, f->json_name);
  }
}

/* The MIME read callback of a chunk: reads the next bytes of the range. */
static size_t chunk_read(char *buffer, size_t size, size_t count, void *userdata)
{
  kw_request *req = userdata;
  size_t wanted = size * count;
  long long left = req->range_length - req->range_position;
  size_t n;

  /* libcurl offers a buffer larger than what is left of the range. */
  if ((long long)wanted > left)
    wanted = left > 0 ? (size_t)left : 0;
  n = fread(buffer, 1, wanted, req->file);
  if (n < wanted && ferror(req->file))
    return CURL_READFUNC_ABORT;
  req->range_position += (long long)n;
  return n;
}

/* The MIME seek callback of a chunk: libcurl rewinds it to resend it. */
static int chunk_seek(void *userdata, curl_off_t offset, int origin)
{
  kw_request *req = userdata;

  if (origin != SEEK_SET || offset < 0 || offset > req->range_length)
    return CURL_SEEKFUNC_CANTSEEK;
  if (fseeko(req->file, (off_t)(req->range_offset + offset), SEEK_SET) != 0)
    return CURL_SEEKFUNC_FAIL;
  req->range_position = offset;
  return CURL_SEEKFUNC_OK;
}

static int local_error(lua_State *L, kw_request *req, const char *message, const char *hint)
{
  kw_error_info info;

  memset(&info, 0, sizeof(info));
  info.kind = "file";
  info.message = message;
  info.hint = hint;
  info.id = req->file_path != NULL ? req->file_path : req->id;
  info.retry_after = -1;
  return kw_error_return(L, req->client, &info);
}

/*
 * Opens the chunk's file and builds its multipart form from the fields table
 * at fields: path, offset, length, chunk_number and filename. Returns 0, or 2
 * with nil and an error pushed when the file cannot provide the range.
 */
int kw_body_prepare_chunk(lua_State *L, kw_request *req, int fields)
{
  struct stat st;
  curl_mimepart *part;
  const char *path;
  const char *name;
  size_t n;

  lua_getfield(L, fields, "path");
  path = lua_tolstring(L, -1, &n);
  if (memchr(path, '\0', n) != NULL)
    return luaL_error(L, "bad argument (fields) to 'files.session_chunk' (path must not "
                      "contain a NUL byte)");
  req->file_path = kw_strdup_or_raise(L, path, n);
  lua_getfield(L, fields, "offset");
  req->range_offset = (long long)lua_tonumber(L, -1);
  lua_getfield(L, fields, "length");
  req->range_length = (long long)lua_tonumber(L, -1);
  lua_getfield(L, fields, "chunk_number");
  {
    /* %.0f prints every integer up to 2^53 exactly; an int cast would overflow. */
    char text[32];

    snprintf(text, sizeof(text), "%.0f", (double)lua_tonumber(L, -1));
    req->chunk_number = kw_strdup_or_raise(L, text, strlen(text));
  }
  lua_getfield(L, fields, "filename");
  name = lua_isnil(L, -1) ? NULL : lua_tostring(L, -1);
  if (name == NULL) {
    name = strrchr(req->file_path, '/');
    name = name != NULL ? name + 1 : req->file_path;
  }
  req->file_name = kw_strdup_or_raise(L, name, strlen(name));
  lua_pop(L, 6);

  if (req->range_offset < 0 || req->range_length < 1)
    return luaL_error(L, "bad argument (fields) to 'files.session_chunk' (offset must be 0 "
                      "or more and length 1 or more)");
  if (stat(req->file_path, &st) != 0)
    return local_error(L, req, lua_pushfstring(L, "cannot upload a chunk of '%s': %s",
                                               req->file_path, strerror(errno)),
                       "check the path and that the file is readable");
  if ((long long)st.st_size < req->range_offset + req->range_length)
    return local_error(L, req, lua_pushfstring(L, "cannot upload a chunk of '%s': the file "
                                               "is shorter than the chunk's range",
                                               req->file_path),
                       "the file changed during the upload; upload it again");
  req->file = fopen(req->file_path, "rb");
  if (req->file == NULL)
    return local_error(L, req, lua_pushfstring(L, "cannot upload a chunk of '%s': %s",
                                               req->file_path, strerror(errno)),
                       "check the path and that the file is readable");
  req->range_position = 0;
  if (fseeko(req->file, (off_t)req->range_offset, SEEK_SET) != 0)
    return local_error(L, req, lua_pushfstring(L, "cannot seek in '%s': %s",
                                               req->file_path, strerror(errno)),
                       "check that the file is a regular file");

  req->mime = curl_mime_init(req->client->easy);
  if (req->mime == NULL)
    return luaL_error(L, "kore_workflow: out of memory");
  part = curl_mime_addpart(req->mime);
  if (part == NULL || curl_mime_name(part, "file") != CURLE_OK ||
      curl_mime_data_cb(part, (curl_off_t)req->range_length, chunk_read, chunk_seek, NULL,
                        req) != CURLE_OK ||
      curl_mime_filename(part, req->file_name) != CURLE_OK ||
      curl_mime_type(part, "application/octet-stream") != CURLE_OK)
    return luaL_error(L, "kore_workflow: cannot build the chunk form for '%s'", req->file_path);
  part = curl_mime_addpart(req->mime);
  if (part == NULL || curl_mime_name(part, "chunkNumber") != CURLE_OK ||
      curl_mime_data(part, req->chunk_number, CURL_ZERO_TERMINATED) != CURLE_OK)
    return luaL_error(L, "kore_workflow: cannot build the chunk form for '%s'", req->file_path);
  return 0;
}

/* Builds the multipart form of bytes given as a Lua string, with the file name. */
void kw_body_prepare_data(lua_State *L, kw_request *req, int name_arg, int data_arg,
                          const char *fname)
{
  curl_mimepart *part;
  const char *data;
  size_t n;

  if (lua_type(L, name_arg) != LUA_TSTRING || kw_rawlen(L, name_arg) == 0)
    kw_argerror(L, name_arg, fname, "file name", "non-empty string expected, got %s",
                luaL_typename(L, name_arg));
  if (lua_type(L, data_arg) != LUA_TSTRING)
    kw_argerror(L, data_arg, fname, "data", "string expected, got %s",
                luaL_typename(L, data_arg));
  data = lua_tolstring(L, name_arg, &n);
  if (memchr(data, '\0', n) != NULL)
    kw_argerror(L, name_arg, fname, "file name", "must not contain a NUL byte");
  /* The name argument wins over a filename option read before it. */
  free(req->file_name);
  req->file_name = NULL;
  req->file_name = kw_strdup_or_raise(L, data, n);
  req->id = kw_strdup_or_raise(L, data, n);
  data = lua_tolstring(L, data_arg, &n);

  req->mime = curl_mime_init(req->client->easy);
  if (req->mime == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  part = curl_mime_addpart(req->mime);
  /* curl_mime_data copies the bytes, so the Lua string may be collected at once. */
  if (part == NULL || curl_mime_name(part, "file") != CURLE_OK ||
      curl_mime_data(part, data, n) != CURLE_OK ||
      curl_mime_filename(part, req->file_name) != CURLE_OK)
    luaL_error(L, "kore_workflow: cannot build the upload form for '%s'", req->file_name);
  part = curl_mime_addpart(req->mime);
  if (part == NULL || curl_mime_name(part, "fileContext") != CURLE_OK ||
      curl_mime_data(part, req->file_context, CURL_ZERO_TERMINATED) != CURLE_OK)
    luaL_error(L, "kore_workflow: cannot build the upload form for '%s'", req->file_name);
}

/* Returns scheme://host:port of url as a new Lua string on the stack, or nil. */
static void push_origin(lua_State *L, const char *url)
{
  CURLU *parsed = curl_url();
  char *scheme = NULL;
  char *host = NULL;
  char *port = NULL;

  if (parsed != NULL && curl_url_set(parsed, CURLUPART_URL, url, 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_SCHEME, &scheme, 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_HOST, &host, 0) == CURLUE_OK &&
      curl_url_get(parsed, CURLUPART_PORT, &port, CURLU_DEFAULT_PORT) == CURLUE_OK &&
      (strcmp(scheme, "http") == 0 || strcmp(scheme, "https") == 0))
    lua_pushfstring(L, "%s://%s:%s", scheme, host, port);
  else
    lua_pushnil(L);
  curl_free(scheme);
  curl_free(host);
  curl_free(port);
  curl_url_cleanup(parsed);
}

/*
 * Reads the URL and destination path of a download. The key is sent only
 * when the URL's origin is the client's own host; a signed link elsewhere
 * gets no key. The body is written to "<path>.part" and renamed when it is
 * complete.
 */
int kw_body_prepare_download(lua_State *L, kw_request *req, int url_arg, int path_arg,
                             const char *fname)
{
  const char *url;
  const char *path;
  size_t n;
  int same;

  if (lua_type(L, url_arg) != LUA_TSTRING)
    kw_argerror(L, url_arg, fname, "url", "string expected, got %s",
                luaL_typename(L, url_arg));
  if (lua_type(L, path_arg) != LUA_TSTRING || kw_rawlen(L, path_arg) == 0)
    kw_argerror(L, path_arg, fname, "path", "non-empty string expected, got %s",
                luaL_typename(L, path_arg));
  url = lua_tolstring(L, url_arg, &n);
  if (memchr(url, '\0', n) != NULL)
    kw_argerror(L, url_arg, fname, "url", "must not contain a NUL byte");
  push_origin(L, url);
  if (lua_isnil(L, -1))
    kw_argerror(L, url_arg, fname, "url", "an http or https URL expected");
  push_origin(L, req->client->base_url);
  same = lua_rawequal(L, -1, -2);
  lua_pop(L, 2);
  req->send_key = same;
  req->url = kw_strdup_or_raise(L, url, n);
  /* Messages name the link without its query, where a signature may be. */
  req->id = kw_strdup_or_raise(L, url, strcspn(url, "?#"));
  req->path = kw_strdup_or_raise(L, req->id, strlen(req->id));

  path = lua_tolstring(L, path_arg, &n);
  if (memchr(path, '\0', n) != NULL)
    kw_argerror(L, path_arg, fname, "path", "must not contain a NUL byte");
  req->download_path = kw_strdup_or_raise(L, path, n);
  lua_pushfstring(L, "%s.part", path);
  req->download_part = kw_strdup_or_raise(L, lua_tostring(L, -1), kw_rawlen(L, -1));
  lua_pop(L, 1);
  req->file = fopen(req->download_part, "wb");
  if (req->file == NULL)
    return local_error(L, req, lua_pushfstring(L, "cannot write the download to '%s': %s",
                                               req->download_part, strerror(errno)),
                       "check that the directory exists and is writable");
  return 0;
}

/* CURLOPT_WRITEFUNCTION of a download: a 2xx body goes to the file, any other to memory. */
size_t kw_body_on_download(char *data, size_t size, size_t count, void *userdata)
{
  kw_request *req = userdata;
  size_t n = size * count;
  long status = 0;

  curl_easy_getinfo(req->own_easy != NULL ? req->own_easy : req->client->easy,
                    CURLINFO_RESPONSE_CODE, &status);
  if (status < 200 || status >= 300)
    return kw_buf_append(&req->response, data, n) ? n : 0;
  if (fwrite(data, 1, n, req->file) != n)
    return 0;
  req->downloaded += (long long)n;
  return n;
}

/*
 * Closes the download file; keeps it under its final name when the transfer
 * succeeded with a 2xx status, removes it otherwise. Returns 1 when kept.
 */
int kw_body_finish_download(kw_request *req)
{
  int ok = req->code == CURLE_OK && req->status >= 200 && req->status < 300;

  if (req->file != NULL) {
    if (fclose(req->file) != 0)
      ok = 0;
    req->file = NULL;
  }
  if (req->download_part != NULL) {
    if (ok && rename(req->download_part, req->download_path) != 0)
      ok = 0;
    if (!ok)
      remove(req->download_part);
  }
  return ok;
}

void kw_body_release(kw_request *req)
{
  if (req->download_part != NULL && req->file != NULL) {
    fclose(req->file);
    req->file = NULL;
    remove(req->download_part);
  }
  if (req->file != NULL)
    fclose(req->file);
  req->file = NULL;
  free(req->query);
  free(req->chunk_number);
  free(req->download_path);
  free(req->download_part);
  req->query = req->chunk_number = req->download_path = req->download_part = NULL;
}
