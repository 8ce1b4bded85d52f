-- The README shows the example files verbatim, so the snippets users paste
-- are the ones the Neovim and OpenResty specs run.
local fixtures = require "support.fixtures"

describe("README", function()
  local readme = fixtures.read_file("README.md")

  for _, path in ipairs { "examples/nvim.lua", "examples/nginx.conf" } do
    it("shows " .. path .. " verbatim", function()
      local example = fixtures.read_file(path)
      assert.is_truthy(readme:find(example, 1, true), path .. " differs from its copy in README.md")
    end)
  end

  it("documents every exit code of the CLI", function()
    for code = 0, 4 do
      assert.is_truthy(readme:find("| " .. code .. " |", 1, true), "exit code " .. code)
    end
  end)
end)
