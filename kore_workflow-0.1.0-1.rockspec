rockspec_format = "3.0"
package = "kore_workflow"
version = "0.1.0-1"
source = {
  url = "git+file:///dev/null",
}
description = {
  summary = "Client for the Kore.ai AI for Process workflow management API",
  detailed = [[
Imports workflow definition files, follows import jobs to their end and
reports failures precisely. A C core on libcurl performs the HTTP calls;
a pure-Lua layer adds waiting, a command-line tool and a local emulator.
]],
  license = "MIT",
}
dependencies = {
  "lua >= 5.1, < 5.5",
  "lua-cjson",
  "luasocket",
}
-- libcurl's headers and library are found by the compiler's default search
-- paths, which include Debian's multiarch directories that LuaRocks' own
-- external dependency check does not search for headers.
build = {
  type = "builtin",
  modules = {
    ["kore_workflow.core"] = {
      sources = {
        "csrc/kw_body.c", "csrc/kw_compat.c", "csrc/kw_core.c", "csrc/kw_endpoint.c", "csrc/kw_error.c", "csrc/kw_inflate.c",
        "csrc/kw_json.c", "csrc/kw_log.c", "csrc/kw_multi.c", "csrc/kw_request.c", "csrc/kw_result.c", "csrc/kw_zip.c",
      },
      libraries = { "curl", "zip", "z", "m" },
    },
    ["kore_workflow"] = "lua/kore_workflow/init.lua",
    ["kore_workflow.waiter"] = "lua/kore_workflow/waiter.lua",
    ["kore_workflow.scheduler"] = "lua/kore_workflow/scheduler.lua",
    ["kore_workflow.chunked"] = "lua/kore_workflow/chunked.lua",
    ["kore_workflow.nvim"] = "lua/kore_workflow/nvim.lua",
    ["kore_workflow.openresty"] = "lua/kore_workflow/openresty.lua",
    ["kore_workflow.cli"] = "lua/kore_workflow/cli.lua",
    ["kore_workflow.mock"] = "lua/kore_workflow/mock.lua",
    ["kore_workflow.mock_cli"] = "lua/kore_workflow/mock_cli.lua",
    ["kore_workflow.mock_zip"] = "lua/kore_workflow/mock_zip.lua",
    ["kore_workflow.mock_workflows"] = "lua/kore_workflow/mock_workflows.lua",
    ["kore_workflow.mock_sessions"] = "lua/kore_workflow/mock_sessions.lua",
    ["kore_workflow.mock_models"] = "lua/kore_workflow/mock_models.lua",
  },
  install = {
    bin = { ["kore-workflow"] = "bin/kore-workflow.lua" },
  },
}
