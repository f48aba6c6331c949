"""Reserved for the scheduler subsystem (see the issues that build it)."""
