/*
 * Content-Encoding of JSON responses. JSON calls ask for no encoding: their
 * bodies are a few hundred bytes, and an Accept-Encoding header costs more
 * per call than compressing them saves. A server may still compress a body
 * (with no Accept-Encoding any coding is allowed), so a gzip or deflate body
 * is inflated here, within max_response, and any other coding is refused.
 */
#include <stdio.h>
#include <string.h>
#include <strings.h>
#include <zlib.h>

#include "kw.h"

/* Trims spaces and tabs around s, into out of size n; returns out. */
static const char *trimmed(const char *s, char *out, size_t n)
{
  size_t len;

  while (*s == ' ' || *s == '\t')
    s++;
  len = strlen(s);
  while (len > 0 && (s[len - 1] == ' ' || s[len - 1] == '\t'))
    len--;
  if (len >= n)
    len = n - 1;
  memcpy(out, s, len);
  out[len] = '\0';
  return out;
}

/* Inflates in into out with zlib's window_bits; returns 1, or 0 with errbuf set. */
static int inflate_into(kw_request *req, const kw_buf *in, kw_buf *out, int window_bits)
{
  z_stream z;
  unsigned char chunk[16384];
  int status;

  memset(&z, 0, sizeof(z));
  if (inflateInit2(&z, window_bits) != Z_OK) {
    snprintf(req->errbuf, sizeof(req->errbuf), "zlib could not start");
    return 0;
  }
  z.next_in = (unsigned char *)in->data;
  z.avail_in = (uInt)in->len;
  do {
    z.next_out = chunk;
    z.avail_out = sizeof(chunk);
    status = inflate(&z, Z_NO_FLUSH);
    if (status != Z_OK && status != Z_STREAM_END)
      break;
    if (!kw_buf_append(out, (const char *)chunk, sizeof(chunk) - z.avail_out)) {
      inflateEnd(&z);
      if (out->overflowed)
        req->code = CURLE_FILESIZE_EXCEEDED;
      else
        snprintf(req->errbuf, sizeof(req->errbuf), "out of memory");
      return 0;
    }
  } while (status == Z_OK && (z.avail_in > 0 || z.avail_out == 0));
  if (status != Z_STREAM_END || z.avail_in > 0) {
    snprintf(req->errbuf, sizeof(req->errbuf), "%s",
             z.msg != NULL ? z.msg : status == Z_OK ? "the compressed data ends early"
                                                    : "data after the compressed stream");
    inflateEnd(&z);
    return 0;
  }
  inflateEnd(&z);
  return 1;
}

/*
 * Decodes the response body in place by req->content_encoding. Returns 1 on
 * success (also when there is nothing to decode); on failure sets req->code
 * to CURLE_BAD_CONTENT_ENCODING, or CURLE_FILESIZE_EXCEEDED past
 * max_response, with the detail in errbuf, and returns 0.
 */
int kw_inflate_response(kw_request *req)
{
  char coding[32];
  kw_buf out;
  int ok;

  if (req->content_encoding == NULL)
    return 1;
  trimmed(req->content_encoding, coding, sizeof(coding));
  if (coding[0] == '\0' || strcasecmp(coding, "identity") == 0)
    return 1;
  req->code = CURLE_BAD_CONTENT_ENCODING;
  kw_buf_init(&out, req->response.limit);
  if (strcasecmp(coding, "gzip") == 0 || strcasecmp(coding, "x-gzip") == 0) {
    ok = inflate_into(req, &req->response, &out, 15 + 16);
  } else if (strcasecmp(coding, "deflate") == 0) {
    /* HTTP's deflate is the zlib format, but some servers send raw deflate. */
    ok = inflate_into(req, &req->response, &out, 15);
    if (!ok && req->code != CURLE_FILESIZE_EXCEEDED) {
      kw_buf_free(&out);
      req->errbuf[0] = '\0';
      ok = inflate_into(req, &req->response, &out, -15);
    }
  } else {
    snprintf(req->errbuf, sizeof(req->errbuf), "%s is not a coding the client decodes",
             coding);
    ok = 0;
  }
  if (!ok) {
    kw_buf_free(&out);
    return 0;
  }
  kw_buf_free(&req->response);
  req->response = out;
  req->code = CURLE_OK;
  return 1;
}
