-- The curl command run once per call, as a shell script does, with lua-cjson
-- parsing what it prints. The key goes in through a header file (-H @FILE),
-- never on curl's command line.
local common = dofile(arg[0]:gsub("[^/]+$", "") .. "common.lua")
local cjson = require("cjson")

local url, key, calls = common.args("curl_cli.lua")
-- Beside the key file, in the bench's own temporary directory.
local header_file = arg[2] .. ".curl-headers"
do
  local handle = assert(io.open(header_file, "wb"))
  handle:write("x-api-key: ", key, "\nAccept: application/json\n")
  handle:close()
end
local command = string.format("exec curl -sS --fail -H @%s '%s'", header_file, url)

common.run(calls, function(i)
  local pipe = assert(io.popen(command))
  local body = pipe:read("*a")
  local ok = pipe:close()
  if not ok or body == "" then
    io.stderr:write("call ", i, ": curl failed\n")
    os.remove(header_file)
    os.exit(1)
  end
  return cjson.decode(body)
end)
os.remove(header_file)
