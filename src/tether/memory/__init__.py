"""Memory: an embedded vector store and an append-only observation log (the retrieval tool over them is `tether.tools.retrieval`)."""
