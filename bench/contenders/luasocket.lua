-- LuaSocket's socket.http with lua-cjson. socket.http sends
-- "Connection: close" and opens a connection per request.
local common = dofile(arg[0]:gsub("[^/]+$", "") .. "common.lua")
local http = require("socket.http")
local cjson = require("cjson")

local url, key, calls = common.args("luasocket.lua")
local headers = { ["x-api-key"] = key, accept = "application/json" }

common.run(calls, function(i)
  local parts = {}
  local ok, status = http.request {
    url = url,
    headers = headers,
    sink = function(chunk)
      if chunk then
        parts[#parts + 1] = chunk
      end
      return 1
    end,
  }
  if not ok or status ~= 200 then
    io.stderr:write("call ", i, " failed: ", tostring(status), "\n")
    os.exit(1)
  end
  return cjson.decode(table.concat(parts))
end)
