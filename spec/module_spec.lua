-- The shape of the built C module.
describe("kore_workflow.core", function()
  it("exports only its luaopen_ symbol", function()
    local path = package.searchpath("kore_workflow.core", package.cpath)
    assert.is_string(path)
    local handle = assert(io.popen("nm -D --defined-only '" .. path .. "' 2>&1"))
    local symbols = {}
    for line in handle:lines() do
      local kind, name = line:match("^%x+%s+(%a)%s+(%S+)$")
      if kind and kind:match("[TDBRV]") then
        symbols[#symbols + 1] = name
      end
    end
    handle:close()
    assert.same({ "luaopen_kore_workflow_core" }, symbols)
  end)

  it("names kore_workflow, libcurl and Lua versions", function()
    local core = require "kore_workflow.core"
    assert.matches("^%d+%.%d+%.%d+$", core._VERSION)
    assert.matches("^%d+%.%d+", core.curl_version)
    assert.matches("Lua", core.lua_version)
  end)
end)
