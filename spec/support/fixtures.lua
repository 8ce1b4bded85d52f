-- Shared values and helpers of the specs.
local fixtures = {}

-- The API key every spec uses. Specs search outputs and errors for it, so it
-- must never appear anywhere but in the request header.
fixtures.TEST_KEY = "kg-5d0c7f3e-91a4-4b2e-8c6d-2f1e0a9b8c7d-64e1b2a3-7c8d-4e9f-a0b1-c2d3e4f5a6b7"

fixtures.WORKFLOW_ID = "a-00000000-0000-4000-8000-000000000001"

fixtures.EXAMPLE_DIR = "examples/banking-assistant"

-- Returns the path of a new file holding content.
function fixtures.write_temp(content, suffix)
  local base = os.tmpname()
  local path = base
  if suffix then
    -- os.tmpname created the base file; only the suffixed name is used.
    os.remove(base)
    path = base .. suffix
  end
  local handle = assert(io.open(path, "wb"))
  handle:write(content)
  handle:close()
  return path
end

-- Returns the path of a new directory.
function fixtures.temp_dir()
  local path = os.tmpname()
  os.remove(path)
  assert(os.execute("mkdir -p '" .. path .. "'"))
  return path
end

-- Runs a shell command and returns whether it exited 0, its stdout and
-- stderr together, and its exit status (Lua 5.1 and 5.2+ report it apart).
function fixtures.run(command)
  local handle = assert(io.popen(command .. " 2>&1"))
  local output = handle:read("*a")
  local ok, _, code = handle:close()
  if type(ok) == "number" then
    code = ok
    ok = code == 0
  end
  return ok == true, output, code
end

function fixtures.read_file(path)
  local handle = assert(io.open(path, "rb"))
  local content = handle:read("*a")
  handle:close()
  return content
end

-- Copies the example export into a new directory and returns it.
function fixtures.copy_example()
  local dir = fixtures.temp_dir()
  for _, name in ipairs { "app_definition.json", "flow_definition.json", "env_variables.json" } do
    local handle = assert(io.open(dir .. "/" .. name, "wb"))
    handle:write(fixtures.read_file(fixtures.EXAMPLE_DIR .. "/" .. name))
    handle:close()
  end
  return dir
end

-- Returns true when value, or any string inside it at any depth, contains needle.
function fixtures.contains(value, needle, seen)
  seen = seen or {}
  if type(value) == "string" then
    return value:find(needle, 1, true) ~= nil
  end
  if type(value) ~= "table" or seen[value] then
    return false
  end
  seen[value] = true
  for k, v in pairs(value) do
    if fixtures.contains(k, needle, seen) or fixtures.contains(v, needle, seen) then
      return true
    end
  end
  local mt = getmetatable(value)
  if mt and mt.__tostring then
    return tostring(value):find(needle, 1, true) ~= nil
  end
  return false
end

-- Returns true when value contains a userdata or a light userdata at any depth
-- (JSON null of lua-cjson is a light userdata).
function fixtures.has_userdata(value, seen)
  seen = seen or {}
  if type(value) == "userdata" then
    return true
  end
  if type(value) ~= "table" or seen[value] then
    return false
  end
  seen[value] = true
  for k, v in pairs(value) do
    if fixtures.has_userdata(k, seen) or fixtures.has_userdata(v, seen) then
      return true
    end
  end
  return false
end

return fixtures
