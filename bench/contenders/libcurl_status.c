/*
 * The reference loop for clients built on libcurl: GET the dock status CALLS
 * times on one reused easy handle and parse each body with json-c, checking
 * that it contains a "status" string.
 *
 * Usage: libcurl_status URL KEY_FILE CALLS
 * Prints "calls=N seconds=S" on stdout, S timed on CLOCK_MONOTONIC around
 * the loop. The key is read from KEY_FILE so it never appears in the
 * process's arguments.
 */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include <curl/curl.h>
#include <json-c/json.h>

struct buffer {
  char *data;
  size_t len;
  size_t cap;
};

static size_t on_body(char *data, size_t size, size_t count, void *userdata)
{
  struct buffer *buf = userdata;
  size_t n = size * count;

  if (buf->len + n + 1 > buf->cap) {
    size_t cap = buf->cap ? buf->cap : 1024;
    char *grown;

    while (cap < buf->len + n + 1)
      cap *= 2;
    grown = realloc(buf->data, cap);
    if (grown == NULL)
      return 0;
    buf->data = grown;
    buf->cap = cap;
  }
  memcpy(buf->data + buf->len, data, n);
  buf->len += n;
  buf->data[buf->len] = '\0';
  return n;
}

static double now(void)
{
  struct timespec t;

  clock_gettime(CLOCK_MONOTONIC, &t);
  return (double)t.tv_sec + (double)t.tv_nsec / 1e9;
}

static int read_key(const char *path, char *header, size_t size)
{
  char key[512];
  FILE *file = fopen(path, "r");
  size_t n;

  if (file == NULL)
    return 0;
  n = fread(key, 1, sizeof(key) - 1, file);
  fclose(file);
  while (n > 0 && (key[n - 1] == '\n' || key[n - 1] == '\r'))
    n--;
  key[n] = '\0';
  return n > 0 && snprintf(header, size, "x-api-key: %s", key) < (int)size;
}

int main(int argc, char **argv)
{
  struct buffer body = { NULL, 0, 0 };
  struct curl_slist *headers = NULL;
  char key_header[600];
  long calls, i, status = 0;
  double started;
  CURL *easy;

  if (argc != 4 || (calls = strtol(argv[3], NULL, 10)) < 1) {
    fprintf(stderr, "usage: libcurl_status URL KEY_FILE CALLS\n");
    return 2;
  }
  if (!read_key(argv[2], key_header, sizeof(key_header))) {
    fprintf(stderr, "libcurl_status: cannot read a key from %s\n", argv[2]);
    return 2;
  }
  curl_global_init(CURL_GLOBAL_DEFAULT);
  easy = curl_easy_init();
  headers = curl_slist_append(headers, key_header);
  headers = curl_slist_append(headers, "Accept: application/json");
  if (easy == NULL || headers == NULL) {
    fprintf(stderr, "libcurl_status: out of memory\n");
    return 1;
  }
  curl_easy_setopt(easy, CURLOPT_URL, argv[1]);
  curl_easy_setopt(easy, CURLOPT_HTTPHEADER, headers);
  curl_easy_setopt(easy, CURLOPT_WRITEFUNCTION, on_body);
  curl_easy_setopt(easy, CURLOPT_WRITEDATA, &body);
  curl_easy_setopt(easy, CURLOPT_NOSIGNAL, 1L);

  started = now();
  for (i = 0; i < calls; i++) {
    struct json_object *doc, *field;
    CURLcode code;

    body.len = 0;
    code = curl_easy_perform(easy);
    curl_easy_getinfo(easy, CURLINFO_RESPONSE_CODE, &status);
    if (code != CURLE_OK || status != 200) {
      fprintf(stderr, "libcurl_status: call %ld failed: %s, HTTP %ld\n", i + 1,
              curl_easy_strerror(code), status);
      return 1;
    }
    doc = json_tokener_parse(body.data);
    if (doc == NULL || !json_object_object_get_ex(doc, "status", &field) ||
        !json_object_is_type(field, json_type_string)) {
      fprintf(stderr, "libcurl_status: call %ld: no status string in the body\n", i + 1);
      return 1;
    }
    json_object_put(doc);
  }
  printf("calls=%ld seconds=%.6f\n", calls, now() - started);

  curl_slist_free_all(headers);
  curl_easy_cleanup(easy);
  curl_global_cleanup();
  free(body.data);
  return 0;
}
