"""VM records under MVM_HOME: schema-versioned JSON, atomic writes, locks."""
