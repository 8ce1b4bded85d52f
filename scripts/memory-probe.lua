-- Memory figures of the kore_workflow C core, for spec/memory_spec.lua.
--
-- Loaded with dofile, it returns the helpers that the spec uses in its own
-- process. Run as a script, it measures a fresh process, whose resident set
-- contains no free memory left behind by earlier specs, and prints one line:
--   lua_kb_before rss_kb_before lua_kb_after rss_kb_after raised
-- Usage: lua5.4 scripts/memory-probe.lua MODE COUNT WARM_UP
--   MODE bad-calls: COUNT calls that each raise an argument error
--   MODE leak:      the same calls, each leaking 100 bytes from C (the memcheck_canary
--                   module built from scripts/memcheck-canary.c must be on LUA_CPATH)
--   MODE clients:   COUNT clients created and dropped, with a full collection after each
-- LUA_PATH and LUA_CPATH must find kore_workflow and its C core.
local kw = require "kore_workflow"

local probe = {}

-- The key and workflow id of the specs (spec/support/fixtures.lua).
probe.KEY = "kg-5d0c7f3e-91a4-4b2e-8c6d-2f1e0a9b8c7d-64e1b2a3-7c8d-4e9f-a0b1-c2d3e4f5a6b7"
probe.WORKFLOW_ID = "a-00000000-0000-4000-8000-000000000001"

-- Returns the resident set size of this process in KiB.
function probe.rss_kb()
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^VmRSS:%s+(%d+)%s+kB")
    if kb then
      return tonumber(kb)
    end
  end
  error("/proc/self/status has no VmRSS line")
end

-- Collects until the Lua heap stops shrinking and returns its size in KiB.
function probe.collect()
  local before
  local after = collectgarbage("count")
  repeat
    before = after
    collectgarbage()
    after = collectgarbage("count")
  until after >= before
  return after
end

function probe.measure()
  local lua_kb = probe.collect()
  return { lua_kb = lua_kb, rss_kb = probe.rss_kb() }
end

local function valid_ids()
  return { workflowDataFileId = "f-1", flowDataFileId = "f-2", envVariablesFileId = "f-3" }
end

-- Returns calls that must each raise an argument error. Nothing is sent:
-- every one fails before its transfer starts, so host is never contacted.
function probe.bad_calls(client, host)
  local import = client.workflow.import
  local status = client.workflow.status
  local upload = client.files.upload
  local key = probe.KEY
  local workflow_id = probe.WORKFLOW_ID
  local long_id = string.rep("x", 1025)
  local with_extra = valid_ids()
  with_extra.extra = "x"
  local with_number = valid_ids()
  with_number.flowDataFileId = 7
  local with_empty = valid_ids()
  with_empty.envVariablesFileId = ""
  local with_index = valid_ids()
  with_index[1] = "x"
  local ids = valid_ids()
  -- os.tmpname creates the file, so the path is removed again.
  local missing_ca = os.tmpname()
  os.remove(missing_ca)

  return {
    function() return import(nil, ids) end,
    function() return import(42, ids) end,
    function() return import("", ids) end,
    function() return import("..", ids) end,
    function() return import(long_id, ids) end,
    function() return import(workflow_id, nil) end,
    function() return import(workflow_id, "body") end,
    function() return import(workflow_id, {}) end,
    function() return import(workflow_id, with_extra) end,
    function() return import(workflow_id, with_number) end,
    function() return import(workflow_id, with_empty) end,
    function() return import(workflow_id, with_index) end,
    function() return import(workflow_id, ids, "options") end,
    function() return import(workflow_id, ids, { timeout = "30" }) end,
    function() return import(workflow_id, ids, { timeout = -1 }) end,
    function() return import(workflow_id, ids, { connect_timeout = 0 / 0 }) end,
    function() return import(workflow_id, ids, { stall_timeout = math.huge }) end,
    function() return import(workflow_id, ids, { max_response = 0 }) end,
    function() return status(1.5) end,
    function() return status(2 ^ 60) end,
    function() return status({}) end,
    function() return upload(nil) end,
    function() return upload("") end,
    function() return upload("flow.json", { context = 1 }) end,
    function() return kw.client("options") end,
    function() return kw.client { host = host } end,
    function() return kw.client { host = host, api_key = 42 } end,
    function() return kw.client { host = host, api_key = " \t\n" } end,
    function() return kw.client { host = host, api_key = "kg-a\r\nX-Injected: 1" } end,
    function() return kw.client { host = host, api_key = "kg-a\0b" } end,
    function() return kw.client { host = "ftp://127.0.0.1", api_key = key } end,
    function() return kw.client { host = "http://user:pw@127.0.0.1", api_key = key } end,
    function() return kw.client { host = host, api_key = key, ca_file = missing_ca } end,
    function() return kw.client { host = host, api_key = key, timeout = 0 } end,
    function() return kw.client { host = host, api_key = key, max_response = -1 } end,
  }
end

-- Runs count calls from calls in turn, and after each one calls after_each
-- when it is given. Returns the number that raised an argument error and a
-- description of the first call that did not.
function probe.run_bad_calls(calls, count, after_each)
  local raised = 0
  local unexpected
  for i = 1, count do
    local index = (i - 1) % #calls + 1
    local ok, err = pcall(calls[index])
    if not ok and type(err) == "string" and err:find("bad argument", 1, true) then
      raised = raised + 1
    elseif not unexpected then
      unexpected = string.format("call %d returned %s, %s", index, tostring(ok), tostring(err))
    end
    if after_each then
      after_each()
    end
  end
  return raised, unexpected
end

-- Creates count clients and drops each one, with a full collection after
-- each. Returns how many of them were still not freed at the end.
function probe.drop_clients(count, host)
  -- A weak-keyed table loses a handle only once the handle is freed.
  local handles = setmetatable({}, { __mode = "k" })
  for i = 1, count do
    handles[kw.client({ host = host, api_key = probe.KEY })._handle] = i
    collectgarbage()
  end
  probe.collect()
  local left = 0
  for _ in pairs(handles) do
    left = left + 1
  end
  return left
end

local function main(mode, count, warm_up)
  local host = "http://127.0.0.1:9"
  local client = kw.client { host = host, api_key = probe.KEY }
  local calls = probe.bad_calls(client, host)
  local before, after, result
  if mode == "clients" then
    probe.drop_clients(warm_up, host)
    before = probe.measure()
    result = count - probe.drop_clients(count, host)
  else
    local leak
    if mode == "leak" then
      local canary = require "memcheck_canary"
      leak = function()
        canary.leak(100)
      end
    end
    probe.run_bad_calls(calls, warm_up)
    before = probe.measure()
    result = probe.run_bad_calls(calls, count, leak)
  end
  after = probe.measure()
  print(string.format("%.0f %d %.0f %d %d", before.lua_kb, before.rss_kb,
    after.lua_kb, after.rss_kb, result))
end

-- Run as a script, with arguments (dofile passes none): measure and print.
if select("#", ...) > 0 then
  local mode, count, warm_up = ...
  main(mode, tonumber(count), tonumber(warm_up))
  return
end

return probe
