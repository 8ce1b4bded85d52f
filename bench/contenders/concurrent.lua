-- CALLS workflow.status calls with IN_FLIGHT of them running at once, on one
-- client's non-blocking form driven by kore_workflow.scheduler, whose idle
-- waits go through client:poll (the way wait_all and import_many run their
-- requests).
-- Usage: concurrent.lua URL KEY_FILE CALLS IN_FLIGHT
-- Prints "calls=N seconds=S in_flight=K".
local common = dofile(arg[0]:gsub("[^/]+$", "") .. "common.lua")
local kw = require("kore_workflow")
local scheduler = require("kore_workflow.scheduler")

local url, key, calls = common.args("concurrent.lua")
local in_flight = math.floor(tonumber(arg[4]) or 0)
if in_flight < 1 then
  io.stderr:write("usage: concurrent.lua URL KEY_FILE CALLS IN_FLIGHT\n")
  os.exit(2)
end
local host, id = url:match("^(https?://[^/]+)/api/public/dock%-status/(.+)$")
local client = kw.client { host = host, api_key = key }
local tasks = scheduler.new {
  idle_sleep = kw.sleep,
  clock = kw.monotonic,
  poll = function(seconds)
    return client:poll(seconds)
  end,
}
local nonblocking = client:nonblocking(scheduler.task_adapter)

local next_call = 1
local function worker()
  while next_call <= calls do
    local call = next_call
    next_call = next_call + 1
    local job, err = nonblocking.workflow.status(id)
    if not job or type(job.status) ~= "string" then
      io.stderr:write("call ", call, " failed: ", tostring(err), "\n")
      os.exit(1)
    end
  end
end

local started = kw.monotonic()
for _ = 1, math.min(in_flight, calls) do
  tasks:spawn(worker)
end
tasks:run()
io.write(string.format("calls=%d seconds=%.6f in_flight=%d\n", calls, kw.monotonic() - started,
  in_flight))
