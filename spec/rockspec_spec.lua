-- Builds the rock with `luarocks make` into a scratch tree, offline and
-- against Debian's lua-cjson, and loads the installed module from there.
local fixtures = require "support.fixtures"

local run = fixtures.run

describe("rockspec", function()
  it("builds and installs with luarocks make", function()
    local work = fixtures.temp_dir()
    local tree = work .. "/tree"
    assert(os.execute(("cp -r csrc lua bin kore_workflow-0.1.0-1.rockspec '%s'/"):format(work)))

    local ok, output = run(("cd '%s' && luarocks --lua-version 5.4 make --deps-mode=none "
      .. "--tree '%s' kore_workflow-0.1.0-1.rockspec"):format(work, tree))
    assert.is_true(ok, output)

    local probe = ("lua5.4 -e \"package.path='%s/share/lua/5.4/?.lua;%s/share/lua/5.4/?/init.lua;'"
      .. "..package.path; package.cpath='%s/lib/lua/5.4/?.so;'..package.cpath\" -e "
      .. "\"local kw = require 'kore_workflow'; print(kw._VERSION, "
      .. "package.searchpath('kore_workflow.core', package.cpath))\""):format(tree, tree, tree)
    local loaded, version = run(probe)
    assert.is_true(loaded, version)
    assert.matches("^0%.1%.0%s+" .. tree:gsub("%p", "%%%0") .. "/lib/lua/5.4/kore_workflow/core.so",
      version)

    local helped, help = run(("eval \"$(luarocks --lua-version 5.4 path --tree '%s')\" && "
      .. "'%s/bin/kore-workflow' --help"):format(tree, tree))
    assert.is_true(helped, help)
    assert.matches("import", help, 1, true)
    os.execute(("rm -rf '%s'"):format(work))
  end)
end)
