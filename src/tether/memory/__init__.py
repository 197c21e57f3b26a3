"""Memory: an embedded vector store, an append-only observation log, a retrieval tool."""
