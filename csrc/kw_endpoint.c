/*
 * Every API call of the client, described once as data. Adding a call means
 * adding a row here; kw_request.c turns a row and the Lua arguments into an
 * HTTP transfer.
 */
#include "kw.h"

static const char *const import_required[] = {
  "workflowDataFileId", "flowDataFileId", "envVariablesFileId", NULL
};

static const char *const no_fields[] = { NULL };

const kw_endpoint kw_endpoints[] = {
  {
    "workflow", "import", "POST",
    "/api/public/workflows/", "/import",
    "workflow", "import into workflow",
    KW_BODY_JSON, import_required, no_fields,
    KW_RESULT_JOB, 0
  },
  {
    "workflow", "status", "GET",
    "/api/public/dock-status/", "",
    "dock status", "status of dock status",
    KW_BODY_NONE, no_fields, no_fields,
    KW_RESULT_JOB, KW_IDEMPOTENT | KW_ID_ACCEPTS_NUMBER
  },
  {
    "files", "upload", "POST",
    "/api/public/files", NULL,
    "file", "upload of file",
    KW_BODY_FILE, no_fields, no_fields,
    /* A repeated upload only leaves an unused file id, so it may be resent. */
    KW_RESULT_FILE, KW_IDEMPOTENT
  },
  { NULL, NULL, NULL, NULL, NULL, NULL, NULL, KW_BODY_NONE, NULL, NULL,
    KW_RESULT_JOB, 0 }
};
