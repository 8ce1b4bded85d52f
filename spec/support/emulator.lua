-- Test helper that runs the API emulator (bin/mock-server) as a separate
-- process and talks to its /_mock/ control routes.
--
--   local emulator = require("support.emulator")
--   local emu = emulator.start({ api_key = "kg-test", polls = 1 })
--   -- point the client at emu.url, then inspect emu:requests()
--   emu:stop()

local http = require("socket.http")
local ltn12 = require("ltn12")
local cjson = require("cjson")

local emulator = {}

local Emulator = {}
Emulator.__index = Emulator

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

-- Returns the repository root, found from this file's own path.
local function repository_root()
  local source = debug.getinfo(1, "S").source
  local file = source:match("^@(.*)$") or ""
  if file:sub(1, 1) ~= "/" then
    file = "./" .. file
  end
  return file:match("^(.*)/spec/support/[^/]*$") or "."
end

emulator.root = repository_root()

-- Sends an HTTP request with socket.http. Returns the status code, the
-- response body and the lowercased response headers, or nil and a message.
local function http_request(method, url, body, headers)
  local chunks = {}
  local request_headers = headers or {}
  if body then
    request_headers["content-length"] = tostring(#body)
  end
  local ok, status, response_headers = http.request({
    url = url,
    method = method,
    headers = request_headers,
    source = body and ltn12.source.string(body) or nil,
    sink = ltn12.sink.table(chunks),
  })
  if not ok then
    return nil, string.format("%s %s failed: %s", method, url, tostring(status))
  end
  return status, table.concat(chunks), response_headers
end

emulator.http_request = http_request

-- Calls a control route. Returns the decoded JSON reply and the status;
-- raises an error naming the route unless the status is in expected_statuses
-- (default: any 2xx).
function Emulator:control(method, path, value, expected_statuses)
  local body
  local headers = {}
  if value ~= nil then
    body = cjson.encode(value)
    headers["content-type"] = "application/json"
  end
  local status, text = http_request(method, self.url .. path, body, headers)
  if not status then
    error(text, 2)
  end
  local accepted
  if expected_statuses then
    for _, expected in ipairs(expected_statuses) do
      accepted = accepted or status == expected
    end
  else
    accepted = status >= 200 and status < 300
  end
  if not accepted then
    error(string.format("emulator control route %s %s returned status %d: %s", method, path, status, text), 2)
  end
  local ok, decoded = pcall(cjson.decode, text)
  if not ok then
    error(string.format("emulator control route %s %s returned invalid JSON: %s", method, path, text), 2)
  end
  return decoded, status
end

-- Returns the request log: an array of records in arrival order.
function Emulator:requests()
  return (self:control("GET", "/_mock/requests"))
end

-- Clears the request log and any pending scripts.
function Emulator:reset()
  return (self:control("POST", "/_mock/reset", {}))
end

-- Queues scripted responses, for example
-- emu:script({ method = "GET", path = "/api/public/dock-status/ds-1",
--              responses = { { status = 502, body = "bad gateway" } } }).
function Emulator:script(script)
  return (self:control("POST", "/_mock/script", script))
end

-- Seeds a workflow. definitions, when given, is {workflowData, flowData,
-- envVariables} of strings, stored as the workflow's current version.
function Emulator:seed_workflow(id, name, definitions)
  return (self:control("POST", "/_mock/workflows", { id = id, name = name, definitions = definitions }))
end

local function encode_segment(id)
  return (id:gsub("[^%w%-._~]", function(c)
    return string.format("%%%02X", c:byte())
  end))
end

-- Returns the stored definitions of a workflow, or nil for an unknown id.
function Emulator:workflow(id)
  local value, status = self:control("GET", "/_mock/workflows/" .. encode_segment(id), nil, { 200, 404 })
  if status == 404 then
    return nil
  end
  return value
end

-- Seeds a model. fileName and content of its model file are optional.
function Emulator:seed_model(id, file_name, content)
  return (self:control("POST", "/_mock/models", { id = id, fileName = file_name, content = content }))
end

-- Returns a model's file name, size, import and deploy state, or nil for
-- an unknown id.
function Emulator:model(id)
  local value, status = self:control("GET", "/_mock/models/" .. encode_segment(id), nil, { 200, 404 })
  if status == 404 then
    return nil
  end
  return value
end

-- Stops the emulator through its shutdown route and waits for the process
-- to exit. Kills it by its process id when the shutdown route fails. Safe
-- to call more than once.
function Emulator:stop()
  if self.stopped then
    return
  end
  self.stopped = true
  local status = http_request("POST", self.url .. "/_mock/shutdown", "{}", {})
  if status ~= 200 and self.pid then
    os.execute("kill " .. self.pid .. " 2>/dev/null")
  end
  self.handle:read("*a")
  self.handle:close()
end

-- Starts an emulator process and waits for its base URL. Options:
-- api_key (default "kg-test-key"), polls, delay, workflows (list of ids),
-- workflow_dirs (map of workflow id to export directory), models (list of
-- ids), id_field, export_url_field, session_ttl, max_single_upload,
-- idle_exit (seconds, default 300, so that a process left behind
-- by a crashed test run exits by itself), lua (interpreter, default
-- $KORE_TEST_LUA or "lua5.4"), script (default bin/mock-server), verbose
-- (log requests to standard error), log_file (append standard error there).
-- The key reaches the process through a temporary file, never the command
-- line, so it does not show in the process list.
function emulator.start(opts)
  opts = opts or {}
  local api_key = opts.api_key or "kg-test-key"
  local key_file = os.tmpname()
  local file = assert(io.open(key_file, "w"))
  file:write(api_key, "\n")
  file:close()

  local args = {
    opts.lua or os.getenv("KORE_TEST_LUA") or "lua5.4",
    opts.script or (emulator.root .. "/bin/mock-server"),
    "mock",
    "--api-key-file", key_file,
    "--port", "0",
    "--idle-exit", tostring(opts.idle_exit or 300),
  }
  local function add(...)
    for _, item in ipairs({ ... }) do
      args[#args + 1] = tostring(item)
    end
  end
  if opts.polls then
    add("--polls", opts.polls)
  end
  if opts.delay then
    add("--delay", opts.delay)
  end
  if opts.id_field then
    add("--id-field", opts.id_field)
  end
  for _, id in ipairs(opts.workflows or {}) do
    add("--workflow", id)
  end
  for id, dir in pairs(opts.workflow_dirs or {}) do
    add("--workflow", id .. "=" .. dir)
  end
  for _, id in ipairs(opts.models or {}) do
    add("--model", id)
  end
  if opts.export_url_field then
    add("--export-url-field", opts.export_url_field)
  end
  if opts.session_ttl then
    add("--session-ttl", opts.session_ttl)
  end
  if opts.max_single_upload then
    add("--max-single-upload", opts.max_single_upload)
  end
  if not opts.verbose then
    add("--quiet")
  end
  local quoted = {}
  for i, item in ipairs(args) do
    quoted[i] = shell_quote(item)
  end
  -- `echo $$` prints the shell's process id, and exec keeps that id for the emulator.
  local command = "echo $$; exec " .. table.concat(quoted, " ")
  if opts.log_file then
    command = command .. " 2>>" .. shell_quote(opts.log_file)
  end

  local handle = assert(io.popen(command, "r"))
  local pid = handle:read("*l")
  local url = handle:read("*l")
  os.remove(key_file)
  if not url or not url:find("^http://") then
    handle:close()
    error("the emulator did not start: it printed " .. tostring(url) .. " in place of its URL; "
      .. "see its standard error above", 2)
  end
  return setmetatable({
    url = url,
    api_key = api_key,
    pid = pid and pid:match("^%d+$"),
    handle = handle,
  }, Emulator)
end

return emulator
