"""The control plane: REST API, API keys with roles, and the web dashboard (`tether serve`)."""
