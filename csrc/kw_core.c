/*
 * The kore_workflow.core module: client handles, the API calls bound to them,
 * and the clock and sleep that the Lua layer's waiter uses by default.
 */
#include <errno.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#include "kw.h"


#define KW_KEY_HEADER "x-api-key: "

kw_client *kw_client_check(lua_State *L, int index)
{
  kw_client *client = luaL_checkudata(L, index, KW_CLIENT_MT);

  if (client->easy == NULL)
    luaL_error(L, "kore_workflow: the client is closed");
  return client;
}

const char *kw_client_key(const kw_client *client)
{
  if (client->api_key_header == NULL)
    return NULL;
  return client->api_key_header + client->api_key_offset;
}

static void wipe(char *s)
{
  volatile char *p = s;

  if (s == NULL)
    return;
  while (*p != '\0')
    *p++ = '\0';
}

static void client_release(lua_State *L, kw_client *client)
{
  struct curl_slist *line;

  kw_multi_release_client(client);
  if (client->easy != NULL)
    curl_easy_cleanup(client->easy);
  client->easy = NULL;
  curl_url_cleanup(client->url);
  client->url = NULL;
  wipe(client->api_key_header);
  free(client->api_key_header);
  for (line = client->plain_headers; line != NULL; line = line->next)
    wipe(line->data);
  curl_slist_free_all(client->plain_headers);
  client->plain_headers = NULL;
  free(client->base_url);
  free(client->ca_file);
  free(client->user_agent);
  free(client->proxy);
  free(client->no_proxy);
  client->api_key_header = client->base_url = client->ca_file = NULL;
  client->user_agent = client->proxy = client->no_proxy = NULL;
  if (client->codec_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, client->codec_ref);
    client->codec_ref = LUA_NOREF;
  }
  if (client->spare_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, client->spare_ref);
    client->spare_ref = LUA_NOREF;
  }
  if (client->logger_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, client->logger_ref);
    client->logger_ref = LUA_NOREF;
  }
}

static int client_gc(lua_State *L)
{
  kw_client *client = luaL_checkudata(L, 1, KW_CLIENT_MT);

  client_release(L, client);
  return 0;
}

static int client_tostring(lua_State *L)
{
  kw_client *client = luaL_checkudata(L, 1, KW_CLIENT_MT);

  if (client->base_url == NULL)
    lua_pushliteral(L, "kore_workflow.client (closed)");
  else
    lua_pushfstring(L, "kore_workflow.client (%s)", client->base_url);
  return 1;
}

static int client_close(lua_State *L)
{
  kw_client *client = luaL_checkudata(L, 1, KW_CLIENT_MT);

  client_release(L, client);
  return 0;
}

static char *copy_string(lua_State *L, const char *s, size_t n)
{
  char *copy = malloc(n + 1);

  if (copy == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  memcpy(copy, s, n);
  copy[n] = '\0';
  return copy;
}

/*
 * Checks host and stores scheme://host[:port] without a trailing slash. Only
 * http and https are accepted, and a host must carry no user name, password,
 * path, query or fragment, so that every call goes to exactly one origin.
 */
static void set_base_url(lua_State *L, kw_client *client, const char *host)
{
  CURLU *url = curl_url();
  char *part = NULL;
  char *full = NULL;
  int bad = 0;
  size_t n;

  if (url == NULL)
    luaL_error(L, "kore_workflow: out of memory");
  if (curl_url_set(url, CURLUPART_URL, host, 0) != CURLUE_OK) {
    curl_url_cleanup(url);
    kw_argerror(L, 1, "kore_workflow.client", "host",
                "'%s' is not a URL; pass the environment's base URL such as "
                "https://ai-for-process.example.ai", host);
  }
  if (curl_url_get(url, CURLUPART_SCHEME, &part, 0) != CURLUE_OK ||
      (strcmp(part, "http") != 0 && strcmp(part, "https") != 0))
    bad = 1;
  curl_free(part);
  part = NULL;
  if (curl_url_get(url, CURLUPART_USER, &part, 0) == CURLUE_OK)
    bad = 2;
  curl_free(part);
  part = NULL;
  if (curl_url_get(url, CURLUPART_QUERY, &part, 0) == CURLUE_OK)
    bad = 3;
  curl_free(part);
  part = NULL;
  if (curl_url_get(url, CURLUPART_FRAGMENT, &part, 0) == CURLUE_OK)
    bad = 3;
  curl_free(part);
  part = NULL;
  if (curl_url_get(url, CURLUPART_PATH, &part, 0) == CURLUE_OK &&
      strcmp(part, "/") != 0 && strcmp(part, "") != 0)
    bad = 3;
  curl_free(part);
  if (bad == 0) {
    curl_url_set(url, CURLUPART_PATH, "/", 0);
    if (curl_url_get(url, CURLUPART_URL, &full, 0) != CURLUE_OK)
      bad = 4;
  }
  curl_url_cleanup(url);
  if (bad != 0) {
    curl_free(full);
    kw_argerror(L, 1, "kore_workflow.client", "host", "%s",
                bad == 1 ? "the URL must start with https:// or http://"
                : bad == 2 ? "the URL must not carry a user name or password"
                : bad == 3 ? "the URL must be the bare origin, such as "
                             "https://ai-for-process.example.ai, with no path or query"
                           : "the URL cannot be parsed");
  }
  n = strlen(full);
  while (n > 0 && full[n - 1] == '/')
    n--;
  lua_pushlstring(L, full, n);
  curl_free(full);
  client->base_url = copy_string(L, lua_tostring(L, -1), n);
  lua_pop(L, 1);
}

/*
 * Stores the header line for the key. Surrounding white space (a key read
 * from a file ends in a newline) is trimmed; an empty key, or one holding a
 * control character such as CR or LF that could inject a header, is rejected.
 * Messages never include the key itself.
 */
static void set_api_key(lua_State *L, kw_client *client, int opts)
{
  size_t len, start = 0, end, i;
  const char *key;
  luaL_Buffer b;

  lua_getfield(L, opts, "api_key");
  if (lua_type(L, -1) != LUA_TSTRING)
    kw_argerror(L, 1, "kore_workflow.client", "api_key",
                "string expected, got %s; set KORE_API_KEY or pass api_key",
                luaL_typename(L, -1));
  key = lua_tolstring(L, -1, &len);
  end = len;
  while (start < end && strchr(" \t\r\n", key[start]) != NULL && key[start] != '\0')
    start++;
  while (end > start && strchr(" \t\r\n", key[end - 1]) != NULL && key[end - 1] != '\0')
    end--;
  if (start == end)
    kw_argerror(L, 1, "kore_workflow.client", "api_key", "the key is empty");
  for (i = start; i < end; i++) {
    unsigned char c = (unsigned char)key[i];

    if (c < 0x20 || c == 0x7f)
      kw_argerror(L, 1, "kore_workflow.client", "api_key",
                  "the key contains a control character (such as CR or LF) at "
                  "byte %d; copy the key again as a single line", (int)(i + 1));
  }
  luaL_buffinit(L, &b);
  luaL_addstring(&b, KW_KEY_HEADER);
  luaL_addlstring(&b, key + start, end - start);
  luaL_pushresult(&b);
  client->api_key_header = copy_string(L, lua_tostring(L, -1), kw_rawlen(L, -1));
  client->api_key_offset = strlen(KW_KEY_HEADER);
  lua_pop(L, 2);
}

static long client_option_ms(lua_State *L, int opts, const char *name, long fallback)
{
  lua_Number seconds;

  lua_getfield(L, opts, name);
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return fallback;
  }
  seconds = lua_tonumber(L, -1);
  if (lua_type(L, -1) != LUA_TNUMBER || !(seconds > 0) || seconds > 86400.0 * 365)
    kw_argerror(L, 1, "kore_workflow.client", name, "a finite number of seconds above 0 expected");
  lua_pop(L, 1);
  return seconds < 0.001 ? 1 : (long)ceil(seconds * 1000.0);
}

/* Returns the value of the first variable in names that is set and not empty, or NULL. */
static const char *first_env(const char *const *names)
{
  for (; *names != NULL; names++) {
    const char *value = getenv(*names);

    if (value != NULL && value[0] != '\0')
      return value;
  }
  return NULL;
}

/*
 * Reads the proxy settings for the base URL from the environment once, as
 * libcurl would on every transfer: http_proxy (lower case only) for http,
 * https_proxy or HTTPS_PROXY for https, else all_proxy or ALL_PROXY, and
 * no_proxy or NO_PROXY. Calls then pass them as options, and libcurl skips
 * its own look-ups.
 */
static void set_proxy(lua_State *L, kw_client *client)
{
  static const char *const http_names[] = { "http_proxy", "all_proxy", "ALL_PROXY", NULL };
  static const char *const https_names[] = {
    "https_proxy", "HTTPS_PROXY", "all_proxy", "ALL_PROXY", NULL
  };
  static const char *const no_proxy_names[] = { "no_proxy", "NO_PROXY", NULL };
  int https = strncmp(client->base_url, "https:", 6) == 0;
  const char *proxy = first_env(https ? https_names : http_names);
  const char *no_proxy = first_env(no_proxy_names);

  if (proxy == NULL)
    proxy = "";
  if (no_proxy == NULL)
    no_proxy = "";
  client->proxy = copy_string(L, proxy, strlen(proxy));
  client->no_proxy = copy_string(L, no_proxy, strlen(no_proxy));
}

static void set_ca_file(lua_State *L, kw_client *client, int opts)
{
  const char *path;
  FILE *probe;

  lua_getfield(L, opts, "ca_file");
  if (lua_isnil(L, -1)) {
    lua_pop(L, 1);
    return;
  }
  if (lua_type(L, -1) != LUA_TSTRING || kw_rawlen(L, -1) == 0)
    kw_argerror(L, 1, "kore_workflow.client", "ca_file", "non-empty string expected, got %s",
                luaL_typename(L, -1));
  path = lua_tostring(L, -1);
  probe = fopen(path, "rb");
  if (probe == NULL)
    kw_argerror(L, 1, "kore_workflow.client", "ca_file",
                "cannot read '%s' (%s); pass the path of a PEM file holding the CA "
                "certificate that signed the server's certificate", path, strerror(errno));
  fclose(probe);
  client->ca_file = copy_string(L, path, kw_rawlen(L, -1));
  lua_pop(L, 1);
}

static void set_user_agent(lua_State *L, kw_client *client)
{
  const curl_version_info_data *info = curl_version_info(CURLVERSION_NOW);

  lua_pushfstring(L, "User-Agent: kore_workflow/%s libcurl/%s %s", KW_VERSION, info->version,
                  kw_lua_version(L));
  client->user_agent = copy_string(L, lua_tostring(L, -1), kw_rawlen(L, -1));
  lua_pop(L, 1);
}

/*
 * Builds the header list of calls without a body (key, User-Agent, Accept),
 * which every such call shares instead of building its own.
 */
static void set_plain_headers(lua_State *L, kw_client *client)
{
  const char *lines[3];
  struct curl_slist *list = NULL;
  int i;

  lines[0] = client->api_key_header;
  lines[1] = client->user_agent;
  lines[2] = "Accept: application/json";
  for (i = 0; i < 3; i++) {
    struct curl_slist *longer = curl_slist_append(list, lines[i]);

    if (longer == NULL) {
      curl_slist_free_all(list);
      luaL_error(L, "kore_workflow: out of memory");
    }
    list = longer;
  }
  client->plain_headers = list;
}

static int boolean_option(lua_State *L, int opts, const char *name)
{
  int value;

  lua_getfield(L, opts, name);
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TBOOLEAN)
    kw_argerror(L, 1, "kore_workflow.client", name, "boolean expected, got %s",
                luaL_typename(L, -1));
  value = lua_toboolean(L, -1);
  lua_pop(L, 1);
  return value;
}

/* Reads logger, verbose and insecure; an insecure client always logs a warning. */
static void set_logging(lua_State *L, kw_client *client, int opts)
{
  lua_getfield(L, opts, "logger");
  if (!lua_isnil(L, -1) && lua_type(L, -1) != LUA_TFUNCTION)
    kw_argerror(L, 1, "kore_workflow.client", "logger", "function expected, got %s",
                luaL_typename(L, -1));
  if (lua_isnil(L, -1))
    lua_pop(L, 1);
  else
    client->logger_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  client->verbose = boolean_option(L, opts, "verbose");
  client->insecure = boolean_option(L, opts, "insecure");
  if (client->insecure) {
    lua_pushfstring(L, "kore_workflow: WARNING: TLS certificate verification is off for %s "
                    "(insecure = true); anyone on the network path can read the API key. "
                    "Pass ca_file instead", client->base_url);
    kw_log_warning(L, client, lua_tostring(L, -1));
    lua_pop(L, 1);
  }
}

static void check_codec(lua_State *L, int codec)
{
  luaL_checktype(L, codec, LUA_TTABLE);
  lua_getfield(L, codec, "encode");
  lua_getfield(L, codec, "decode");
  if (lua_type(L, -1) != LUA_TFUNCTION || lua_type(L, -2) != LUA_TFUNCTION)
    kw_argerror(L, codec, "new_client", "codec",
                "a table with encode and decode functions expected");
  lua_pop(L, 2);
}

static void check_option_names(lua_State *L, int opts)
{
  static const char *const names[] = {
    "host", "api_key", "ca_file", "connect_timeout", "timeout", "stall_timeout",
    "max_response", "logger", "verbose", "insecure", NULL
  };

  lua_pushnil(L);
  while (lua_next(L, opts) != 0) {
    int i;
    int known = 0;

    lua_pop(L, 1);
    for (i = 0; names[i] != NULL && lua_type(L, -1) == LUA_TSTRING; i++)
      known = known || strcmp(names[i], lua_tostring(L, -1)) == 0;
    if (!known)
      kw_argerror(L, 1, "kore_workflow.client", "options",
                  "unknown option '%s'; the options are host, api_key, ca_file, "
                  "connect_timeout, timeout, stall_timeout, max_response, logger, verbose "
                  "and insecure", lua_type(L, -1) == LUA_TSTRING ? lua_tostring(L, -1)
                                                                 : luaL_typename(L, -1));
  }
}

/* core.new_client(options, codec): returns a client handle. */
static int core_new_client(lua_State *L)
{
  kw_client *client;

  luaL_checktype(L, 1, LUA_TTABLE);
  check_codec(L, 2);
  lua_settop(L, 2);
  check_option_names(L, 1);

  client = lua_newuserdata(L, sizeof(*client));
  memset(client, 0, sizeof(*client));
  client->codec_ref = LUA_NOREF;
  client->logger_ref = LUA_NOREF;
  client->spare_ref = LUA_NOREF;
  kw_setmetatable(L, KW_CLIENT_MT);
  lua_pushboolean(L, 0);
  client->spare_ref = luaL_ref(L, LUA_REGISTRYINDEX);

  lua_getfield(L, 1, "host");
  if (lua_type(L, -1) != LUA_TSTRING)
    kw_argerror(L, 1, "kore_workflow.client", "host", "string expected, got %s; set KORE_HOST or pass host",
                luaL_typename(L, -1));
  set_base_url(L, client, lua_tostring(L, -1));
  lua_pop(L, 1);
  set_api_key(L, client, 1);
  set_ca_file(L, client, 1);
  set_proxy(L, client);
  client->connect_timeout_ms = client_option_ms(L, 1, "connect_timeout",
                                                KW_DEFAULT_CONNECT_TIMEOUT_MS);
  client->timeout_ms = client_option_ms(L, 1, "timeout", KW_DEFAULT_TIMEOUT_MS);
  client->stall_timeout_ms = client_option_ms(L, 1, "stall_timeout",
                                              KW_DEFAULT_STALL_TIMEOUT_MS);
  client->max_response = KW_DEFAULT_MAX_RESPONSE;
  lua_getfield(L, 1, "max_response");
  if (!lua_isnil(L, -1)) {
    lua_Number n = lua_tonumber(L, -1);

    if (lua_type(L, -1) != LUA_TNUMBER || !(n >= 1) || n > 1e12)
      kw_argerror(L, 1, "kore_workflow.client", "max_response", "a number of bytes above 0 expected");
    client->max_response = (size_t)n;
  }
  lua_pop(L, 1);
  set_user_agent(L, client);
  set_plain_headers(L, client);
  set_logging(L, client, 1);

  lua_pushvalue(L, 2);
  client->codec_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  client->easy = curl_easy_init();
  if (client->easy == NULL)
    return luaL_error(L, "kore_workflow: libcurl could not create a handle");
  client->url = curl_url();
  if (client->url == NULL ||
      curl_url_set(client->url, CURLUPART_URL, client->base_url, 0) != CURLUE_OK)
    return luaL_error(L, "kore_workflow: libcurl could not parse the base URL %s",
                      client->base_url);
  return 1;
}

/* Number of Lua arguments the endpoint takes, the options table included. */
static int endpoint_arity(const kw_endpoint *ep)
{
  if (ep->body == KW_BODY_DOWNLOAD || ep->body == KW_BODY_DATA)
    return 3;
  return (ep->path_suffix != NULL) + (ep->body != KW_BODY_NONE || ep->fields != NULL) + 1;
}

/* The function behind every bound API call; upvalues: client handle, endpoint. */
static int endpoint_call(lua_State *L)
{
  const kw_endpoint *ep = lua_touserdata(L, lua_upvalueindex(2));
  int client_index;
  int request_index;
  int codec_index;
  int pushed;
  kw_request *req;

  lua_settop(L, endpoint_arity(ep));
  lua_pushvalue(L, lua_upvalueindex(1));
  client_index = lua_gettop(L);
  req = kw_request_acquire(L, client_index, ep);
  request_index = lua_gettop(L);
  pushed = kw_request_prepare(L, req, 1);
  if (pushed != 0) {
    kw_request_recycle(L, req, request_index);
    return pushed;
  }

  kw_request_perform(req);
  kw_log_flush(L, req);
  kw_json_push_codec(L, req->client);
  codec_index = lua_gettop(L);
  pushed = kw_request_push_result(L, req, codec_index);
  kw_request_recycle(L, req, request_index);
  return pushed;
}

/*
 * The function behind every bound "start" call: builds the request and adds
 * it to the client's multi handle without waiting. Returns the request, or
 * nil and an error for a local failure such as an unreadable file.
 */
static int endpoint_start(lua_State *L)
{
  const kw_endpoint *ep = lua_touserdata(L, lua_upvalueindex(2));
  int client_index;
  int request_index;
  int pushed;
  kw_request *req;

  lua_settop(L, endpoint_arity(ep));
  lua_pushvalue(L, lua_upvalueindex(1));
  client_index = lua_gettop(L);
  req = kw_request_new(L, client_index, ep);
  request_index = lua_gettop(L);
  pushed = kw_request_prepare(L, req, 1);
  if (pushed != 0)
    return pushed;
  kw_multi_start(L, req, client_index);
  lua_pushvalue(L, request_index);
  return 1;
}

/* Adds a table of every endpoint, bound to the client at index 1, to the table on top. */
static void bind_endpoints(lua_State *L, lua_CFunction call)
{
  const kw_endpoint *ep;

  for (ep = kw_endpoints; ep->ns != NULL; ep++) {
    lua_getfield(L, -1, ep->ns);
    if (lua_isnil(L, -1)) {
      lua_pop(L, 1);
      lua_newtable(L);
      lua_pushvalue(L, -1);
      lua_setfield(L, -3, ep->ns);
    }
    lua_pushvalue(L, 1);
    lua_pushlightuserdata(L, (void *)ep);
    lua_pushcclosure(L, call, 2);
    lua_setfield(L, -2, ep->name);
    lua_pop(L, 1);
  }
}

/*
 * core.bind(client): returns { workflow = { import, status }, files = { upload },
 * start = { workflow = {...}, files = {...} } }, where the start functions
 * return stepped requests instead of waiting.
 */
static int core_bind(lua_State *L)
{
  kw_client_check(L, 1);
  lua_newtable(L);
  bind_endpoints(L, endpoint_call);
  lua_newtable(L);
  bind_endpoints(L, endpoint_start);
  lua_setfield(L, -2, "start");
  return 1;
}

/* core.monotonic(): seconds from an arbitrary start, never going back. */
static int core_monotonic(lua_State *L)
{
  struct timespec now;

  clock_gettime(CLOCK_MONOTONIC, &now);
  lua_pushnumber(L, (lua_Number)now.tv_sec + (lua_Number)now.tv_nsec / 1e9);
  return 1;
}

static void sleep_seconds(lua_Number seconds)
{
  struct timespec left;

  left.tv_sec = (time_t)seconds;
  left.tv_nsec = (long)((seconds - (lua_Number)left.tv_sec) * 1e9);
  while (nanosleep(&left, &left) != 0 && errno == EINTR)
    ;
}

/* core.sleep(seconds): blocks the calling thread; resumes after signals. */
static int core_sleep(lua_State *L)
{
  lua_Number seconds = luaL_checknumber(L, 1);

  if (!(seconds >= 0) || seconds > 86400.0 * 365)
    return kw_argerror(L, 1, "sleep", "seconds", "a finite number of seconds of 0 or more expected");
  sleep_seconds(seconds);
  return 0;
}

/*
 * core.poll(client, seconds): blocks for up to seconds until a socket of the
 * client's stepped requests is ready, and returns true if one is, or false
 * when the time ran out or a libcurl timer is due. With no stepped request
 * in flight it sleeps for the whole time and returns false.
 */
static int core_poll(lua_State *L)
{
  kw_client *client = kw_client_check(L, 1);
  lua_Number seconds = luaL_checknumber(L, 2);
  int ready = 0;
  CURLMcode code;

  if (!(seconds >= 0) || seconds > 86400.0)
    return kw_argerror(L, 2, "poll", "seconds", "a finite number of seconds from 0 to 86400 expected");
  if (client->multi == NULL || client->in_flight == NULL) {
    sleep_seconds(seconds);
    lua_pushboolean(L, 0);
    return 1;
  }
  code = curl_multi_poll(client->multi, NULL, 0, (int)ceil(seconds * 1000.0), &ready);
  if (code != CURLM_OK)
    return luaL_error(L, "kore_workflow: waiting for the client's requests failed: %s",
                      curl_multi_strerror(code));
  lua_pushboolean(L, ready > 0);
  return 1;
}

/*
 * core.random(): a number in [0, 1) for retry jitter. It is seeded per
 * process from the clock and the process id, so clients started together
 * draw different delays, and it leaves math.random's state alone.
 */
static int core_random(lua_State *L)
{
  static unsigned long long state = 0;

  if (state == 0) {
    struct timespec now;

    clock_gettime(CLOCK_REALTIME, &now);
    state = ((unsigned long long)now.tv_nsec << 20) ^ (unsigned long long)now.tv_sec ^
            ((unsigned long long)getpid() << 40) ^ 0x9e3779b97f4a7c15ULL;
  }
  state ^= state >> 12;
  state ^= state << 25;
  state ^= state >> 27;
  lua_pushnumber(L, (lua_Number)((state * 0x2545f4914f6cdd1dULL) >> 11) / 9007199254740992.0);
  return 1;
}

/* core.isatty(fd): true when the descriptor is a terminal, for progress display. */
static int core_isatty(lua_State *L)
{
  lua_pushboolean(L, isatty((int)luaL_checkinteger(L, 1)));
  return 1;
}

static int core_new_error(lua_State *L)
{
  return kw_error_new_lua(L);
}

static void register_client(lua_State *L)
{
  static const luaL_Reg methods[] = {
    { "close", client_close },
    { NULL, NULL }
  };

  if (luaL_newmetatable(L, KW_CLIENT_MT)) {
    lua_pushcfunction(L, client_gc);
    lua_setfield(L, -2, "__gc");
    lua_pushcfunction(L, client_tostring);
    lua_setfield(L, -2, "__tostring");
    kw_newlib(L, methods);
    lua_setfield(L, -2, "__index");
  }
  lua_pop(L, 1);
}

__attribute__((visibility("default")))
int luaopen_kore_workflow_core(lua_State *L)
{
  static const luaL_Reg functions[] = {
    { "new_client", core_new_client },
    { "bind", core_bind },
    { "new_error", core_new_error },
    { "monotonic", core_monotonic },
    { "sleep", core_sleep },
    { "poll", core_poll },
    { "isatty", core_isatty },
    { "random", core_random },
    { "zip_read", kw_zip_read },
    { NULL, NULL }
  };
  static int curl_ready = 0;

  if (!curl_ready) {
    if (curl_global_init(CURL_GLOBAL_DEFAULT) != CURLE_OK)
      return luaL_error(L, "kore_workflow: libcurl failed to initialise");
    curl_ready = 1;
  }
  register_client(L);
  kw_request_register(L);
  kw_multi_register(L);
  kw_error_register(L);

  kw_newlib(L, functions);
  lua_pushliteral(L, KW_VERSION);
  lua_setfield(L, -2, "_VERSION");
  lua_pushstring(L, curl_version_info(CURLVERSION_NOW)->version);
  lua_setfield(L, -2, "curl_version");
  lua_pushstring(L, kw_lua_version(L));
  lua_setfield(L, -2, "lua_version");
  return 1;
}
