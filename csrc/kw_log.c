/*
 * The verbose log of a transfer and the client's warnings.
 *
 * libcurl's debug callback only copies request and response header lines
 * into the request's log buffer; it never touches the Lua state. After the
 * transfer, kw_log_flush redacts each line and hands it to the client's Lua
 * logger under lua_pcall. Redaction replaces the API key and the value of
 * the x-api-key header with ***, and drops the query string of every URL,
 * because signed file URLs carry their signature there.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>

#include "kw.h"

#define KW_LOG_LIMIT (64 * 1024)
#define KW_LOG_BODY_EXCERPT 1024

static void append_lines(kw_buf *log, const char *prefix, const char *data, size_t size)
{
  size_t start = 0;
  size_t i;

  for (i = 0; i <= size; i++) {
    if (i == size || data[i] == '\n') {
      size_t end = i;

      if (end > start && data[end - 1] == '\r')
        end--;
      if (end > start || (i < size && start < i)) {
        kw_buf_append(log, prefix, strlen(prefix));
        kw_buf_append(log, data + start, end - start);
        kw_buf_append(log, "\n", 1);
      }
      start = i + 1;
    }
  }
}

/* CURLOPT_DEBUGFUNCTION: copies header and informational lines into the log. */
int kw_log_on_debug(CURL *easy, curl_infotype type, char *data, size_t size, void *userdata)
{
  kw_request *req = userdata;

  (void)easy;
  switch (type) {
  case CURLINFO_TEXT:
    append_lines(&req->log, "* ", data, size);
    break;
  case CURLINFO_HEADER_OUT:
    append_lines(&req->log, "> ", data, size);
    break;
  case CURLINFO_HEADER_IN:
    append_lines(&req->log, "< ", data, size);
    break;
  default:
    break;
  }
  return 0;
}

static int url_end(char c)
{
  return c == '\0' || c == ' ' || c == '\t' || c == '"' || c == '\'' || c == '<' ||
         c == '>' || c == '\\';
}

/*
 * Appends line to b with the query string of every URL removed. A URL starts
 * at "://" or at a path after a space (as in "GET /path?query HTTP/1.1") and
 * ends at white space, a quote or an angle bracket.
 */
static void add_without_queries(luaL_Buffer *b, const char *line, size_t len)
{
  size_t i = 0;
  int in_url = 0;

  while (i < len) {
    char c = line[i];

    if (!in_url && ((c == ':' && i + 2 < len && line[i + 1] == '/' && line[i + 2] == '/') ||
                    (c == '/' && i > 0 && line[i - 1] == ' ')))
      in_url = 1;
    else if (in_url && url_end(c))
      in_url = 0;
    if (in_url && c == '?') {
      while (i < len && !url_end(line[i]))
        i++;
      in_url = 0;
      continue;
    }
    luaL_addchar(b, c);
    i++;
  }
}

/* Pushes the redacted form of one log line. */
static void push_redacted_line(lua_State *L, const kw_client *client, const char *line,
                               size_t len)
{
  static const char header[] = "x-api-key:";
  size_t header_len = sizeof(header) - 1;
  luaL_Buffer b;
  size_t n;
  const char *text;

  luaL_buffinit(L, &b);
  if (len >= 2 + header_len && strncasecmp(line + 2, header, header_len) == 0) {
    luaL_addlstring(&b, line, 2 + header_len);
    luaL_addstring(&b, " ***");
  } else {
    add_without_queries(&b, line, len);
  }
  luaL_pushresult(&b);
  text = lua_tolstring(L, -1, &n);
  kw_redact(L, client, text, n);
  lua_remove(L, -2);
}

static void call_logger(lua_State *L, const kw_client *client, int line_index,
                        const char *level)
{
  line_index = kw_absindex(L, line_index);
  lua_rawgeti(L, LUA_REGISTRYINDEX, client->logger_ref);
  lua_pushvalue(L, line_index);
  lua_pushstring(L, level);
  /* A failing logger must not turn a finished call into an error. */
  if (lua_pcall(L, 2, 0, 0) != 0)
    lua_pop(L, 1);
}

/* Hands the request's log lines, then an excerpt of the response body, to the logger. */
void kw_log_flush(lua_State *L, kw_request *req)
{
  const kw_client *client = req->client;
  const char *data = req->log.data;
  size_t len = req->log.len;
  size_t start = 0;
  size_t i;

  if (client->logger_ref == LUA_NOREF || !client->verbose)
    return;
  for (i = 0; i < len; i++) {
    if (data[i] != '\n')
      continue;
    push_redacted_line(L, client, data + start, i - start);
    call_logger(L, client, -1, "debug");
    lua_pop(L, 1);
    start = i + 1;
  }
  if (req->log.overflowed) {
    lua_pushliteral(L, "* (log cut off at 64 KiB)");
    call_logger(L, client, -1, "debug");
    lua_pop(L, 1);
  }
  if (req->response.len > 0) {
    luaL_Buffer b;
    const char *text;
    size_t n;

    luaL_buffinit(L, &b);
    luaL_addstring(&b, "< ");
    kw_sanitise(&b, req->response.data, req->response.len, KW_LOG_BODY_EXCERPT);
    luaL_pushresult(&b);
    text = lua_tolstring(L, -1, &n);
    push_redacted_line(L, client, text, n);
    call_logger(L, client, -1, "debug");
    lua_pop(L, 2);
  }
}

/* Logs a warning through the client's logger, or on stderr when it has none. */
void kw_log_warning(lua_State *L, const kw_client *client, const char *message)
{
  if (client->logger_ref == LUA_NOREF) {
    fprintf(stderr, "%s\n", message);
    fflush(stderr);
    return;
  }
  lua_pushstring(L, message);
  call_logger(L, client, -1, "warning");
  lua_pop(L, 1);
}

void kw_log_init(kw_request *req)
{
  kw_buf_init(&req->log, req->client->verbose ? KW_LOG_LIMIT : 0);
}
