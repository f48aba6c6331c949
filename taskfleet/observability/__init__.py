"""Reserved for the observability subsystem (see the issues that build it)."""
