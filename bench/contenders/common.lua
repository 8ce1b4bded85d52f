-- Shared by the Lua contenders: reads the arguments URL KEY_FILE CALLS,
-- times the loop and prints "calls=N seconds=S" as the C loop does.
-- The clock is LuaSocket's gettime (wall time with microseconds), loaded
-- in every contender alike.
local socket = require("socket")

local common = {}

-- Returns the API key in key_file, without a trailing newline.
function common.read_key(key_file)
  local handle = assert(io.open(key_file, "rb"))
  local key = handle:read("*a"):gsub("[\r\n]+$", "")
  handle:close()
  return key
end

function common.args(usage)
  local url, key_file, calls = arg[1], arg[2], tonumber(arg[3])
  if not url or not key_file or not calls or calls < 1 then
    io.stderr:write("usage: ", usage, " URL KEY_FILE CALLS\n")
    os.exit(2)
  end
  return url, common.read_key(key_file), math.floor(calls)
end

-- Runs call(i) for i = 1..calls; call returns the decoded body, whose status
-- must be a string.
function common.run(calls, call)
  local started = socket.gettime()
  for i = 1, calls do
    local doc = call(i)
    if type(doc) ~= "table" or type(doc.status) ~= "string" then
      io.stderr:write("call ", i, ": no status string in the body\n")
      os.exit(1)
    end
  end
  io.write(string.format("calls=%d seconds=%.6f\n", calls, socket.gettime() - started))
end

return common
