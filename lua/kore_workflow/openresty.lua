--- kore_workflow.openresty: the non-blocking client for nginx's lua module
-- (OpenResty, or nginx with lua-nginx-module and LuaJIT).
--
-- Between steps of a transfer, the client suspends the request's coroutine
-- in ngx.sleep, so the nginx worker serves other requests while an import
-- runs. Only ngx.sleep, called from Lua, suspends the coroutine: no C
-- function of kore_workflow ever yields.
--
--   local kwr = require("kore_workflow.openresty")
--   local client = kwr.client { host = os.getenv("KORE_HOST"),
--                               api_key = os.getenv("KORE_API_KEY") }
--   local job, err = client:import_files(workflow_id, export_dir)
--
-- The C core must be built for LuaJIT: cmake -DKW_LUA=luajit.
local kw = require("kore_workflow")

local M = {}

-- Phases of lua-nginx-module 0.10.23 in which ngx.sleep can suspend the
-- running code. In the others (init, init_worker, set, header_filter,
-- body_filter, log, balancer, ssl_session_store, exit_worker), ngx.sleep
-- raises "API disabled in the context of ...".
-- NOTE: checked against Debian's module for every phase named here except
-- the three ssl_* phases, which follow lua-nginx-module's documentation.
local SLEEP_PHASES = {
  rewrite = true,
  server_rewrite = true,
  access = true,
  content = true,
  timer = true,
  ssl_cert = true,
  ssl_session_fetch = true,
  ssl_client_hello = true,
}

-- Shortest sleep, in seconds. ngx.sleep counts whole milliseconds, so a
-- shorter sleep becomes ngx.sleep(0). That still yields, but nginx builds
-- without OpenResty's delayed-events patch (Debian's libnginx-mod-http-lua
-- 0.10.23 among them) log a warning for every ngx.sleep(0) call.
local MIN_SLEEP = 0.001

-- Raises, pointing at the given stack level, unless the code runs inside
-- nginx in a phase where ngx.sleep can suspend it.
local function check_phase(level)
  if type(ngx) ~= "table" or type(ngx.get_phase) ~= "function" then
    error("kore_workflow.openresty: the global ngx is missing; this client runs only "
      .. "inside nginx's lua module, so use require(\"kore_workflow\").client elsewhere", level + 1)
  end
  local phase = ngx.get_phase()
  if not SLEEP_PHASES[phase] then
    error(("kore_workflow.openresty: cannot wait in nginx's %s phase, because ngx.sleep "
      .. "works only in the rewrite, server_rewrite, access, content, timer, ssl_cert, "
      .. "ssl_session_fetch and ssl_client_hello phases; call the client from "
      .. "content_by_lua_block, or from a timer (ngx.timer.at) started in init_worker")
      :format(tostring(phase)), level + 1)
  end
end

--- The host adapter for client:nonblocking(adapter).
---@class kore_workflow.openresty.adapter
---@field sleep fun(seconds: number) suspends the calling request's coroutine
--- with ngx.sleep; raises outside the phases where ngx.sleep works
M.adapter = {
  sleep = function(seconds)
    if type(seconds) ~= "number" then
      error("bad argument #1 (seconds) to 'sleep' (number expected, got " .. type(seconds) .. ")", 2)
    end
    check_phase(2)
    if seconds ~= seconds or seconds < MIN_SLEEP then
      seconds = MIN_SLEEP
    end
    ngx.sleep(seconds)
  end,
}

-- Wraps a call so that it checks the phase before any request starts. A
-- request that had started before the first sleep raised might already
-- have reached the server, which would leave an import's outcome unknown.
local function phase_checked(call)
  return function(...)
    check_phase(2)
    return call(...)
  end
end

--- Creates a non-blocking client for code running inside nginx: the same
-- workflow.*, files.*, wait, import_files, wait_all and import_many as
-- require("kore_workflow").client, suspending the request's coroutine
-- while it waits. Every call raises in a phase where ngx.sleep does not
-- work, before it sends anything.
---@param options table the options of require("kore_workflow").client: host,
--- api_key, and optionally ca_file, connect_timeout, timeout, stall_timeout,
--- max_response, logger, verbose
---@return table client
function M.client(options)
  local client = kw.client(options):nonblocking(M.adapter)
  client.workflow.import = phase_checked(client.workflow.import)
  client.workflow.status = phase_checked(client.workflow.status)
  client.files.upload = phase_checked(client.files.upload)
  for _, method in ipairs { "wait", "import_files", "wait_all", "import_many" } do
    client[method] = phase_checked(client[method])
  end
  return client
end

return M
