-- kore_workflow's workflow.status on one client, as an application uses it.
local common = dofile(arg[0]:gsub("[^/]+$", "") .. "common.lua")
local kw = require("kore_workflow")

local url, key, calls = common.args("kore_workflow.lua")
local host, id = url:match("^(https?://[^/]+)/api/public/dock%-status/(.+)$")
local client = kw.client { host = host, api_key = key }

common.run(calls, function(i)
  local job, err = client.workflow.status(id)
  if not job then
    io.stderr:write("call ", i, " failed: ", tostring(err), "\n")
    os.exit(1)
  end
  return job
end)
