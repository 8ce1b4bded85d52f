/*
 * Shared parts of the libFuzzer targets in fuzz/: one Lua state with the
 * kore_workflow module and a client, and a reader that turns fuzz input
 * bytes into numbers, strings and Lua values. A broken invariant of the C
 * core aborts the process, which libFuzzer reports as a crash.
 */
#ifndef KWF_H
#define KWF_H

#include <stddef.h>
#include <stdint.h>

#include "kw.h"

/*
 * The API key of the fuzz client. It contains only letters and digits, so no
 * sanitising step (white space runs to one space, other bytes to '?', "..."
 * after a cut) can make it out of other text.
 */
#define KWF_KEY "kwfuzzSECRETkey0123456789"

/* Never contacted: no target performs a transfer. */
#define KWF_HOST "http://127.0.0.1:9"

/* Reads fuzz input front to back; once it is used up, every read returns 0. */
typedef struct kwf_input {
  const uint8_t *data;
  size_t size;
  size_t pos;
} kwf_input;

unsigned kwf_byte(kwf_input *in);
uint64_t kwf_uint(kwf_input *in, int bytes);
/* Returns a length read from the input (one byte, or three for 250 and up), at most max. */
size_t kwf_length(kwf_input *in, size_t max);
/* Points *out at the next n bytes, fewer when the input ends first; returns how many. */
size_t kwf_bytes(kwf_input *in, size_t n, const uint8_t **out);
/* Pushes a string of the next kwf_length bytes. */
void kwf_push_bytes(lua_State *L, kwf_input *in, size_t max);

/* Pushes a Lua value of a kind chosen by the input: every type, edge numbers, tables. */
void kwf_push_value(lua_State *L, kwf_input *in, int depth);

/* Pushes one of the strings that the C core compares against, such as field names. */
void kwf_push_word(lua_State *L, kwf_input *in);

/* Set once kwf_push_word has pushed KWF_KEY; a target resets it per input. */
extern int kwf_key_pushed;

/* The state every target shares, set up once by kwf_setup. */
typedef struct kwf_env {
  lua_State *L;
  int core_ref;     /* require "kore_workflow.core" */
  int client_ref;   /* the client handle (userdata) */
  int codec_ref;    /* the client's codec table */
  const char *tmp_file; /* an existing file that upload targets may name */
} kwf_env;

kwf_env *kwf_setup(void);

/* Aborts with a message naming the broken invariant. */
void kwf_fail(const char *invariant, const char *detail, size_t detail_len)
  __attribute__((noreturn));

/* True when needle (NUL-terminated) occurs in the first len bytes of text. */
int kwf_contains(const char *text, size_t len, const char *needle);

/* True when every byte of text is printable ASCII (0x20 to 0x7e). */
int kwf_printable(const char *text, size_t len);

/*
 * Ends one fuzz input: drops everything above base from the stack and runs
 * a full collection, so that an input frees what it allocated and
 * libFuzzer's leak check can tell a leak from garbage not yet collected.
 */
void kwf_finish(lua_State *L, int base);

#endif
