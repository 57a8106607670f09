"""The only code that knows where bytes live: one base location, local folder or object store."""
