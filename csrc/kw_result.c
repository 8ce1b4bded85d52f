/*
 * Turning a finished transfer into the Lua result of the call: a normalised
 * table, or nil and an error table that names what failed, on which id, and
 * what to do next.
 */
#include <ctype.h>
#include <stdio.h>
#include <string.h>

#include "kw.h"

/* Returns nil and an error; only http and redirect errors carry the HTTP status. */
static int failure(lua_State *L, kw_request *req, const char *kind,
                   const char *message, const char *hint, int retryable)
{
  kw_error_info info;

  memset(&info, 0, sizeof(info));
  info.kind = kind;
  info.message = message;
  info.hint = hint;
  info.status = strcmp(kind, "redirect") == 0 ? req->status : 0;
  info.retryable = retryable;
  info.id = req->id;
  info.retry_after = req->retry_after >= 0 ? (double)req->retry_after : -1;
  return kw_error_return(L, req->client, &info);
}

/* Pushes "<action> <id>", such as "status of dock status ds-1", for messages. */
static const char *subject(lua_State *L, const kw_request *req)
{
  luaL_Buffer b;

  luaL_buffinit(L, &b);
  luaL_addstring(&b, req->endpoint->action);
  /* Calls such as workflow.import_new name no id in their path. */
  if (req->id != NULL) {
    luaL_addchar(&b, ' ');
    kw_sanitise(&b, req->id, strlen(req->id), 200);
  }
  luaL_pushresult(&b);
  return lua_tostring(L, -1);
}

/*
 * Pushes a printable excerpt of at most max bytes of text that the server
 * chose. The API key is redacted before the text is cut, because a key cut
 * in two by the excerpt's end no longer matches for the redaction of the
 * whole message, and its start would show.
 */
static const char *push_excerpt(lua_State *L, const kw_request *req, const char *text,
                                size_t len, size_t max)
{
  luaL_Buffer b;
  const char *redacted;
  size_t n;

  kw_redact(L, req->client, text, len);
  redacted = lua_tolstring(L, -1, &n);
  luaL_buffinit(L, &b);
  kw_sanitise(&b, redacted, n, max);
  luaL_pushresult(&b);
  lua_remove(L, -2);
  return lua_tostring(L, -1);
}

static const char *curl_detail(lua_State *L, const kw_request *req)
{
  const char *text = req->errbuf[0] != '\0' ? req->errbuf : curl_easy_strerror(req->code);

  return push_excerpt(L, req, text, strlen(text), 300);
}

static int is_tls_error(CURLcode code)
{
  switch (code) {
  case CURLE_SSL_CONNECT_ERROR:
  case CURLE_PEER_FAILED_VERIFICATION:
  case CURLE_SSL_CACERT_BADFILE:
  case CURLE_SSL_CERTPROBLEM:
  case CURLE_SSL_CIPHER:
  case CURLE_SSL_ISSUER_ERROR:
  case CURLE_SSL_CRL_BADFILE:
  case CURLE_SSL_PINNEDPUBKEYNOTMATCH:
  case CURLE_SSL_INVALIDCERTSTATUS:
  case CURLE_SSL_ENGINE_INITFAILED:
  case CURLE_SSL_ENGINE_NOTFOUND:
  case CURLE_SSL_ENGINE_SETFAILED:
  case CURLE_SSL_SHUTDOWN_FAILED:
  case CURLE_USE_SSL_FAILED:
    return 1;
  default:
    return 0;
  }
}

static int transfer_failure(lua_State *L, kw_request *req)
{
  const char *what = subject(L, req); /* "<action> <id>" */
  const char *detail = curl_detail(L, req);
  int resendable = (req->endpoint->flags & KW_IDEMPOTENT) != 0;
  double seconds = req->limits.timeout_ms / 1000.0;

  if (req->code == CURLE_WRITE_ERROR && req->response.overflowed)
    req->code = CURLE_FILESIZE_EXCEEDED;
  if (req->code == CURLE_ABORTED_BY_CALLBACK && req->stalled) {
    req->code = CURLE_OPERATION_TIMEDOUT;
    seconds = req->limits.stall_timeout_ms / 1000.0;
    detail = lua_pushfstring(L, "no data moved for %f s, the stall_timeout limit", seconds);
  }

  switch (req->code) {
  case CURLE_COULDNT_RESOLVE_HOST:
  case CURLE_COULDNT_RESOLVE_PROXY:
  case CURLE_COULDNT_CONNECT:
    return failure(L, req, "network",
                   lua_pushfstring(L, "%s failed: cannot connect to %s (%s)", what,
                                   req->client->base_url, detail),
                   "check the host and that the service is reachable, then retry", 1);
  case CURLE_FILESIZE_EXCEEDED: {
    /* max_response may be up to 1e12, past what %d of lua_pushfstring prints. */
    char limit[32];

    snprintf(limit, sizeof(limit), "%zu", req->limits.max_response);
    return failure(L, req, "invalid_response",
                   lua_pushfstring(L, "%s failed: the response is larger than the "
                                   "limit of %s bytes", what, limit),
                   "raise the max_response option if such a large response is expected", 0);
  }
  case CURLE_BAD_CONTENT_ENCODING:
    return failure(L, req, "invalid_response",
                   lua_pushfstring(L, "%s failed: the response body cannot be decoded "
                                   "with its Content-Encoding (%s)", what, detail),
                   "the server or a proxy sent a mislabelled body; report it", 0);
  case CURLE_READ_ERROR:
    return failure(L, req, "file",
                   lua_pushfstring(L, "%s failed while reading the file (%s)", what, detail),
                   "check that the file is not changed or removed during the upload", 0);
  default:
    break;
  }

  if (is_tls_error(req->code)) {
    const char *hint = req->code == CURLE_SSL_CACERT_BADFILE
      ? "the ca_file cannot be read or holds no certificate; pass the path of a PEM file"
      : "the server certificate is not trusted for this host name; pass ca_file = "
        "the PEM file of the CA that signed it, and check the host name";
    return failure(L, req, "tls",
                   lua_pushfstring(L, "%s failed TLS verification with %s (%s)", what,
                                   req->client->base_url, detail),
                   hint, 0);
  }

  if (req->request_sent && !resendable) {
    return failure(L, req, "outcome_unknown",
                   lua_pushfstring(L, "%s failed after the request was sent (%s), so "
                                   "the server may or may not have acted on it",
                                   what, detail),
                   "do not resend it blindly; check the workflow's jobs or versions first", 0);
  }
  if (req->code == CURLE_OPERATION_TIMEDOUT) {
    const char *message = req->limits.timeout_ms > 0 && !req->stalled
      ? lua_pushfstring(L, "%s timed out (%s; timeout limit %f s)", what, detail, seconds)
      : lua_pushfstring(L, "%s timed out (%s)", what, detail);
    return failure(L, req, "timeout", message,
                   "the server did not respond in time; retry, or raise the timeout option", 1);
  }
  return failure(L, req, "network",
                 lua_pushfstring(L, "%s failed: %s", what, detail),
                 "check the network and the host, then retry", 1);
}

/*
 * Pushes the server's own message from an error body, for the shapes seen in
 * the wild: {"message"}, {"error": "..."}, {"error": {"message"}},
 * {"errors": [{"msg"}]} and {"errors": [{"message"}]}. Pushes nil when none.
 */
static void push_server_message(lua_State *L, kw_request *req, int codec_index)
{
  static const char *const fields[] = { "message", "msg", "error", "detail", NULL };
  int top = lua_gettop(L);
  int i;

  if (req->response.len == 0 ||
      !kw_json_decode(L, codec_index, req->response.data, req->response.len) ||
      lua_type(L, -1) != LUA_TTABLE) {
    lua_settop(L, top);
    lua_pushnil(L);
    return;
  }
  lua_getfield(L, -1, "errors");
  if (lua_type(L, -1) == LUA_TTABLE) {
    lua_rawgeti(L, -1, 1);
    if (lua_type(L, -1) == LUA_TTABLE)
      lua_replace(L, -3);
    else
      lua_pop(L, 1);
  }
  lua_pop(L, 1);
  for (i = 0; fields[i] != NULL; i++) {
    lua_getfield(L, -1, fields[i]);
    if (lua_type(L, -1) == LUA_TTABLE) {
      lua_getfield(L, -1, "message");
      lua_replace(L, -2);
    }
    if (lua_type(L, -1) == LUA_TSTRING) {
      size_t n;
      const char *s = lua_tolstring(L, -1, &n);

      push_excerpt(L, req, s, n, 300);
      lua_replace(L, top + 1);
      lua_settop(L, top + 1);
      return;
    }
    lua_pop(L, 1);
  }
  lua_settop(L, top);
  lua_pushnil(L);
}

static const char *status_hint(lua_State *L, const kw_request *req)
{
  if (req->endpoint->body == KW_BODY_DOWNLOAD && (req->status == 403 || req->status == 404))
    return "the download link may have expired; export again for a fresh link";
  switch (req->status) {
  case 400:
    return "check the request: a field is missing, has the wrong type or names an unknown file";
  case 401:
    return "check the API key (KORE_API_KEY or --api-key-file) for this host";
  case 403:
    return "the API key lacks permission for this call; check the key's scopes";
  case 404:
    return lua_pushfstring(L, "check the %s id", req->endpoint->id_label);
  case 409:
    return "the request conflicts with the current state; check names and running jobs";
  case 429:
    if (req->retry_after >= 0) {
      /* Retry-After may pass INT_MAX, which %d of lua_pushfstring cannot print. */
      char seconds[32];

      snprintf(seconds, sizeof(seconds), "%lld", req->retry_after);
      return lua_pushfstring(L, "the server is rate limiting; retry after %s s", seconds);
    }
    return "the server is rate limiting; retry later";
  default:
    break;
  }
  if (req->status >= 500)
    return "the server failed; retry later";
  return "the server answered with an unexpected status";
}

static int status_retryable(const kw_request *req)
{
  if (req->status == 429)
    return 1;
  if (!(req->endpoint->flags & KW_IDEMPOTENT))
    return 0;
  return req->status == 502 || req->status == 503 || req->status == 504;
}

static int http_failure(lua_State *L, kw_request *req, int codec_index)
{
  const char *what = subject(L, req); /* "<action> <id>" */
  const char *message;
  kw_error_info info;
  int top;

  if (req->status >= 300 && req->status < 400) {
    if (req->location != NULL)
      push_excerpt(L, req, req->location, strcspn(req->location, "?#"), 300);
    else
      lua_pushliteral(L, "no Location");
    return failure(L, req, "redirect",
                   lua_pushfstring(L, "%s got an unexpected redirect (HTTP %d) to %s",
                                   what, (int)req->status, lua_tostring(L, -1)),
                   "the client follows no redirects so the API key never leaves the "
                   "host; check the host setting", 0);
  }

  push_server_message(L, req, codec_index);
  top = lua_gettop(L);
  if (lua_isnil(L, top))
    message = lua_pushfstring(L, "%s failed with HTTP %d", what, (int)req->status);
  else
    message = lua_pushfstring(L, "%s failed with HTTP %d: %s", what, (int)req->status,
                              lua_tostring(L, top));

  memset(&info, 0, sizeof(info));
  info.kind = "http";
  info.message = message;
  info.hint = status_hint(L, req);
  info.status = req->status;
  info.retryable = status_retryable(req);
  info.id = req->id;
  info.retry_after = req->retry_after >= 0 ? (double)req->retry_after : -1;
  info.excerpt = req->response.data;
  info.excerpt_len = req->response.len;
  return kw_error_return(L, req->client, &info);
}

static int contains_bytes(const char *data, size_t len, const char *needle, size_t n)
{
  size_t i;

  for (i = 0; i + n <= len; i++)
    if (data[i] == needle[0] && memcmp(data + i, needle, n) == 0)
      return 1;
  return 0;
}

static int contains_json(const char *content_type)
{
  const char *p;

  for (p = content_type; *p != '\0'; p++)
    if ((p[0] | 0x20) == 'j' && strncasecmp(p, "json", 4) == 0)
      return 1;
  return 0;
}

static int invalid_body(lua_State *L, kw_request *req, const char *problem)
{
  kw_error_info info;

  memset(&info, 0, sizeof(info));
  info.kind = "invalid_response";
  info.message = lua_pushfstring(L, "%s returned an invalid response: %s",
                                 subject(L, req), problem);
  info.hint = "the host may not be the AI for Process API, or a proxy or login page "
              "answered; check the host setting";
  info.status = req->status;
  info.id = req->id;
  info.retry_after = -1;
  info.excerpt = req->response.data;
  info.excerpt_len = req->response.len;
  return kw_error_return(L, req->client, &info);
}

/* Pushes { path, bytes, content_type } of a finished download. */
static int push_download(lua_State *L, kw_request *req)
{
  lua_createtable(L, 0, 3);
  lua_pushstring(L, req->download_path);
  lua_setfield(L, -2, "path");
  kw_pushinteger(L, req->downloaded);
  lua_setfield(L, -2, "bytes");
  if (req->content_type != NULL) {
    lua_pushstring(L, req->content_type);
    lua_setfield(L, -2, "content_type");
  }
  return 1;
}

/*
 * Copies an export's download link into downloadUrl, wherever the server put
 * it: response.downloadUrl, response.downloadURL, downloadURL or downloadUrl.
 */
static void normalise_download_url(lua_State *L, int result)
{
  static const char *const names[] = { "downloadUrl", "downloadURL", NULL };
  int i;

  lua_getfield(L, result, "downloadUrl");
  if (lua_type(L, -1) == LUA_TSTRING) {
    lua_pop(L, 1);
    return;
  }
  lua_pop(L, 1);
  lua_getfield(L, result, "response");
  for (i = 0; names[i] != NULL && lua_type(L, -1) == LUA_TTABLE; i++) {
    lua_getfield(L, -1, names[i]);
    if (lua_type(L, -1) == LUA_TSTRING) {
      lua_setfield(L, result, "downloadUrl");
      lua_pop(L, 1);
      return;
    }
    lua_pop(L, 1);
  }
  lua_pop(L, 1);
  lua_getfield(L, result, "downloadURL");
  if (lua_type(L, -1) == LUA_TSTRING)
    lua_setfield(L, result, "downloadUrl");
  else
    lua_pop(L, 1);
}

/* Copies the first present field of names into dockStatusId. */
static int normalise_job(lua_State *L, kw_request *req, int result)
{
  static const char *const names[] = { "dockStatusId", "dock-statusId", "_id", NULL };
  int i;

  for (i = 0; names[i] != NULL; i++) {
    lua_getfield(L, result, names[i]);
    if (lua_type(L, -1) == LUA_TSTRING || lua_type(L, -1) == LUA_TNUMBER) {
      lua_setfield(L, result, "dockStatusId");
      return 1;
    }
    lua_pop(L, 1);
  }
  if (req->endpoint->flags & KW_ID_ACCEPTS_NUMBER) {
    lua_pushstring(L, req->id);
    lua_setfield(L, result, "dockStatusId");
    return 1;
  }
  return 0;
}

/*
 * Pushes the result of a finished request: the normalised response table, or
 * nil and an error table. Returns the number of values pushed.
 */
int kw_request_push_result(lua_State *L, kw_request *req, int codec_index)
{
  int result;
  int decoded;

  codec_index = kw_absindex(L, codec_index);
  if (req->endpoint->body == KW_BODY_DOWNLOAD && kw_body_finish_download(req))
    return push_download(L, req);
  if (req->code != CURLE_OK)
    return transfer_failure(L, req);
  decoded = req->endpoint->body == KW_BODY_DOWNLOAD || kw_inflate_response(req);
  if (req->status < 200 || req->status >= 300) {
    if (!decoded) {
      /* The status reports what failed, so a body that cannot be decoded adds nothing. */
      req->code = CURLE_OK;
      req->response.len = 0;
    }
    return http_failure(L, req, codec_index);
  }
  if (!decoded)
    return transfer_failure(L, req);
  if (req->endpoint->body == KW_BODY_DOWNLOAD)
    return failure(L, req, "file", lua_pushfstring(L, "%s failed: the file '%s' could not be "
                                                   "written", subject(L, req),
                                                   req->download_path),
                   "check the free space and that the directory is writable", 0);

  if (req->content_type != NULL && !contains_json(req->content_type))
    return invalid_body(L, req, lua_pushfstring(L, "expected JSON but got HTTP %d "
                                                "with Content-Type %s", (int)req->status,
                                                push_excerpt(L, req, req->content_type,
                                                             strlen(req->content_type), 100)));
  if (req->response.len == 0)
    return invalid_body(L, req, lua_pushfstring(L, "HTTP %d with an empty body",
                                                (int)req->status));
  if (!kw_json_decode(L, codec_index, req->response.data, req->response.len))
    return invalid_body(L, req, lua_pushfstring(L, "the body is not valid JSON (%s)",
                                                lua_tostring(L, -1)));
  if (lua_type(L, -1) != LUA_TTABLE)
    return invalid_body(L, req, "the body is not a JSON object");
  result = lua_gettop(L);
  /* Before Lua 5.3 only JSON null needs replacing, and a body without "null" has none. */
  if (LUA_VERSION_NUM >= 503 || contains_bytes(req->response.data, req->response.len, "null", 4))
    kw_json_normalise(L, codec_index, result);

  if (req->endpoint->result == KW_RESULT_JOB && !normalise_job(L, req, result))
    return invalid_body(L, req, "the job record has no dockStatusId, dock-statusId or _id");
  if (req->endpoint->result == KW_RESULT_OBJECT)
    normalise_job(L, req, result);
  normalise_download_url(L, result);
  if (req->endpoint->result == KW_RESULT_SESSION) {
    lua_getfield(L, result, "sessionId");
    if (lua_type(L, -1) != LUA_TSTRING)
      return invalid_body(L, req, "the upload session has no string sessionId");
    lua_pop(L, 1);
  }
  if (req->endpoint->result == KW_RESULT_FILE) {
    lua_getfield(L, result, "fileId");
    if (lua_type(L, -1) != LUA_TSTRING)
      return invalid_body(L, req, "the upload result has no string fileId");
    lua_pop(L, 1);
  }
  lua_settop(L, result);
  return 1;
}
