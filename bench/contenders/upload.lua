-- One files.upload of FILE through an upload session, the chunked path that
-- every file of 25 MB or more takes. The process's memory is read from
-- /proc/self/status: the resident set just before the upload, and its peak
-- during it (VmHWM, reset just before by writing 5 to clear_refs).
-- Usage: upload.lua BASE_URL KEY_FILE FILE
-- Prints "bytes=N seconds=S chunks=C baseline_kb=B peak_kb=P".
local common = dofile(arg[0]:gsub("[^/]+$", "") .. "common.lua")
local kw = require("kore_workflow")

local base_url, key_file, path = arg[1], arg[2], arg[3]
if not base_url or not key_file or not path then
  io.stderr:write("usage: upload.lua BASE_URL KEY_FILE FILE\n")
  os.exit(2)
end
local key = common.read_key(key_file)

local function status_kb(field)
  for line in io.lines("/proc/self/status") do
    local kb = line:match("^" .. field .. ":%s+(%d+)%s+kB")
    if kb then
      return tonumber(kb)
    end
  end
  error("/proc/self/status has no " .. field .. " line")
end

local file = assert(io.open(path, "rb"))
local bytes = file:seek("end")
file:close()

local client = kw.client { host = base_url, api_key = key }
collectgarbage()
collectgarbage()
local clear = io.open("/proc/self/clear_refs", "w")
if not clear then
  io.stderr:write("upload.lua: cannot reset the peak resident set through /proc/self/clear_refs\n")
  os.exit(1)
end
clear:write("5")
clear:close()
local baseline = status_kb("VmRSS")
local chunks = 0
local started = kw.monotonic()
local uploaded, err = client.files.upload(path, { on_chunk = function() chunks = chunks + 1 end })
local seconds = kw.monotonic() - started
local peak = status_kb("VmHWM")
if not uploaded then
  io.stderr:write("upload failed: ", tostring(err), "\n")
  os.exit(1)
end
io.write(string.format("bytes=%d seconds=%.6f chunks=%d baseline_kb=%d peak_kb=%d\n",
  bytes, seconds, chunks, baseline, peak))
