-- Workflow export, deploy and undeploy in the API emulator
-- kore_workflow.mock, and the definitions that seeded workflows carry.
-- install() adds the route handlers to the emulator's Server class.

local cjson = require("cjson")

local mock_workflows = {}

-- A workflow's definitions by field, with the file names of a UI export.
-- The list order is the order of the entries in an export zip.
local DEFINITION_FILES = {
  { field = "flowData", file = "flow_definition.json", required = true },
  { field = "workflowData", file = "app_definition.json", required = true },
  { field = "envVariables", file = "env_variables.json", required = false },
}

-- The content of env_variables.json in the export of a workflow that was
-- imported without environment variables: an empty list, the shape that
-- UI exports use for the variables.
local EMPTY_ENV_VARIABLES = "[]"

local function read_file(path)
  local handle, err = io.open(path, "rb")
  if not handle then
    return nil, err
  end
  local content = handle:read("*a")
  handle:close()
  if content == nil then
    return nil, "cannot read " .. path
  end
  return content
end

-- Reads a workflow's definitions from an export directory: its
-- app_definition.json, flow_definition.json and, when present,
-- env_variables.json, byte for byte. Returns {workflowData, flowData,
-- envVariables}, or nil and a message naming the missing file.
function mock_workflows.read_definitions(dir)
  local definitions = {}
  for _, definition in ipairs(DEFINITION_FILES) do
    local path = dir .. "/" .. definition.file
    local content, err = read_file(path)
    if content then
      definitions[definition.field] = content
    elseif definition.required then
      return nil, string.format("cannot read %s from the export directory %s: %s", definition.file, dir,
        tostring(err))
    end
  end
  return definitions
end

-- Validates the definitions object of POST /_mock/workflows. Returns
-- {workflowData, flowData, envVariables}, or nil and a message.
function mock_workflows.validate_definitions(value)
  if type(value) ~= "table" or value[1] ~= nil then
    return nil, "field definitions must be an object {workflowData, flowData, envVariables} of strings"
  end
  local known = {}
  local definitions = {}
  for _, definition in ipairs(DEFINITION_FILES) do
    local field = definition.field
    known[field] = true
    local content = value[field]
    if content == nil or content == cjson.null then
      if definition.required then
        return nil, string.format("missing field definitions.%s: give the content of %s as a string",
          field, definition.file)
      end
    elseif type(content) ~= "string" then
      return nil, string.format("field definitions.%s must be a string, the content of %s", field,
        definition.file)
    else
      definitions[field] = content
    end
  end
  for field in pairs(value) do
    if not known[field] then
      return nil, string.format("definitions has an unknown field %s: use workflowData, flowData and envVariables",
        tostring(field))
    end
  end
  return definitions
end

-- Returns the zip entries of a workflow's current version.
local function export_entries(current)
  local entries = {}
  for _, definition in ipairs(DEFINITION_FILES) do
    entries[#entries + 1] = {
      name = definition.file,
      data = current[definition.field] or EMPTY_ENV_VARIABLES,
    }
  end
  return entries
end

local function finish_export(server, job)
  server:publish_export(job.export)
  job.status = "SUCCESS"
end

local function finish_deploy(_, job)
  job.workflow.deployed = true
  job.status = "SUCCESS"
end

local function finish_undeploy(_, job)
  job.workflow.deployed = false
  job.status = "SUCCESS"
end

-- Adds the handlers of export, deploy and undeploy to the Server class.
-- helpers contains the response and JSON functions of kore_workflow.mock.
function mock_workflows.install(Server, helpers)
  local json_object_body = helpers.json_object_body
  local bad_request = helpers.bad_request
  local not_found = helpers.not_found
  local quote = helpers.quote

  -- Returns the workflow named by the first path parameter, or nil and a 404.
  function Server:workflow_for_route(params)
    local workflow = self.workflows[params[1]]
    if not workflow then
      return nil, not_found(string.format("workflow %s not found", quote(params[1])))
    end
    return workflow
  end

  function Server:export_workflow(request, params)
    local workflow, failure = self:workflow_for_route(params)
    if not workflow then
      return failure
    end
    local query = helpers.parse_query(request.query or "")
    if query.flowId == "" then
      return bad_request("query parameter flowId is empty: give the flow id or leave the parameter out")
    end
    if not workflow.current then
      return bad_request(string.format("workflow %s has no definitions yet: import them before exporting",
        quote(workflow.id)))
    end
    -- The zip contains the version that is current now, even if an import
    -- replaces it before the job ends.
    local export = self:new_export("workflow", workflow.name .. ".zip", export_entries(workflow.current))
    local job = self:start_job({
      job_type = "WORKFLOWS",
      action = "EXPORT",
      workflow = workflow,
      export = export,
      flow_id = query.flowId,
      finish = finish_export,
    })
    return self:job_response(job)
  end

  function Server:deploy_workflow(request, params)
    local workflow, failure = self:workflow_for_route(params)
    if not workflow then
      return failure
    end
    local body
    body, failure = json_object_body(request)
    if not body then
      return failure
    end
    local is_async = body.isAsync
    if is_async == nil or is_async == cjson.null then
      return bad_request("missing field isAsync: send {\"isAsync\": true} to deploy in the background "
        .. "or false to deploy before the reply")
    end
    if type(is_async) ~= "boolean" then
      return bad_request(string.format("field isAsync must be true or false, got %s", helpers.json_encode(is_async)))
    end
    local job = self:start_job({
      job_type = "WORKFLOWS",
      action = "DEPLOY",
      workflow = workflow,
      finish = finish_deploy,
    })
    if not is_async then
      self:finish_job(job)
    end
    return self:job_response(job)
  end

  function Server:undeploy_workflow(_, params)
    local workflow, failure = self:workflow_for_route(params)
    if not workflow then
      return failure
    end
    local job = self:start_job({
      job_type = "WORKFLOWS",
      action = "UNDEPLOY",
      workflow = workflow,
      finish = finish_undeploy,
    })
    return self:job_response(job)
  end
end

return mock_workflows
