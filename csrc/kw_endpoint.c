/*
 * Every API call of the client, described once as data. Adding a call means
 * adding a row here; kw_request.c turns a row and the Lua arguments into an
 * HTTP transfer. Argument order: the id (when the path has one), then the
 * fields table, file path or URL, then the options table.
 */
#include "kw.h"

static const char *const import_required[] = {
  "workflowDataFileId", "flowDataFileId", "envVariablesFileId", NULL
};

static const char *const import_new_required[] = {
  "workflowName", "workflowDataFileId", "flowDataFileId", NULL
};

static const char *const import_new_optional[] = { "envVariablesFileId", NULL };

static const char *const no_fields[] = { NULL };

static const kw_field export_fields[] = {
  { "flow_id", "flowId", KW_STRING, KW_FIELD_QUERY },
  { NULL, NULL, KW_STRING, 0 }
};

static const kw_field deploy_fields[] = {
  { "async", "isAsync", KW_BOOLEAN, KW_FIELD_REQUIRED },
  { NULL, NULL, KW_STRING, 0 }
};

static const kw_field session_start_fields[] = {
  { "fileContext", "fileContext", KW_STRING, KW_FIELD_REQUIRED },
  { "totalChunks", "totalChunks", KW_INTEGER, KW_FIELD_REQUIRED },
  { "fileExtension", "fileExtension", KW_STRING, KW_FIELD_REQUIRED },
  { "fileName", "fileName", KW_STRING, KW_FIELD_REQUIRED },
  { "fileSize", "fileSize", KW_INTEGER, KW_FIELD_REQUIRED },
  { NULL, NULL, KW_STRING, 0 }
};

static const kw_field chunk_fields[] = {
  { "path", "path", KW_STRING, KW_FIELD_REQUIRED | KW_FIELD_LOCAL },
  { "offset", "offset", KW_INTEGER, KW_FIELD_REQUIRED | KW_FIELD_LOCAL },
  { "length", "length", KW_INTEGER, KW_FIELD_REQUIRED | KW_FIELD_LOCAL },
  { "chunk_number", "chunkNumber", KW_INTEGER, KW_FIELD_REQUIRED | KW_FIELD_LOCAL },
  { "filename", "filename", KW_STRING, KW_FIELD_LOCAL },
  { NULL, NULL, KW_STRING, 0 }
};

static const kw_field model_deploy_fields[] = {
  { "model_type", "modelType", KW_STRING, KW_FIELD_REQUIRED | KW_FIELD_QUERY },
  { "name", "name", KW_STRING, KW_FIELD_REQUIRED },
  { "deviceType", "deviceType", KW_STRING, 0 },
  { "hyperParameters", "hyperParameters", KW_TABLE, 0 },
  { "scalingParameters", "scalingParameters", KW_TABLE, 0 },
  { "optimizationInfo", "optimizationInfo", KW_TABLE, 0 },
  { NULL, NULL, KW_STRING, 0 }
};

const kw_endpoint kw_endpoints[] = {
  {
    "workflow", "import", "workflow.import", "POST",
    "/api/public/workflows/", "/import",
    "workflow", "import into workflow",
    KW_BODY_JSON, import_required, no_fields,
    KW_RESULT_JOB, 0, NULL
  },
  {
    "workflow", "status", "workflow.status", "GET",
    "/api/public/dock-status/", "",
    "dock status", "status of dock status",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_JOB, KW_IDEMPOTENT | KW_ID_ACCEPTS_NUMBER, NULL
  },
  {
    "files", "upload", "files.upload", "POST",
    "/api/public/files", NULL,
    "file", "upload of file",
    KW_BODY_FILE, no_fields, no_fields,
    /* A repeated upload only leaves an unused file id, so it may be resent. */
    KW_RESULT_FILE, KW_IDEMPOTENT, NULL
  },
  {
    "workflow", "import_new", "workflow.import_new", "POST",
    "/api/public/workflows/import", NULL,
    "workflow", "import of a new workflow",
    KW_BODY_JSON, import_new_required, import_new_optional,
    KW_RESULT_JOB, 0, NULL
  },
  {
    "workflow", "export", "workflow.export", "POST",
    "/api/public/workflows/", "/export",
    "workflow", "export of workflow",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_JOB, KW_FIELDS_OPTIONAL, export_fields
  },
  {
    "workflow", "deploy", "workflow.deploy", "POST",
    "/api/public/workflows/", "/deploy",
    "workflow", "deploy of workflow",
    KW_BODY_JSON, no_fields, no_fields,
    KW_RESULT_JOB, 0, deploy_fields
  },
  {
    "workflow", "undeploy", "workflow.undeploy", "POST",
    "/api/public/workflows/", "/undeploy",
    "workflow", "undeploy of workflow",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_JOB, 0, NULL
  },
  {
    "files", "session_start", "files.session_start", "POST",
    "/api/public/files/session/start", NULL,
    "file", "start of an upload session",
    KW_BODY_JSON, no_fields, no_fields,
    KW_RESULT_SESSION, 0, session_start_fields
  },
  {
    "files", "session_chunk", "files.session_chunk", "POST",
    "/api/public/files/session/", "",
    "upload session", "chunk upload to session",
    KW_BODY_CHUNK, no_fields, no_fields,
    /* A chunk sent twice replaces itself, so it may be resent. */
    KW_RESULT_OBJECT, KW_IDEMPOTENT, chunk_fields
  },
  {
    "files", "session_complete", "files.session_complete", "POST",
    "/api/public/files/session/", "/complete",
    "upload session", "completion of upload session",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_OBJECT, 0, NULL
  },
  {
    "files", "upload_data", "files.upload_data", "POST",
    "/api/public/files", NULL,
    "file", "upload of file",
    KW_BODY_DATA, no_fields, no_fields,
    KW_RESULT_FILE, KW_IDEMPOTENT, NULL
  },
  {
    "models", "export", "models.export", "POST",
    "/api/public/models/", "/export",
    "model", "export of model",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_JOB, 0, NULL
  },
  {
    "models", "deploy", "models.deploy", "POST",
    "/api/public/models/", "/deploy",
    "model", "deploy of model",
    KW_BODY_JSON, no_fields, no_fields,
    KW_RESULT_JOB, 0, model_deploy_fields
  },
  {
    "models", "undeploy", "models.undeploy", "POST",
    "/api/public/models/", "/undeploy",
    "model", "undeploy of model",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_JOB, 0, NULL
  },
  {
    "files", "download", "files.download", "GET",
    NULL, NULL,
    "download", "download of",
    KW_BODY_DOWNLOAD, no_fields, no_fields,
    KW_RESULT_DOWNLOAD, KW_IDEMPOTENT, NULL
  },
  { NULL, NULL, NULL, NULL, NULL, NULL, NULL, NULL, KW_BODY_NONE, NULL, NULL,
    KW_RESULT_JOB, 0, NULL }
};
