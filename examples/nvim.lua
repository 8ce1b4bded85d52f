-- :KoreImport DIR imports the workflow export in DIR into the workflow whose
-- id is in vim.g.kore_workflow_id. Progress and the final status appear in a
-- scratch buffer, and the editor stays responsive while the job runs.
-- The host and the API key come from $KORE_HOST and $KORE_API_KEY.
local kwn = require("kore_workflow.nvim")

vim.api.nvim_create_user_command("KoreImport", function(command)
  local workflow_id = vim.g.kore_workflow_id
  if type(workflow_id) ~= "string" then
    error("KoreImport: set vim.g.kore_workflow_id to the id of the workflow to import into")
  end
  local client = kwn.client { host = os.getenv("KORE_HOST"), api_key = os.getenv("KORE_API_KEY") }

  local buf = vim.api.nvim_create_buf(false, true)
  vim.cmd("sbuffer " .. buf)
  vim.api.nvim_buf_set_lines(buf, 0, -1, false, { "import " .. command.args .. " into " .. workflow_id })
  local function show(text)
    vim.api.nvim_buf_set_lines(buf, -1, -1, false, vim.split(text, "\n", { plain = true }))
  end

  kwn.import_files(client, workflow_id, command.args, {
    on_progress = function(job)
      show("status: " .. job.status)
    end,
  }, function(job, err)
    if job then
      show(("done: %s (dock status %s)"):format(job.status, job.dockStatusId))
    else
      show("failed: " .. tostring(err))
    end
  end)
end, { nargs = 1, complete = "dir" })
