// SQLite for the agent's record index. No `link` here: syncd-agent links the static archive (Package.swift), so
// the agent stays one self-contained file; anything else that links AgentCore takes the symbols from the shared
// library GRDB links.
#ifndef SYNCD_CSQLITE_SHIM_H
#define SYNCD_CSQLITE_SHIM_H
#include <sqlite3.h>

// SQLITE_TRANSIENT is a macro over a cast Swift cannot import.
static inline sqlite3_destructor_type syncd_sqlite_transient(void) { return SQLITE_TRANSIENT; }
#endif
