/*
 * Shared declarations of the kore_workflow C core.
 *
 * The core is split by concept: kw_core.c registers the module and the
 * client, kw_endpoint.c describes every API call as data, kw_request.c builds
 * and performs one HTTP transfer, kw_json.c calls the JSON codec and
 * normalises decoded values, kw_error.c builds every error table.
 */
#ifndef KW_H
#define KW_H

#include <stddef.h>
#include <stdio.h>

#include <curl/curl.h>

#include "kw_compat.h"

#define KW_VERSION "0.1.0"

#define KW_CLIENT_MT "kore_workflow.client"
#define KW_REQUEST_MT "kore_workflow.request"
#define KW_ERROR_MT "kore_workflow.error"

/* Defaults, in milliseconds and bytes; every one can be set per client and per call. */
#define KW_DEFAULT_CONNECT_TIMEOUT_MS 5000L
#define KW_DEFAULT_TIMEOUT_MS 30000L
#define KW_DEFAULT_STALL_TIMEOUT_MS 30000L
#define KW_DEFAULT_MAX_RESPONSE (4L * 1024 * 1024)

#define KW_MAX_ID_LENGTH 1024
#define KW_EXCERPT_LENGTH 160

/* A growable byte buffer that never grows past its cap. */
typedef struct kw_buf {
  char *data;
  size_t len;
  size_t cap;
  size_t limit;
  int overflowed;
} kw_buf;

void kw_buf_init(kw_buf *buf, size_t limit);
int kw_buf_append(kw_buf *buf, const char *bytes, size_t n);
void kw_buf_free(kw_buf *buf);

typedef enum kw_body_kind {
  KW_BODY_NONE,
  KW_BODY_JSON,
  KW_BODY_FILE,   /* multipart: a whole file streamed from disk, and fileContext */
  KW_BODY_CHUNK,  /* multipart: a byte range of a file streamed from disk, and chunkNumber */
  KW_BODY_DATA,   /* multipart: bytes given as a Lua string, and fileContext */
  KW_BODY_DOWNLOAD /* no body; the response is streamed into a file */
} kw_body_kind;

typedef enum kw_result_kind {
  KW_RESULT_JOB,
  KW_RESULT_FILE,
  KW_RESULT_OBJECT,   /* any JSON object; normalised as a job when it has a job id */
  KW_RESULT_SESSION,  /* an upload session: sessionId required */
  KW_RESULT_DOWNLOAD  /* { path, bytes, content_type } of the saved file */
} kw_result_kind;

typedef enum kw_field_type {
  KW_STRING,
  KW_INTEGER,
  KW_BOOLEAN,
  KW_TABLE
} kw_field_type;

#define KW_FIELD_REQUIRED 0x1u
#define KW_FIELD_QUERY 0x2u  /* sent in the query string instead of the body */
#define KW_FIELD_LOCAL 0x4u  /* read by the client itself, never sent as is */

/* A field of the fields table argument, with its type and where it goes. */
typedef struct kw_field {
  const char *name;       /* key in the Lua table */
  const char *json_name;  /* name in the JSON body or the query string */
  kw_field_type type;
  unsigned flags;
} kw_field;

/* Flags of an endpoint. */
#define KW_IDEMPOTENT 0x1u       /* safe to resend after any failure, such as a GET */
#define KW_ID_ACCEPTS_NUMBER 0x2u /* the path id may be an integral number */
#define KW_FIELDS_OPTIONAL 0x4u   /* the fields table argument may be nil */

/* One API call, described as data. */
typedef struct kw_endpoint {
  const char *ns;               /* Lua namespace, such as "workflow" */
  const char *name;             /* function name inside it, such as "import" */
  const char *qualified;        /* both, as messages name the call: "workflow.import" */
  const char *method;
  const char *path_prefix;      /* path before the id, or the whole path */
  const char *path_suffix;      /* path after the id, NULL when there is no id */
  const char *id_label;         /* noun for the id in messages */
  const char *action;           /* noun phrase for messages: "import into workflow" */
  kw_body_kind body;
  const char *const *required;  /* JSON body fields that must be strings */
  const char *const *optional;  /* JSON body fields that may be strings */
  kw_result_kind result;
  unsigned flags;
  const kw_field *fields;       /* typed fields; when set, they replace required/optional */
} kw_endpoint;

extern const kw_endpoint kw_endpoints[];

struct kw_request;

/* Per-call limits, resolved from the client's defaults and the call's options. */
typedef struct kw_limits {
  long connect_timeout_ms;
  long timeout_ms;      /* 0: no overall limit (uploads) */
  long stall_timeout_ms;
  size_t max_response;
} kw_limits;

typedef struct kw_client {
  CURL *easy;
  CURLM *multi;         /* created on the first stepped request */
  struct kw_request *in_flight; /* stepped requests added to multi, linked by next */
  char *base_url;       /* scheme://host[:port], no trailing slash */
  CURLU *url;           /* base_url parsed once; calls on easy set its path and query */
  char *api_key_header; /* "x-api-key: <key>", wiped on free */
  size_t api_key_offset;
  char *ca_file;
  char *user_agent;     /* the User-Agent header line */
  struct curl_slist *plain_headers; /* key, User-Agent and Accept: calls without a body */
  char *proxy;          /* proxy for base_url from the environment, "" for none */
  char *no_proxy;       /* hosts that bypass it, from the environment */
  long connect_timeout_ms;
  long timeout_ms;
  long stall_timeout_ms;
  size_t max_response;
  int codec_ref;        /* registry reference to the codec table */
  int spare_ref;        /* registry slot of a finished request that blocking calls reuse */
  int logger_ref;       /* registry reference to the logger, or LUA_NOREF */
  int verbose;          /* log request and response lines */
  int insecure;         /* TLS verification off: only through the insecure option */
  /* The endpoint and limits easy was last set up for, when a call like it can reuse that setup. */
  const struct kw_endpoint *easy_endpoint;
  kw_limits easy_limits;
} kw_client;


enum {
  KW_REQUEST_BUILT,
  KW_REQUEST_RUNNING,
  KW_REQUEST_DONE,
  KW_REQUEST_SPENT
};

typedef struct kw_request {
  const kw_endpoint *endpoint;
  kw_client *client;
  char *url;
  char *path;           /* path of url, used in messages */
  char *id;             /* the id or file path this call is about */
  struct curl_slist *headers;
  char *body;
  size_t body_len;
  char *file_path;
  char *file_context;
  char *file_name;
  char *query;          /* "?name=value&..." or NULL */
  char *chunk_number;   /* decimal text of the chunk number */
  long long range_offset; /* a chunk's first byte in file_path */
  long long range_length; /* a chunk's length, or -1 for the whole file */
  long long range_position; /* bytes of the range read so far */
  FILE *file;           /* the open file of a chunk, or of a download */
  char *download_path;  /* the file a download is written to */
  char *download_part;  /* the temporary file the download is written to first */
  long long downloaded;
  int send_key;         /* 0 when a download goes to another origin */
  curl_mime *mime;
  kw_limits limits;
  kw_buf response;
  CURLcode code;
  long status;
  char *content_type;
  char *content_encoding; /* the response's Content-Encoding, or NULL */
  char *location;
  long long retry_after;  /* seconds, negative when the server sent none */
  int request_sent;       /* the connection was made and sending had begun */
  long long progress_bytes;  /* bytes moved both ways at the last progress change */
  long long progress_at_ms;  /* monotonic time of that change */
  int stalled;            /* aborted because no byte moved for the stall limit */
  kw_buf log;             /* verbose log lines, filled by the debug callback */
  CURL *own_easy;         /* a stepped request's own handle, NULL for blocking ones */
  int client_ref;         /* keeps the client alive while a stepped request lives */
  int state;              /* KW_REQUEST_BUILT, _RUNNING, _DONE or _SPENT */
  struct kw_request *next;
  char errbuf[CURL_ERROR_SIZE];
  int performed;
} kw_request;

/* kw_inflate.c */
int kw_inflate_response(kw_request *req);

/* kw_zip.c */
int kw_zip_read(lua_State *L);

/* kw_body.c */
void kw_body_check_fields(lua_State *L, kw_request *req, int arg, const char *fname);
int kw_body_prepare_chunk(lua_State *L, kw_request *req, int fields);
void kw_body_prepare_data(lua_State *L, kw_request *req, int name_arg, int data_arg,
                          const char *fname);
int kw_body_prepare_download(lua_State *L, kw_request *req, int url_arg, int path_arg,
                             const char *fname);
void kw_body_release(kw_request *req);
int kw_body_finish_download(kw_request *req);
size_t kw_body_on_download(char *data, size_t size, size_t count, void *userdata);
char *kw_strdup_or_raise(lua_State *L, const char *s, size_t n);

/* kw_core.c */
kw_client *kw_client_check(lua_State *L, int index);
const char *kw_client_key(const kw_client *client);

/* kw_request.c */
kw_request *kw_request_new(lua_State *L, int client_index,
                           const kw_endpoint *endpoint);
void kw_request_register(lua_State *L);
kw_request *kw_request_acquire(lua_State *L, int client_index, const kw_endpoint *endpoint);
void kw_request_recycle(lua_State *L, kw_request *req, int request_index);
int kw_request_prepare(lua_State *L, kw_request *req, int first_arg);
void kw_request_setup_easy(kw_request *req, CURL *easy);
void kw_request_collect(kw_request *req, CURL *easy, CURLcode code);
void kw_request_perform(kw_request *req);
int kw_request_push_result(lua_State *L, kw_request *req, int codec_index);

/* kw_multi.c */
int kw_multi_start(lua_State *L, kw_request *req, int client_index);
void kw_multi_detach(kw_request *req);
void kw_multi_release_client(kw_client *client);
void kw_multi_register(lua_State *L);

/* kw_log.c */
void kw_log_init(kw_request *req);
int kw_log_on_debug(CURL *easy, curl_infotype type, char *data, size_t size, void *userdata);
void kw_log_flush(lua_State *L, kw_request *req);
void kw_log_warning(lua_State *L, const kw_client *client, const char *message);

/* kw_json.c */
int kw_json_encode(lua_State *L, int codec_index, int value_index);
int kw_json_decode(lua_State *L, int codec_index, const char *text, size_t len);
void kw_json_normalise(lua_State *L, int codec_index, int value_index);
void kw_json_push_codec(lua_State *L, const kw_client *client);

/* kw_error.c */
typedef struct kw_error_info {
  const char *kind;
  const char *message;
  const char *hint;
  long status;          /* 0 when there is no HTTP status */
  int retryable;
  const char *id;
  double retry_after;   /* seconds, negative when absent */
  const char *excerpt;
  size_t excerpt_len;
} kw_error_info;

int kw_error_push(lua_State *L, const kw_client *client, const kw_error_info *info);
int kw_error_return(lua_State *L, const kw_client *client, const kw_error_info *info);
void kw_error_register(lua_State *L);
int kw_error_new_lua(lua_State *L);
void kw_redact(lua_State *L, const kw_client *client, const char *text, size_t len);
void kw_sanitise(luaL_Buffer *b, const char *text, size_t len, size_t max);

/* Raises "bad argument #arg (name) to 'fname' (message)". */
int kw_argerror(lua_State *L, int arg, const char *fname, const char *argname,
                const char *fmt, ...);

#endif
