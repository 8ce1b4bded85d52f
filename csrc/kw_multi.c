/*
 * Stepped requests on the client's curl multi handle.
 *
 * A stepped request has its own easy handle, added to the client's multi
 * handle, so several requests can be in flight on one client and share the
 * multi handle's connections. req:step() runs curl_multi_perform once, which
 * never waits on the network, and collects every transfer that finished;
 * req:result() then returns the same result, or nil and error, as the
 * blocking call. Host adapters call step between their own sleeps.
 */
#include <string.h>

#include "kw.h"

#define KW_DEFAULT_STEP_MS 10L

static void unlink_request(kw_client *client, kw_request *req)
{
  kw_request **link = &client->in_flight;

  while (*link != NULL && *link != req)
    link = &(*link)->next;
  if (*link == req)
    *link = req->next;
  req->next = NULL;
}

/* Removes the request's handle from the multi handle and frees it. */
void kw_multi_detach(kw_request *req)
{
  kw_client *client = req->client;

  if (req->own_easy == NULL)
    return;
  if (req->state == KW_REQUEST_RUNNING) {
    if (client->multi != NULL)
      curl_multi_remove_handle(client->multi, req->own_easy);
    unlink_request(client, req);
  }
  curl_easy_cleanup(req->own_easy);
  req->own_easy = NULL;
}

/* Detaches every request still in flight, then frees the multi handle. */
void kw_multi_release_client(kw_client *client)
{
  while (client->in_flight != NULL) {
    kw_request *req = client->in_flight;

    kw_multi_detach(req);
    req->state = KW_REQUEST_SPENT;
  }
  if (client->multi != NULL)
    curl_multi_cleanup(client->multi);
  client->multi = NULL;
}

/*
 * Adds the built request at the top of the stack to the client's multi
 * handle. Returns 1 with the request on the stack.
 */
int kw_multi_start(lua_State *L, kw_request *req, int client_index)
{
  kw_client *client = req->client;
  CURLMcode code;

  if (client->multi == NULL) {
    client->multi = curl_multi_init();
    if (client->multi == NULL)
      return luaL_error(L, "kore_workflow: libcurl could not create a multi handle");
  }
  req->own_easy = curl_easy_init();
  if (req->own_easy == NULL)
    return luaL_error(L, "kore_workflow: libcurl could not create a handle");
  kw_request_setup_easy(req, req->own_easy);
  curl_easy_setopt(req->own_easy, CURLOPT_PRIVATE, (void *)req);
  code = curl_multi_add_handle(client->multi, req->own_easy);
  if (code != CURLM_OK)
    return luaL_error(L, "kore_workflow: cannot start the request (%s)",
                      curl_multi_strerror(code));
  req->state = KW_REQUEST_RUNNING;
  req->next = client->in_flight;
  client->in_flight = req;
  lua_pushvalue(L, client_index);
  req->client_ref = luaL_ref(L, LUA_REGISTRYINDEX);
  return 1;
}

/* Runs the multi handle once and marks every transfer that has finished. */
static CURLMcode multi_step(kw_client *client)
{
  CURLMsg *message;
  int running = 0;
  int left = 0;
  CURLMcode code = curl_multi_perform(client->multi, &running);

  while ((message = curl_multi_info_read(client->multi, &left)) != NULL) {
    kw_request *done = NULL;

    if (message->msg != CURLMSG_DONE)
      continue;
    curl_easy_getinfo(message->easy_handle, CURLINFO_PRIVATE, (char **)&done);
    if (done == NULL)
      continue;
    kw_request_collect(done, done->own_easy, message->data.result);
    curl_multi_remove_handle(client->multi, done->own_easy);
    unlink_request(client, done);
    done->state = KW_REQUEST_DONE;
  }
  return code;
}

static kw_request *check_request(lua_State *L)
{
  return luaL_checkudata(L, 1, KW_REQUEST_MT);
}

/* req:step(): advances every transfer of the client; returns true when this one is done. */
static int request_step(lua_State *L)
{
  kw_request *req = check_request(L);
  CURLMcode code;

  if (req->state == KW_REQUEST_RUNNING) {
    if (req->client->multi == NULL)
      return luaL_error(L, "kore_workflow: the client of this request is closed");
    code = multi_step(req->client);
    if (code != CURLM_OK)
      return luaL_error(L, "kore_workflow: libcurl failed to step requests (%s)",
                        curl_multi_strerror(code));
  }
  lua_pushboolean(L, req->state == KW_REQUEST_DONE || req->state == KW_REQUEST_SPENT);
  return 1;
}

/* req:next_step(): seconds until a step is worth making, from libcurl's timers. */
static int request_next_step(lua_State *L)
{
  kw_request *req = check_request(L);
  long ms = KW_DEFAULT_STEP_MS;

  if (req->state == KW_REQUEST_RUNNING && req->client->multi != NULL) {
    curl_multi_timeout(req->client->multi, &ms);
    if (ms < 0 || ms > KW_DEFAULT_STEP_MS)
      ms = KW_DEFAULT_STEP_MS;
  } else {
    ms = 0;
  }
  lua_pushnumber(L, (lua_Number)ms / 1000.0);
  return 1;
}

/* req:result(): the call's result once step returned true; a request gives it once. */
static int request_result(lua_State *L)
{
  kw_request *req = check_request(L);
  int codec_index;
  int pushed;

  if (req->state == KW_REQUEST_BUILT || req->state == KW_REQUEST_RUNNING)
    return luaL_error(L, "kore_workflow: the request has not finished; call step() "
                      "until it returns true");
  if (req->state == KW_REQUEST_SPENT || !req->performed)
    return luaL_error(L, "kore_workflow: the request's result was already taken or "
                      "its client was closed");
  kw_log_flush(L, req);
  kw_json_push_codec(L, req->client);
  codec_index = lua_gettop(L);
  pushed = kw_request_push_result(L, req, codec_index);
  req->state = KW_REQUEST_SPENT;
  kw_multi_detach(req);
  if (req->client_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, req->client_ref);
    req->client_ref = LUA_NOREF;
  }
  return pushed;
}

/* req:cancel(): stops the transfer; the request gives no result. */
static int request_cancel(lua_State *L)
{
  kw_request *req = check_request(L);

  kw_multi_detach(req);
  req->state = KW_REQUEST_SPENT;
  if (req->client_ref != LUA_NOREF) {
    luaL_unref(L, LUA_REGISTRYINDEX, req->client_ref);
    req->client_ref = LUA_NOREF;
  }
  return 0;
}

void kw_multi_register(lua_State *L)
{
  static const luaL_Reg methods[] = {
    { "step", request_step },
    { "next_step", request_next_step },
    { "result", request_result },
    { "cancel", request_cancel },
    { NULL, NULL }
  };

  luaL_getmetatable(L, KW_REQUEST_MT);
  kw_newlib(L, methods);
  lua_setfield(L, -2, "__index");
  lua_pop(L, 1);
}
