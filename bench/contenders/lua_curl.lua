-- Debian's lua-curl (the luacurl 0.3.0 binding, module "curl") with one
-- reused easy handle, and lua-cjson. Its handles have no getinfo, so
-- FAILONERROR turns an HTTP error status into a failed perform.
local common = dofile(arg[0]:gsub("[^/]+$", "") .. "common.lua")
local curl = require("curl")
local cjson = require("cjson")

local url, key, calls = common.args("lua_curl.lua")
local parts
local easy = curl.easy_init()
easy:setopt(curl.OPT_URL, url)
easy:setopt(curl.OPT_HTTPHEADER, { "x-api-key: " .. key, "Accept: application/json" })
easy:setopt(curl.OPT_FAILONERROR, 1)
easy:setopt(curl.OPT_NOSIGNAL, 1)
easy:setopt(curl.OPT_WRITEFUNCTION, function(chunk)
  parts[#parts + 1] = chunk
  return #chunk
end)

common.run(calls, function(i)
  parts = {}
  local code, message = easy:perform()
  if code ~= 0 then
    io.stderr:write("call ", i, " failed: ", tostring(message or code), "\n")
    os.exit(1)
  end
  return cjson.decode(table.concat(parts))
end)
