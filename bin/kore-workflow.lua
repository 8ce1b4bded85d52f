#!/usr/bin/env lua
-- Entry point of the kore-workflow command-line tool for installed copies;
-- LuaRocks wraps it so that the installed modules are found.
os.exit(require("kore_workflow.cli").run(arg))
