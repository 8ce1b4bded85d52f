-- Models in the API emulator kore_workflow.mock: their import jobs, export,
-- deploy and undeploy, and the control routes that seed and show them.
-- A model exists once seeded or once its upload session is completed.
-- install() adds the route handlers to the emulator's Server class.

local cjson = require("cjson")

local mock_models = {}

local MODEL_TYPES = { openSource = true, fineTune = true }

-- Optional fields of a model deploy body that must be JSON objects.
local OBJECT_FIELDS = { "hyperParameters", "scalingParameters", "optimizationInfo" }

-- Returns the last segment of a file name sent by a client, so that a zip
-- entry never points outside the directory it is extracted to.
local function base_name(name)
  local base = name:match("([^/\\]+)$")
  if not base or base == "." or base == ".." then
    return "model.bin"
  end
  return base
end

local function is_object(value)
  return type(value) == "table" and value[1] == nil
end

local function finish_import(_, job)
  job.model.imported = true
  job.status = "SUCCESS"
end

local function finish_export(server, job)
  server:publish_export(job.export)
  job.status = "SUCCESS"
end

local function finish_deploy(_, job)
  job.model.deployed = true
  job.model.deployment = job.deployment
  job.status = "SUCCESS"
end

local function finish_undeploy(_, job)
  job.model.deployed = false
  job.status = "SUCCESS"
end

-- Adds the model handlers to the Server class. helpers contains the response
-- and JSON functions of kore_workflow.mock.
function mock_models.install(Server, helpers)
  local bad_request = helpers.bad_request
  local quote = helpers.quote
  local json_encode = helpers.json_encode
  local is_present = helpers.is_present

  -- Adds a model whose file is content. crc is the CRC-32 of content when
  -- the caller already has it.
  function Server:add_model(id, file_name, content, crc, imported)
    local model = {
      id = id,
      file_name = base_name(file_name),
      content = content,
      crc = crc or helpers.crc32(content),
      imported = imported,
      deployed = false,
    }
    self.models[id] = model
    return model
  end

  -- Adds a model that is imported already. Without content it gets a small
  -- JSON file of its own, named after its id.
  function Server:seed_model(id, file_name, content)
    if content == nil then
      content = string.format('{"modelId":%s,"seeded":true}\n', quote(id))
    end
    return self:add_model(id, file_name or (id .. ".json"), content, nil, true)
  end

  -- Adds the model of a completed upload session and starts its import job.
  -- Returns the job record response.
  function Server:import_model(id, file_name, content, crc)
    local model = self:add_model(id, file_name, content, crc, false)
    local job = self:start_job({ job_type = "MODELS", action = "IMPORT", model = model, finish = finish_import })
    model.import_job_id = job.id
    return self:job_response(job)
  end

  -- Returns the model named by the first path parameter, or nil and a 404
  -- for an unknown model or a 409 while its import job has not ended.
  function Server:model_for_route(params)
    local model = self.models[params[1]]
    if not model then
      return nil, helpers.not_found(string.format("model %s not found", quote(params[1])))
    end
    if not model.imported then
      return nil, helpers.error_response(409, "CONFLICT", string.format(
        "model %s is still being imported: poll dock status %s until it ends", quote(model.id),
        quote(model.import_job_id)))
    end
    return model
  end

  function Server:export_model(_, params)
    local model, failure = self:model_for_route(params)
    if not model then
      return failure
    end
    local export = self:new_export("model", model.id .. ".zip",
      { { name = model.file_name, data = model.content, crc = model.crc } })
    local job = self:start_job({
      job_type = "MODELS",
      action = "EXPORT",
      model = model,
      export = export,
      finish = finish_export,
    })
    return self:job_response(job)
  end

  -- Validates a model deploy: the modelType query parameter and the JSON
  -- body. Returns the deployment to record, or nil and a 400 response.
  local function deployment_from_request(request)
    local query = helpers.parse_query(request.query or "")
    local model_type = query.modelType
    if model_type == nil then
      return nil, bad_request("missing query parameter modelType: add ?modelType=openSource or ?modelType=fineTune")
    end
    if not MODEL_TYPES[model_type] then
      return nil, bad_request(string.format("query parameter modelType must be openSource or fineTune, got %s",
        quote(model_type)))
    end
    local body, failure = helpers.json_object_body(request)
    if not body then
      return nil, failure
    end
    local name = body.name
    if not is_present(name) then
      return nil, bad_request("missing field name: give the deployment a name")
    end
    if type(name) ~= "string" or not name:find("%S") then
      return nil, bad_request(string.format("field name must be a non-empty string, got %s", json_encode(name)))
    end
    if is_present(body.deviceType) and type(body.deviceType) ~= "string" then
      return nil, bad_request(string.format("field deviceType must be a string, got %s", json_encode(body.deviceType)))
    end
    for _, field in ipairs(OBJECT_FIELDS) do
      local value = body[field]
      if is_present(value) and not is_object(value) then
        return nil, bad_request(string.format("field %s must be a JSON object, got %s", field, json_encode(value)))
      end
    end
    local deployment = { modelType = model_type }
    for _, field in ipairs({ "name", "deviceType", "hyperParameters", "scalingParameters", "optimizationInfo" }) do
      if body[field] ~= cjson.null then
        deployment[field] = body[field]
      end
    end
    return deployment
  end

  function Server:deploy_model(request, params)
    local model, failure = self:model_for_route(params)
    if not model then
      return failure
    end
    local deployment
    deployment, failure = deployment_from_request(request)
    if not deployment then
      return failure
    end
    local job = self:start_job({
      job_type = "MODELS",
      action = "DEPLOY",
      model = model,
      deployment = deployment,
      finish = finish_deploy,
    })
    return self:job_response(job)
  end

  function Server:undeploy_model(_, params)
    local model, failure = self:model_for_route(params)
    if not model then
      return failure
    end
    local job = self:start_job({ job_type = "MODELS", action = "UNDEPLOY", model = model, finish = finish_undeploy })
    return self:job_response(job)
  end

  function Server:control_seed_model(request)
    local body, failure = helpers.json_object_body(request)
    if not body then
      return failure
    end
    local id = body.id
    if type(id) ~= "string" or id == "" then
      return bad_request("field id must be a non-empty model id string")
    end
    for _, field in ipairs({ "fileName", "content" }) do
      local value = body[field]
      if is_present(value) and (type(value) ~= "string" or (field == "fileName" and value == "")) then
        return bad_request(string.format("field %s must be a %sstring", field,
          field == "fileName" and "non-empty " or ""))
      end
    end
    if self.models[id] then
      return helpers.json_response(200, { id = id, created = false })
    end
    local file_name = is_present(body.fileName) and body.fileName or nil
    local content = is_present(body.content) and body.content or nil
    self:seed_model(id, file_name, content)
    return helpers.json_response(201, { id = id, created = true })
  end

  function Server:control_model(_, params)
    local model = self.models[params[1]]
    if not model then
      return helpers.not_found(string.format("model %s not found", quote(params[1])))
    end
    return helpers.json_response(200, {
      id = model.id,
      fileName = model.file_name,
      size = #model.content,
      imported = model.imported,
      deployed = model.deployed,
      deployment = model.deployment,
    })
  end
end

return mock_models
