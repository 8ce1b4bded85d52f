-- Test helper that runs a case of spec/support/neovim_cases.lua in headless
-- Neovim and returns the case's result.
--
--   local neovim = require("support.neovim")
--   neovim.build_core()
--   local result, run = neovim.run("snippet_import", { KORE_HOST = url, KORE_API_KEY = key })
--
-- Environment values reach Neovim through a shell file that the command
-- sources and deletes, so the API key never appears on a command line.
local cjson = require("cjson")
local socket = require("socket")
local emulator = require("support.emulator")

local neovim = {}

local function shell_quote(text)
  return "'" .. tostring(text):gsub("'", "'\\''") .. "'"
end

-- Returns the exit status from the results of os.execute on Lua 5.1 (one
-- number, 256 times the status) and on Lua 5.2 and later (ok, "exit", status).
local function exit_status(first, termination, code)
  if type(first) == "number" then
    if first >= 256 then
      return math.floor(first / 256)
    end
    return first
  end
  if termination == "signal" then
    return 128 + code
  end
  return code
end

local function read_file(path)
  local handle = io.open(path, "rb")
  if not handle then
    return nil
  end
  local content = handle:read("*a")
  handle:close()
  return content
end

local function absolute_root()
  local handle = assert(io.popen("cd " .. shell_quote(emulator.root) .. " && pwd -P"))
  local path = handle:read("*l")
  handle:close()
  return path
end

neovim.root = absolute_root()
neovim.build_dir = neovim.root .. "/build-luajit"
neovim.core_path = neovim.build_dir .. "/kore_workflow/core.so"

-- Seconds that `timeout` adds to a case's own time limit before it stops
-- Neovim, and then before it kills it.
local STOP_MARGIN = 15
local KILL_MARGIN = 5

-- Builds the C core for LuaJIT in build-luajit, configuring the build
-- directory first when it has none. The build is incremental, so a core
-- that is up to date costs one quick make run. Raises an error with the
-- build output when the build fails.
function neovim.build_core()
  local log = os.tmpname()
  local steps = {}
  if not read_file(neovim.build_dir .. "/CMakeCache.txt") then
    steps[#steps + 1] = ("cmake -S %s -B %s -DKW_LUA=luajit -DCMAKE_BUILD_TYPE=RelWithDebInfo")
      :format(shell_quote(neovim.root), shell_quote(neovim.build_dir))
  end
  steps[#steps + 1] = "cmake --build " .. shell_quote(neovim.build_dir)
  local command = "(" .. table.concat(steps, " && ") .. ") >" .. shell_quote(log) .. " 2>&1"
  local status = exit_status(os.execute(command))
  local output = read_file(log) or ""
  os.remove(log)
  if status ~= 0 or not read_file(neovim.core_path) then
    error(("building the C core for LuaJIT in %s failed (exit status %s); it needs the "
      .. "Debian packages cmake, gcc, pkg-config, libcurl4-openssl-dev and "
      .. "libluajit2-5.1-dev. Output:\n%s"):format(neovim.build_dir, tostring(status), output), 2)
  end
end

-- Runs one case in `nvim --headless` from the repository root. env maps
-- variable names to values for Neovim's environment. time_limit (seconds,
-- default 30) bounds the case, and `timeout` stops Neovim if it hangs past
-- that. Returns the decoded result, or nil when Neovim wrote none, and a
-- table { status = exit status, output = Neovim's stdout and stderr,
-- seconds = wall time of the run }.
function neovim.run(case, env, time_limit)
  time_limit = time_limit or 30
  local result_path = os.tmpname()
  local output_path = os.tmpname()
  -- os.tmpname creates the file with mode 0600, so only this user can read the key.
  local env_path = os.tmpname()

  local variables = {
    KORE_TEST_ROOT = neovim.root,
    KORE_NVIM_CASE = case,
    KORE_NVIM_RESULT = result_path,
    KORE_NVIM_TIMEOUT = tostring(time_limit),
  }
  for name, value in pairs(env or {}) do
    variables[name] = value
  end
  local env_file = assert(io.open(env_path, "w"))
  for name, value in pairs(variables) do
    assert(name:match("^[%a_][%w_]*$"), "invalid environment variable name " .. name)
    env_file:write("export ", name, "=", shell_quote(value), "\n")
  end
  env_file:close()

  local nvim = table.concat({
    "timeout", "-k", tostring(KILL_MARGIN), tostring(time_limit + STOP_MARGIN),
    "nvim", "--headless", "-u", "NONE", "-i", "NONE", "-n",
    "-c", shell_quote("lua dofile(vim.env.KORE_TEST_ROOT .. '/spec/support/neovim_cases.lua')"),
  }, " ")
  local command = ("cd %s && . %s && rm -f %s && exec %s </dev/null >%s 2>&1"):format(
    shell_quote(neovim.root), shell_quote(env_path), shell_quote(env_path), nvim,
    shell_quote(output_path))

  local started = socket.gettime()
  local status = exit_status(os.execute(command))
  local seconds = socket.gettime() - started
  os.remove(env_path)

  local text = read_file(result_path)
  local output = read_file(output_path) or ""
  os.remove(result_path)
  os.remove(output_path)

  local result
  if text and text ~= "" then
    result = cjson.decode(text)
  end
  return result, { status = status, output = output, seconds = seconds }
end

return neovim
