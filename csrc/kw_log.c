/*
 * The verbose log of a transfer: libcurl's debug callback copies request and
 * response lines into the request's log buffer, and after the transfer the
 * lines are redacted and handed to the client's Lua logger.
 */
#include "kw.h"
