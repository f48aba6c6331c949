"""Reserved for the sharding subsystem (see the issues that build it)."""
