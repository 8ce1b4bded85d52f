/*
 * Fuzz target: kw_request_push_result, which turns a finished transfer into
 * the Lua result of a call. The input fills a request as kw_request_collect
 * would after a transfer (libcurl's result code, the HTTP status, the
 * Content-Type, Content-Encoding and Location headers, Retry-After,
 * libcurl's error text and the response body), and nothing is sent.
 *
 * Checked for every input: the call returns a result table or nil and an
 * error table. A result carries the field its endpoint promises, no JSON
 * null sentinel, and (on Lua 5.3 and later) no integral float up to 2^53.
 * An error has a known kind, a printable one-line message and hint, the
 * HTTP status when the transfer completed, and a sanitised excerpt of at most
 * KW_EXCERPT_LENGTH bytes plus "...". No string of an error contains the
 * API key, or a start of it cut by an excerpt's "...".
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kwf.h"

static kwf_env *env;
static kwf_input *current;

int LLVMFuzzerInitialize(int *argc, char ***argv)
{
  (void)argc;
  (void)argv;
  env = kwf_setup();
  return 0;
}

static const CURLcode codes[] = {
  CURLE_OK, CURLE_OK, CURLE_OK, CURLE_OK, CURLE_COULDNT_RESOLVE_HOST, CURLE_COULDNT_CONNECT,
  CURLE_WRITE_ERROR, CURLE_READ_ERROR, CURLE_OPERATION_TIMEDOUT, CURLE_SSL_CONNECT_ERROR,
  CURLE_PEER_FAILED_VERIFICATION, CURLE_BAD_CONTENT_ENCODING, CURLE_FILESIZE_EXCEEDED,
  CURLE_SSL_CACERT_BADFILE, CURLE_RECV_ERROR, CURLE_GOT_NOTHING, CURLE_SEND_ERROR,
};

static const long statuses[] = {
  200, 200, 200, 201, 202, 204, 299, 0, 100, 199, 300, 301, 302, 303, 307, 308, 399, 400,
  401, 403, 404, 409, 422, 429, 500, 502, 503, 504, 599, 600, 999, -1,
};

static const char *const kinds[] = {
  "http", "network", "timeout", "tls", "invalid_response", "redirect", "outcome_unknown",
  "file", NULL
};

#define KWF_KEY_START_LEN 12 /* "kwfuzzSECRET" */

/*
 * Changes every start of the key that is not the whole key ("kwfuzzSECRET"
 * followed by other bytes) so that it no longer matches. Then a start of the
 * key followed by "..." in an error can only come from a whole key cut by
 * an excerpt. A server message that spells the key's start with JSON \u
 * escapes is decoded after this step, so it could still trip that check.
 */
static void break_key_starts(char *text, size_t len)
{
  static const char key[] = KWF_KEY;
  size_t i;

  for (i = 0; i + KWF_KEY_START_LEN <= len; i++)
    if (memcmp(text + i, key, KWF_KEY_START_LEN) == 0 &&
        (len - i < sizeof(key) - 1 || memcmp(text + i, key, sizeof(key) - 1) != 0))
      text[i + 6] = 's';
}

/* Returns a malloc'd copy of the next bytes up to max, cut at the first NUL or newline. */
static char *take_header_text(kwf_input *in, size_t max)
{
  const uint8_t *bytes;
  size_t n = kwf_bytes(in, kwf_length(in, max), &bytes);
  char *text = malloc(n + 1);
  size_t i;

  if (text == NULL)
    abort();
  for (i = 0; i < n && bytes[i] != '\0' && bytes[i] != '\n'; i++)
    text[i] = (char)bytes[i];
  text[i] = '\0';
  break_key_starts(text, i);
  return text;
}

/* Fills req from the input as a finished transfer would leave it. */
static void fill_request(kwf_input *in, kw_request *req)
{
  unsigned flags;
  unsigned choice;
  const uint8_t *body;
  size_t body_len, i;
  char *id;

  choice = kwf_byte(in);
  req->code = choice < 128 ? codes[choice % (sizeof(codes) / sizeof(codes[0]))]
                           : (CURLcode)(choice % 100);
  choice = kwf_byte(in);
  req->status = choice < 192 ? statuses[choice % (sizeof(statuses) / sizeof(statuses[0]))]
                             : (long)(int32_t)kwf_uint(in, 4);
  flags = kwf_byte(in);
  req->request_sent = flags & 1;
  req->retry_after = (flags & 2) ? (long long)(kwf_uint(in, 8) >> (kwf_byte(in) % 64)) : -1;
  req->limits.connect_timeout_ms = 5000;
  req->limits.timeout_ms = (flags & 4) ? 0 : (long)(kwf_uint(in, 4) % 100000000);
  req->limits.stall_timeout_ms = 30000;
  req->limits.max_response = (flags & 8) ? (size_t)(kwf_uint(in, 5) % 1000000000000ULL) + 1
                                         : (size_t)KW_DEFAULT_MAX_RESPONSE;
  req->response.limit = req->limits.max_response;

  /* An id is any string from the caller, in lower case so that it cannot contain the key. */
  id = take_header_text(in, KW_MAX_ID_LENGTH);
  for (i = 0; id[i] != '\0'; i++)
    if (id[i] >= 'A' && id[i] <= 'Z')
      id[i] = (char)(id[i] - 'A' + 'a');
  if (id[0] == '\0') {
    free(id);
    id = strdup("ds-1");
    if (id == NULL)
      abort();
  }
  req->id = id;
  if (flags & 16)
    req->content_type = take_header_text(in, 200);
  if (flags & 32)
    req->location = take_header_text(in, 600);
  if (flags & 128) {
    static const char *const codings[] = { "gzip", "deflate", " GZIP ", "identity", "br", "" };

    choice = kwf_byte(in);
    req->content_encoding = choice < 192
      ? strdup(codings[choice % (sizeof(codings) / sizeof(codings[0]))])
      : take_header_text(in, 40);
    if (req->content_encoding == NULL)
      abort();
  }
  if (flags & 64) {
    char *text = take_header_text(in, CURL_ERROR_SIZE - 1);

    strcpy(req->errbuf, text);
    free(text);
  }
  body_len = kwf_bytes(in, in->size - in->pos, &body);
  if (body_len > 0) {
    char *copy = malloc(body_len);

    if (copy == NULL)
      abort();
    memcpy(copy, body, body_len);
    break_key_starts(copy, body_len);
    if (!kw_buf_append(&req->response, copy, body_len) && !req->response.overflowed)
      abort();
    free(copy);
  }
}

/* The key must show neither whole nor as a start cut by an excerpt's "...". */
static void check_no_key(const char *text, size_t len)
{
  static const char key[] = KWF_KEY;
  char cut[sizeof(key) + 3];
  size_t n;

  if (kwf_contains(text, len, key))
    kwf_fail("no error string contains the API key", text, len);
  for (n = KWF_KEY_START_LEN; n < sizeof(key) - 1; n++) {
    memcpy(cut, key, n);
    memcpy(cut + n, "...", 4);
    if (kwf_contains(text, len, cut))
      kwf_fail("no error string contains the start of the API key cut by \"...\"", text, len);
  }
}

/* Checks the string field name of the error table at index; returns its length or -1 when absent. */
static long check_string_field(lua_State *L, int index, const char *name, int required,
                               int printable)
{
  size_t len;
  const char *text;

  lua_getfield(L, index, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    if (required)
      kwf_fail("an error has its required string fields", name, strlen(name));
    return -1;
  }
  if (lua_type(L, -1) != LUA_TSTRING)
    kwf_fail("the error field is a string", name, strlen(name));
  text = lua_tolstring(L, -1, &len);
  if (printable && !kwf_printable(text, len))
    kwf_fail("the error field is one printable line", text, len);
  check_no_key(text, len);
  lua_pop(L, 1);
  return (long)len;
}

static void check_error(lua_State *L, const kw_request *req, int error)
{
  const char *kind;
  int i, known = 0;
  long body_len;
  char number[32];
  const char *message;

  if (lua_type(L, error) != LUA_TTABLE)
    kwf_fail("the second result of a failure is a table", NULL, 0);
  if (!lua_getmetatable(L, error))
    kwf_fail("an error table has the error metatable", NULL, 0);
  luaL_getmetatable(L, KW_ERROR_MT);
  if (!lua_rawequal(L, -1, -2))
    kwf_fail("an error table has the error metatable", NULL, 0);
  lua_pop(L, 2);

  lua_getfield(L, error, "kind");
  kind = lua_tostring(L, -1);
  for (i = 0; kind != NULL && kinds[i] != NULL; i++)
    known = known || strcmp(kind, kinds[i]) == 0;
  if (!known)
    kwf_fail("an error has a known kind", kind, kind ? strlen(kind) : 0);

  check_string_field(L, error, "message", 1, 1);
  check_string_field(L, error, "hint", 1, 1);
  check_string_field(L, error, "id", 1, 0);
  body_len = check_string_field(L, error, "body", 0, 1);
  if (body_len > KW_EXCERPT_LENGTH + 3)
    kwf_fail("the body excerpt is short", NULL, (size_t)body_len);

  lua_getfield(L, error, "retryable");
  if (lua_type(L, -1) != LUA_TBOOLEAN)
    kwf_fail("retryable is a boolean", NULL, 0);
  lua_pop(L, 1);
  /* A failed transfer carries no status: headers may have arrived before the failure. */
  lua_getfield(L, error, "status");
  if (req->code == CURLE_OK && req->status > 0
        ? lua_type(L, -1) != LUA_TNUMBER || lua_tonumber(L, -1) != (lua_Number)req->status
        : !lua_isnil(L, -1))
    kwf_fail("status is the HTTP status of a completed transfer, absent after a failed one",
             NULL, 0);
  lua_pop(L, 1);
  lua_getfield(L, error, "retry_after");
  if (!lua_isnil(L, -1) && (lua_type(L, -1) != LUA_TNUMBER || !(lua_tonumber(L, -1) >= 0)))
    kwf_fail("retry_after is a number of seconds", NULL, 0);
  lua_pop(L, 1);

  /* Numbers in messages are printed whole, whatever their size. */
  lua_getfield(L, error, "message");
  message = lua_tostring(L, -1);
  if (req->code == CURLE_FILESIZE_EXCEEDED ||
      (req->code == CURLE_WRITE_ERROR && req->response.overflowed)) {
    snprintf(number, sizeof(number), "limit of %zu bytes", req->limits.max_response);
    if (strstr(message, number) == NULL)
      kwf_fail("the size limit in the message is the call's max_response", message, strlen(message));
  }
  lua_pop(L, 1);
  lua_getfield(L, error, "hint");
  message = lua_tostring(L, -1);
  if (strstr(message, "retry after") != NULL && req->retry_after >= 0) {
    snprintf(number, sizeof(number), "retry after %lld s", req->retry_after);
    if (strstr(message, number) == NULL)
      kwf_fail("the Retry-After in the hint is the server's", message, strlen(message));
  }
  lua_pop(L, 1);
}

/* Checks a decoded value for null sentinels and, on Lua 5.3 and later, integral floats. */
static void check_normalised(lua_State *L, int value, int null_index, int depth)
{
  if (depth > 250)
    kwf_fail("a result is nested at most as deep as the codec allows", NULL, 0);
  luaL_checkstack(L, 4, "kwf: result nested too deeply");
  lua_pushnil(L);
  while (lua_next(L, value) != 0) {
    if (lua_rawequal(L, -1, null_index))
      kwf_fail("a result holds no JSON null sentinel", NULL, 0);
#if LUA_VERSION_NUM >= 503
    if (lua_type(L, -1) == LUA_TNUMBER && !lua_isinteger(L, -1)) {
      lua_Number n = lua_tonumber(L, -1);

      if (n >= -9007199254740992.0 && n <= 9007199254740992.0 && n == floor(n))
        kwf_fail("a result holds integers up to 2^53 as integers", NULL, 0);
    }
#endif
    if (lua_type(L, -1) == LUA_TTABLE)
      check_normalised(L, lua_gettop(L), null_index, depth + 1);
    lua_pop(L, 1);
  }
}

static void check_result(lua_State *L, const kw_request *req, int result)
{
  int null_index;

  if (req->code != CURLE_OK || req->status < 200 || req->status >= 300)
    kwf_fail("only a 2xx transfer without a libcurl error succeeds", NULL, 0);
  if (lua_type(L, result) != LUA_TTABLE)
    kwf_fail("a result is a table", NULL, 0);
  if (req->endpoint->result == KW_RESULT_JOB) {
    lua_getfield(L, result, "dockStatusId");
    if (lua_type(L, -1) != LUA_TSTRING && lua_type(L, -1) != LUA_TNUMBER)
      kwf_fail("a job result has a dockStatusId", NULL, 0);
    lua_pop(L, 1);
  } else if (req->endpoint->result == KW_RESULT_FILE) {
    lua_getfield(L, result, "fileId");
    if (lua_type(L, -1) != LUA_TSTRING)
      kwf_fail("an upload result has a string fileId", NULL, 0);
    lua_pop(L, 1);
  } else if (req->endpoint->result == KW_RESULT_SESSION) {
    lua_getfield(L, result, "sessionId");
    if (lua_type(L, -1) != LUA_TSTRING)
      kwf_fail("an upload session result has a string sessionId", NULL, 0);
    lua_pop(L, 1);
  }
  lua_rawgeti(L, LUA_REGISTRYINDEX, env->codec_ref);
  lua_getfield(L, -1, "null");
  null_index = lua_gettop(L);
  check_normalised(L, result, null_index, 0);
  lua_pop(L, 2);
}

/* Upvalue 1: the endpoint. Builds the finished request, pushes its result and checks it. */
static int push_and_check(lua_State *L)
{
  const kw_endpoint *ep = lua_touserdata(L, lua_upvalueindex(1));
  int client_index, codec_index, top, pushed;
  kw_request *req;

  lua_rawgeti(L, LUA_REGISTRYINDEX, env->client_ref);
  client_index = lua_gettop(L);
  req = kw_request_new(L, client_index, ep);
  fill_request(current, req);
  kw_json_push_codec(L, req->client);
  codec_index = lua_gettop(L);
  top = lua_gettop(L);
  pushed = kw_request_push_result(L, req, codec_index);
  if (pushed < 1 || pushed > 2 || lua_gettop(L) < top + pushed)
    kwf_fail("a result is one value, or nil and an error", NULL, 0);
  if (pushed == 1) {
    check_result(L, req, lua_gettop(L));
  } else {
    if (!lua_isnil(L, -2))
      kwf_fail("a failure returns nil first", NULL, 0);
    check_error(L, req, lua_gettop(L));
  }
  return 0;
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
  lua_State *L = env->L;
  kwf_input in = { data, size, 0 };
  int base = lua_gettop(L);
  const kw_endpoint *ep;
  size_t count = 0;

  /* Every endpoint but downloads, whose result is a file written during the transfer. */
  while (kw_endpoints[count].ns != NULL)
    count++;
  ep = &kw_endpoints[kwf_byte(&in) % count];
  if (ep->body == KW_BODY_DOWNLOAD)
    return 0;
  current = &in;
  lua_pushlightuserdata(L, (void *)ep);
  lua_pushcclosure(L, push_and_check, 1);
  if (lua_pcall(L, 0, 0, 0) != LUA_OK) {
    size_t len;
    const char *message = lua_tolstring(L, -1, &len);

    kwf_fail("kw_request_push_result does not raise", message, message ? len : 0);
  }
  kwf_finish(L, base);
  return 0;
}
