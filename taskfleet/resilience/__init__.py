"""Reserved for the resilience subsystem (see the issues that build it)."""
